/**
 * A send the relay is still sitting on when the shutdown grace runs out:
 * whole instances (real gRPC over a socket, real Redis, a real SMTP server
 * on loopback that takes the message and never answers). The service gives
 * the attempt up: it is recorded, logged and counted as abandoned (its
 * answer unknown), not as a relay failure, and a retry with the same
 * idempotency key, on another instance, sends no second mail.
 */
import * as grpc from "@grpc/grpc-js";
import { afterEach, expect, it, vi } from "vitest";
import { AttemptOutcome, DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { systemClock } from "../../src/clock.js";
import { createDeliveryService } from "../../src/delivery/delivery-service.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { createSmtpTransport } from "../../src/delivery/smtp-transport.js";
import { createLogger } from "../../src/logger.js";
import { call, detailsOf, failure, getDeliveryStatus, sendOtp, startInstance, type Instance } from "../support/otp-instances.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/**
 * The value of sample `name` with exactly `labels` (a histogram's `_count` too); undefined when there is none.
 */
async function metric(instance: Instance, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const familyName = name.replace(/_count$/, "");
  const family = instance.app.metrics.registry.getSingleMetric(familyName);
  if (family === undefined) return undefined;
  const { values } = await family.get();
  const wanted = Object.entries(labels);
  return values.find((value) => {
    const sample = (value as { metricName?: string }).metricName ?? familyName;
    const actual = Object.entries(value.labels);
    return sample === name && actual.length === wanted.length && wanted.every(([key, text]) => String(value.labels[key]) === text);
  })?.value;
}

/** A relay that takes every message and never replies, and an instance on a fresh Redis prefix sending to it. */
async function stalledRelay(): Promise<{ sink: SmtpSink; prefix: string; instance: Instance }> {
  const sink = await startSmtpSink();
  sink.respondWith(behave.stall());
  cleanups.push(() => sink.close());
  const prefix = randomPrefix();
  const instance = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => instance.stop());
  return { sink, prefix, instance };
}

function instanceEnv(sink: SmtpSink, prefix: string): Record<string, string> {
  return {
    REDIS_URL: redisUrlForTests(),
    REDIS_PREFIX: prefix,
    SMTP_URL: sink.url,
    // Answered SENDING at once; only the shutdown ends the attempt (not the socket timeout).
    SEND_WAIT_BUDGET: "200ms",
    SMTP_SOCKET_TIMEOUT: "60s",
    // The last test's new request goes to the same address at once.
    LIMIT_RESEND_COOLDOWN: "0",
  };
}

/** Stops `instance` with a short grace: the relay still has the message when it runs out. */
async function stopWhileTheRelayHasIt(instance: Instance, sink: SmtpSink): Promise<void> {
  await vi.waitFor(() => expect(sink.transactions()).toBe(1), { timeout: 10_000, interval: 20 });
  instance.client.close();
  await instance.app.stop(300);
}

it("a send the relay still had when the shutdown grace ran out is recorded as an abandoned attempt, logged and counted as abandoned, not as a relay failure", async () => {
  const { sink, prefix, instance } = await stalledRelay();
  const sent = await call(instance.client, sendOtp, { recipient: "stuck@example.com", purpose: Purpose.LOGIN });
  expect(sent.state).toBe(DeliveryState.SENDING);
  const beforeStop = Date.now();
  await stopWhileTheRelayHasIt(instance, sink);

  // Logged once, as what it is, with the attempt that was in flight; no "message failed" with attempts: 0.
  const abandoned = instance.logs.filter((line) => line["msg"] === "message abandoned at shutdown: the relay's answer is unknown");
  expect(abandoned).toHaveLength(1);
  expect(abandoned[0]).toMatchObject({ level: "warn", message_id: sent.messageId, attempt: 1, attempts: 1, outcome: "abandoned" });
  expect(instance.logs.filter((line) => line["msg"] === "message failed")).toEqual([]);
  // The attempt's end (the pool closed under it) is no relay verdict: not logged as an SMTP attempt.
  expect(instance.logs.filter((line) => line["msg"] === "smtp attempt")).toEqual([]);

  // Counted as abandoned: not a transient relay failure, not a failed send.
  await vi.waitFor(async () => {
    expect(await metric(instance, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "abandoned" })).toBe(1);
  });
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "abandoned", reply_class: "none" })).toBe(1);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "transient", reply_class: "none" })).toBe(0);
  expect(await metric(instance, "otp_smtp_attempt_duration_seconds_count", { result: "abandoned" })).toBe(1);
  expect(await metric(instance, "otp_smtp_attempt_duration_seconds_count", { result: "transient" })).toBe(0);
  expect(await metric(instance, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "failed" })).toBe(0);

  // GetDeliveryStatus (from another instance: this one has stopped) shows the attempt that was in flight.
  sink.respondWith(behave.accept());
  const next = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => next.stop());
  const status = await call(next.client, getDeliveryStatus, { messageId: sent.messageId });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts).toHaveLength(1);
  const [attempt] = status.attempts;
  expect(attempt?.number).toBe(1);
  expect(attempt?.outcome).toBe(AttemptOutcome.ABANDONED);
  expect(attempt?.replyCode).toBe(0);
  const startedAt = Number(attempt?.startedAt?.seconds ?? 0n) * 1000;
  expect(startedAt).toBeGreaterThan(beforeStop - 10_000);
  expect(startedAt).toBeLessThanOrEqual(beforeStop);
  expect(status.failureReason).toMatch(/the sender stopped while attempt 1 was in progress; the relay's answer is unknown/);
  expect(status.explanation).toMatch(/whether the relay accepted the message is unknown/);
  expect(status.explanation).not.toMatch(/Never accepted/);
  expect(JSON.stringify(instance.logs)).not.toContain("stuck@example.com");
});

