import { generateKeyPairSync } from "node:crypto";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, loadTracingConfig, parseDuration } from "../../src/config.js";
import { makeSelfSigned } from "../support/self-signed.js";

describe("loadConfig", () => {
  it("runs with nothing configured, in development mode", () => {
    const config = loadConfig({});
    expect(config.env).toBe("development");
    expect(config.redis).toBeUndefined();
    expect(config.smtp.url).toBeUndefined();
    expect(config.otp.secretGenerated).toBe(true);
    expect(config.otp.length).toBe(6);
    expect(config.otp.ttlDefaultMs).toBe(600_000);
    expect(config.otp.maxFailedAttempts).toBe(5);
    expect(config.grpcAddr).toBe("127.0.0.1:50051");
    expect(config.smtp.waitBudgetMs).toBe(3000);
    expect(config.recordRetentionMs).toBe(7 * 86_400_000);
  });

  it("OTP_TTL unset: the default 10m brought into OTP_TTL_MIN..OTP_TTL_MAX", () => {
    expect(loadConfig({ OTP_TTL_MAX: "5m" }).otp.ttlDefaultMs).toBe(300_000);
    expect(loadConfig({ OTP_TTL_MIN: "15m" }).otp.ttlDefaultMs).toBe(900_000);
    expect(loadConfig({ OTP_TTL_MIN: "1m", OTP_TTL_MAX: "3m" }).otp.ttlDefaultMs).toBe(180_000);
    expect(loadConfig({ OTP_TTL_MIN: "2m", OTP_TTL_MAX: "20m" }).otp.ttlDefaultMs).toBe(600_000);
    expect(loadConfig({ OTP_TTL_MAX: "5m", OTP_TTL: "2m" }).otp.ttlDefaultMs).toBe(120_000);
  });

  it("OTP_TTL_MIN and OTP_TTL_MAX: at least 1m, as the email states the validity in whole minutes", () => {
    // A 30 s code would be mailed as "valid for 1 min": twice the time it has.
    expect(() => loadConfig({ OTP_TTL_MIN: "30s" })).toThrow(/OTP_TTL_MIN=30s: .* from 1m/);
    expect(() => loadConfig({ OTP_TTL_MIN: "10s", OTP_TTL_MAX: "30s" })).toThrow(/OTP_TTL_MIN=10s/);
    expect(() => loadConfig({ OTP_TTL_MAX: "59s" })).toThrow(/OTP_TTL_MAX=59s: .* from 1m/);
    expect(loadConfig({ OTP_TTL_MIN: "1m", OTP_TTL_MAX: "1m" }).otp.ttlDefaultMs).toBe(60_000);
  });

  it("GRPC_MAX_CONCURRENT_STREAMS: 100 calls at once per connection by default, a whole number from 1", () => {
    expect(loadConfig({}).grpcMaxConcurrentStreams).toBe(100);
    expect(loadConfig({ GRPC_MAX_CONCURRENT_STREAMS: "500" }).grpcMaxConcurrentStreams).toBe(500);
    for (const bad of ["0", "-1", "many", "1.5"]) {
      expect(() => loadConfig({ GRPC_MAX_CONCURRENT_STREAMS: bad })).toThrow(
        new ConfigError(`GRPC_MAX_CONCURRENT_STREAMS=${bad}: must be a whole number from 1 to 1000000`),
      );
    }
  });

  it("SMTP_MAX_BACKLOG: 200 messages per pooled connection by default, a whole number, or off", () => {
    expect(loadConfig({}).smtp.maxBacklog).toBe(1000);
    expect(loadConfig({ SMTP_POOL_SIZE: "20" }).smtp.maxBacklog).toBe(4000);
    expect(loadConfig({ SMTP_MAX_BACKLOG: "50" }).smtp.maxBacklog).toBe(50);
    expect(loadConfig({ SMTP_MAX_BACKLOG: "off" }).smtp.maxBacklog).toBeUndefined();
    expect(loadConfig({ SMTP_MAX_BACKLOG: "OFF" }).smtp.maxBacklog).toBeUndefined();
    for (const bad of ["0", "-1", "ten", "2000000"]) {
      expect(() => loadConfig({ SMTP_MAX_BACKLOG: bad })).toThrow(
        new ConfigError(`SMTP_MAX_BACKLOG=${bad}: must be a whole number from 1 to 1000000, or off (no bound)`),
      );
    }
  });

  it.each([
    [{}, /REDIS_URL: required when NODE_ENV=production/],
    [{ REDIS_URL: "redis://r:6379" }, /SMTP_URL: required/],
    [{ REDIS_URL: "redis://r:6379", SMTP_URL: "smtp://relay:587" }, /OTP_SECRET: required/],
    [
      { REDIS_URL: "redis://r:6379", SMTP_URL: "smtp://relay:587", OTP_SECRET: "x".repeat(40) },
      /MAIL_FROM: required/,
    ],
  ])("production refuses the development fallbacks: %j", (env, message) => {
    expect(() => loadConfig({ NODE_ENV: "production", ...env })).toThrow(message);
  });

  it("accepts a complete production configuration", () => {
    const config = loadConfig({
      NODE_ENV: "production",
      REDIS_URL: "redis://r:6379",
      SMTP_URL: "smtp://user:pass@relay:587",
      OTP_SECRET: "x".repeat(40),
      MAIL_FROM: '"Acme Login" <no-reply@acme.example>',
      OTP_TTL: "5m",
      // Production needs a caller (issue 3): here one token caller, SHA-256 of "token".
      AUTH_TOKENS: "web:3c469e9d6c5875d37a43f353d4f88e61fcf812c66eee3457465a40b0da4153e0",
    });
    expect(config.mail).toMatchObject({ fromName: "Acme Login", fromAddress: "no-reply@acme.example" });
    expect(config.otp.ttlDefaultMs).toBe(300_000);
    expect(config.otp.secretGenerated).toBe(false);
  });

  it.each([
    [{ OTP_LENGTH: "3" }, /OTP_LENGTH=3: must be a whole number from 4 to 10/],
    [{ OTP_TTL: "2d" }, /OTP_TTL=2d/],
    [{ OTP_TTL: "ten minutes" }, /OTP_TTL=ten minutes: must be a duration/],
    [{ SMTP_URL: "http://relay" }, /SMTP_URL: must be an smtp/],
    [{ REDIS_URL: "localhost:6379" }, /REDIS_URL: must be a redis/],
    [{ OTP_SECRET: "short" }, /OTP_SECRET: must be at least 32/],
    [{ MAIL_FROM: "not an address" }, /MAIL_FROM=/],
    [{ MAIL_FROM: "a@b.example\r\nBcc: x@y.example" }, /MAIL_FROM=/],
    // The message builder refuses these at every send: the start refuses them instead.
    [{ MAIL_FROM: '"Acme" <no;reply@acme.example>' }, /MAIL_FROM=.*must be an address/],
    [{ MAIL_FROM: '"Acme" <no-reply@acme..example>' }, /MAIL_FROM=.*must be an address/],
    // The display name is the product name in the emails: without it they would come from, and name, "OtpEmail".
    [{ MAIL_FROM: "no-reply@acme.example" }, /MAIL_FROM=no-reply@acme.example: needs a display name/],
    [{ MAIL_FROM: "<no-reply@acme.example>" }, /MAIL_FROM=<no-reply@acme.example>: needs a display name/],
    [{ MAIL_FROM: '"  " <no-reply@acme.example>' }, /needs a display name, .* such as "Acme" <no-reply@acme.example>/],
    // One unfoldable word in From and Subject: header lines past RFC 5322's 998 characters.
    [{ MAIL_FROM: `"${"A".repeat(1100)}" <no-reply@acme.example>` }, /MAIL_FROM: the display name is 1100 characters; at most 128/],
    [{ GRPC_ADDR: "50051" }, /GRPC_ADDR=50051: must be host:port/],
    [{ NODE_ENV: "staging" }, /NODE_ENV=staging/],
    [{ LOG_LEVEL: "loud" }, /LOG_LEVEL=loud/],
    [{ OTP_TTL_MIN: "30m", OTP_TTL_MAX: "10m" }, /OTP_TTL_MIN: must not exceed/],
    // Else a key repeated after its record expired answered "still in progress" until the key did.
    [{ RECORD_RETENTION: "1h" }, /RECORD_RETENTION: must be at least IDEMPOTENCY_TTL/],
    // Malformed URLs and unusable files fail here (exit 78), not later as "failed to start: Invalid URL".
    [{ SMTP_URL: "smtp://relay:99999" }, /^SMTP_URL: port must be a number from 1 to 65535, not "99999": smtp:\/\/relay:99999$/],
    // A port typo: the error says it is the port, and what a port is.
    [{ SMTP_URL: "smtp://user:s3cret@relay:58x7" }, /^SMTP_URL: port must be a number from 1 to 65535, not "58x7": smtp:\/\/user:\*\*\*@relay:58x7$/],
    [{ SMTP_URL: "smtp://relay:0" }, /^SMTP_URL: port must be a number from 1 to 65535, not "0"/],
    // Any other malformed URL: what a relay URL looks like.
    [{ SMTP_URL: "smtp://re lay:587" }, /^SMTP_URL: not a valid URL: smtp:\/\/re lay:587; such as smtp:\/\/user:pass@smtp\.example\.com:587 \(STARTTLS\)/],
    [{ SMTP_URL: "smtp://user:s3cret@relay?starttls=maybe" }, /SMTP_URL: starttls must be "off" or "required".*user:\*\*\*@relay/],
    [{ SMTP_URL: "smtps://relay/path" }, /SMTP_URL: must not have a path/],
    [{ REDIS_URL: "redis://:s3cret@127.0.0.1:port" }, /REDIS_URL=redis:\/\/:\*\*\*@127\.0\.0\.1:port: not a valid URL/],
    [{ REDIS_URL: "redis://" }, /REDIS_URL=redis:\/\/: names no host/],
    [{ REDIS_URL: "redis://r:6379/cache" }, /REDIS_URL=redis:\/\/r:6379\/cache: the path must be a database number/],
    [{ REDIS_URL: "redis://a:7000,redis//b:7001", REDIS_CLUSTER: "true" }, /REDIS_URL=redis\/\/b:7001: not a valid URL/],
    [{ SMTP_TLS_CA: "/etc/hostname" }, /SMTP_TLS_CA: not a usable PEM certificate/],
    [{ SMTP_TLS_CA: "/nonexistent/ca.pem" }, /SMTP_TLS_CA: cannot read \/nonexistent\/ca.pem/],
    [{ REDIS_URL: "rediss://r:6380", REDIS_TLS_CA: "/etc/hostname" }, /REDIS_TLS_CA: not a usable PEM certificate/],
    [{ REDIS_URL: "rediss://r:6380", REDIS_TLS_CA: "/nonexistent/ca.pem" }, /REDIS_TLS_CA: cannot read \/nonexistent\/ca.pem/],
    // A CA for a plaintext connection would silently do nothing.
    [{ REDIS_URL: "redis://:s3cret@r:6379", REDIS_TLS_CA: "/etc/hostname" }, /REDIS_TLS_CA: only applies to TLS connections/],
    [{ REDIS_TLS_CA: "/etc/hostname" }, /REDIS_TLS_CA: set REDIS_URL to a rediss:\/\/ URL too/],
  ])("names the variable in the error: %j", (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
    expect(() => loadConfig(env)).not.toThrow(/s3cret/);
  });
});

