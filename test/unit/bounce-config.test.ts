import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";
import { makeSelfSigned } from "../support/self-signed.js";

const production = {
  NODE_ENV: "production",
  REDIS_URL: "redis://127.0.0.1:6379",
  SMTP_URL: "smtp://relay.acme.example:587",
  OTP_SECRET: "x".repeat(32),
  MAIL_FROM: '"Acme" <no-reply@acme.example>',
  AUTH_TOKENS: `billing:${"a".repeat(64)}`,
};

describe("bounce configuration", () => {
  it("runs the bounce intake on 127.0.0.1:2526 in development only, with a port fallback", () => {
    expect(loadConfig({}).bounce).toMatchObject({ smtpAddr: "127.0.0.1:2526", smtpAddrIsDefault: true });
    expect(loadConfig({ NODE_ENV: "test" }).bounce).toMatchObject({ smtpAddr: undefined });
    expect(loadConfig(production).bounce).toMatchObject({ smtpAddr: undefined });
  });

  it("takes host:port (port 0 included) or off, and says what is wrong otherwise", () => {
    expect(loadConfig({ ...production, BOUNCE_SMTP_ADDR: "0.0.0.0:25" }).bounce).toMatchObject({
      smtpAddr: "0.0.0.0:25",
      smtpAddrIsDefault: false,
    });
    expect(loadConfig({ BOUNCE_SMTP_ADDR: "127.0.0.1:0" }).bounce.smtpAddr).toBe("127.0.0.1:0");
    expect(loadConfig({ BOUNCE_SMTP_ADDR: "off" }).bounce.smtpAddr).toBeUndefined();
    expect(() => loadConfig({ BOUNCE_SMTP_ADDR: "2526" })).toThrow(ConfigError);
    expect(() => loadConfig({ BOUNCE_SMTP_ADDR: "2526" })).toThrow(/^BOUNCE_SMTP_ADDR=2526: must be host:port/);
  });

  it("takes feedback reports at fbl@<bounce domain> by default, at FEEDBACK_ADDRESS when set, nowhere with off", () => {
    expect(loadConfig(production).bounce.feedbackAddress).toBe("fbl@acme.example");
    expect(loadConfig({ ...production, BOUNCE_DOMAIN: "bounces.acme.example" }).bounce.feedbackAddress).toBe("fbl@bounces.acme.example");
    expect(loadConfig({ ...production, FEEDBACK_ADDRESS: "Complaints@Acme.Example" }).bounce.feedbackAddress).toBe("complaints@acme.example");
    expect(loadConfig({ ...production, FEEDBACK_ADDRESS: "OFF" }).bounce.feedbackAddress).toBeUndefined();
    for (const bad of ["fbl", "fbl@", "<fbl@acme.example>", "fbl@acme.example,abuse@acme.example", "bounce+01kbf3vq0m4x2c9d8e7f6g5h4j@acme.example"]) {
      expect(() => loadConfig({ ...production, FEEDBACK_ADDRESS: bad }), bad).toThrow(ConfigError);
      expect(() => loadConfig({ ...production, FEEDBACK_ADDRESS: bad }), bad).toThrow(/^FEEDBACK_ADDRESS: .*such as fbl@bounces\.acme\.example, or off$/);
    }
  });

  it("defaults SUPPRESSION_TTL to 30 days and the connection rate to 60 a minute", () => {
    expect(loadConfig({}).bounce).toMatchObject({ suppressionTtlMs: 30 * 86_400_000, connectionsPerMinute: 60 });
    expect(loadConfig({ SUPPRESSION_TTL: "7d", BOUNCE_CONNECTIONS_PER_MINUTE: "10" }).bounce).toMatchObject({
      suppressionTtlMs: 7 * 86_400_000,
      connectionsPerMinute: 10,
    });
    expect(() => loadConfig({ SUPPRESSION_TTL: "soon" })).toThrow(/^SUPPRESSION_TTL=soon: must be a duration/);
  });
});

