/**
 * A relay the service cannot use, under a whole instance (startApp, real
 * gRPC, real Redis, a real SMTP server or a closed port). Its own TLS
 * configuration (a certificate it does not trust): the caller gets
 * UNAVAILABLE saying an operator must act, never a refusal that blames the
 * message; GetDeliveryStatus keeps the evidence; health says NOT_SERVING;
 * and the idempotency key is not spent on a failure that the operator's fix
 * will cure. (Rejected credentials, the same kind of failure: service.test.ts.)
 * A relay that is down: the retry delay the caller is told is one the limits
 * (every one the send counted against) will honour, and an instance that started while it was down serves once it
 * is back, though no call reaches it meanwhile.
 */
import { createServer as createNetServer, type AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { SMTPServer } from "smtp-server";
import { afterEach, expect, it, vi } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import {
  call,
  detailsOf,
  failure,
  getDeliveryStatus,
  retryDelayMs,
  sendOtp,
  servingStatus,
  startInstance,
  untilServing,
  type Instance,
} from "../support/otp-instances.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { freePort } from "../support/ports.js";
import { makeSelfSigned } from "../support/self-signed.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

async function instanceFor(sink: SmtpSink | undefined, smtpUrl: string, env: Record<string, string> = {}): Promise<Instance> {
  if (sink !== undefined) cleanups.push(() => sink.close());
  const instance = await startInstance({
    env: { REDIS_URL: redisUrlForTests(), REDIS_PREFIX: randomPrefix(), SMTP_URL: smtpUrl, LIMIT_RESEND_COOLDOWN: "0", ...env },
  });
  cleanups.push(() => instance.stop());
  return instance;
}

/** SendOtp twice with one idempotency key; both must fail with `reason`, each with its own message. */
async function sendTwiceFailing(instance: Instance, reason: string): Promise<{ error: grpc.ServiceError; messageId: string }> {
  const request = { recipient: "ana@example.com", purpose: Purpose.LOGIN, idempotencyKey: "misconfigured-relay-1" };
  const error = await failure(call(instance.client, sendOtp, request));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe(reason);
  const messageId = detailsOf(error).errorInfo?.metadata["message_id"] ?? "";

  // The key was released: a retry (after the operator's fix) really sends, rather than replaying this failure.
  const again = await failure(call(instance.client, sendOtp, request));
  expect(again.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(again).errorInfo?.metadata["message_id"]).not.toBe(messageId);
  return { error, messageId };
}

it("a relay certificate the service does not trust: UNAVAILABLE naming SMTP_TLS_CA, the record keeps the TLS error", async () => {
  const sink = await startSmtpSink({ tls: makeSelfSigned() });
  const instance = await instanceFor(sink, sink.url);
  expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);

  const { error, messageId } = await sendTwiceFailing(instance, "RELAY_TLS_FAILED");
  expect(error.details).toMatch(/SMTP_TLS_CA/);
  expect(sink.transactions()).toBe(0);

  const status = await call(instance.client, getDeliveryStatus, { messageId });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts).toHaveLength(1);
  expect(status.attempts[0]?.errorCode).toBe("ETLS");
  expect(status.failureReason).toMatch(/certificate/);
});

