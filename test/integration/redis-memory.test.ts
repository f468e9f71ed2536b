/**
 * A Redis short of memory, under a whole instance (startApp, real gRPC, a
 * private redis-server, a real SMTP sink): one that would evict keys is
 * named at start-up, and one that refuses writes (noeviction, full) makes
 * SendOtp answer UNAVAILABLE and send nothing.
 */
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { afterEach, expect, it, vi } from "vitest";
import { Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { call, detailsOf, failure, sendOtp, startInstance, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/** A private Redis configured with CONFIG SET `settings`, a sink, and an instance using both. */
async function setUp(settings: Record<string, string>): Promise<{ redis: RedisServer; admin: Redis; sink: SmtpSink; instance: Instance }> {
  const [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  cleanups.push(() => redis.stop(), () => sink.close());
  const admin = new Redis(redis.url);
  cleanups.push(async () => {
    admin.disconnect();
    return Promise.resolve();
  });
  for (const [name, value] of Object.entries(settings)) await admin.config("SET", name, value);
  const instance = await startInstance({ env: { REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix(), SMTP_URL: sink.url } });
  cleanups.push(() => instance.stop());
  return { redis, admin, sink, instance };
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
