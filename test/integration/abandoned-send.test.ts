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
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
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
  // Not the relay's time: its length is the shutdown's grace, not the relay's speed. No series for it, nothing under another result.
  expect(await metric(instance, "otp_smtp_attempt_duration_seconds_count", { result: "abandoned" })).toBeUndefined();
  for (const result of ["ok", "transient", "permanent"]) {
    expect(await metric(instance, "otp_smtp_attempt_duration_seconds_count", { result }), result).toBe(0);
  }
  // It had its connection at once: its wait for one is counted, and ended.
  expect(await metric(instance, "otp_smtp_pool_wait_seconds_count", {})).toBe(1);
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

/**
 * A delivery service on a one-connection pool whose relay holds every reply:
 * message A is on the connection, the relay sitting on it; message B waits in
 * the pool's queue behind it. Records land in `stored`, warnings and errors in `logs`.
 */
async function oneConnectionBehindAHeldMessage() {
  const sink = await startSmtpSink();
  sink.hold();
  cleanups.push(async () => {
    sink.release();
    await sink.close();
  });
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger({ level: "warn", destination: { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) } });
  const transport = createSmtpTransport({ url: sink.url, logger, maxConnections: 1, socketTimeoutMs: 60_000 });
  cleanups.push(() => transport.close({ abandonInFlight: true }));
  const stored = new Map<string, DeliveryRecord>();
  const delivery = createDeliveryService({
    store: {
      putRecord: (record) => {
        stored.set(record.messageId, record);
        return Promise.resolve();
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
  const send = (name: string): void => {
    const now = Date.now();
    const record: DeliveryRecord = {
      messageId: name,
      caller: "test",
      state: "SENDING",
      recipientMasked: "q***@example.com",
      recipientDomain: "example.com",
      purpose: "login",
      locale: "en",
      createdAt: now,
      updatedAt: now,
      expiresAt: now + 10 * 60_000,
      attempts: [],
      traceId: "",
    };
    void delivery.dispatch(record, {
      from: '"Acme" <no-reply@acme.test>',
      to: `${name}@example.com`,
      subject: "Your Acme code",
      text: "Your code is in the subject",
      html: "<p>Your code is in the subject</p>",
      messageId: `<${name}@acme.test>`,
      headers: {},
    });
  };
  send("on-the-connection");
  await vi.waitFor(() => expect(sink.held()).toBe(1), { timeout: 10_000, interval: 10 });
  send("in-the-queue");
  await vi.waitFor(() => expect(transport.inProgress()).toBe(2), { timeout: 10_000, interval: 10 });
  return { sink, transport, delivery, stored, logs };
}

it("a message still waiting for a pooled connection when the shutdown grace runs out is recorded FAILED, not sent, with no abandoned attempt, and never goes out even if a connection frees before the pool closes", async () => {
  const { sink, transport, delivery, stored, logs } = await oneConnectionBehindAHeldMessage();
  const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
  metrics.watchPool(transport, 1);
  const connectionsInUse = async (): Promise<number | undefined> => (await metrics.smtpPoolConnectionsInUse.get()).values[0]?.value;

  await delivery.drain(100);
  // Given up on, the message the relay has still holds its connection; the one withdrawn behind it holds none.
  expect(await connectionsInUse()).toBe(1);
  // The relay answers the message it had only now, after the drain: the connection frees while the pool is still open.
  sink.release();
  await vi.waitFor(() => expect(transport.inProgress()).toBe(0), { timeout: 10_000, interval: 10 });
  // The connection took the withdrawn one, sent nothing of it, and carries nothing now.
  expect(await connectionsInUse()).toBe(0);

  const queued = stored.get("in-the-queue");
  expect(queued).toMatchObject({ state: "FAILED", attempts: [] });
  expect(queued?.failureReason).toBe("the sender stopped before the message reached the relay (it waited for a connection); nothing was sent");
  // Only the message the relay had went out; the queued one never reached MAIL FROM.
  expect(sink.messages.map((mail) => mail.envelope.rcptTo)).toEqual([["on-the-connection@example.com"]]);
  expect(sink.transactions()).toBe(1);
  // The one the relay had is abandoned, its answer unknown: it came after the drain's last writes.
  expect(stored.get("on-the-connection")?.attempts.map((attempt) => attempt.outcome)).toEqual(["abandoned"]);
  // Withdrawn as the connection took it, because the sender stopped: its code did not expire.
  const withdrawn = logs.filter((line) => line["msg"] === "attempt finished after the sender stopped" && line["message_id"] === "in-the-queue");
  expect(withdrawn).toMatchObject([{ error_code: "ESTOPPED" }]);

  // The shutdown's lines tell the message stuck waiting for a connection from the one stuck at the relay, as the
  // "smtp attempt" line would: how long each attempt ran, and how much of that was the wait for a connection.
  const times = (line: Record<string, unknown> | undefined) => ({ duration: Number(line?.["duration_ms"]), poolWait: Number(line?.["pool_wait_ms"]) });
  const atTheRelay = times(logs.find((line) => line["msg"] === "message abandoned at shutdown: the relay's answer is unknown"));
  // Taken by the free connection at once: the grace (100 ms) and more went by at the relay.
  expect(atTheRelay.poolWait).toBeGreaterThanOrEqual(0);
  expect(atTheRelay.duration - atTheRelay.poolWait, JSON.stringify(atTheRelay)).toBeGreaterThanOrEqual(90);
  const waiting = times(logs.find((line) => line["msg"] === "message failed" && line["message_id"] === "in-the-queue"));
  // Never taken before the grace ran out: all of it was the wait.
  expect(waiting.poolWait, JSON.stringify(waiting)).toBe(waiting.duration);
  expect(waiting.poolWait).toBeGreaterThanOrEqual(90);
  // Taken (and withdrawn) once the relay freed the connection: at least as long a wait.
  const [late] = withdrawn.map(times);
  expect(late?.poolWait, JSON.stringify(late)).toBeGreaterThanOrEqual(waiting.poolWait);
  expect(late?.duration).toBeGreaterThanOrEqual(late?.poolWait ?? Number.NaN);
});

it("a message the relay accepts within the drain's last writes, after the grace gave it up, is recorded ACCEPTED with the relay's reply, not as an answer unknown", async () => {
  const { sink, transport, delivery, stored } = await oneConnectionBehindAHeldMessage();

  const draining = delivery.drain(100);
  // The grace (100 ms) runs out; the relay answers within the last writes' second.
  await vi.waitFor(() => expect(stored.get("on-the-connection")?.state).toBe("FAILED"), { timeout: 5000, interval: 5 });
  sink.release();
  await draining;
  await transport.close({ abandonInFlight: true });

  const [mail] = await sink.waitForMessages(1);
  const accepted = stored.get("on-the-connection");
  expect(accepted).toMatchObject({ state: "ACCEPTED", failureReason: undefined });
  expect(accepted?.relayReply?.queueId).toBe(mail?.queueId);
  expect(accepted?.relayReply?.text).toMatch(/^250 /);
  expect(accepted?.attempts.map((attempt) => [attempt.number, attempt.outcome, attempt.replyCode])).toEqual([[1, "accepted", 250]]);
  // The queued one was still not sent.
  expect(stored.get("in-the-queue")).toMatchObject({ state: "FAILED", attempts: [] });
  expect(sink.transactions()).toBe(1);
});

it("a send still waiting for a pooled connection when the shutdown grace ran out failed unsent: a retry with its idempotency key, on another instance, really sends", async () => {
  const sink = await startSmtpSink();
  sink.respondWith(behave.stall());
  cleanups.push(() => sink.close());
  const prefix = randomPrefix();
  const instance = await startInstance({ env: { ...instanceEnv(sink, prefix), SMTP_POOL_SIZE: "1" } });
  cleanups.push(() => instance.stop());
  // The one connection carries a message the relay sits on; the keyed send waits behind it.
  await call(instance.client, sendOtp, { recipient: "ahead@example.com", purpose: Purpose.LOGIN });
  await vi.waitFor(() => expect(sink.transactions()).toBe(1), { timeout: 10_000, interval: 20 });
  const request = { recipient: "behind@example.com", purpose: Purpose.LOGIN, idempotencyKey: "behind-1" };
  const queued = await call(instance.client, sendOtp, request);
  expect(queued.state).toBe(DeliveryState.SENDING);
  instance.client.close();
  await instance.app.stop(300);

  // Only the message the relay had is abandoned; the queued one failed, and says why.
  const abandoned = instance.logs.filter((line) => line["msg"] === "message abandoned at shutdown: the relay's answer is unknown");
  expect(abandoned.map((line) => line["message_id"])).not.toContain(queued.messageId);
  expect(abandoned).toHaveLength(1);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "abandoned", reply_class: "none" })).toBe(1);

  const next = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => next.stop());
  const status = await call(next.client, getDeliveryStatus, { messageId: queued.messageId });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts).toHaveLength(0);
  expect(status.failureReason).toMatch(/^the sender stopped before the message reached the relay/);
  expect(status.explanation).toMatch(/^Never accepted by the relay/);

  // Nothing was sent, so the key is free: the retry sends, under a new message_id.
  const retried = await call(next.client, sendOtp, request);
  expect(retried.state).toBe(DeliveryState.ACCEPTED);
  expect(retried.messageId).not.toBe(queued.messageId);
  const [mail] = await sink.waitForMessages(1);
  expect(mail?.envelope.rcptTo).toEqual(["behind@example.com"]);
  expect(sink.transactions()).toBe(2);
});