describe("a password in a URL is never shown, whatever characters it holds", () => {
  // Generated passwords hold # / ? and @. Unencoded, they make the URL malformed (or move the password into its
  // path, query or fragment), which is exactly when the URL's text goes into the start-up error.
  it.each([
    { SMTP_URL: "smtp://mailer:s3c#ret@relay.example:587" },
    { SMTP_URL: "smtp://mailer:s3c/ret@relay.example:587" },
    { SMTP_URL: "smtp://mailer:9?s3cret@relay.example:587" },
    { SMTP_URL: "smtp://mailer:1?s3cret=x@relay.example:587" },
    { REDIS_URL: "redis://:s3c#ret@r:6379" },
    { REDIS_URL: "redis://default:s3c/ret@r:6379" },
    { REDIS_URL: "redis://:9?s3cret@r:6379" },
    { REDIS_URL: "redis://:1?s3cret@r:6379" },
  ])("%j: refused, the password shown as ***", (env) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    const message = (() => {
      try {
        loadConfig(env);
        return "";
      } catch (error) {
        return (error as Error).message;
      }
    })();
    expect(message).toMatch(/^(SMTP_URL|REDIS_URL)/);
    expect(message).toContain("***@");
    expect(message).not.toMatch(/s3c/);
  });

  it("an OTLP endpoint's password is not shown either", () => {
    for (const value of ["grpc://tenant:s3c/ret@collector:4317", "tenant:s3c#ret@collector:4318"]) {
      expect(() => loadTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: value })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT=.*\*\*\*@collector/);
      expect(() => loadTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: value })).not.toThrow(/s3c/);
    }
  });
});

