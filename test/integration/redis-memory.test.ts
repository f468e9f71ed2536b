/**
 * A Redis short of memory, under a whole instance (startApp, real gRPC, a
 * private redis-server, a real SMTP sink) and under the store alone: one
 * that would evict keys is named at start-up, and one that refuses writes
 * (noeviction, full) refuses every script that writes before it runs
 * (Redis 7 shebang flags), so SendOtp answers UNAVAILABLE having spent no
 * limit and sent nothing, while reads still answer.
 *
 * Without flags a full Redis would run the limits script: its first write
 * (trimming the logs, ZREMRANGEBYSCORE) may not grow memory, and once a
 * script has written Redis lets it finish. The limits would admit the send,
 * its record would be refused, and the admission would have to be given
 * back on a Redis already full.
 */
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { afterEach, describe, expect, it, vi } from "vitest";
import { HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { isStorageFull, OtpError } from "../../src/errors.js";
import { createLogger } from "../../src/logger.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import type { LimitLog, OtpStore } from "../../src/store/types.js";
import {
  call,
  detailsOf,
  failure,
  getDeliveryStatus,
  retryDelayMs,
  sendOtp,
  servingStatus,
  startInstance,
  verifyOtp,
  type Instance,
} from "../support/otp-instances.js";
import { randomPrefix, scanPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/** A private Redis configured with CONFIG SET `settings`, a sink, and an instance using both. */
async function setUp(
  settings: Record<string, string>,
  env: Record<string, string> = {},
): Promise<{ redis: RedisServer; admin: Redis; sink: SmtpSink; instance: Instance; prefix: string }> {
  const [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  cleanups.push(() => redis.stop(), () => sink.close());
  const admin = new Redis(redis.url);
  cleanups.push(async () => {
    admin.disconnect();
    return Promise.resolve();
  });
  for (const [name, value] of Object.entries(settings)) await admin.config("SET", name, value);
  const prefix = randomPrefix();
  const instance = await startInstance({ env: { REDIS_URL: redis.url, REDIS_PREFIX: prefix, SMTP_URL: sink.url, ...env } });
  cleanups.push(() => instance.stop());
  return { redis, admin, sink, instance, prefix };
}

it("warns at start-up when Redis may evict keys, naming the policy and the fix", async () => {
  const { instance } = await setUp({ maxmemory: "64mb", "maxmemory-policy": "allkeys-lru" });
  const warning = await vi.waitFor(() => {
    const line = instance.logs.find((entry) => /may evict keys/.test(String(entry["msg"])));
    expect(line).toBeDefined();
    return line;
  });
  expect(warning?.["maxmemory_policy"]).toBe("allkeys-lru");
  expect(String(warning?.["msg"])).toContain("set maxmemory-policy noeviction");
});

it("says nothing about eviction when Redis refuses writes rather than evicting (noeviction)", async () => {
  const { instance } = await setUp({ maxmemory: "64mb", "maxmemory-policy": "noeviction" });
  // A SendOtp's round trips come after the start-up check's INFO on the same connection.
  await call(instance.client, sendOtp, { recipient: "roomy@example.com", purpose: Purpose.LOGIN });
  expect(instance.logs.filter((entry) => /may evict keys/.test(String(entry["msg"])))).toEqual([]);
  // Nor about the version: this Redis (7.0 or later) runs the scripts' flags.
  expect(instance.logs.filter((entry) => /too old/.test(String(entry["msg"])))).toEqual([]);
});

/** How many times each command ran since the last CONFIG RESETSTAT, scripts' own calls included (INFO commandstats). */
async function commandCounts(admin: Redis): Promise<Record<string, number>> {
  const info = await admin.info("commandstats");
  return Object.fromEntries([...info.matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)].map((match) => [match[1], Number(match[2])]));
}

/** Commands that write to a key: not one may run on a full Redis for a refused operation. */
const writeCommands = ["set", "hset", "hdel", "hincrby", "del", "zadd", "zrem", "zremrangebyscore", "pexpire", "rpush", "ltrim"];

function writesIn(counts: Record<string, number>): Record<string, number> {
  // A command Redis refused is listed too, with calls=0 (and rejected_calls).
  return Object.fromEntries(Object.entries(counts).filter(([name, calls]) => writeCommands.includes(name) && calls > 0));
}

/** Fills Redis: from now on it is over maxmemory (noeviction), and its command counts start from zero. */
async function fill(admin: Redis): Promise<void> {
  await admin.config("SET", "maxmemory", "1");
  await admin.config("RESETSTAT");
}

describe("a full Redis (noeviction, used memory > maxmemory) through the service", () => {
  it("SendOtp answers UNAVAILABLE before any limit is spent: no limit entry, no refund, nothing sent; the log says Redis is full", async () => {
    const { admin, sink, instance, prefix } = await setUp({ "maxmemory-policy": "noeviction" });
    await fill(admin);

    const error = await failure(call(instance.client, sendOtp, { recipient: "full@example.com", purpose: Purpose.LOGIN }));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
    // The caller hears what to do, not what Redis said.
    expect(error.details).toMatch(/retry later/);
    // Not within a second: someone has to make room.
    expect(retryDelayMs(error)).toBe(5000);
    expect(error.details).not.toMatch(/maxmemory|OOM|redis/i);
    expect(sink.transactions()).toBe(0);

    // Redis refused the limits script before it ran: nothing trimmed, nothing added, so nothing to refund.
    const counts = await commandCounts(admin);
    expect(writesIn(counts)).toEqual({});
    expect(await admin.info("errorstats")).toMatch(/^errorstat_OOM:count=[1-9]/m);
    expect(await scanPrefix(admin, prefix)).toEqual([]);
    expect(instance.logs.filter((entry) => /could not take back the limits/.test(String(entry["msg"])))).toEqual([]);

    // The operator hears it in words: Redis is full, maxmemory, and what to do.
    const full = instance.logs.find((entry) => /Redis is full/.test(String(entry["msg"])));
    expect(full?.["level"]).toBe("error");
    expect(String(full?.["msg"])).toMatch(/maxmemory/);
    expect(JSON.stringify(full)).toMatch(/OOM command not allowed/);
    expect(JSON.stringify(full)).not.toMatch(/full@example\.com/);
    const metrics = await instance.app.metrics.render("text");
    expect(metrics).toMatch(/^otp_redis_command_errors_total\{operation="consumeLimits"\} 1$/m);
    expect(metrics).toMatch(/^otp_redis_command_errors_total\{operation="refundLimits"\} 0$/m);
    expect(metrics).toMatch(/^otp_redis_full 1$/m);
    // Not an outage: Redis answers, and taking this instance out would help nothing (the alert says it instead).
    expect(await servingStatus(instance)).toBe(HealthCheckResponse_ServingStatus.SERVING);

    // Once Redis has room again, the same send goes through at once: no cooldown was spent on the refused one.
    await admin.config("SET", "maxmemory", "0");
    const sent = await call(instance.client, sendOtp, { recipient: "full@example.com", purpose: Purpose.LOGIN });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    await vi.waitFor(() => expect(instance.logs.some((entry) => /Redis accepts writes again/.test(String(entry["msg"])))).toBe(true));
    expect(await instance.app.metrics.render("text")).toMatch(/^otp_redis_full 0$/m);
  });

  it("VerifyOtp answers UNAVAILABLE without comparing or counting; the code still verifies once Redis has room", async () => {
    const { admin, instance } = await setUp({ "maxmemory-policy": "noeviction" });
    const recipient = "verify@example.com";
    await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN, code: "424242" });
    await fill(admin);

    for (const code of ["000000", "424242"]) {
      const error = await failure(call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code }));
      expect(error.code).toBe(grpc.status.UNAVAILABLE);
      expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
      expect(error.details).not.toMatch(/maxmemory|OOM|redis/i);
    }
    expect(writesIn(await commandCounts(admin))).toEqual({});

    await admin.config("SET", "maxmemory", "0");
    // The wrong guess was not counted, and the right one did not use the code up.
    const verified = await call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code: "424242" });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
  });

  it("GetDeliveryStatus still answers: reading a record writes nothing", async () => {
    const { admin, instance } = await setUp({ "maxmemory-policy": "noeviction" });
    const sent = await call(instance.client, sendOtp, { recipient: "status@example.com", purpose: Purpose.LOGIN });
    await fill(admin);

    const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId });
    expect(status.messageId).toBe(sent.messageId);
    expect(status.state).toBe(DeliveryState.ACCEPTED);
    expect(writesIn(await commandCounts(admin))).toEqual({});
  });
});