it("a relay that is down: UNAVAILABLE with a retry delay the resend cooldown will honour, not one it refuses", async () => {
  const instance = await instanceFor(undefined, `smtp://127.0.0.1:${await freePort()}?starttls=off`, {
    LIMIT_RESEND_COOLDOWN: "30s",
    SMTP_MAX_ATTEMPTS: "1",
  });
  const request = { recipient: "ana@example.com", purpose: Purpose.LOGIN };

  const error = await failure(call(instance.client, sendOtp, request));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("RELAY_UNAVAILABLE");

  // A caller that retried earlier than the cooldown allows would only be refused by it.
  const early = await failure(call(instance.client, sendOtp, request));
  expect(early.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  expect(retryDelayMs(error)).toBeGreaterThanOrEqual(retryDelayMs(early) ?? Infinity);
});

it("a relay that is down, with a caller quota the failed send filled: the retry delay waits for the quota too", async () => {
  const instance = await instanceFor(undefined, `smtp://127.0.0.1:${await freePort()}?starttls=off`, {
    LIMIT_RESEND_COOLDOWN: "30s",
    LIMIT_CALLER: "1/1m",
    SMTP_MAX_ATTEMPTS: "1",
  });
  const request = { recipient: "ana@example.com", purpose: Purpose.LOGIN };

  const error = await failure(call(instance.client, sendOtp, request));
  expect(detailsOf(error).errorInfo?.reason).toBe("RELAY_UNAVAILABLE");
  expect(retryDelayMs(error)).toBeGreaterThan(30_000);

  const early = await failure(call(instance.client, sendOtp, request));
  expect(detailsOf(early).errorInfo?.reason).toBe("CALLER_QUOTA_EXCEEDED");
  expect(retryDelayMs(error)).toBeGreaterThanOrEqual(retryDelayMs(early) ?? Infinity);
});

it("a relay down at start-up: NOT_SERVING, then SERVING once it is back, found by the re-check alone", async () => {
  const port = await freePort();
  const instance = await startInstance({
    env: { REDIS_URL: redisUrlForTests(), REDIS_PREFIX: randomPrefix(), SMTP_URL: `smtp://127.0.0.1:${port}?starttls=off` },
    relayProbeIntervalMs: 200,
  });
  cleanups.push(() => instance.stop());
  expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);

  // No call reaches an instance its load balancer sees NOT_SERVING: only the re-check can find the relay back.
  const relay = new SMTPServer({ authOptional: true, disabledCommands: ["STARTTLS"], logger: false });
  await new Promise<void>((resolve) => relay.listen(port, "127.0.0.1", resolve));
  cleanups.push(() => new Promise<void>((resolve) => relay.close(() => resolve())));

  await vi.waitFor(async () => expect(await servingStatus(instance)).toBe(ServingStatus.SERVING), { timeout: 5000, interval: 50 });
});

it("shutdown while a caller waits on a retry: UNAVAILABLE at once (the sender stopped), not RETRYING for a retry that never comes", async () => {
  // Every backoff is the longest (random() near 1): the retry would come a minute later, long after the shutdown.
  vi.spyOn(Math, "random").mockReturnValue(0.99);
  cleanups.push(() => {
    vi.restoreAllMocks();
    return Promise.resolve();
  });
  const sink = await startSmtpSink();
  sink.respondWith(behave.reply("MAIL FROM", 451, "4.3.0", "try again later"));
  const instance = await instanceFor(sink, sink.url, {
    SMTP_RETRY_BASE_DELAY: "60s",
    SMTP_RETRY_MAX_DELAY: "60s",
    SEND_WAIT_BUDGET: "10s",
  });
  const request = { recipient: "ana@example.com", purpose: Purpose.LOGIN, idempotencyKey: "stopped-before-retry-1" };
  const sending = failure(call(instance.client, sendOtp, request));
  // The first attempt was refused for now; the message sleeps until its retry.
  await vi.waitFor(() => expect(instance.logs.some((line) => line["msg"] === "smtp attempt")).toBe(true), { timeout: 5000, interval: 20 });

  const stopped = Date.now();
  const stopping = instance.app.stop(5000);
  const error = await sending;
  // Told at once, well within the grace period and the wait budget.
  expect(Date.now() - stopped).toBeLessThan(2500);
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("RELAY_UNAVAILABLE");
  expect(error.details).toMatch(/the sender stopped before the retry/);
  await stopping;
  expect(sink.transactions()).toBe(1);
});

it("a relay that refuses the connection at its greeting (554): UNAVAILABLE, not the message's refusal; the key is not spent; NOT_SERVING", async () => {
  // "554 no SMTP service here" instead of 220 (RFC 5321 3.1): the relay turns every connection away, whatever the message.
  const refusing = createNetServer((socket) => socket.end("554 5.7.1 Service unavailable; client host blocked\r\n"));
  await new Promise<void>((resolve) => refusing.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => new Promise<void>((resolve) => refusing.close(() => resolve())));
  const port = (refusing.address() as AddressInfo).port;
  const instance = await instanceFor(undefined, `smtp://127.0.0.1:${port}?starttls=off`, { LIMIT_RESEND_COOLDOWN: "0" });

  const { error, messageId } = await sendTwiceFailing(instance, "RELAY_UNAVAILABLE");
  expect(error.details).toMatch(/554 5\.7\.1 Service unavailable/);
  expect(retryDelayMs(error)).toBeGreaterThanOrEqual(60_000);
  const status = await call(instance.client, getDeliveryStatus, { messageId });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts).toHaveLength(1);
  expect(status.attempts[0]?.replyCode).toBe(554);
  expect(status.failureReason).toMatch(/refused the connection/);
  // A send's verdict must not call such a relay healthy.
  expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);
});