describe("parseDuration", () => {
  it.each([
    ["500ms", 500],
    ["30s", 30_000],
    ["10m", 600_000],
    ["2h", 7_200_000],
    ["7d", 604_800_000],
    ["1.5s", 1500],
    ["0", 0],
  ])("%s = %d ms", (text, ms) => expect(parseDuration(text)).toBe(ms));
  it("rejects nonsense", () => {
    expect(parseDuration("5 minutes")).toBeUndefined();
    expect(parseDuration("-5s")).toBeUndefined();
  });
  it("rejects a number without its unit, but 0: seconds or minutes were meant, never milliseconds", () => {
    for (const bare of ["1500", "10", "2592000", "1.5"]) expect(parseDuration(bare)).toBeUndefined();
  });
});

describe("a certificate given as a relative path", () => {
  // npm start runs in the package's root whatever directory it was typed in, and the image in /app: the error
  // says where a relative path was looked for.
  it("that is not there: the error names the variable and the absolute path it was looked for as", () => {
    const looked = join(process.cwd(), "certs", "missing-server.pem");
    expect(() => loadConfig({ TLS_CERT: "certs/missing-server.pem", TLS_KEY: "/nonexistent/key.pem" })).toThrow(
      new ConfigError(
        `TLS_CERT: cannot read certs/missing-server.pem (a relative path, looked for as ${looked}): no such file (ENOENT); give PEM text or the path of a PEM file`,
      ),
    );
    expect(() => loadConfig({ SMTP_TLS_CA: "./relay-ca.pem" })).toThrow(`(a relative path, looked for as ${join(process.cwd(), "relay-ca.pem")})`);
  });

  it("an absolute path, or a key's value that is not plainly a path, gets no such note", () => {
    expect(() => loadConfig({ SMTP_TLS_CA: "/nonexistent/ca.pem" })).toThrow(/^SMTP_TLS_CA: cannot read \/nonexistent\/ca\.pem: no such file/);
    expect(() => loadConfig({ DKIM_SELECTOR: "s1", DKIM_PRIVATE_KEY: "keys/dkim.pem" })).toThrow(
      /^DKIM_PRIVATE_KEY: cannot read the file it names: no such file/,
    );
  });
});

