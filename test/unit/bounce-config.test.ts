import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";

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

  it("defaults SUPPRESSION_TTL to 30 days and the connection rate to 60 a minute", () => {
    expect(loadConfig({}).bounce).toMatchObject({ suppressionTtlMs: 30 * 86_400_000, connectionsPerMinute: 60 });
    expect(loadConfig({ SUPPRESSION_TTL: "7d", BOUNCE_CONNECTIONS_PER_MINUTE: "10" }).bounce).toMatchObject({
      suppressionTtlMs: 7 * 86_400_000,
      connectionsPerMinute: 10,
    });
    expect(() => loadConfig({ SUPPRESSION_TTL: "soon" })).toThrow(/^SUPPRESSION_TTL=soon: must be a duration/);
  });
});
