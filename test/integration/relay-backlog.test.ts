/**
 * A relay that stalls (takes each message, then holds its reply) under a
 * whole instance: real gRPC over a socket, real Redis, a real SMTP server on
 * loopback, a pool of 2 connections and SMTP_MAX_BACKLOG=3. Once the two
 * connections are busy and three more messages wait for one, the next
 * SendOtp is refused at once with UNAVAILABLE (RELAY_BACKLOG_FULL, RetryInfo),
 * having sent, stored and spent nothing; when the relay answers again the
 * waiting messages go out and the refused send goes through on its retry.
 */
import * as grpc from "@grpc/grpc-js";
import { afterEach, expect, it } from "vitest";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { createAppHealth } from "../../src/app.js";
import type { Clock } from "../../src/clock.js";
import type { HealthChange, HealthState } from "../../src/health.js";
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
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/** A sink that holds every message until released, and an instance sending to it. */
async function stalledRelay(
  env: Record<string, string>,
  extra: { clock?: Clock; health?: HealthState } = {},
): Promise<{ sink: SmtpSink; instance: Instance }> {
  const sink = await startSmtpSink();
  sink.hold();
  // Released before it closes, so the instance's stop finds no send still waiting.
  cleanups.push(async () => {
    sink.release();
    await sink.close();
  });
  const instance = await startInstance({
    env: {
      REDIS_URL: redisUrlForTests(),
      REDIS_PREFIX: randomPrefix(),
      SMTP_URL: sink.url,
      // The held replies must not time out while the test looks at the backlog.
      SMTP_SOCKET_TIMEOUT: "60s",
      SEND_WAIT_BUDGET: "10s",
      LIMIT_RESEND_COOLDOWN: "30s",
      ...env,
    },
    ...extra,
  });
  cleanups.push(() => instance.stop());
  return { sink, instance };
}

/** The value of an unlabelled gauge, or of the sample with exactly `labels`; undefined when there is none. */
async function metric(instance: Instance, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const family = instance.app.metrics.registry.getSingleMetric(name);
  if (family === undefined) return undefined;
  const { values } = await family.get();
  const wanted = Object.entries(labels);
  return values.find((value) => {
    const actual = Object.entries(value.labels);
    return actual.length === wanted.length && wanted.every(([key, text]) => String(value.labels[key]) === text);
  })?.value;
}

/** Resolves once `condition` holds; fails with `what` after `timeoutMs`. */
async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const login = (recipient: string, extra: { code?: string; idempotencyKey?: string } = {}) => ({
  recipient,
  purpose: Purpose.LOGIN,
  ...extra,
});

