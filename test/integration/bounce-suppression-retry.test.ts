/**
 * A hard bounce or a complaint whose suppression, or whose own storing,
 * fails, on real parts: a whole instance (startApp, real gRPC, a real SMTP
 * sink as relay) on a private redis-server, reports handed to its bounce
 * intake over SMTP. A Redis ACL plays the failure: it refuses writes to the
 * suppressions (as a Redis Cluster node holding them being down would), or
 * to the message's reports, or LREM (with which a report stored before its
 * suppression failed was once taken back out). The intake answers 451, and
 * the relay's retry of the same report, once Redis takes writes again,
 * suppresses the recipient, once. A report is stored only after its
 * suppression was written: stored first, the retry would be a copy, and a
 * copy never suppresses.
 */
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { arfMessage } from "../support/arf-fixtures.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { call, detailsOf, failure, getDeliveryStatus, sendOtp, startInstance, untilServing, type Instance } from "../support/otp-instances.js";
import { sampleValue } from "../support/metric-samples.js";
import { randomPrefix, scanPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const bounceDomain = "bounces.acme.test";

let redis: RedisServer;
let sink: SmtpSink;
let admin: Redis;
let instance: Instance;
const prefix = randomPrefix();

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  admin = new Redis(redis.url);
  instance = await startInstance({
    env: {
      REDIS_URL: redis.url,
      REDIS_PREFIX: prefix,
      SMTP_URL: sink.url,
      BOUNCE_SMTP_ADDR: "127.0.0.1:0",
      BOUNCE_DOMAIN: bounceDomain,
      LIMIT_RESEND_COOLDOWN: "0",
    },
  });
  await untilServing(instance);
});

afterEach(async () => {
  await admin.acl("SETUSER", "default", "allkeys", "+@all");
});

afterAll(async () => {
  await instance.stop();
  admin.disconnect();
  await sink.close();
  await redis.stop();
});

/** Redis reads every key, writes every key but the suppressions ({limits}:supp:...). */
async function refuseSuppressionWrites(): Promise<void> {
  const writable = ["code:", "fail:", "msg:", "idem:", "dsn:", "sent:"].map((kind) => `~${prefix}${kind}*`);
  await admin.acl("SETUSER", "default", "resetkeys", ...writable, `%R~${prefix}{limits}:*`);
}

/**
 * As refuseSuppressionWrites, and LREM refused too: how the take-back of a
 * report whose suppression failed went (a Redis that took the report and
 * then went down fails both).
 */
async function refuseSuppressionWritesAndTakeBack(): Promise<void> {
  await refuseSuppressionWrites();
  await admin.acl("SETUSER", "default", "-lrem");
}

/** Redis writes every key but the messages' reports (dsn:...), which it only reads. */
async function refuseReportWrites(): Promise<void> {
  const writable = ["code:", "fail:", "msg:", "idem:", "sent:", "{limits}:"].map((kind) => `~${prefix}${kind}*`);
  await admin.acl("SETUSER", "default", "resetkeys", ...writable, `%R~${prefix}dsn:*`);
}

/** The suppression entry of the message `messageId` caused, as Redis holds it, with its TTL. */
async function storedSuppression(messageId: string): Promise<{ entry: Record<string, unknown>; pttl: number } | undefined> {
  for (const key of await scanPrefix(admin, `${prefix}{limits}:supp:`)) {
    const [value, pttl] = await Promise.all([admin.get(key), admin.pttl(key)]);
    const entry = JSON.parse(value ?? "{}") as Record<string, unknown>;
    if (entry["messageId"] === messageId) return { entry, pttl };
  }
  return undefined;
}

const bounceReports = (kind: string, state: string): Promise<number | undefined> =>
  sampleValue(instance.app.metrics.registry, "otp_bounce_reports_total", { kind, state });

/** Hands `raw` to the instance's intake for `to`, as the relay would; resolves the intake's reply. */
async function deliver(to: string, raw: Buffer): Promise<string> {
  const intake = createTransport({ host: "127.0.0.1", port: instance.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
  try {
    return (await intake.sendMail({ envelope: { from: "", to }, raw })).response;
  } catch (error) {
    return String((error as { response?: unknown }).response);
  } finally {
    intake.close();
  }
}

/** What a SendOtp refused for `recipient` says of its suppression (without the refused send's own message_id). */
async function suppressionOf(recipient: string): Promise<Record<string, string>> {
  const error = await failure(call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }));
  return Object.fromEntries(Object.entries(detailsOf(error).errorInfo?.metadata ?? {}).filter(([key]) => key !== "message_id"));
}

