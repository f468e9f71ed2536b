/**
 * A relay that has the whole message, end of data included, and gives no
 * final reply in time: whole instances (real gRPC over a socket, real Redis,
 * a real SMTP server on loopback). The relay may well have taken the message
 * (RFC 5321 4.5.3.2.6, 6.1), so the attempt is recorded UNANSWERED and never
 * retried: one mail at most, the record FAILED with its outcome unknown, and
 * the idempotency key kept, so a caller's retry with it sends nothing. A
 * timeout before the end of data went out is still a transient failure,
 * retried as before.
 */
import * as grpc from "@grpc/grpc-js";
import { afterEach, expect, it, vi } from "vitest";
import { AttemptOutcome, DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { call, detailsOf, failure, getDeliveryStatus, sendOtp, startInstance, type Instance } from "../support/otp-instances.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { behave, startSmtpSink, type SinkBehaviour, type SmtpSink } from "../support/smtp-sink.js";
import { sampleValue } from "../support/metric-samples.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/** The value of sample `name` with exactly `labels` (a histogram's `_count` too); undefined when there is none. */
function metric(instance: Instance, name: string, labels: Record<string, string>): Promise<number | undefined> {
  return sampleValue(instance.app.metrics.registry, name, labels);
}

/**
 * An instance whose relay behaves as `behaviours` say, then accepts: attempts
 * time out after 300 ms of silence, up to 3 of them 50 ms apart, and the
 * caller waits long enough to hear the verdict.
 */
async function instanceWithRelay(...behaviours: SinkBehaviour[]): Promise<{ sink: SmtpSink; instance: Instance }> {
  const sink = await startSmtpSink();
  sink.respondWith(...behaviours);
  cleanups.push(() => sink.close());
  const instance = await startInstance({
    env: {
      REDIS_URL: redisUrlForTests(),
      REDIS_PREFIX: randomPrefix(),
      SMTP_URL: sink.url,
      SMTP_SOCKET_TIMEOUT: "300ms",
      SMTP_MAX_ATTEMPTS: "3",
      SMTP_RETRY_BASE_DELAY: "50ms",
      SMTP_RETRY_MAX_DELAY: "50ms",
      SEND_WAIT_BUDGET: "10s",
      LIMIT_RESEND_COOLDOWN: "0",
    },
  });
  cleanups.push(() => instance.stop());
  return { sink, instance };
}

it("a relay that takes the whole message and never replies: one mail, no second attempt, FAILED as unanswered, and a retry with the same key sends nothing", async () => {
  const { sink, instance } = await instanceWithRelay(behave.stall());
  const request = { recipient: "silent@example.com", purpose: Purpose.LOGIN, idempotencyKey: "silent-relay-1" };

  // The caller, still waiting, hears that the outcome is unknown: not UNAVAILABLE, which would invite a resend.
  const error = await failure(call(instance.client, sendOtp, request));
  expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(error.details).toMatch(/may have been sent: the relay had the whole message and gave no final reply/);
  const details = detailsOf(error);
  expect(details.errorInfo?.reason).toBe("SEND_OUTCOME_UNKNOWN");
  expect(details.errorInfo?.metadata["attempt_outcome"]).toBe("unanswered");
  expect(details.retryInfo).toBeUndefined();
  const messageId = details.errorInfo?.metadata["message_id"] ?? "";

  // The relay has the one mail; nothing else reached it, though two attempts were left.
  const [mail] = await sink.waitForUnanswered(1);
  expect(mail?.envelope.rcptTo).toEqual(["silent@example.com"]);
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(sink.transactions()).toBe(1);

  const status = await call(instance.client, getDeliveryStatus, { messageId });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts.map((attempt) => [attempt.outcome, attempt.replyCode, attempt.errorCode])).toEqual([
    [AttemptOutcome.UNANSWERED, 0, "ETIMEDOUT"],
  ]);
  expect(status.failureReason).toMatch(/had the whole message and gave no final reply, so whether it took it is unknown: the mail may still arrive/);
  expect(status.explanation).toMatch(/whether the relay accepted the message is unknown/);
  expect(status.explanation).not.toMatch(/Never accepted/);

  // A retry with the same key answers the same, and sends nothing.
  const replayed = await failure(call(instance.client, sendOtp, request));
  expect(replayed.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(detailsOf(replayed).errorInfo?.reason).toBe("SEND_OUTCOME_UNKNOWN");
  expect(detailsOf(replayed).errorInfo?.metadata["message_id"]).toBe(messageId);
  expect(sink.transactions()).toBe(1);

  // Logged and counted as what it is.
  const logged = instance.logs.filter((line) => line["msg"] === "smtp attempt");
  expect(logged).toMatchObject([{ outcome: "unanswered", error_code: "ETIMEDOUT", message_id: messageId }]);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "unanswered", reply_class: "none" })).toBe(1);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "transient", reply_class: "none" })).toBe(0);
  expect(await metric(instance, "otp_sends_total", { purpose: "login", outcome: "unanswered" })).toBe(1);
  expect(await metric(instance, "otp_sends_total", { purpose: "login", outcome: "replayed" })).toBe(1);
  expect(await metric(instance, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "failed" })).toBe(1);
  expect(JSON.stringify(instance.logs)).not.toContain("silent@example.com");
});

