import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, parseTokenCallers, readTokenList } from "../../src/config.js";

const sha = (token: string): string => createHash("sha256").update(token).digest("hex");
const production = {
  NODE_ENV: "production",
  REDIS_URL: "redis://r:6379",
  SMTP_URL: "smtp://user:pass@relay:587",
  OTP_SECRET: "x".repeat(40),
  MAIL_FROM: '"Acme" <no-reply@acme.example>',
};

describe("callers in the configuration", () => {
  it("development with no caller configured admits the anonymous caller", () => {
    const config = loadConfig({});
    expect(config.auth).toEqual({ tokens: [], purposes: new Map(), anonymous: true });
    expect(config.tls).toBeUndefined();
  });

  it("production refuses to start with no caller configured", () => {
    expect(() => loadConfig(production)).toThrow(/AUTH_TOKENS: required when NODE_ENV=production/);
  });

  it("reads token hashes (several per caller for rotation) and purpose restrictions", () => {
    const config = loadConfig({
      ...production,
      AUTH_TOKENS: `billing:${sha("a")}, billing:${sha("b")},web:${sha("c").toUpperCase()}`,
      CALLER_PURPOSES: "web:login|SIGNUP",
    });
    expect(config.auth.anonymous).toBe(false);
    expect(config.auth.tokens.map((t) => [t.caller, t.sha256.toString("hex")])).toEqual([
      ["billing", sha("a")],
      ["billing", sha("b")],
      ["web", sha("c")],
    ]);
    expect(config.auth.purposes).toEqual(new Map([["web", ["login", "signup"]]]));
  });

  it.each([
    [{ AUTH_TOKENS: "billing:not-a-hash" }, /AUTH_TOKENS: entry 1 must be CALLER:SHA256/],
    [{ AUTH_TOKENS: `:${sha("a")}` }, /AUTH_TOKENS: entry 1/],
    [{ AUTH_TOKENS: `a:${sha("a")},b:${sha("a")}` }, /AUTH_TOKENS: the same token hash is listed twice/],
    // README's `AUTH_TOKENS=my-app:$(printf %s "$TOKEN" | sha256sum ...)` pasted where $TOKEN was never set.
    [{ AUTH_TOKENS: `web:${sha("a")},my-app:${sha("")}` }, /^AUTH_TOKENS: entry 2 \(my-app\) is the SHA-256 of an empty token, which no caller can send: was \$TOKEN unset/],
    [{ AUTH_TOKENS: `my-app:${sha("").toUpperCase()}` }, /AUTH_TOKENS: entry 1 \(my-app\) is the SHA-256 of an empty token/],
    [{ AUTH_TOKENS: `a:${sha("a")}`, CALLER_PURPOSES: "a:login|billing" }, /CALLER_PURPOSES: a: must be/],
    [{ AUTH_TOKENS: `a:${sha("a")}`, CALLER_PURPOSES: "b:login" }, /CALLER_PURPOSES: b is not a caller of AUTH_TOKENS/],
    [{ TLS_CERT: "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----" }, /TLS_KEY: required with TLS_CERT/],
    [{ TLS_CLIENT_CA: "/nonexistent/ca.pem" }, /TLS_CLIENT_CA: client certificates need TLS/],
    [{ TLS_CERT: "/nonexistent/cert.pem", TLS_KEY: "/nonexistent/key.pem" }, /TLS_CERT: cannot read/],
  ])("names the variable in the error: %j", (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
  });
});

