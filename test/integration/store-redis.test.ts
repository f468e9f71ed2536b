/**
 * The Redis store against the OtpStore contract, on the run's shared Redis
 * (a random key prefix per test), plus what only Redis has: key layout and
 * TTLs, unreadable values, and surviving an outage.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { OtpError } from "../../src/errors.js";
import { createLogger, type Logger } from "../../src/logger.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import type { OtpStore } from "../../src/store/types.js";
import { randomPrefix, redisUrlForTests, scanPrefix, startRedisServer } from "../support/redis.js";
import { describeStoreContract, t0 } from "./store-contract.js";

const url = redisUrlForTests();
/** Inspects and cleans up what the stores under test write. */
let admin: Redis;

beforeAll(() => {
  admin = new Redis(url, { lazyConnect: true });
});

afterAll(async () => {
  await admin.quit();
});

/** Asserts every key under `prefix` expires, then deletes them. */
async function checkTtlsAndClean(prefix: string): Promise<void> {
  const keys = await scanPrefix(admin, prefix);
  const withoutTtl: string[] = [];
  for (const key of keys) {
    // PTTL: -1 means no TTL, -2 means already gone (fine).
    if ((await admin.pttl(key)) === -1) withoutTtl.push(key);
  }
  if (keys.length > 0) await admin.del(...keys);
  expect(withoutTtl, "keys written without a TTL").toEqual([]);
}

function silentLogger(): Logger {
  return createLogger({ level: "silent" });
}

/** A logger whose JSON lines land in `lines`. */
function capturingLogger(): { logger: Logger; lines: () => Array<{ level: string; msg: string }> } {
  const raw: string[] = [];
  const logger = createLogger({ level: "info", destination: { write: (line: string) => void raw.push(line) } });
  return { logger, lines: () => raw.map((line) => JSON.parse(line) as { level: string; msg: string }) };
}

describeStoreContract("redis", () => {
  const prefix = randomPrefix();
  const store = createRedisStore({ url, prefix, logger: silentLogger() });
  return Promise.resolve({
    store,
    elapse: (ms: number) => sleep(ms),
    teardown: async () => {
      await store.close();
      await checkTtlsAndClean(prefix);
    },
  });
});

describe("Redis store specifics", () => {
  const prefix = randomPrefix();
  let store: OtpStore | undefined;

  afterEach(async () => {
    await store?.close();
    store = undefined;
    await checkTtlsAndClean(prefix);
  });

  const setOptions = { now: t0, maxFailures: 5, keepExpiredMs: 30_000 };
  const set = { group: "g-1", id: "set-1" };

  it("rejects a guess with broken options as a TypeError, not as storage unavailable, and counts no Redis error", async () => {
    const failed: string[] = [];
    store = createRedisStore({ url, prefix, logger: silentLogger(), onCommandError: (operation) => failed.push(operation) });
    const broken = store.verifyGuess(set, "ab12", { ...setOptions, maxFailures: 0 });
    await expect(broken).rejects.toThrow(TypeError);
    await expect(store.verifyGuess(set, "ab12", { ...setOptions, now: Number.NaN })).rejects.toThrow(TypeError);
    expect(failed).toEqual([]);
    expect(await store.verifyGuess(set, "ab12", setOptions)).toEqual({ state: "none" });
  });

  it("writes one key per set, record and claim, under the prefix with hash tags, each with a TTL", async () => {
    store = createRedisStore({ url, prefix, logger: silentLogger() });
    await store.addCode({ group: "g-1", id: "set-1" }, { id: "msg-1", hmac: "ab12", expiresAt: t0 + 60_000 }, setOptions);
    await store.claimIdempotencyKey("key-1", { fingerprint: "fp", messageId: "msg-1" }, 60_000);
    await store.putRecord(
      {
        messageId: "msg-1",
        caller: "billing",
        state: "QUEUED",
        recipientMasked: "j***@example.com",
        recipientDomain: "example.com",
        purpose: "login",
        locale: "en",
        createdAt: t0,
        updatedAt: t0,
        expiresAt: t0 + 60_000,
        attempts: [],
        traceId: "",
      },
      60_000,
    );

    const keys = (await scanPrefix(admin, prefix)).sort();
    expect(keys).toEqual([`${prefix}code:{g-1}:set-1`, `${prefix}idem:{key-1}`, `${prefix}msg:{msg-1}`]);
    for (const key of keys) expect(await admin.pttl(key)).toBeGreaterThan(0);
  });

  it("keeps a code set for max(live expiresAt) + keepExpiredMs, counted from the caller's now", async () => {
    store = createRedisStore({ url, prefix, logger: silentLogger() });
    const key = `${prefix}code:{g-1}:set-1`;

    // t0 is years away from the wall clock: the TTL must not depend on it.
    await store.addCode(set, { id: "msg-1", hmac: "ab12", expiresAt: t0 + 60_000 }, setOptions);
    expect(await admin.pttl(key)).toBeGreaterThan(85_000);
    expect(await admin.pttl(key)).toBeLessThanOrEqual(90_000);

    await store.addCode(set, { id: "msg-2", hmac: "cd34", expiresAt: t0 + 120_000 }, setOptions);
    expect(await admin.pttl(key)).toBeGreaterThan(145_000);
    expect(await admin.pttl(key)).toBeLessThanOrEqual(150_000);
  });

  it("treats an unreadable record as absent, and logs it", async () => {
    const { logger, lines } = capturingLogger();
    store = createRedisStore({ url, prefix, logger });
    await admin.set(`${prefix}msg:{msg-1}`, "{not json", "PX", 60_000);

    expect(await store.getRecord("msg-1")).toBeUndefined();
    expect(lines().map((line) => line.msg)).toContain("unreadable delivery record treated as absent");
  });

  it("replaces an unreadable idempotency claim instead of blocking the key", async () => {
    store = createRedisStore({ url, prefix, logger: silentLogger() });
    await admin.set(`${prefix}idem:{key-1}`, "garbage", "PX", 60_000);

    expect(await store.claimIdempotencyKey("key-1", { fingerprint: "fp", messageId: "msg-1" }, 60_000)).toEqual({
      claimed: true,
    });
    expect(await store.claimIdempotencyKey("key-1", { fingerprint: "fp", messageId: "msg-2" }, 60_000)).toEqual({
      claimed: false,
      existing: { fingerprint: "fp", messageId: "msg-1" },
    });
  });
});