it("a hard bounce whose suppression could not be written is not kept, and the relay's retry suppresses", async () => {
  const recipient = "gone@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `bounce+${sent.messageId}@${bounceDomain}`;
  const dsn = dsnMessage({
    to,
    envelopeId: sent.messageId,
    recipients: [{ action: "failed", status: "5.1.1", finalRecipient: recipient, diagnosticCode: "smtp; 550 5.1.1 User unknown" }],
  });

  await refuseSuppressionWrites();
  expect(await deliver(to, dsn)).toMatch(/^451 /);
  // Nothing of it stays: GetDeliveryStatus shows no report, SendOtp is not refused.
  await admin.acl("SETUSER", "default", "allkeys");
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toEqual([]);

  // The relay retries the same DSN.
  expect(await deliver(to, dsn)).toMatch(/^250 /);

  expect(await suppressionOf(recipient)).toMatchObject({ suppression_reason: "hard_bounce", bounce_status: "5.1.1", bounced_message_id: sent.messageId });
  const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId });
  expect(status.state).toBe(DeliveryState.BOUNCED);
  expect(status.deliveryReports).toHaveLength(1);
});

it("a complaint whose suppression could not be written is not kept, and the provider's retry suppresses", async () => {
  const recipient = "annoyed@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `fbl@${bounceDomain}`;
  const report = arfMessage({
    to,
    report: [
      "Feedback-Type: abuse",
      "User-Agent: Yahoo!-Mail-Feedback/2.0",
      "Version: 1",
      `Original-Mail-From: <bounce+${sent.messageId}@${bounceDomain}>`,
      `Original-Rcpt-To: <${recipient}>`,
      "Arrival-Date: Fri, 27 Nov 2026 07:59:31 +0000",
    ],
  });

  await refuseSuppressionWrites();
  expect(await deliver(to, report)).toMatch(/^451 /);
  await admin.acl("SETUSER", "default", "allkeys");
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toEqual([]);

  expect(await deliver(to, report)).toMatch(/^250 /);

  expect(await suppressionOf(recipient)).toMatchObject({ suppression_reason: "complaint", feedback_type: "abuse", complained_message_id: sent.messageId });
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toHaveLength(1);
});

/** Postfix's "no such mailbox" DSN for `messageId`. */
function unknownUserDsn(messageId: string, recipient: string): Buffer {
  return dsnMessage({
    to: `bounce+${messageId}@${bounceDomain}`,
    envelopeId: messageId,
    recipients: [{ action: "failed", status: "5.1.1", finalRecipient: recipient, diagnosticCode: "smtp; 550 5.1.1 User unknown" }],
  });
}

it("a hard bounce refused both its suppression and the report's removal still suppresses on the relay's retry, once", async () => {
  const recipient = "vanished@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `bounce+${sent.messageId}@${bounceDomain}`;
  const dsn = unknownUserDsn(sent.messageId, recipient);
  const appliedBefore = (await bounceReports("applied", "BOUNCED")) ?? 0;
  const duplicatesBefore = (await bounceReports("duplicate", "none")) ?? 0;

  // Redis takes the report's write but neither the suppression nor a removal of the report.
  await refuseSuppressionWritesAndTakeBack();
  expect(await deliver(to, dsn)).toMatch(/^451 /);
  await admin.acl("SETUSER", "default", "allkeys", "+@all");

  // The relay retries the same DSN, and again (its 250 lost, say): suppressed once, by the first retry.
  expect(await deliver(to, dsn)).toMatch(/^250 /);
  expect(await deliver(to, dsn)).toMatch(/^250 /);

  expect(await suppressionOf(recipient)).toMatchObject({ suppression_reason: "hard_bounce", bounce_status: "5.1.1", bounced_message_id: sent.messageId });
  const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId });
  expect(status.state).toBe(DeliveryState.BOUNCED);
  expect(status.deliveryReports).toHaveLength(1);
  expect(await bounceReports("applied", "BOUNCED")).toBe(appliedBefore + 1);
  expect(await bounceReports("duplicate", "none")).toBe(duplicatesBefore + 1);
  const lines = instance.logs.filter((line) => line["msg"] === "bounce applied" && line["message_id"] === sent.messageId);
  expect(lines.map((line) => [line["suppressed"], line["duplicate"]])).toEqual([
    [true, undefined],
    [false, true],
  ]);
});

