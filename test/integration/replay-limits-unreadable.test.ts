/**
 * An idempotent replay whose limits cannot be read, under a whole instance
 * (startApp, real gRPC, a private redis-server, a real SMTP sink): Redis
 * answers for the key and the record but refuses the limit keys (an ACL, as
 * deterministic a partial failure as there is). The replay still answers
 * with the first call's message, and its resend_available_at is the first
 * answer's: a lower bound that stays true, since sends are only ever added
 * to the limits after it. The log says so.
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Redis } from "ioredis";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import type { Clock } from "../../src/clock.js";
import { call, sendOtp, startInstance, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let redis: RedisServer;
let sink: SmtpSink;
let admin: Redis;
let instance: Instance;
const prefix = randomPrefix();
let now = Date.UTC(2026, 0, 1, 12, 0, 0);
const clock: Clock = { now: () => now };

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  admin = new Redis(redis.url);
  instance = await startInstance({
    env: { REDIS_URL: redis.url, REDIS_PREFIX: prefix, SMTP_URL: sink.url, LIMIT_RESEND_COOLDOWN: "30s" },
    clock,
  });
});

afterAll(async () => {
  await instance.stop();
  admin.disconnect();
  await sink.close();
  await redis.stop();
});

it("a replay that cannot read the limits answers the first call's resend_available_at, and logs why", async () => {
  const t0 = now;
  const request = { recipient: "ana@example.com", purpose: Purpose.LOGIN, idempotencyKey: "unreadable-1" };
  const first = await call(instance.client, sendOtp, request);
  expect(timestampMs(first.resendAvailableAt!)).toBe(t0 + 30_000);

  // Every key but the limits' ({limits}: the logs and the suppression list).
  await admin.acl("SETUSER", "default", "resetkeys", ...["idem:", "msg:", "dsn:", "code:", "fail:"].map((kind) => `~${prefix}${kind}*`));
  now = t0 + 10_000;
  const replayed = await call(instance.client, sendOtp, request);
  expect(replayed.messageId).toBe(first.messageId);
  expect(timestampMs(replayed.resendAvailableAt!)).toBe(t0 + 30_000);
  const warning = instance.logs.find((entry) => /could not read the limits for an idempotent replay/.test(String(entry["msg"])));
  expect(warning?.["message_id"]).toBe(first.messageId);
  expect(sink.transactions()).toBe(1);

  // Past that time, "now" is the truest lower bound left.
  now = t0 + 60_000;
  expect(timestampMs((await call(instance.client, sendOtp, request)).resendAvailableAt!)).toBe(t0 + 60_000);
  await admin.acl("SETUSER", "default", "allkeys");
});