describe("the refund, for a send admitted but then not stored (a failure other than a full Redis)", () => {
  it("gives its limits back: the retry is admitted", async () => {
    const { admin, sink, instance, prefix } = await setUp({}, { LIMIT_RECIPIENT: "1/15m" });
    const request = { recipient: "refund@example.com", purpose: Purpose.LOGIN };
    // The record's SET is refused after the limits admitted the send.
    await admin.acl("SETUSER", "default", "-set");

    const error = await failure(call(instance.client, sendOtp, request));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
    expect(sink.transactions()).toBe(0);

    await admin.acl("SETUSER", "default", "+set");
    // Neither the resend cooldown (30 s) nor the recipient's one send per 15 minutes was spent on it.
    const sent = await call(instance.client, sendOtp, request);
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    expect(sink.transactions()).toBe(1);
    // Every limit log holds the one send that happened, nothing of the one that did not.
    const logs = (await scanPrefix(admin, `${prefix}{limits}:`)).filter((key) => !key.includes(":supp:"));
    expect(logs.length).toBeGreaterThanOrEqual(4);
    for (const key of logs) expect(await admin.zcard(key)).toBe(1);
  });

  it("a refund Redis refuses too: the caller still hears STORAGE_UNAVAILABLE, the failure is logged and counted", async () => {
    const { admin, sink, instance } = await setUp({});
    const request = { recipient: "refund@example.com", purpose: Purpose.LOGIN };
    // The record's SET and the refund script's ZREM are both refused, as by a Redis failing every command.
    await admin.acl("SETUSER", "default", "-set", "-zrem");

    const error = await failure(call(instance.client, sendOtp, request));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
    expect(sink.transactions()).toBe(0);
    const warning = instance.logs.find((entry) => /could not take back the limits/.test(String(entry["msg"])));
    expect(warning?.["level"]).toBe("warn");
    expect(JSON.stringify(warning)).toMatch(/can't run this command/);
    expect(warning?.["message_id"]).toMatch(/^[0-9a-z]+$/);
    expect(JSON.stringify(warning)).not.toMatch(/refund@example\.com/);
    const metrics = await instance.app.metrics.render("text");
    expect(metrics).toMatch(/^otp_redis_command_errors_total\{operation="refundLimits"\} 1$/m);

    // What stayed spent is what the retry meets: honestly, the cooldown.
    await admin.acl("SETUSER", "default", "+set", "+zrem");
    const retry = await failure(call(instance.client, sendOtp, request));
    expect(retry.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(detailsOf(retry).errorInfo?.reason).toBe("RESEND_COOLDOWN");
  });
});

describe("the Redis store on a full Redis", () => {
  const now = Date.now();
  const logs: LimitLog[] = [
    { id: "recipient", windows: [{ max: 5, windowMs: 60_000 }] },
    { id: "global", windows: [{ max: 100, windowMs: 60_000 }] },
  ];
  const set = { group: "g1", id: "s1" };
  const setOptions = { now, maxFailures: 5, keepExpiredMs: 60_000 };
  const record: DeliveryRecord = {
    messageId: "m1",
    caller: "billing",
    state: "ACCEPTED",
    recipientMasked: "j***@example.com",
    recipientDomain: "example.com",
    purpose: "login",
    locale: "en",
    createdAt: now,
    updatedAt: now,
    expiresAt: now + 60_000,
    attempts: [],
    traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
  };

  /** A private Redis (noeviction) and a store on it that logs into `lines`, with a little of everything stored. */
  async function storeOnFullRedis(
    onFullChange?: (full: boolean) => void,
  ): Promise<{ admin: Redis; store: OtpStore; prefix: string; lines: Array<Record<string, unknown>> }> {
    const redis = await startRedisServer();
    cleanups.push(() => redis.stop());
    const admin = new Redis(redis.url);
    cleanups.push(async () => {
      admin.disconnect();
      return Promise.resolve();
    });
    await admin.config("SET", "maxmemory-policy", "noeviction");
    const lines: Array<Record<string, unknown>> = [];
    const logger = createLogger({
      level: "info",
      destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    });
    const prefix = randomPrefix();
    const store = createRedisStore({ url: redis.url, prefix, logger, onFullChange });
    cleanups.push(() => store.close());
    await store.consumeLimits(logs, "sent-before", now);
    await store.claimIdempotencyKey("k1", { fingerprint: "f", messageId: "m1" }, 60_000);
    await store.putRecord(record, 60_000);
    await store.addCode(set, { id: "c1", hmac: "h1", expiresAt: now + 60_000 }, setOptions);
    await store.putSuppression("r-full", { messageId: "m1", status: "5.1.1", diagnosticCode: "", bouncedAt: now, expiresAt: now + 60_000 }, 60_000);
    await fill(admin);
    return { admin, store, prefix, lines };
  }

  async function refusal(promise: Promise<unknown>): Promise<OtpError> {
    const error: unknown = await promise.then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error).toBeInstanceOf(OtpError);
    return error as OtpError;
  }

  it("refuses every operation that would add data before it runs (scripts, SET, MULTI): nothing is written", async () => {
    const { admin, store } = await storeOnFullRedis();
    const cap = { log: { id: "vf", windows: [{ max: 3, windowMs: 60_000 }] }, entry: "e1" };

    for (const attempt of [
      () => store.consumeLimits(logs, "refused", now),
      () => store.consumeLimits(logs, "refused", now, { unlessSuppressed: "r1" }),
      () => store.addCode(set, { id: "c2", hmac: "h2", expiresAt: now + 60_000 }, setOptions),
      () => store.claimIdempotencyKey("k2", { fingerprint: "f", messageId: "m2" }, 60_000),
      () => store.verifyGuess(set, "h1", setOptions),
      () => store.verifyGuess(set, "wrong", { ...setOptions, failureCap: cap }),
      () => store.putRecord({ ...record, messageId: "m2" }, 60_000),
      () => store.putSuppression("r1", { messageId: "m1", status: "5.1.1", diagnosticCode: "", bouncedAt: now, expiresAt: now + 60_000 }, 60_000),
      () =>
        store.addDeliveryReport(
          "m1",
          { receivedAt: now, action: "failed", status: "5.1.1", diagnosticCode: "", remoteMta: "", reportingMta: "", finalRecipient: "", envelopeId: "m1" },
          60_000,
        ),
    ]) {
      const error = await refusal(attempt());
      expect(error.kind).toBe("unavailable");
      expect(error.reason).toBe("STORAGE_UNAVAILABLE");
      // Told apart from an outage: nothing was done, so there is nothing to take back.
      expect(isStorageFull(error)).toBe(true);
      expect(String((error.cause as Error | undefined)?.message)).toMatch(/^OOM command not allowed|^EXECABORT/);
    }
    expect(writesIn(await commandCounts(admin))).toEqual({});
  });

  it("still reads (the record with its reports, the limits' peek) and still frees memory (refund, release, lifting a suppression)", async () => {
    const { admin, store, prefix } = await storeOnFullRedis();
    const [read] = await store.getRecordWithReports("m1");
    expect(read?.messageId).toBe("m1");
    expect(await store.peekLimits(logs, now)).toEqual([now, now]);

    // Both only remove: a send that did not happen gives its admission and its idempotency key back on a full Redis too.
    await store.refundLimits(logs, "sent-before");
    await store.releaseIdempotencyKey("k1", "m1");
    expect(await admin.zcard(`${prefix}{limits}:recipient`)).toBe(0);
    expect(await admin.exists(`${prefix}idem:{k1}`)).toBe(0);
    // An operator can lift a suppression on a full Redis too (npm run suppression -- remove).
    expect(await store.removeSuppression("r-full")).toMatchObject({ messageId: "m1", status: "5.1.1" });
    expect(await admin.exists(`${prefix}{limits}:supp:r-full`)).toBe(0);
  });

  it("logs once that Redis is full, naming maxmemory and the fix, and once that it accepts writes again", async () => {
    const { admin, store, lines } = await storeOnFullRedis();
    for (let i = 0; i < 3; i++) await refusal(store.consumeLimits(logs, `refused-${i}`, now));
    // A read in between is no sign of room.
    await store.getRecordWithReports("m1");
    await refusal(store.addCode(set, { id: "c2", hmac: "h2", expiresAt: now + 60_000 }, setOptions));

    const full = lines.filter((line) => /Redis is full/.test(String(line["msg"])));
    expect(full).toHaveLength(1);
    expect(full[0]?.["level"]).toBe("error");
    expect(String(full[0]?.["msg"])).toMatch(/maxmemory/);
    expect(String(full[0]?.["msg"])).toMatch(/raise maxmemory|free memory/);

    await admin.config("SET", "maxmemory", "0");
    await store.consumeLimits(logs, "admitted", now);
    expect(lines.filter((line) => /Redis accepts writes again/.test(String(line["msg"])))).toHaveLength(1);
  });

  it("the health probe's PING finds out, without a call, when a full Redis has room again; PING itself still succeeds while full", async () => {
    const changes: boolean[] = [];
    const { admin, store, lines } = await storeOnFullRedis((full) => changes.push(full));
    await refusal(store.consumeLimits(logs, "refused", now));
    await store.ping();
    expect(lines.filter((line) => /Redis accepts writes again/.test(String(line["msg"])))).toEqual([]);
    expect(changes).toEqual([true]);

    await admin.config("SET", "maxmemory", "0");
    await store.ping();
    expect(lines.filter((line) => /Redis accepts writes again/.test(String(line["msg"])))).toHaveLength(1);
    expect(changes).toEqual([true, false]);
    // The probe wrote nothing.
    expect(writesIn(await commandCounts(admin))).toEqual({});
  });
});
