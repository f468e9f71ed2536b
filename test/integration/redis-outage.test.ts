/**
 * Redis goes away mid-run under a whole instance (startApp, real gRPC, a
 * private redis-server, a real SMTP sink): SendOtp and VerifyOtp answer
 * UNAVAILABLE well within their deadline and no mail leaves without its
 * limit check, health says NOT_SERVING; when Redis is back the same instance
 * serves again without a restart.
 */
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import {
  bearer,
  call,
  detailsOf,
  failure,
  getDeliveryStatus,
  newToken,
  sendOtp,
  servingStatus,
  startInstance,
  verifyOtp,
  type Instance,
} from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const caller = newToken("alpha");
let redis: RedisServer;
let sink: SmtpSink;
let instance: Instance;

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  instance = await startInstance({
    env: {
      REDIS_URL: redis.url,
      REDIS_PREFIX: randomPrefix(),
      REDIS_COMMAND_TIMEOUT: "500ms",
      SMTP_URL: sink.url,
      AUTH_TOKENS: caller.entry,
      LIMIT_RESEND_COOLDOWN: "0",
    },
  });
});

afterAll(async () => {
  await instance.stop();
  await sink.close();
  await redis.stop();
});

/** Polls health until it reports `wanted`, for at most `timeoutMs`. */
async function healthBecomes(wanted: ServingStatus, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await servingStatus(instance)) === wanted) return;
    if (Date.now() > deadline) throw new Error(`health did not become ${ServingStatus[wanted]} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

it("an instance whose Redis has never answered (down at deploy) is NOT_SERVING, naming storage, until Redis first connects", async () => {
  const never = await startRedisServer();
  await never.stop();
  const starting = await startInstance({
    env: { REDIS_URL: never.url, REDIS_PREFIX: randomPrefix(), REDIS_COMMAND_TIMEOUT: "500ms", SMTP_URL: sink.url, AUTH_TOKENS: caller.entry },
  });
  try {
    // The relay answered (start-up waited for it): storage alone keeps the instance out of rotation.
    expect(starting.app.health.components().get("relay")?.up).toBe(true);
    for (let i = 0; i < 5; i++) {
      expect(await servingStatus(starting)).toBe(ServingStatus.NOT_SERVING);
      expect(starting.app.health.components().get("storage")).toEqual({ up: false, reason: "storage has not connected yet" });
      await sleep(100);
    }
    const error = await failure(call(starting.client, sendOtp, { recipient: "early@example.com", purpose: Purpose.LOGIN }, bearer(caller.token)));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);

    await never.start();
    const deadline = Date.now() + 10_000;
    while ((await servingStatus(starting)) !== ServingStatus.SERVING) {
      if (Date.now() > deadline) throw new Error("not SERVING within 10 s of Redis starting");
      await sleep(50);
    }
  } finally {
    await starting.stop();
    await never.stop();
  }
});

it("answers UNAVAILABLE within the deadline while Redis is down, and recovers by itself", async () => {
  const auth = bearer(caller.token);
  const recipient = "outage@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN, code: "246810" }, auth);
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);

  await redis.stop();
  await healthBecomes(ServingStatus.NOT_SERVING, 5000);

  const deadlineMs = 3000;
  for (const attempt of [
    () => call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }, auth, deadlineMs),
    () =>
      call(instance.client, sendOtp, { recipient: "o@example.com", purpose: Purpose.SIGNUP, idempotencyKey: "k-1" }, auth, deadlineMs),
    () => call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code: "246810" }, auth, deadlineMs),
  ]) {
    const started = Date.now();
    const error = await failure(attempt());
    // UNAVAILABLE from the service itself, not DEADLINE_EXCEEDED from a call that hung.
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
    expect(Date.now() - started).toBeLessThan(deadlineMs);
  }
  // Nothing was sent without its limit check.
  expect(sink.transactions()).toBe(1);

  await redis.start();
  await healthBecomes(ServingStatus.SERVING, 10_000);
  const again = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN, code: "135790" }, auth);
  expect(again.state).toBe(DeliveryState.ACCEPTED);
  expect((await call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code: "135790" }, auth)).result).toBe(
    VerifyResult.VERIFIED,
  );
  expect(sink.transactions()).toBe(2);
});

it("a send whose relay answered while Redis was down is recorded once Redis is back, not left SENDING or lost", async () => {
  const auth = bearer(caller.token);
  await healthBecomes(ServingStatus.SERVING, 10_000);
  // The relay thinks for a while; Redis dies meanwhile, so the ACCEPTED record cannot be written at once.
  sink.respondWith(behave.accept({ delayMs: 1500 }));
  const sending = call(instance.client, sendOtp, { recipient: "blip@example.com", purpose: Purpose.LOGIN }, auth);
  await sleep(500);
  await redis.stop();

  const sent = await sending;
  // The caller is told what the relay said.
  expect(sent.state).toBe(DeliveryState.ACCEPTED);

  // Redis comes back empty (nothing persisted): the record must be written again, in its final state.
  await redis.start();
  await healthBecomes(ServingStatus.SERVING, 10_000);
  const deadline = Date.now() + 10_000;
  let state: DeliveryState | undefined;
  for (;;) {
    const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId }, auth).catch(() => undefined);
    state = status?.state;
    if (state === DeliveryState.ACCEPTED || Date.now() > deadline) break;
    await sleep(100);
  }
  expect(state).toBe(DeliveryState.ACCEPTED);
});