it("a retry with the idempotency key of a send abandoned at shutdown sends no second mail: it answers the first message_id and that its outcome is unknown", async () => {
  const { sink, prefix, instance } = await stalledRelay();
  const request = { recipient: "twice@example.com", purpose: Purpose.LOGIN, idempotencyKey: "login-twice-1" };
  const sent = await call(instance.client, sendOtp, request);
  expect(sent.state).toBe(DeliveryState.SENDING);
  await stopWhileTheRelayHasIt(instance, sink);

  // The caller retries on the next instance, with the relay answering again.
  sink.respondWith(behave.accept());
  const next = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => next.stop());
  for (let retry = 0; retry < 2; retry++) {
    const replayed = await failure(call(next.client, sendOtp, request));
    expect(replayed.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(replayed.details).toMatch(/may have been sent.*answer is unknown/);
    const details = detailsOf(replayed);
    expect(details.errorInfo?.reason).toBe("SEND_OUTCOME_UNKNOWN");
    expect(details.errorInfo?.metadata["message_id"]).toBe(sent.messageId);
    expect(details.retryInfo).toBeUndefined();
  }
  // Nothing more reached the relay: the one transaction is the first call's.
  expect(sink.transactions()).toBe(1);
  expect(sink.messages).toHaveLength(0);
  // Replays of the first call's answer, counted as such: the abandoned send itself was counted by the first instance.
  expect(await metric(next, "otp_sends_total", { purpose: "login", outcome: "replayed" })).toBe(2);
  expect(await metric(next, "otp_sends_total", { purpose: "login", outcome: "abandoned" })).toBe(0);

  // A new key is a new request: it sends.
  const again = await call(next.client, sendOtp, { ...request, idempotencyKey: "login-twice-2" });
  expect(again.messageId).not.toBe(sent.messageId);
  await sink.waitForMessages(1);
  expect(sink.transactions()).toBe(2);
});

it("a message the relay accepted while its record write still hangs at shutdown stays ACCEPTED: the drain does not write FAILED over it", async () => {
  const sink = await startSmtpSink();
  cleanups.push(() => sink.close());
  const logger = createLogger({ level: "silent" });
  const transport = createSmtpTransport({ url: sink.url, logger });
  cleanups.push(() => transport.close({ abandonInFlight: true }));
  // Storage that holds the ACCEPTED write (a Redis stalling at shutdown) until the test lets it through.
  const stored = new Map<string, DeliveryRecord>();
  let letThrough: () => void = () => undefined;
  const held = new Promise<void>((resolve) => (letThrough = resolve));
  let acceptedWriteStarted = false;
  const delivery = createDeliveryService({
    store: {
      putRecord: async (record) => {
        if (record.state === "ACCEPTED") {
          acceptedWriteStarted = true;
          await held;
        }
        stored.set(record.messageId, record);
      },
    },
    transport,
    clock: systemClock,
    logger,
    maxAttempts: 3,
    retryBaseDelayMs: 100,
    retryMaxDelayMs: 100,
    waitBudgetMs: 50,
    recordTtlMs: 60_000,
  });
  const now = Date.now();
  const record: DeliveryRecord = {
    messageId: "held-accept-1",
    caller: "test",
    state: "SENDING",
    recipientMasked: "h***@example.com",
    recipientDomain: "example.com",
    purpose: "login",
    locale: "en",
    createdAt: now,
    updatedAt: now,
    expiresAt: now + 60_000,
    attempts: [],
    traceId: "",
  };
  void delivery.dispatch(record, {
    from: '"Acme" <no-reply@acme.test>',
    to: "held@example.com",
    subject: "Your Acme code",
    text: "Your code is in the subject",
    html: "<p>Your code is in the subject</p>",
    messageId: "<held-accept-1@acme.test>",
    headers: {},
  });
  await vi.waitFor(() => expect(acceptedWriteStarted).toBe(true), { timeout: 10_000, interval: 10 });

  // The grace runs out while the ACCEPTED write hangs; storage answers again within the drain's last second.
  const draining = delivery.drain(100);
  await new Promise((resolve) => setTimeout(resolve, 300));
  letThrough();
  await draining;

  expect(sink.messages).toHaveLength(1);
  expect(stored.get("held-accept-1")).toMatchObject({ state: "ACCEPTED", failureReason: undefined });
  expect(stored.get("held-accept-1")?.attempts.map((attempt) => attempt.outcome)).toEqual(["accepted"]);
});
