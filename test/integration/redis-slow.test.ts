/**
 * A Redis that stops answering for a while without dropping the connection
 * (CLIENT PAUSE: a stalled primary, a long fork, a slow script), under a whole
 * instance (startApp, real gRPC, a private redis-server, a real SMTP sink):
 * SendOtp answers UNAVAILABLE within REDIS_COMMAND_TIMEOUT, and when Redis
 * wakes up and runs the limits script it never answered in time, that
 * admission is taken back: the caller's retry is not refused for a send that
 * never happened.
 */
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { call, detailsOf, failure, sendOtp, startInstance, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let redis: RedisServer;
let admin: Redis;
let sink: SmtpSink;
let instance: Instance;

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  admin = new Redis(redis.url);
  instance = await startInstance({
    env: {
      REDIS_URL: redis.url,
      REDIS_PREFIX: randomPrefix(),
      REDIS_COMMAND_TIMEOUT: "300ms",
      SMTP_URL: sink.url,
      // One send per recipient and purpose per minute: a timed-out admission that stuck would refuse the retry.
      LIMIT_RESEND_COOLDOWN: "1m",
    },
  });
});

afterAll(async () => {
  await instance.stop();
  admin.disconnect();
  await sink.close();
  await redis.stop();
});

it("a send whose limits script timed out is refunded once Redis runs it, so the retry is admitted", async () => {
  const request = { recipient: "paused@example.com", purpose: Purpose.LOGIN };
  // Redis holds every client's commands for 1.5 s, then runs them in order.
  await admin.client("PAUSE", 1500, "ALL");
  const started = Date.now();
  const error = await failure(call(instance.client, sendOtp, request));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
  expect(Date.now() - started).toBeLessThan(1500);

  // Past the pause: Redis has run the limits script, and whatever came after it.
  await sleep(1500 - (Date.now() - started) + 300);
  const retried = await call(instance.client, sendOtp, request);
  expect(retried.state).toBe(DeliveryState.ACCEPTED);
  expect(sink.messages).toHaveLength(1);
});