it("a stalled relay: sends beyond SMTP_MAX_BACKLOG are refused at once, spend and store nothing, and go through once it answers again", async () => {
  const { sink, instance } = await stalledRelay({ SMTP_POOL_SIZE: "2", SMTP_MAX_BACKLOG: "3" });
  const answered: string[] = [];
  const send = (recipient: string) => {
    const sent = call(instance.client, sendOtp, login(recipient));
    void sent.then(
      () => answered.push(recipient),
      () => answered.push(recipient),
    );
    return sent;
  };

  // Two messages on the two connections, their replies held by the relay...
  const onConnections = [send("held-1@example.com"), send("held-2@example.com")];
  await until("the relay holds two messages", () => sink.held() === 2);
  // ...and three waiting for a connection: the backlog is full.
  const waiting = [send("queued-1@example.com"), send("queued-2@example.com"), send("queued-3@example.com")];
  await until("five attempts are in flight", async () => (await metric(instance, "otp_smtp_attempts_in_flight")) === 5);

  // One more: refused, with a caller's own code and an idempotency key.
  const refusedRequest = login("late@example.com", { code: "Q7Z9K2", idempotencyKey: "late-1" });
  const startedAt = Date.now();
  const refused = await failure(call(instance.client, sendOtp, refusedRequest));
  const tookMs = Date.now() - startedAt;
  expect(refused.code).toBe(grpc.status.UNAVAILABLE);
  expect(refused.details).toMatch(/SMTP relay is not keeping up.*retry later/);
  const details = detailsOf(refused);
  expect(details.errorInfo?.reason).toBe("RELAY_BACKLOG_FULL");
  expect(retryDelayMs(refused)).toBeGreaterThan(0);
  // Nothing was recorded for it, so no message_id is offered for GetDeliveryStatus.
  expect(details.errorInfo?.metadata["message_id"]).toBeUndefined();
  // At once: while the five admitted sends still wait for the relay, well within the wait budget (10 s).
  expect(answered).toEqual([]);
  expect(tookMs).toBeLessThan(5000);

  // Another, without a key: refused the same way.
  const second = await failure(call(instance.client, sendOtp, login("late-2@example.com")));
  expect(detailsOf(second).errorInfo?.reason).toBe("RELAY_BACKLOG_FULL");
  expect(answered).toEqual([]);

  // Counted, and the backlog is in sight.
  expect(await metric(instance, "otp_sends_total", { purpose: "login", outcome: "backlog_full" })).toBe(2);
  expect(await metric(instance, "otp_smtp_backlog")).toBe(3);
  // Nothing of the refused sends reached the relay.
  expect(sink.transactions()).toBe(2);

  // The relay answers again: the held and the waiting messages all go out.
  sink.release();
  const results = await Promise.all([...onConnections, ...waiting]);
  await sink.waitForMessages(5);
  for (const result of results) {
    const status = await call(instance.client, getDeliveryStatus, { messageId: result.messageId });
    expect(status.state).toBe(DeliveryState.ACCEPTED);
  }
  expect(await metric(instance, "otp_smtp_backlog")).toBe(0);

  // The refused send stored no code: its code does not verify.
  const guess = await call(instance.client, verifyOtp, { recipient: "late@example.com", purpose: Purpose.LOGIN, code: "Q7Z9K2" });
  expect(guess.result).toBe(VerifyResult.NOT_FOUND);

  // Its retry, at once and with the same key, really sends: the refusal spent no resend cooldown (30 s) and kept no key.
  const retried = await call(instance.client, sendOtp, refusedRequest);
  expect(retried.state).toBe(DeliveryState.ACCEPTED);
  const [, , , , , mail] = await sink.waitForMessages(6);
  expect(mail?.parsed.subject).toContain("Q7Z9K2");
  expect((await call(instance.client, verifyOtp, { recipient: "late@example.com", purpose: Purpose.LOGIN, code: "Q7Z9K2" })).result).toBe(
    VerifyResult.VERIFIED,
  );
  // Whereas the cooldown is on: a resend to an address that got its mail is refused by it.
  const cooled = await failure(call(instance.client, sendOtp, login("held-1@example.com")));
  expect(cooled.code).toBe(grpc.status.RESOURCE_EXHAUSTED);

  // The refusal was logged once, masked; no code and no full address anywhere in the logs.
  const refusals = instance.logs.filter((line) => String(line["msg"]).includes("not keeping up"));
  expect(refusals.length).toBeGreaterThanOrEqual(1);
  const logText = JSON.stringify(instance.logs);
  expect(logText).not.toContain("Q7Z9K2");
  expect(logText).not.toContain("late@example.com");
  expect(refused.details).not.toContain("Q7Z9K2");
});

it("SMTP_MAX_BACKLOG=off: nothing is refused, every send waits for a connection", async () => {
  const { sink, instance } = await stalledRelay({ SMTP_POOL_SIZE: "1", SMTP_MAX_BACKLOG: "off" });
  const sends = ["a", "b", "c", "d", "e"].map((name) => call(instance.client, sendOtp, login(`${name}@example.com`)));
  // Awaited below; a failed assertion before then must not leave them unhandled.
  for (const sent of sends) sent.catch(() => undefined);
  await until("five attempts are in flight", async () => (await metric(instance, "otp_smtp_attempts_in_flight")) === 5);
  expect(await metric(instance, "otp_smtp_backlog")).toBe(4);

  sink.release();
  for (const sent of await Promise.all(sends)) expect(sent.state).toBe(DeliveryState.ACCEPTED);
  expect(await metric(instance, "otp_sends_total", { purpose: "login", outcome: "backlog_full" })).toBe(0);
});

