/**
 * The limits over Redis: the shared contract (limits-contract.ts) on the
 * run's Redis with a random prefix per test, plus the key layout: every limit
 * key under the prefix, in the one `{limits}` hash slot, with a TTL.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLimiter } from "../../src/limits/limiter.js";
import { createLogger } from "../../src/logger.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import { randomPrefix, redisUrlForTests, scanPrefix, startRedisServer } from "../support/redis.js";
import { describeLimitsContract, t0 } from "./limits-contract.js";

const url = redisUrlForTests();
let admin: Redis;

beforeAll(() => {
  admin = new Redis(url, { lazyConnect: true });
});

afterAll(async () => {
  await admin.quit();
});

/** Every key under `prefix`, with its PTTL; then deletes them. */
async function keysAndClean(prefix: string): Promise<Map<string, number>> {
  const keys = await scanPrefix(admin, prefix);
  const ttls = new Map<string, number>();
  for (const key of keys) ttls.set(key, await admin.pttl(key));
  if (keys.length > 0) await admin.del(...keys);
  return ttls;
}

describeLimitsContract("redis", () => {
  const prefix = randomPrefix();
  const store = createRedisStore({ url, prefix, logger: createLogger({ level: "silent" }) });
  return Promise.resolve({
    store,
    teardown: async () => {
      await store.close();
      const withoutTtl = [...(await keysAndClean(prefix))].filter(([, ttl]) => ttl === -1);
      expect(withoutTtl, "keys written without a TTL").toEqual([]);
    },
  });
});

describe("limit keys in Redis", () => {
  it("live under the prefix in the {limits} hash slot, expire with their longest window, and name no one", async () => {
    const prefix = randomPrefix();
    const store = createRedisStore({ url, prefix, logger: createLogger({ level: "silent" }) });
    const limiter = createLimiter({
      store,
      secret: Buffer.from("limit-keys-secret-0123456789abcdefghij"),
      logger: createLogger({ level: "silent" }),
      limits: {
        recipient: [
          { max: 5, windowMs: 15 * 60_000 },
          { max: 20, windowMs: 86_400_000 },
        ],
        resendCooldownMs: 30_000,
        endUserIp: [{ max: 30, windowMs: 600_000 }],
        caller: [{ max: 300, windowMs: 60_000 }],
        global: [{ max: 1000, windowMs: 60_000 }],
        verifyFailures: [{ max: 10, windowMs: 86_400_000 }],
      },
    });
    const ctx = { caller: "billing", traceId: "" };
    await limiter.admit(ctx, { recipientKey: "victim@example.com", purpose: "login", endUserIp: "198.51.100.4", now: t0 });
    // The verify-failure cap lives with the code sets (store-redis.test.ts), not here.
    expect(limiter.failureCap(ctx, { recipientKey: "victim@example.com", now: t0 })?.log.id).toMatch(/^vf:[0-9a-f]{32}$/);
    await store.close();

    const ttls = await keysAndClean(prefix);
    const byKind = new Map([...ttls].map(([key, ttl]) => [key.slice(prefix.length).split(":")[1] ?? "", { key, ttl }]));
    expect([...byKind.keys()].sort()).toEqual(["c", "cd", "g", "ip", "r"]);
    for (const { key, ttl } of byKind.values()) {
      expect(key.startsWith(`${prefix}{limits}:`)).toBe(true);
      expect(key).not.toMatch(/victim|example|198\.51|billing/);
      expect(ttl).toBeGreaterThan(0);
    }
    expect(byKind.get("r")?.ttl).toBeGreaterThan(86_400_000 - 60_000);
    expect(byKind.get("cd")?.ttl).toBeLessThanOrEqual(30_000);
    expect(byKind.get("g")?.ttl).toBeLessThanOrEqual(60_000);
  });
});

describe("peekLimits in Redis", () => {
  it("reads only: no entry added, no TTL moved, and a full Redis (noeviction) still answers it", async () => {
    const server = await startRedisServer();
    const own = new Redis(server.url);
    const prefix = randomPrefix();
    const store = createRedisStore({ url: server.url, prefix, logger: createLogger({ level: "silent" }) });
    try {
      const logs = [{ id: "peek", windows: [{ max: 1, windowMs: 60_000 }] }];
      expect(await store.consumeLimits(logs, "first", t0)).toEqual({ admitted: true, nextAt: [t0 + 60_000] });
      const [key] = await scanPrefix(own, prefix);
      if (key === undefined) throw new Error("no limit key");
      await new Promise((resolve) => setTimeout(resolve, 20));
      const ttlBefore = await own.pttl(key);

      await own.config("SET", "maxmemory-policy", "noeviction");
      await own.config("SET", "maxmemory", "1");
      await expect(own.zadd(key, t0, "second")).rejects.toThrow(/OOM command not allowed/);
      // Full, yet the peek runs (flagged no-writes), and says what it says with room to write.
      expect(await store.peekLimits(logs, t0 + 1000)).toEqual([t0 + 60_000]);
      expect(await own.pttl(key)).toBeLessThanOrEqual(ttlBefore);
      expect(await own.zcard(key)).toBe(1);
    } finally {
      await store.close();
      own.disconnect();
      await server.stop();
    }
  });
});