describe("AUTH_TOKENS as a file path (starting with /, ./ or ../)", () => {
  const dir = mkdtempSync(join(tmpdir(), "otp-tokens-config-"));
  let files = 0;
  const file = (text: string): string => {
    const path = join(dir, `tokens-${++files}`);
    writeFileSync(path, text);
    return path;
  };
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("reads entries one per line or comma-separated, with # comments and blank lines", () => {
    const path = file(`# OtpEmail callers\n\nbilling:${sha("a")}  # since 2026-11\n  billing:${sha("b")}, web:${sha("c")}\r\nspiffe://acme/x#1:${sha("d")}\n`);
    const config = loadConfig({ ...production, AUTH_TOKENS: path });
    expect(config.auth.tokens.map((t) => [t.caller, t.sha256.toString("hex")])).toEqual([
      ["billing", sha("a")],
      ["billing", sha("b")],
      ["web", sha("c")],
      ["spiffe://acme/x#1", sha("d")],
    ]);
    expect(config.auth.tokensFile?.path).toBe(path);
    expect(config.auth.anonymous).toBe(false);
  });

  it("a relative path (./) is a file too", () => {
    const path = file(`web:${sha("a")}\n`);
    const config = loadConfig({ AUTH_TOKENS: `./${relative(process.cwd(), path)}` });
    expect(config.auth.tokens.map((t) => t.caller)).toEqual(["web"]);
  });

  it("an empty file outside production: no token caller, yet authentication stays on", () => {
    const config = loadConfig({ AUTH_TOKENS: file("# nobody yet\n") });
    expect(config.auth.tokens).toEqual([]);
    expect(config.auth.anonymous).toBe(false);
  });

  it.each([
    [() => `web:${sha("a")}\n# next\nbilling:${sha("b").slice(1)}\n`, /^AUTH_TOKENS: \/.* line 3 must be CALLER:SHA256/],
    [() => `web:${sha("a")}\n\nbilling:${sha("")}\n`, /^AUTH_TOKENS: \/.* line 3 \(billing\) is the SHA-256 of an empty token/],
    [() => `web:${sha("a")}\nbilling:${sha("a")}\n`, /^AUTH_TOKENS: the same token hash is listed twice \(\/.* line 1 and \/.* line 2\)$/],
    [() => "# nobody\n", /^AUTH_TOKENS: required when NODE_ENV=production .*: \/.* lists no token$/],
  ])("production refuses a bad file, naming the line and no hash: %#", (text, message) => {
    const env = { ...production, AUTH_TOKENS: file(text()) };
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
    try {
      loadConfig(env);
    } catch (error) {
      for (const token of ["a", "b"]) expect((error as Error).message).not.toContain(sha(token).slice(1, 20));
    }
  });

  it("a reload's checks: in production an empty file is refused unless client certificates can name callers", () => {
    const rules = { production: true, clientCertificates: false, purposeCallers: [] };
    expect(() => parseTokenCallers("# everyone revoked\n", "/etc/otp/tokens", rules)).toThrow(
      /^AUTH_TOKENS: required when NODE_ENV=production .*: \/etc\/otp\/tokens lists no token$/,
    );
    expect(parseTokenCallers("# everyone revoked\n", "/etc/otp/tokens", { ...rules, clientCertificates: true })).toEqual([]);
    expect(parseTokenCallers("", "/etc/otp/tokens", { ...rules, production: false })).toEqual([]);
  });

  it("an unreadable file: the variable, the path and why", () => {
    expect(() => loadConfig({ AUTH_TOKENS: join(dir, "missing") })).toThrow(/^AUTH_TOKENS: cannot read \/.*missing: .*a value starting with \/ or \.\/ is the path of a file/);
  });

  it("CALLER_PURPOSES must name callers of the file", () => {
    expect(() => loadConfig({ AUTH_TOKENS: file(`web:${sha("a")}\n`), CALLER_PURPOSES: "billing:login" })).toThrow(
      /CALLER_PURPOSES: billing is not a caller of AUTH_TOKENS/,
    );
  });

  it("a reload's list names the CALLER_PURPOSES callers it lacks instead of throwing; none with client certificates", () => {
    const rules = { production: true, clientCertificates: false, purposeCallers: ["billing", "web", "audit"] };
    const text = `web:${sha("a")}\n`;
    expect(readTokenList(text, "/etc/otp/tokens", rules)).toEqual({ tokens: [{ caller: "web", sha256: Buffer.from(sha("a"), "hex") }], unlistedPurposeCallers: ["billing", "audit"] });
    expect(() => parseTokenCallers(text, "/etc/otp/tokens", rules)).toThrow(/^CALLER_PURPOSES: billing is not a caller of AUTH_TOKENS$/);
    expect(readTokenList(text, "/etc/otp/tokens", { ...rules, clientCertificates: true }).unlistedPurposeCallers).toEqual([]);
    // The list's own checks still throw.
    expect(() => readTokenList(`web:${sha("a").slice(1)}\n`, "/etc/otp/tokens", rules)).toThrow(/line 1 must be CALLER:SHA256/);
  });
});