describe("Redis settings without REDIS_URL (the in-memory store)", () => {
  // Ignored until Redis is configured, yet a typo is refused now, not on the day REDIS_URL is set in production.
  it.each([
    ["REDIS_COMMAND_TIMEOUT", "1", /^REDIS_COMMAND_TIMEOUT=1: must be a duration/],
    ["REDIS_PREFIX", "otp key", /^REDIS_PREFIX=otp key: must be 1-64 characters/],
  ])("a bad %s stops the start", (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });

  it("good ones are accepted and unused", () => {
    expect(loadConfig({ REDIS_COMMAND_TIMEOUT: "2s", REDIS_PREFIX: "app1:" }).redis).toBeUndefined();
  });
});

describe("a duration written without its unit", () => {
  // What operators write when they think in seconds: read as milliseconds, each started a broken service.
  it.each([
    ["SHUTDOWN_GRACE", "10", /^SHUTDOWN_GRACE=10: must be a duration such as 500ms, 30s, 10m, 2h or 7d, from 0ms to 10m \(10 has no unit: write 10s or 10m, whichever was meant\)$/],
    ["LIMIT_RESEND_COOLDOWN", "30", /^LIMIT_RESEND_COOLDOWN=30: must be a duration .* \(30 has no unit: write 30s or 30m, whichever was meant\)$/],
    ["SUPPRESSION_TTL", "2592000", /^SUPPRESSION_TTL=2592000: must be a duration .* \(2592000 has no unit/],
    ["IDEMPOTENCY_TTL", "86400", /^IDEMPOTENCY_TTL=86400: must be a duration .* \(86400 has no unit/],
    ["SEND_WAIT_BUDGET", "3", /^SEND_WAIT_BUDGET=3: must be a duration .* \(3 has no unit/],
    ["TLS_RELOAD_INTERVAL", "3600", /^TLS_RELOAD_INTERVAL=3600: must be a duration .* \(3600 has no unit/],
    ["LIMIT_RECIPIENT", "5/3600", /^LIMIT_RECIPIENT=5\/3600: must be COUNT\/WINDOW pairs .* \(3600 has no unit/],
  ])("%s=%s stops the start, naming the variable and the missing unit", (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });

  it("a 0 out of range is refused for its range, not for a missing unit", () => {
    expect(() => loadConfig({ DOCTOR_TIMEOUT: "0" })).toThrow(
      new ConfigError("DOCTOR_TIMEOUT=0: must be a duration such as 500ms, 30s, 10m, 2h or 7d, from 100ms to 1m"),
    );
  });

  it("0 needs no unit: LIMIT_RESEND_COOLDOWN=0 is off, SHUTDOWN_GRACE=0 stops at once", () => {
    expect(loadConfig({ LIMIT_RESEND_COOLDOWN: "0" }).limits.resendCooldownMs).toBe(0);
    expect(loadConfig({ SHUTDOWN_GRACE: "0" }).shutdownGraceMs).toBe(0);
  });
});

describe("private keys in configuration errors", () => {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  // What an operator pastes when the PEM lines get lost on the way into a secret store: the base64 alone.
  const body = pem.split("\n").filter((line) => line !== "" && !line.startsWith("-----")).join("");

  it.each([
    ["TLS_KEY", { TLS_CERT: makeSelfSigned().cert, TLS_KEY: body }],
    ["DKIM_PRIVATE_KEY", { DKIM_SELECTOR: "s2026", DKIM_PRIVATE_KEY: body }],
    ["BOUNCE_TLS_KEY", { BOUNCE_TLS_CERT: makeSelfSigned().cert, BOUNCE_TLS_KEY: body }],
  ])("%s: a key given without its PEM lines is refused without being echoed as a file name", (name, env) => {
    let message = "";
    try {
      loadConfig(env);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      message = (error as Error).message;
    }
    // ENAMETOOLONG when a '/'-separated run of the base64 is longer than a file name may be.
    expect(message).toMatch(new RegExp(`^${name}: cannot read the file it names: [a-z ()]+ \\((ENOENT|ENAMETOOLONG)\\)`));
    expect(message).not.toContain(body.slice(0, 40));
  });

  it("a key file that is missing is named (a path is no secret)", () => {
    expect(() => loadConfig({ DKIM_SELECTOR: "s2026", DKIM_PRIVATE_KEY: "/run/secrets/missing-dkim.pem" })).toThrow(
      /^DKIM_PRIVATE_KEY: cannot read \/run\/secrets\/missing-dkim\.pem: no such file \(ENOENT\)/,
    );
  });
});
