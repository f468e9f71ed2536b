import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";

const current = "c".repeat(40);
const previous = "p".repeat(40);
const now = Date.parse("2026-11-27T12:00:00Z");

describe("OTP_SECRET_PREVIOUS and OTP_SECRET_ROTATED_AT", () => {
  it("are off by default", () => {
    const config = loadConfig({ OTP_SECRET: current }, now);
    expect(config.otp.previousSecret).toBeUndefined();
    expect(config.otp.rotatedAt).toBeUndefined();
  });

  it("read the previous secret and when the rotation happened", () => {
    const config = loadConfig({ OTP_SECRET: current, OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-11-27T11:00:00Z" }, now);
    expect(config.otp.previousSecret?.toString("utf8")).toBe(previous);
    expect(config.otp.rotatedAt).toBe(Date.parse("2026-11-27T11:00:00Z"));
  });

  it("accept a rotation time a little in the future (clock skew between hosts)", () => {
    const config = loadConfig({ OTP_SECRET: current, OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-11-27T12:04:00Z" }, now);
    expect(config.otp.rotatedAt).toBe(Date.parse("2026-11-27T12:04:00Z"));
  });

  it.each([
    [{ OTP_SECRET_PREVIOUS: "short" }, /^OTP_SECRET_PREVIOUS: must be at least 32 characters/],
    [{ OTP_SECRET_PREVIOUS: current, OTP_SECRET_ROTATED_AT: "2026-11-27T11:00:00Z" }, /^OTP_SECRET_PREVIOUS: must differ from OTP_SECRET/],
    [{ OTP_SECRET_PREVIOUS: previous }, /^OTP_SECRET_ROTATED_AT: required when OTP_SECRET_PREVIOUS is set/],
    [{ OTP_SECRET_ROTATED_AT: "2026-11-27T11:00:00Z" }, /^OTP_SECRET_ROTATED_AT: set only with OTP_SECRET_PREVIOUS/],
    [{ OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "yesterday" }, /^OTP_SECRET_ROTATED_AT=yesterday: must be an ISO-8601 time/],
    [{ OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-11-27" }, /^OTP_SECRET_ROTATED_AT=2026-11-27: must be an ISO-8601 time/],
    [{ OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-11-27T13:00:00Z" }, /^OTP_SECRET_ROTATED_AT=2026-11-27T13:00:00Z: is in the future/],
    // No such day or hour: Date.parse would roll them over (March 2nd, the next midnight) and shift every window.
    [{ OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-02-30T10:00:00Z" }, /^OTP_SECRET_ROTATED_AT=2026-02-30T10:00:00Z: must be an ISO-8601 time/],
    [{ OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-11-26T24:00Z" }, /^OTP_SECRET_ROTATED_AT=2026-11-26T24:00Z: must be an ISO-8601 time/],
  ])("refuse %j naming the variable", (env, message) => {
    expect(() => loadConfig({ OTP_SECRET: current, ...env }, now)).toThrow(message);
  });

  it("need OTP_SECRET itself", () => {
    expect(() => loadConfig({ OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: "2026-11-27T11:00:00Z" }, now)).toThrow(
      /^OTP_SECRET_PREVIOUS: set only with OTP_SECRET/,
    );
  });

  it("never echo a secret in an error", () => {
    for (const env of [{ OTP_SECRET_PREVIOUS: "tooShortSecretValue" }, { OTP_SECRET_PREVIOUS: current, OTP_SECRET_ROTATED_AT: "2026-11-27T11:00:00Z" }]) {
      let message = "";
      try {
        loadConfig({ OTP_SECRET: current, ...env }, now);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).not.toBe("");
      expect(message).not.toContain("tooShortSecretValue");
      expect(message).not.toContain(current);
    }
  });
});