it("a relay that answers 250 only after the timeout: the one mail it took is the only one", async () => {
  const { sink, instance } = await instanceWithRelay(behave.accept({ delayMs: 1000 }));

  const error = await failure(call(instance.client, sendOtp, { recipient: "late@example.com", purpose: Purpose.LOGIN }));

  expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(detailsOf(error).errorInfo?.reason).toBe("SEND_OUTCOME_UNKNOWN");
  // The relay took it (its late 250 went to a closed connection): one mail, one transaction, even after the reply's time.
  await sink.waitForMessages(1);
  await new Promise((resolve) => setTimeout(resolve, 1200));
  expect(sink.messages).toHaveLength(1);
  expect(sink.transactions()).toBe(1);
});

it("a relay that stalls before any of the message went out (at RCPT TO) is still retried, and the retry is accepted", async () => {
  const { sink, instance } = await instanceWithRelay(behave.stall("RCPT TO"));

  const sent = await call(instance.client, sendOtp, { recipient: "retry@example.com", purpose: Purpose.LOGIN });

  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId });
  expect(status.attempts.map((attempt) => [attempt.outcome, attempt.errorCode])).toEqual([
    [AttemptOutcome.TRANSIENT_FAILURE, "ETIMEDOUT"],
    [AttemptOutcome.ACCEPTED, ""],
  ]);
  expect(sink.transactions()).toBe(2);
  expect(sink.messages).toHaveLength(1);
  expect(sink.unanswered).toHaveLength(0);
  await vi.waitFor(async () => expect(await metric(instance, "otp_smtp_attempts_total", { result: "transient", reply_class: "none" })).toBe(1));
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "unanswered", reply_class: "none" })).toBe(0);
});

it("a relay that drops the connection after the whole message, without a reply, is unanswered too: not sent again", async () => {
  const { sink, instance } = await instanceWithRelay(behave.dropAfterData());

  const error = await failure(call(instance.client, sendOtp, { recipient: "dropped@example.com", purpose: Purpose.LOGIN }));

  expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(detailsOf(error).errorInfo?.reason).toBe("SEND_OUTCOME_UNKNOWN");
  const status = await call(instance.client, getDeliveryStatus, { messageId: detailsOf(error).errorInfo?.metadata["message_id"] ?? "" });
  expect(status.attempts.map((attempt) => attempt.outcome)).toEqual([AttemptOutcome.UNANSWERED]);
  expect(["ECONNECTION", "ECONNRESET", "EPIPE"]).toContain(status.attempts[0]?.errorCode);
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(sink.transactions()).toBe(1);
  expect(sink.unanswered).toHaveLength(1);
});