/**
 * Sends a keyed message to a relay that takes it whole and answers `reply`
 * a second later, and stops the instance with a short grace meanwhile: the
 * grace runs out (the attempt is recorded abandoned) and the relay answers
 * within the drain's last second of writes.
 */
async function refusedAfterTheGrace(reply: ReturnType<typeof behave.reply>, idempotencyKey: string) {
  const sink = await startSmtpSink();
  sink.respondWith(reply);
  cleanups.push(() => sink.close());
  const prefix = randomPrefix();
  const instance = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => instance.stop());
  const request = { recipient: "refused-late@example.com", purpose: Purpose.LOGIN, idempotencyKey };
  const sent = await call(instance.client, sendOtp, request);
  expect(sent.state).toBe(DeliveryState.SENDING);
  await stopWhileTheRelayHasIt(instance, sink);
  const refused = instance.logs.filter((line) => line["msg"] === "the relay refused a message given up at shutdown: recorded FAILED with its reply");
  expect(refused).toMatchObject([{ message_id: sent.messageId }]);

  const next = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => next.stop());
  const status = await call(next.client, getDeliveryStatus, { messageId: sent.messageId });
  return { sink, next, request, sent, status };
}

it("a relay that refuses for good (5xx) within the drain's last writes, after the grace gave the message up, is recorded FAILED with its words, not as an answer unknown; the key is kept as for any refusal", async () => {
  const { sink, next, request, sent, status } = await refusedAfterTheGrace(
    behave.reply("DATA", 550, "5.7.1", "Message rejected as spam", { delayMs: 1000 }),
    "refused-late-1",
  );

  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts.map((attempt) => [attempt.number, attempt.outcome, attempt.replyCode])).toEqual([[1, AttemptOutcome.PERMANENT_FAILURE, 550]]);
  expect(status.failureReason).toBe(`the relay 127.0.0.1:${sink.port} refused the message: "550 5.7.1 Message rejected as spam"`);
  expect(status.explanation).toMatch(/^Never accepted by the relay/);

  // A refusal for good: the same key answers it again, and sends nothing.
  const replayed = await failure(call(next.client, sendOtp, request));
  expect(replayed.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(detailsOf(replayed).errorInfo?.reason).toBe("RELAY_REJECTED");
  expect(detailsOf(replayed).errorInfo?.metadata["message_id"]).toBe(sent.messageId);
  expect(sink.transactions()).toBe(1);
});