it("one send the relay never answers: the relay is asked at once and answers, so the instance stays SERVING", async () => {
  // One stuck message (a relay's slow disk, a dead connection) is not a relay that is down: taking the
  // instance out of rotation for it would turn one slow message into an outage of every instance that saw one.
  const sink = await startSmtpSink({ route: (recipient) => (recipient.startsWith("stuck@") ? behave.stall() : undefined) });
  const instance = await instanceFor(sink, sink.url, { SMTP_SOCKET_TIMEOUT: "500ms", SMTP_MAX_ATTEMPTS: "1" });
  // Storage reads down until Redis's first connection: wait for it, as a load balancer does.
  await untilServing(instance);

  const error = await failure(call(instance.client, sendOtp, { recipient: "stuck@example.com", purpose: Purpose.LOGIN }));
  // The relay had the whole message: whether it took it is unknown.
  expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(detailsOf(error).errorInfo?.reason).toBe("SEND_OUTCOME_UNKNOWN");
  for (let i = 0; i < 10; i++) {
    expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const sent = await call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN });
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
});

it("sends that keep finding no relay: the third in a row takes the instance out of rotation, though the relay still greets", async () => {
  const sink = await startSmtpSink();
  const instance = await instanceFor(sink, sink.url, { SMTP_SOCKET_TIMEOUT: "500ms", SMTP_MAX_ATTEMPTS: "1" });
  // Two that time out before any of the message went out, and one the relay had whole and never answered:
  // that one counts against the relay like any timeout (its outcome unknown to the caller, not retried).
  sink.respondWith(behave.stall("RCPT TO"), behave.stall("RCPT TO"), behave.stall());
  for (const [i, recipient] of ["a@example.com", "b@example.com", "c@example.com"].entries()) {
    const error = await failure(call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }));
    expect(error.code).toBe(i < 2 ? grpc.status.UNAVAILABLE : grpc.status.FAILED_PRECONDITION);
    if (i < 2) {
      // The check after each of the first two finds the relay greeting: still in rotation.
      await vi.waitFor(async () => expect(await servingStatus(instance)).toBe(ServingStatus.SERVING), { timeout: 2000, interval: 20 });
    }
  }
  expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);
});

it("a relay gone after start: the send that finds it gone has the relay checked at once, and the instance leaves rotation", async () => {
  const sink = await startSmtpSink();
  const instance = await instanceFor(sink, sink.url, { SMTP_MAX_ATTEMPTS: "1" });
  await untilServing(instance);
  await sink.close();

  const error = await failure(call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  // Within the check's connection refusal, not the 15 s re-check interval.
  await vi.waitFor(async () => expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING), { timeout: 2000, interval: 20 });
});

it("a 421 on a reused pooled connection: the caller and GetDeliveryStatus get the relay's words, not a generic connection error", async () => {
  const sink = await startSmtpSink();
  const instance = await instanceFor(sink, sink.url, { SMTP_POOL_SIZE: "1", SMTP_MAX_ATTEMPTS: "1" });
  await call(instance.client, sendOtp, { recipient: "first@example.com", purpose: Purpose.LOGIN });
  // The next message goes over the connection the first one used; the relay turns it away at its recipient.
  sink.respondWith(behave.reply("RCPT TO", 421, "4.7.0", "Try again later, closing connection <ana@example.com>"));

  const error = await failure(call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }));

  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(error.details).toContain('"421 4.7.0 Try again later, closing connection <a***@example.com>"');
  const status = await call(instance.client, getDeliveryStatus, { messageId: detailsOf(error).errorInfo?.metadata["message_id"] ?? "" });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts).toHaveLength(1);
  expect(status.attempts[0]).toMatchObject({
    replyCode: 421,
    enhancedStatusCode: "4.7.0",
    replyText: "421 4.7.0 Try again later, closing connection <a***@example.com>",
    errorCode: "",
  });
});
