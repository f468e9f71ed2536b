/**
 * A Redis short of memory, under a whole instance (startApp, real gRPC, a
 * private redis-server, a real SMTP sink): one that would evict keys is
 * named at start-up, and one that refuses writes (noeviction, full) makes
 * SendOtp answer UNAVAILABLE and send nothing.
 *
 * A full Redis still runs the limits script: its first write (trimming the
 * logs, ZREMRANGEBYSCORE) may not grow memory, and once a script has written
 * Redis lets it finish. So the limits admit the send and only then is its
 * record refused: the admission must be given back, or the retry the
 * UNAVAILABLE invites meets the resend cooldown for a code never sent.
 */
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { afterEach, expect, it, vi } from "vitest";
import { DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { call, detailsOf, failure, sendOtp, startInstance, type Instance } from "../support/otp-instances.js";
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
});

it("a full Redis under noeviction (OOM command not allowed): SendOtp answers UNAVAILABLE and sends nothing", async () => {
  const { admin, sink, instance } = await setUp({ "maxmemory-policy": "noeviction" });
  // Below what the server already uses: every write is refused with OOM from now on.
  await admin.config("SET", "maxmemory", "1");

  const error = await failure(call(instance.client, sendOtp, { recipient: "full@example.com", purpose: Purpose.LOGIN }));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
  expect(sink.transactions()).toBe(0);
  const logged = instance.logs.find((entry) => /storage unavailable/.test(String(entry["msg"])));
  expect(JSON.stringify(logged)).toMatch(/OOM command not allowed/);
});

it("a send a full Redis admitted but could not store gives its limits back: once Redis has room, the retry is admitted", async () => {
  const { admin, sink, instance, prefix } = await setUp({ "maxmemory-policy": "noeviction" }, { LIMIT_RECIPIENT: "1/15m" });
  // No idempotency_key: its claim (SET NX) would be refused before the limits are reached.
  const request = { recipient: "full@example.com", purpose: Purpose.LOGIN };
  await admin.config("SET", "maxmemory", "1");

  const error = await failure(call(instance.client, sendOtp, request));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
  expect(sink.transactions()).toBe(0);

  await admin.config("SET", "maxmemory", "0");
  // Neither the resend cooldown (30 s) nor the recipient's one send per 15 minutes was spent on it.
  const sent = await call(instance.client, sendOtp, request);
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  expect(sink.transactions()).toBe(1);
  // Every limit log holds the one send that happened, nothing of the one that did not.
  const logs = (await scanPrefix(admin, `${prefix}{limits}:`)).filter((key) => !key.includes(":supp:"));
  expect(logs.length).toBeGreaterThanOrEqual(4);
  for (const key of logs) expect(await admin.zcard(key)).toBe(1);
});

it("a refund the full Redis refuses too: the caller still hears STORAGE_UNAVAILABLE, the failure is logged and counted", async () => {
  const { admin, sink, instance } = await setUp({ "maxmemory-policy": "noeviction" });
  const request = { recipient: "full@example.com", purpose: Purpose.LOGIN };
  // The refund script's ZREM is refused as well (ACL), as it would be by a Redis that fails every command.
  await admin.acl("SETUSER", "default", "-zrem");
  await admin.config("SET", "maxmemory", "1");

  const error = await failure(call(instance.client, sendOtp, request));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
  expect(sink.transactions()).toBe(0);
  const warning = instance.logs.find((entry) => /could not take back the limits/.test(String(entry["msg"])));
  expect(warning?.["level"]).toBe("warn");
  expect(JSON.stringify(warning)).toMatch(/can't run this command/);
  expect(warning?.["message_id"]).toMatch(/^[0-9a-z]+$/);
  expect(JSON.stringify(warning)).not.toMatch(/full@example\.com/);
  const metrics = await instance.app.metrics.render("text");
  expect(metrics).toMatch(/^otp_redis_command_errors_total\{operation="refundLimits"\} 1$/m);

  // What stayed spent is what the retry meets: honestly, the cooldown.
  await admin.config("SET", "maxmemory", "0");
  await admin.acl("SETUSER", "default", "+zrem");
  const retry = await failure(call(instance.client, sendOtp, request));
  expect(retry.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  expect(detailsOf(retry).errorInfo?.reason).toBe("RESEND_COOLDOWN");
});