it("with the backlog full, a repeated idempotency_key still answers its first call, and a send refused for another reason gives its place back", async () => {
  const { sink, instance } = await stalledRelay({ SMTP_POOL_SIZE: "1", SMTP_MAX_BACKLOG: "1" });
  const first = call(instance.client, sendOtp, login("ana@example.com", { idempotencyKey: "ana-1" }));
  first.catch(() => undefined);
  await until("the relay holds a message", () => sink.held() === 1);

  // Refused by the resend cooldown after taking a place in the backlog: the place is given back...
  const cooled = await failure(call(instance.client, sendOtp, login("ana@example.com")));
  expect(cooled.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  // ...so the one message the backlog holds is taken on, and only the next is refused.
  const waiting = call(instance.client, sendOtp, login("bob@example.com"));
  waiting.catch(() => undefined);
  await until("two attempts are in flight", async () => (await metric(instance, "otp_smtp_attempts_in_flight")) === 2);
  expect(await metric(instance, "otp_smtp_backlog")).toBe(1);
  const refused = await failure(call(instance.client, sendOtp, login("cyd@example.com")));
  expect(detailsOf(refused).errorInfo?.reason).toBe("RELAY_BACKLOG_FULL");

  // The first call's key, repeated while the backlog is full: its message, as it stands, not a refusal.
  const replayed = await call(instance.client, sendOtp, login("ana@example.com", { idempotencyKey: "ana-1" }));
  expect(replayed.state).toBe(DeliveryState.SENDING);

  sink.release();
  const [sent, queued] = await Promise.all([first, waiting]);
  expect(replayed.messageId).toBe(sent.messageId);
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  expect(queued.state).toBe(DeliveryState.ACCEPTED);
});

it("messages whose codes expired while they waited behind a slow relay are withdrawn unsent, counted as expired, and leave the relay up and the instance SERVING", async () => {
  const minute = 60_000;
  let offset = 0;
  const health = createAppHealth();
  const relayFlips: HealthChange[] = [];
  health.onChange((change) => {
    if (change.component === "relay") relayFlips.push(change);
  });
  const { sink, instance } = await stalledRelay({ SMTP_POOL_SIZE: "1" }, { clock: { now: () => Date.now() + offset }, health });
  expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
  relayFlips.length = 0;

  const first = call(instance.client, sendOtp, { ...login("first@example.com"), ttl: durationFromMs(30 * minute) });
  await until("the relay holds a message", () => sink.held() === 1);
  // Three more wait for the one connection, with codes that expire long before the relay answers.
  const waiting = ["a", "b", "c"].map((name) =>
    failure(call(instance.client, sendOtp, { ...login(`${name}@example.com`), ttl: durationFromMs(10 * minute) })),
  );
  await until("four attempts are in flight", async () => (await metric(instance, "otp_smtp_attempts_in_flight")) === 4);

  // The relay takes 11 minutes over the first message, then answers it: the others leave the queue expired.
  offset += 11 * minute;
  sink.release();
  expect((await first).state).toBe(DeliveryState.ACCEPTED);
  for (const refused of await Promise.all(waiting)) {
    expect(refused.code).toBe(grpc.status.UNAVAILABLE);
    expect(refused.details).toMatch(/the code expired before it could be sent/);
  }
  expect(sink.transactions()).toBe(1);

  // Three in a row with no reply from the relay, yet no evidence against it: it answered all along.
  expect(relayFlips).toEqual([]);
  expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "expired", reply_class: "none" })).toBe(3);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "transient", reply_class: "none" })).toBe(0);
  expect(await metric(instance, "otp_smtp_attempts_total", { result: "ok", reply_class: "2xx" })).toBe(1);
});