it("a relay that refuses for now (4xx) within the drain's last writes is recorded FAILED, not retried because the sender stopped; the relay did not take it, so a retry with the key sends", async () => {
  const { sink, next, request, sent, status } = await refusedAfterTheGrace(
    behave.reply("DATA", 451, "4.3.0", "Try again later", { delayMs: 1000 }),
    "refused-late-2",
  );

  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts.map((attempt) => [attempt.number, attempt.outcome, attempt.replyCode])).toEqual([[1, AttemptOutcome.TRANSIENT_FAILURE, 451]]);
  expect(status.failureReason).toBe(
    `the relay 127.0.0.1:${sink.port} refused the message for now ("451 4.3.0 Try again later"); not retried because the sender stopped`,
  );

  // Answered within SEND_WAIT_BUDGET (200 ms) or pending: either way it goes, under a new message_id.
  const retried = await call(next.client, sendOtp, request);
  expect([DeliveryState.SENDING, DeliveryState.ACCEPTED]).toContain(retried.state);
  expect(retried.messageId).not.toBe(sent.messageId);
  const [mail] = await sink.waitForMessages(1);
  expect(mail?.envelope.rcptTo).toEqual(["refused-late@example.com"]);
  expect(sink.transactions()).toBe(2);
});

/**
 * A delivery service whose relay stalls as `stall` says (a one-connection pool, long socket timeout), with one
 * message (`text` as its body) on the connection, stalled: records land in `stored`, warnings and errors in `logs`.
 */