it("a complaint refused both its suppression and the report's removal still suppresses on the provider's retry, once", async () => {
  const recipient = "irked@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `fbl@${bounceDomain}`;
  const report = arfMessage({
    to,
    report: [
      "Feedback-Type: abuse",
      "User-Agent: Yahoo!-Mail-Feedback/2.0",
      "Version: 1",
      `Original-Mail-From: <bounce+${sent.messageId}@${bounceDomain}>`,
      `Original-Rcpt-To: <${recipient}>`,
      "Arrival-Date: Fri, 27 Nov 2026 08:12:05 +0000",
    ],
  });
  const complaints = (): Promise<number | undefined> =>
    sampleValue(instance.app.metrics.registry, "otp_feedback_reports_total", { kind: "applied", feedback_type: "abuse" });
  const before = (await complaints()) ?? 0;

  await refuseSuppressionWritesAndTakeBack();
  expect(await deliver(to, report)).toMatch(/^451 /);
  await admin.acl("SETUSER", "default", "allkeys", "+@all");

  expect(await deliver(to, report)).toMatch(/^250 /);
  expect(await deliver(to, report)).toMatch(/^250 /);

  expect(await suppressionOf(recipient)).toMatchObject({ suppression_reason: "complaint", feedback_type: "abuse", complained_message_id: sent.messageId });
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toHaveLength(1);
  expect(await complaints()).toBe(before + 1);
});

it("a hard bounce whose report could not be stored after its suppression was: the retry keeps that suppression's start, end and cause", async () => {
  const recipient = "moved-out@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `bounce+${sent.messageId}@${bounceDomain}`;
  const dsn = unknownUserDsn(sent.messageId, recipient);

  await refuseReportWrites();
  expect(await deliver(to, dsn)).toMatch(/^451 /);
  await admin.acl("SETUSER", "default", "allkeys", "+@all");
  // Suppressed already, but the report is not kept: its retry is a new report.
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toEqual([]);
  const first = await storedSuppression(sent.messageId);
  expect(first?.entry).toMatchObject({ messageId: sent.messageId, status: "5.1.1" });
  const refused = await suppressionOf(recipient);

  expect(await deliver(to, dsn)).toMatch(/^250 /);

  const after = await storedSuppression(sent.messageId);
  expect(after?.entry).toEqual(first?.entry);
  // Not written again: the key's TTL ran on (a rewrite would have started it over).
  expect(after?.pttl).toBeLessThanOrEqual(first?.pttl ?? 0);
  expect(await suppressionOf(recipient)).toEqual(refused);
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toHaveLength(1);
});

it("a copy of a hard bounce leaves the suppression in force (a later bounce's) with its start, end and cause", async () => {
  const recipient = "long-gone@example.com";
  const first = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const second = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const firstDsn = unknownUserDsn(first.messageId, recipient);

  expect(await deliver(`bounce+${first.messageId}@${bounceDomain}`, firstDsn)).toMatch(/^250 /);
  // The second message's bounce is news about the mailbox: its suppression replaces the first's.
  expect(await deliver(`bounce+${second.messageId}@${bounceDomain}`, unknownUserDsn(second.messageId, recipient))).toMatch(/^250 /);
  const inForce = await storedSuppression(second.messageId);
  expect(inForce).toBeDefined();
  const refused = await suppressionOf(recipient);
  expect(refused).toMatchObject({ bounced_message_id: second.messageId });

  // The first DSN again (a relay resending it): a copy.
  expect(await deliver(`bounce+${first.messageId}@${bounceDomain}`, firstDsn)).toMatch(/^250 /);

  const after = await storedSuppression(second.messageId);
  expect(after?.entry).toEqual(inForce?.entry);
  expect(after?.pttl).toBeLessThanOrEqual(inForce?.pttl ?? 0);
  expect(await storedSuppression(first.messageId)).toBeUndefined();
  expect(await suppressionOf(recipient)).toEqual(refused);
  expect((await call(instance.client, getDeliveryStatus, { messageId: first.messageId })).deliveryReports).toHaveLength(1);
});

it("copies of a hard bounce arriving at once (each suppressing before its report is stored) suppress once and count once", async () => {
  const recipient = "nobody-here@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const dsn = unknownUserDsn(sent.messageId, recipient);
  const appliedBefore = (await bounceReports("applied", "BOUNCED")) ?? 0;
  const duplicatesBefore = (await bounceReports("duplicate", "none")) ?? 0;

  const replies = await Promise.all(Array.from({ length: 5 }, () => deliver(`bounce+${sent.messageId}@${bounceDomain}`, dsn)));

  expect(replies.every((reply) => reply.startsWith("250 "))).toBe(true);
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toHaveLength(1);
  expect(await bounceReports("applied", "BOUNCED")).toBe(appliedBefore + 1);
  expect(await bounceReports("duplicate", "none")).toBe(duplicatesBefore + 4);
  const lines = instance.logs.filter((line) => line["msg"] === "bounce applied" && line["message_id"] === sent.messageId);
  expect(lines.filter((line) => line["suppressed"] === true)).toHaveLength(1);
  expect(await storedSuppression(sent.messageId)).toBeDefined();
});
