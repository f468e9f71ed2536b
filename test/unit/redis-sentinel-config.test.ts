/**
 * REDIS_SENTINEL_MASTER and its companions: sentinel mode read from the
 * environment, every setting that would be ignored or contradicts another
 * refused with the variable named, and no password ever in an error.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";
import { redisWhere } from "../../src/store/operator-access.js";
import { sentinelAddresses } from "../../src/store/redis-sentinel.js";
import { makeSelfSigned } from "../support/self-signed.js";

const sentinels = "redis://:data-s3cret@sentinel-0:26379,redis://sentinel-1:26379,redis://sentinel-2";

describe("Redis Sentinel configuration", () => {
  it("REDIS_SENTINEL_MASTER turns it on: REDIS_URL lists the sentinels, the sentinels' credentials are their own", () => {
    const config = loadConfig({
      REDIS_URL: sentinels,
      REDIS_SENTINEL_MASTER: "mymaster",
      REDIS_SENTINEL_USERNAME: "watcher",
      REDIS_SENTINEL_PASSWORD: "sentinel-s3cret",
    });
    expect(config.redis).toMatchObject({
      url: sentinels,
      cluster: false,
      sentinel: { master: "mymaster", username: "watcher", password: "sentinel-s3cret" },
    });
    // A sentinel given without a port is on the sentinels' port, not Redis's.
    expect(sentinelAddresses(sentinels)).toEqual([
      { host: "sentinel-0", port: 26379 },
      { host: "sentinel-1", port: 26379 },
      { host: "sentinel-2", port: 26379 },
    ]);
    expect(redisWhere(config.redis ?? { url: "", sentinel: undefined })).toBe(
      "the Redis master of mymaster (sentinels sentinel-0:26379, sentinel-1:26379, sentinel-2:26379)",
    );
  });

  it("one sentinel address is enough (the client learns the others from it), with no password anywhere", () => {
    const config = loadConfig({ REDIS_URL: "redis://otp-redis:26379", REDIS_SENTINEL_MASTER: "mymaster" });
    expect(config.redis?.sentinel).toEqual({ master: "mymaster", username: undefined, password: undefined });
  });

  it("without REDIS_SENTINEL_MASTER: no sentinel mode, as before", () => {
    expect(loadConfig({ REDIS_URL: "redis://r:6379" }).redis?.sentinel).toBeUndefined();
    expect(redisWhere({ url: "redis://:x@a:7000,redis://b", sentinel: undefined })).toBe("Redis at a:7000, b:6379");
  });

  it("rediss:// sentinels (TLS to the sentinels and the data nodes) take REDIS_TLS_CA", () => {
    const ca = makeSelfSigned().cert;
    const config = loadConfig({ REDIS_URL: "rediss://:pw@s0:26380,rediss://s1:26380", REDIS_SENTINEL_MASTER: "mymaster", REDIS_TLS_CA: ca });
    expect(config.redis?.tlsCa?.trim()).toBe(ca.trim());
  });

  it.each<[Record<string, string>, string]>([
    [
      { REDIS_SENTINEL_MASTER: "mymaster" },
      "REDIS_SENTINEL_MASTER: set REDIS_URL to the sentinels too, such as redis://:password@sentinel-0:26379,redis://sentinel-1:26379 " +
        "(the password is the data nodes'; the sentinels' is REDIS_SENTINEL_PASSWORD)",
    ],
    [
      { REDIS_URL: sentinels, REDIS_SENTINEL_MASTER: "mymaster", REDIS_CLUSTER: "true" },
      "REDIS_SENTINEL_MASTER: Redis Sentinel and Redis Cluster exclude each other (a Cluster fails over by itself): unset REDIS_CLUSTER or REDIS_SENTINEL_MASTER",
    ],
    [
      { REDIS_URL: sentinels, REDIS_SENTINEL_MASTER: "my master" },
      "REDIS_SENTINEL_MASTER: must be the master set's name as the sentinels monitor it (`sentinel monitor <name> ...`), such as mymaster: " +
        "1-128 printable characters, no spaces",
    ],
    [
      { REDIS_URL: sentinels, REDIS_SENTINEL_PASSWORD: "sentinel-s3cret" },
      "REDIS_SENTINEL_PASSWORD: only used with Redis Sentinel: set REDIS_SENTINEL_MASTER too, or unset REDIS_SENTINEL_PASSWORD",
    ],
    [
      { REDIS_URL: "redis://r:6379", REDIS_SENTINEL_USERNAME: "watcher" },
      "REDIS_SENTINEL_USERNAME: only used with Redis Sentinel: set REDIS_SENTINEL_MASTER too, or unset REDIS_SENTINEL_USERNAME",
    ],
    [
      { REDIS_URL: sentinels, REDIS_SENTINEL_MASTER: "mymaster", REDIS_SENTINEL_USERNAME: "watcher" },
      "REDIS_SENTINEL_USERNAME: needs REDIS_SENTINEL_PASSWORD (a sentinel ACL user logs in with both)",
    ],
    [
      { REDIS_URL: "rediss://:data-s3cret@s0:26379,redis://s1:26379", REDIS_SENTINEL_MASTER: "mymaster" },
      "REDIS_URL: mixes redis:// and rediss:// sentinels: with Redis Sentinel the sentinels and the data nodes are all reached over TLS (rediss://) or all without (redis://)",
    ],
    [
      { REDIS_URL: "redis://:data-s3cret@s0:26379,redis://:other-s3cret@s1:26379", REDIS_SENTINEL_MASTER: "mymaster" },
      "REDIS_URL: with Redis Sentinel the data nodes' user, password and database are the first URL's: give them there only " +
        "(another URL's differ and would be ignored; the sentinels' own password is REDIS_SENTINEL_PASSWORD)",
    ],
    [
      { REDIS_URL: "redis://:data-s3cret@s0:26379/2,redis://s1:26379/3", REDIS_SENTINEL_MASTER: "mymaster" },
      "REDIS_URL: with Redis Sentinel the data nodes' user, password and database are the first URL's: give them there only " +
        "(another URL's differ and would be ignored; the sentinels' own password is REDIS_SENTINEL_PASSWORD)",
    ],
    [
      { REDIS_URL: "redis://:data-s3cret@s0:26379,redis://s1:26379" },
      "REDIS_URL: several URLs are only for a Redis Cluster's seed nodes (set REDIS_CLUSTER=true) or Redis Sentinels (set REDIS_SENTINEL_MASTER)",
    ],
  ])("refused, naming the variable: %j", (env, message) => {
    expect(() => loadConfig(env)).toThrow(new ConfigError(message));
  });

  it("the same credentials and database repeated on every sentinel URL are fine", () => {
    const url = "redis://:data-s3cret@s0:26379/1,redis://:data-s3cret@s1:26379/1";
    expect(loadConfig({ REDIS_URL: url, REDIS_SENTINEL_MASTER: "mymaster" }).redis?.sentinel?.master).toBe("mymaster");
  });

  it("a sentinel URL's own faults are REDIS_URL's, the password shown as ***", () => {
    expect(() => loadConfig({ REDIS_URL: "redis://:data-s3cret@s0:26379,redis//s1:26379", REDIS_SENTINEL_MASTER: "mymaster" })).toThrow(
      /^REDIS_URL=redis\/\/s1:26379: not a valid URL/,
    );
    let message = "";
    try {
      loadConfig({ REDIS_URL: "redis://:data-s3cret@s0:port", REDIS_SENTINEL_MASTER: "mymaster", REDIS_SENTINEL_PASSWORD: "sentinel-s3cret" });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/^REDIS_URL=redis:\/\/:\*\*\*@s0:port: not a valid URL/);
    expect(message).not.toMatch(/s3cret/);
  });
});