async function oneMessageStalled(stall: SinkBehaviour, text = "Your code is in the subject") {
  const sink = await startSmtpSink();
  sink.respondWith(stall);
  cleanups.push(() => sink.close());
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger({ level: "warn", destination: { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) } });
  const transport = createSmtpTransport({ url: sink.url, logger, maxConnections: 1, socketTimeoutMs: 60_000 });
  cleanups.push(() => transport.close({ abandonInFlight: true }));
  const stored = new Map<string, DeliveryRecord>();
  const delivery = createDeliveryService({
    store: {
      putRecord: (record) => {
        stored.set(record.messageId, record);
        return Promise.resolve();
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
  void delivery.dispatch(
    {
      messageId: "stalled",
      caller: "test",
      state: "SENDING",
      recipientMasked: "s***@example.com",
      recipientDomain: "example.com",
      purpose: "login",
      locale: "en",
      createdAt: now,
      updatedAt: now,
      expiresAt: now + 10 * 60_000,
      attempts: [],
      traceId: "",
    },
    {
      from: '"Acme" <no-reply@acme.test>',
      to: "stalled@example.com",
      subject: "Your Acme code",
      text,
      html: "<p>Your code is in the subject</p>",
      messageId: "<stalled@acme.test>",
      headers: {},
    },
  );
  await vi.waitFor(() => expect(sink.stalled()).toBe(1), { timeout: 10_000, interval: 10 });
  return { sink, transport, delivery, stored, logs };
}

it("a message whose relay stalls at RCPT TO when the shutdown grace runs out is recorded FAILED, not sent, with no abandoned attempt, and never goes out even if the relay recovers before the pool closes", async () => {
  const { sink, transport, delivery, stored, logs } = await oneMessageStalled(behave.stall("RCPT TO"));

  await delivery.drain(100);
  const failed = stored.get("stalled");
  expect(failed).toMatchObject({ state: "FAILED", attempts: [] });
  expect(failed?.failureReason).toBe(
    "the sender stopped before the relay had the whole message (attempt 1 was stopped before the end of its data was sent); nothing was delivered",
  );
  expect(logs.filter((line) => line["msg"] === "message abandoned at shutdown: the relay's answer is unknown")).toEqual([]);
  expect(logs.filter((line) => line["msg"] === "message failed")).toMatchObject([{ message_id: "stalled", attempts: 0 }]);

  // The relay answers RCPT TO now, the pool still open: the transaction reaches DATA, and the message still does not go.
  sink.resume();
  await vi.waitFor(() => expect(transport.inProgress()).toBe(0), { timeout: 10_000, interval: 10 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  expect(sink.messages).toEqual([]);
  expect(sink.unanswered).toEqual([]);
  expect(sink.transactions()).toBe(1);
  expect(stored.get("stalled")).toBe(failed);
  const ended = logs.filter((line) => line["msg"] === "attempt finished after the sender stopped" && line["message_id"] === "stalled");
  expect(ended).toMatchObject([{ error_code: "ESTOPPED" }]);
});

it("a message whose relay stopped reading mid-DATA is recorded abandoned, its answer unknown: its end of data went with its bytes, the safe side", async () => {
  // Larger than what the loopback connection's buffers hold: the relay has part of the message and may read the rest.
  // The end of data is let go with the bytes (an OTP mail leaves in one write; waiting for each to drain cost every
  // message a turn of the event loop), so the sender cannot promise the relay never gets it whole.
  const { sink, delivery, stored } = await oneMessageStalled(
    behave.stall("mid-DATA"),
    "Your code is in the subject\n" + "x".repeat(76).concat("\n").repeat(260_000),
  );

  await delivery.drain(100);
  expect(stored.get("stalled")).toMatchObject({ state: "FAILED", attempts: [{ outcome: "abandoned" }] });
  sink.resume();
});

it("a keyed send whose relay stalled at RCPT TO when the shutdown grace ran out failed unsent, counted as withdrawn, not abandoned: a retry with its idempotency key, on another instance, sends", async () => {
  const sink = await startSmtpSink();
  sink.respondWith(behave.stall("RCPT TO"));
  cleanups.push(() => sink.close());
  const prefix = randomPrefix();
  const instance = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => instance.stop());
  const request = { recipient: "rcpt-stall@example.com", purpose: Purpose.LOGIN, idempotencyKey: "rcpt-stall-1" };
  const sent = await call(instance.client, sendOtp, request);
  expect(sent.state).toBe(DeliveryState.SENDING);
  await vi.waitFor(() => expect(sink.stalled()).toBe(1), { timeout: 10_000, interval: 20 });
  instance.client.close();
  await instance.app.stop(300);

  // Not sent: logged as a failed message, no abandoned attempt, not counted as an SMTP attempt at all.
  expect(instance.logs.filter((line) => line["msg"] === "message abandoned at shutdown: the relay's answer is unknown")).toEqual([]);
  expect(instance.logs.filter((line) => line["msg"] === "message failed")).toMatchObject([{ message_id: sent.messageId, attempts: 0 }]);
  for (const result of ["abandoned", "transient", "unanswered"]) {
    expect(await metric(instance, "otp_smtp_attempts_total", { result, reply_class: "none" }), result).toBe(0);
  }
  await vi.waitFor(async () => {
    expect(await metric(instance, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "failed" })).toBe(1);
  });
  expect(await metric(instance, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "abandoned" })).toBe(0);

  const next = await startInstance({ env: instanceEnv(sink, prefix) });
  cleanups.push(() => next.stop());
  const status = await call(next.client, getDeliveryStatus, { messageId: sent.messageId });
  expect(status.state).toBe(DeliveryState.FAILED);
  expect(status.attempts).toHaveLength(0);
  expect(status.failureReason).toMatch(/^the sender stopped before the relay had the whole message .*; nothing was delivered$/);
  expect(status.explanation).toMatch(/^Never accepted by the relay/);

  // The relay recovers: the stalled transaction (its connection closed at shutdown) delivers nothing.
  sink.resume();
  // Nothing was delivered, so the key is free: the retry sends, under a new message_id.
  const retried = await call(next.client, sendOtp, request);
  expect(retried.state).toBe(DeliveryState.ACCEPTED);
  expect(retried.messageId).not.toBe(sent.messageId);
  const [mail] = await sink.waitForMessages(1);
  expect(mail?.envelope.rcptTo).toEqual(["rcpt-stall@example.com"]);
  await new Promise((resolve) => setTimeout(resolve, 200));
  expect(sink.messages).toHaveLength(1);
  expect(sink.transactions()).toBe(2);
  expect(JSON.stringify(instance.logs)).not.toContain("rcpt-stall@example.com");
});