describe("limits in the configuration", () => {
  it("has documented defaults", () => {
    expect(loadConfig({}).limits).toEqual({
      recipient: [
        { max: 5, windowMs: 15 * 60_000 },
        { max: 20, windowMs: 86_400_000 },
      ],
      resendCooldownMs: 30_000,
      endUserIp: [
        { max: 30, windowMs: 10 * 60_000 },
        { max: 300, windowMs: 86_400_000 },
      ],
      caller: [{ max: 300, windowMs: 60_000 }],
      global: [
        { max: 1000, windowMs: 60_000 },
        { max: 50_000, windowMs: 86_400_000 },
      ],
      verifyFailures: [{ max: 10, windowMs: 86_400_000 }],
    });
  });

  it("reads COUNT/WINDOW lists, off, and a cooldown of 0", () => {
    const limits = loadConfig({
      LIMIT_RECIPIENT: "3/10m, 10/12h",
      LIMIT_END_USER_IP: "off",
      LIMIT_CALLER: "1000/1m",
      LIMIT_GLOBAL: "OFF",
      LIMIT_VERIFY_FAILURES: "8/1d",
      LIMIT_RESEND_COOLDOWN: "0",
    }).limits;
    expect(limits).toEqual({
      recipient: [
        { max: 3, windowMs: 600_000 },
        { max: 10, windowMs: 12 * 3_600_000 },
      ],
      resendCooldownMs: 0,
      endUserIp: [],
      caller: [{ max: 1000, windowMs: 60_000 }],
      global: [],
      verifyFailures: [{ max: 8, windowMs: 86_400_000 }],
    });
  });

  it("LIMIT_RESEND_COOLDOWN takes off, as the other LIMIT_* variables do: no cooldown", () => {
    expect(loadConfig({ LIMIT_RESEND_COOLDOWN: "off" }).limits.resendCooldownMs).toBe(0);
    expect(loadConfig({ LIMIT_RESEND_COOLDOWN: "OFF" }).limits.resendCooldownMs).toBe(0);
  });

  it.each([
    [{ LIMIT_RECIPIENT: "5 per 15m" }, /LIMIT_RECIPIENT=5 per 15m: must be COUNT\/WINDOW pairs/],
    [{ LIMIT_CALLER: "0/1m" }, /LIMIT_CALLER=0\/1m/],
    [{ LIMIT_GLOBAL: "10/500ms" }, /LIMIT_GLOBAL=10\/500ms/],
    [{ LIMIT_GLOBAL: "10/60d" }, /LIMIT_GLOBAL=10\/60d/],
    [{ LIMIT_RESEND_COOLDOWN: "2h" }, /LIMIT_RESEND_COOLDOWN=2h/],
    [{ REDIS_URL: "redis://a:1,redis://b:2" }, /REDIS_URL: several URLs .* REDIS_CLUSTER=true/],
    [{ REDIS_CLUSTER: "maybe" }, /REDIS_CLUSTER=maybe: must be true or false/],
  ])("names the variable in the error: %j", (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });

  it("reads a cluster's seed nodes", () => {
    expect(loadConfig({ REDIS_URL: "redis://a:7000,redis://b:7001", REDIS_CLUSTER: "true" }).redis).toMatchObject({
      url: "redis://a:7000,redis://b:7001",
      cluster: true,
    });
  });
});