describe("Redis store during an outage", () => {
  /** Resolves once the store's readiness is `wanted` (now or later); fails the test after 10 s. */
  function readiness(store: OtpStore, wanted: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      if (store.isReady() === wanted) return resolve();
      const timer = setTimeout(() => {
        unsubscribe();
        reject(new Error(`store never became ${wanted ? "ready" : "unready"}`));
      }, 10_000);
      const unsubscribe = store.onReadyChange((ready) => {
        if (ready !== wanted) return;
        clearTimeout(timer);
        unsubscribe();
        resolve();
      });
    });
  }

  /** The operation must reject as unavailable, and promptly: a hang fails after 2 s. */
  async function expectUnavailable(operation: Promise<unknown>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("operation hung instead of failing fast")), 2000);
    });
    try {
      const failure: unknown = await Promise.race([operation, hung]).then(
        () => new Error("operation succeeded while Redis was down"),
        (error: unknown) => error,
      );
      expect(failure).toBeInstanceOf(OtpError);
      expect((failure as OtpError).kind).toBe("unavailable");
    } finally {
      clearTimeout(timer);
    }
  }

  it("fails fast while Redis is down and recovers by itself when it is back", async () => {
    const server = await startRedisServer();
    const { logger, lines } = capturingLogger();
    const prefix = randomPrefix();
    const store = createRedisStore({ url: server.url, prefix, logger, commandTimeoutMs: 500 });
    const setOptions = { now: t0, maxFailures: 5, keepExpiredMs: 30_000 };
    const entry = { id: "msg-1", hmac: "ab12", expiresAt: t0 + 60_000 };
    const set = { group: "g-1", id: "set-1" };
    try {
      await readiness(store, true);
      await store.addCode(set, entry, setOptions);

      const lost = readiness(store, false);
      await server.stop();
      await lost;
      expect(store.isReady()).toBe(false);

      await expectUnavailable(store.ping());
      await expectUnavailable(store.addCode(set, entry, setOptions));
      await expectUnavailable(store.verifyGuess(set, entry.hmac, setOptions));
      await expectUnavailable(store.consumeLimits([{ id: "g", windows: [{ max: 1, windowMs: 1000 }] }], "e", t0));
      await expectUnavailable(store.getRecord("msg-1"));
      await expectUnavailable(store.claimIdempotencyKey("key-1", { fingerprint: "fp", messageId: "msg-1" }, 60_000));
      await expectUnavailable(store.releaseIdempotencyKey("key-1", "msg-1"));
      // Let a few reconnect attempts fail: they must not add log lines.
      await sleep(500);

      const back = readiness(store, true);
      await server.start();
      await back;

      // The same store object works again; the restarted Redis kept no data.
      await store.ping();
      await store.addCode(set, entry, setOptions);
      expect(await store.verifyGuess(set, "cd34", setOptions)).toEqual({ state: "invalid", failures: 1 });
      expect(await store.verifyGuess(set, entry.hmac, setOptions)).toEqual({ state: "verified", id: entry.id });

      const warnings = lines().filter((line) => line.level === "warn");
      expect(warnings, "one warning per outage").toHaveLength(1);
      expect(lines().map((line) => line.msg)).toContain("redis connection restored");
    } finally {
      await store.close();
      await server.stop();
    }
  });

  it("rejects promptly when Redis was never reachable, without unhandled errors", async () => {
    const server = await startRedisServer();
    await server.stop();
    const store = createRedisStore({ url: server.url, prefix: randomPrefix(), logger: silentLogger() });
    try {
      expect(store.isReady()).toBe(false);
      await expectUnavailable(store.ping());
      await expectUnavailable(store.getRecord("msg-1"));
    } finally {
      await store.close();
    }
  });

  it("counts a failed read of a record with its reports as both reads, as when they were two commands", async () => {
    const server = await startRedisServer();
    await server.stop();
    const failed: string[] = [];
    const store = createRedisStore({ url: server.url, prefix: randomPrefix(), logger: silentLogger(), onCommandError: (operation) => failed.push(operation) });
    try {
      await expectUnavailable(store.getRecordWithReports("msg-1"));
      expect(failed).toEqual(["getRecord", "getDeliveryReports"]);
    } finally {
      await store.close();
    }
  });
});
