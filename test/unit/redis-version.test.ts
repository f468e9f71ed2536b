import { describe, expect, it } from "vitest";
import { redisTooOld } from "../../src/store/redis-store.js";

/** The top of INFO's server section, as a Redis of `version` sends it. */
function serverInfo(version: string, extra = ""): string {
  return `# Server\r\nredis_version:${version}\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n${extra}`;
}

describe("redisTooOld: the scripts' shebang flags need Redis 7.0", () => {
  it("names a Redis 6 (or older) by its version", () => {
    expect(redisTooOld(serverInfo("6.2.14"))).toBe("6.2.14");
    expect(redisTooOld(serverInfo("5.0.7"))).toBe("5.0.7");
  });

  it("says nothing of Redis 7 and later, nor of Valkey (which reports a redis_version of 7.2)", () => {
    expect(redisTooOld(serverInfo("7.0.15"))).toBeUndefined();
    expect(redisTooOld(serverInfo("7.4.1"))).toBeUndefined();
    expect(redisTooOld(serverInfo("7.2.4", "valkey_version:8.0.1\r\n"))).toBeUndefined();
    expect(redisTooOld(serverInfo("10.0.0"))).toBeUndefined();
  });

  it("says nothing when INFO does not tell (a managed Redis that hides it)", () => {
    expect(redisTooOld("# Memory\r\nused_memory:1000\r\n")).toBeUndefined();
  });
});