describe("bounce intake TLS configuration", () => {
  const dir = mkdtempSync(join(tmpdir(), "otp-bounce-tls-"));
  const server = makeSelfSigned();
  const other = makeSelfSigned();
  const certFile = join(dir, "cert.pem");
  const keyFile = join(dir, "key.pem");
  const otherKeyFile = join(dir, "other-key.pem");
  const derFile = join(dir, "cert.der");
  writeFileSync(certFile, server.cert);
  writeFileSync(keyFile, server.key);
  writeFileSync(otherKeyFile, other.key);
  writeFileSync(derFile, new X509Certificate(server.cert).raw);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const keyBody = server.key.split("\n").filter((line) => line !== "" && !line.startsWith("-----")).join("");

  /** The ConfigError message loadConfig throws for `env` (fails the test when it does not throw). */
  function refusal(env: Record<string, string>): string {
    try {
      loadConfig(env);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      const message = (error as Error).message;
      // Whatever went wrong, no part of the private key is in the message.
      for (const line of server.key.split("\n").filter((l) => l.length > 20 && !l.startsWith("-----"))) expect(message).not.toContain(line);
      return message;
    }
    throw new Error(`loadConfig accepted ${JSON.stringify(Object.keys(env))}`);
  }

  it("is off unless both BOUNCE_TLS_CERT and BOUNCE_TLS_KEY are set", () => {
    expect(loadConfig({}).bounce.tls).toBeUndefined();
    expect(refusal({ BOUNCE_TLS_CERT: certFile })).toMatch(/^BOUNCE_TLS_KEY: required with BOUNCE_TLS_CERT/);
    expect(refusal({ BOUNCE_TLS_KEY: keyFile })).toMatch(/^BOUNCE_TLS_CERT: required with BOUNCE_TLS_KEY/);
    expect(refusal({ BOUNCE_TLS_REQUIRED: "true" })).toMatch(/^BOUNCE_TLS_REQUIRED: needs BOUNCE_TLS_CERT and BOUNCE_TLS_KEY/);
  });

  it("reads the certificate and key from PEM files (or inline PEM), STARTTLS optional unless BOUNCE_TLS_REQUIRED", () => {
    expect(loadConfig({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: keyFile }).bounce.tls).toEqual({
      cert: server.cert,
      key: server.key,
      required: false,
      paths: { cert: certFile, key: keyFile },
    });
    expect(loadConfig({ BOUNCE_TLS_CERT: server.cert, BOUNCE_TLS_KEY: server.key, BOUNCE_TLS_REQUIRED: "true" }).bounce.tls).toMatchObject({
      required: true,
    });
    expect(refusal({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: keyFile, BOUNCE_TLS_REQUIRED: "yes" })).toMatch(
      /^BOUNCE_TLS_REQUIRED=yes: must be true or false/,
    );
  });

  it("names the variable and the file when a file is missing, unreadable or not PEM", () => {
    expect(refusal({ BOUNCE_TLS_CERT: join(dir, "nope.pem"), BOUNCE_TLS_KEY: keyFile })).toBe(
      `BOUNCE_TLS_CERT: cannot read ${join(dir, "nope.pem")}: no such file (ENOENT); give PEM text or the path of a PEM file`,
    );
    expect(refusal({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: dir })).toMatch(
      new RegExp(`^BOUNCE_TLS_KEY: cannot read ${dir}: a directory, not a file \\(EISDIR\\)`),
    );
    expect(refusal({ BOUNCE_TLS_CERT: derFile, BOUNCE_TLS_KEY: keyFile })).toBe(
      `BOUNCE_TLS_CERT: ${derFile} holds no PEM certificate (a -----BEGIN ...CERTIFICATE----- block)`,
    );
    expect(refusal({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: certFile })).toMatch(/^BOUNCE_TLS_KEY: .*cert\.pem holds no PEM private key/);
    expect(refusal({ BOUNCE_TLS_CERT: keyFile, BOUNCE_TLS_KEY: keyFile })).toMatch(/^BOUNCE_TLS_CERT: .*key\.pem holds no PEM certificate/);
    const broken = server.cert.replace(/^(-----BEGIN CERTIFICATE-----\n)MII/, "$1XXX");
    expect(refusal({ BOUNCE_TLS_CERT: broken, BOUNCE_TLS_KEY: keyFile })).toMatch(/^BOUNCE_TLS_CERT: not a usable PEM certificate/);
  });

  it("refuses a key that does not belong to the certificate", () => {
    expect(refusal({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: otherKeyFile })).toBe(
      "BOUNCE_TLS_KEY: does not match BOUNCE_TLS_CERT (the certificate for CN=127.0.0.1; the first certificate of the file must be the one the key belongs to)",
    );
  });

  it("never repeats the key: a key pasted without its PEM lines is not echoed as a file name", () => {
    const message = refusal({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: keyBody });
    // ENAMETOOLONG when a '/'-separated run of the base64 is longer than a file name may be.
    expect(message).toMatch(/^BOUNCE_TLS_KEY: cannot read the file it names: [a-z ()]+ \((ENOENT|ENAMETOOLONG)\); give PEM text or the path of a PEM file$/);
    const garbled = server.key.replace(/\n(.{10})/, "\n!!!!!!!!!!");
    expect(refusal({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: garbled })).toMatch(/^BOUNCE_TLS_KEY: not a usable unencrypted PEM private key/);
  });
});
