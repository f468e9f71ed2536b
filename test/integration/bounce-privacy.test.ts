/**
 * What bounces tell, and to whom, on real parts: the app in the test process
 * on a private Redis prefix, the SMTP sink as its relay, DSNs handed to its
 * bounce intake over SMTP as a relay sends them, two callers with tokens.
 * A DSN that quotes the Subject leaves the code nowhere; the same DSN twice
 * is one report and does not restart the suppression, even when the copies
 * land at once on two instances; a caller refused for a recipient that
 * another caller's message bounced is not told that message's id.
 */
import { toJsonString } from "@bufbuild/protobuf";
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DeliveryState, GetDeliveryStatusResponseSchema, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import type { Clock } from "../../src/clock.js";
import { dsnMessage, type DsnRecipientFields } from "../support/dsn-fixtures.js";
import { bearer, call, detailsOf, failure, getDeliveryStatus, newToken, sendOtp, startInstance, untilServing, type Instance } from "../support/otp-instances.js";
import { randomPrefix, redisUrlForTests, scanPrefix } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const bounceDomain = "bounces.acme.test";
const alpha = newToken("alpha");
const beta = newToken("beta");
const hour = 3_600_000;

let sink: SmtpSink;
let redis: Redis;
const running: Instance[] = [];

beforeAll(async () => {
  sink = await startSmtpSink();
  redis = new Redis(redisUrlForTests(), { lazyConnect: true });
  await redis.connect();
});

beforeEach(() => {
  sink.messages.length = 0;
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((instance) => instance.stop()));
});

afterAll(async () => {
  redis.disconnect();
  await sink.close();
});

/** One instance with a bounce intake and the callers alpha and beta; returns it and its Redis prefix (given: shared with another). */
async function start(clock?: Clock, prefix = randomPrefix()): Promise<{ instance: Instance; prefix: string }> {
  const instance = await startInstance({
    env: {
      LOG_LEVEL: "debug",
      AUTH_TOKENS: `${alpha.entry},${beta.entry}`,
      SMTP_URL: sink.url,
      REDIS_URL: redisUrlForTests(),
      REDIS_PREFIX: prefix,
      BOUNCE_SMTP_ADDR: "127.0.0.1:0",
      BOUNCE_DOMAIN: bounceDomain,
      LIMIT_RESEND_COOLDOWN: "0",
    },
    ...(clock === undefined ? {} : { clock }),
  });
  running.push(instance);
  await untilServing(instance);
  return { instance, prefix };
}

/** Hands a DSN about `messageId` with one recipient block to the instance's intake, as the relay would. */
async function bounce(instance: Instance, messageId: string, block: DsnRecipientFields): Promise<void> {
  const to = `bounce+${messageId}@${bounceDomain}`;
  const intake = createTransport({ host: "127.0.0.1", port: instance.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
  try {
    const reply = await intake.sendMail({ envelope: { from: "", to }, raw: dsnMessage({ to, envelopeId: messageId, recipients: [block] }) });
    expect(reply.response).toMatch(/^250 /);
  } finally {
    intake.close();
  }
}

const unknownUser = (recipient: string): DsnRecipientFields => ({
  action: "failed",
  status: "5.1.1",
  finalRecipient: recipient,
  diagnosticCode: `smtp; 550 5.1.1 <${recipient}>: Recipient address rejected: User unknown`,
});

/** SendOtp as `token`'s caller, expected to be refused: the error and its ErrorInfo metadata. */
async function refusedSend(instance: Instance, recipient: string, token: string) {
  const error = await failure(call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }, bearer(token)));
  return { error, metadata: detailsOf(error).errorInfo?.metadata ?? {} };
}

/** Every value under `prefix`, as text. */
async function dumpRedis(prefix: string): Promise<string> {
  const parts: string[] = [];
  for (const key of await scanPrefix(redis, prefix)) {
    const type = await redis.type(key);
    const value =
      type === "string" ? await redis.get(key)
      : type === "list" ? await redis.lrange(key, 0, -1)
      : type === "zset" ? await redis.zrange(key, "0", "-1")
      : type === "hash" ? await redis.hgetall(key)
      : `(${type})`;
    parts.push(`${key} ${JSON.stringify(value)}`);
  }
  return parts.join("\n");
}

describe("a DSN that quotes the message's Subject", () => {
  it("leaves the code in no report, suppression, answer, log line or Redis key: in clear or encoded, it reads [redacted]", async () => {
    const { instance, prefix } = await start();
    // Codes of our choosing, which no id, hash or timestamp can hold by chance.
    const code = "QX7ZK4W9";
    const koreanCode = "ZW94KQ7X";
    const sent = await call(instance.client, sendOtp, { recipient: "Jane.Doe@example.com", purpose: Purpose.LOGIN, code }, bearer(alpha.token));
    const [mail] = await sink.waitForMessages(1);
    const subject = mail?.parsed.subject ?? "";
    expect(subject).toBe(`${code} is your Acme Login sign-in code`);
    const korean = await call(instance.client, sendOtp, { recipient: "min@example.com", purpose: Purpose.LOGIN, locale: "ko", code: koreanCode }, bearer(alpha.token));
    const koreanMail = (await sink.waitForMessages(2))[1];
    // The Subject header as it went out (encoded words, folded), unfolded as a DSN quotes it.
    const rawSubject = /^Subject: (.*(?:\r\n[ \t].*)*)/m.exec(koreanMail?.raw.toString("latin1") ?? "")?.[1]?.replace(/\r\n[ \t]+/g, " ") ?? "";
    expect(rawSubject).toMatch(/=\?UTF-8\?/i);
    // A whole Subject as one base64 word, as some servers quote it.
    const encodedSubject = `=?UTF-8?B?${Buffer.from(subject, "utf8").toString("base64")}?=`;

    // A content filter refuses the first, quoting the Subject twice; the second is delayed, quoting the header.
    await bounce(instance, sent.messageId, {
      ...unknownUser("Jane.Doe@example.com"),
      diagnosticCode: `smtp; 550 5.1.1 <Jane.Doe@example.com>: mailbox unavailable; message "${subject}" refused (Subject: ${encodedSubject})`,
      remoteMta: `dns; mx.example.com (re: ${subject})`,
    });
    await bounce(instance, korean.messageId, {
      action: "delayed",
      status: "4.7.1",
      finalRecipient: "min@example.com",
      diagnosticCode: `smtp; 451 4.7.1 greylisted, try later; Subject: ${rawSubject}`,
    });

    const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId }, bearer(alpha.token));
    expect(status.state).toBe(DeliveryState.BOUNCED);
    expect(status.deliveryReports[0]?.diagnosticCode).toBe(
      'smtp; 550 5.1.1 <J***@example.com>: mailbox unavailable; message "[redacted] is your Acme Login sign-in code" refused (Subject: [redacted])',
    );
    expect(status.deliveryReports[0]?.remoteMta).toBe("dns; mx.example.com (re: [redacted] is your Acme Login sign-in code)");
    const koreanStatus = await call(instance.client, getDeliveryStatus, { messageId: korean.messageId }, bearer(alpha.token));
    expect(koreanStatus.state).toBe(DeliveryState.DELAYED);
    // The header as it went out: the code, wherever nodemailer put it (in clear or in an encoded word), is gone.
    expect(koreanStatus.deliveryReports[0]?.diagnosticCode).toMatch(/^smtp; 451 4\.7\.1 greylisted, try later; Subject: .*\[redacted\]$/);
    // The suppression the first caused keeps the diagnostic, redacted, and shows it on the next send.
    const refused = await refusedSend(instance, "jane.doe@example.com", alpha.token);
    expect(refused.metadata["bounce_status"]).toBe("5.1.1");
    const suppressed = await call(instance.client, getDeliveryStatus, { messageId: refused.metadata["message_id"] ?? "" }, bearer(alpha.token));
    expect(suppressed.suppression?.diagnosticCode).toContain('message "[redacted] is your Acme Login sign-in code" refused');

    const answers = [status, koreanStatus, suppressed].map((answer) => toJsonString(GetDeliveryStatusResponseSchema, answer)).join("\n") +
      `\n${refused.error.details}\n${JSON.stringify(refused.metadata)}`;
    const logs = JSON.stringify(instance.logs);
    const stored = await dumpRedis(prefix);
    expect(stored).toContain(sent.messageId);
    for (const [where, text] of [["answers", answers], ["logs", logs], ["Redis", stored]] as const) {
      for (const secret of [code, koreanCode, encodedSubject, rawSubject]) expect(text, `${where}: ${secret}`).not.toContain(secret);
      expect(text.toLowerCase(), where).not.toContain("jane.doe@");
    }
  });
});

describe("the same DSN received twice", () => {
  it("leaves the suppression it caused as it was; a bounce of another message starts it anew", async () => {
    let offset = 0;
    const clock: Clock = { now: () => Date.now() + offset };
    const { instance } = await start(clock);
    const recipient = "bob@example.com";
    const first = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }, bearer(alpha.token));
    const second = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }, bearer(alpha.token));
    const suppressedUntil = async (): Promise<number> => Date.parse((await refusedSend(instance, recipient, alpha.token)).metadata["suppressed_until"] ?? "");

    await bounce(instance, first.messageId, unknownUser(recipient));
    const until = await suppressedUntil();
    expect(until).toBeGreaterThan(clock.now());

    // The relay sends the same report again an hour later.
    offset += hour;
    await bounce(instance, first.messageId, unknownUser(recipient));
    expect(await suppressedUntil()).toBe(until);

    // The other message bounces too: news about the mailbox, an hour later still.
    offset += hour;
    await bounce(instance, second.messageId, unknownUser(recipient));
    expect(await suppressedUntil()).toBeGreaterThanOrEqual(until + 2 * hour);
  });
});

describe("the same DSN received twice, as GetDeliveryStatus shows it", () => {
  const reports = async (instance: Instance, messageId: string) =>
    (await call(instance.client, getDeliveryStatus, { messageId }, bearer(alpha.token))).deliveryReports.map((r) => `${r.status}`);

  it("is one report however often it comes; a later notice in the same words (a later Last-Attempt-Date) is a report of its own", async () => {
    const { instance } = await start();
    const sent = await call(instance.client, sendOtp, { recipient: "dora@example.com", purpose: Purpose.LOGIN }, bearer(alpha.token));
    const delayed = (lastAttempt: string): DsnRecipientFields => ({
      action: "delayed",
      status: "4.4.1",
      finalRecipient: "dora@example.com",
      diagnosticCode: "smtp; 451 4.4.1 Try again later",
      extra: [`Last-Attempt-Date: ${lastAttempt}`],
    });

    await bounce(instance, sent.messageId, delayed("Sun, 29 Nov 2026 08:00:00 +0000"));
    await bounce(instance, sent.messageId, delayed("Sun, 29 Nov 2026 08:00:00 +0000"));
    await bounce(instance, sent.messageId, delayed("Sun, 29 Nov 2026 12:00:00 +0000"));
    await bounce(instance, sent.messageId, unknownUser("dora@example.com"));
    await bounce(instance, sent.messageId, unknownUser("dora@example.com"));

    expect(await reports(instance, sent.messageId)).toEqual(["4.4.1", "4.4.1", "5.1.1"]);
  });

  it("two copies landing at once on two instances: one report, and only one copy touches the suppression", async () => {
    // The second instance's clock runs an hour ahead: had its copy rewritten the suppression, the expiry would move.
    const { instance: first, prefix } = await start();
    const { instance: second } = await start({ now: () => Date.now() + hour }, prefix);
    const sent = await call(first.client, sendOtp, { recipient: "eve@example.com", purpose: Purpose.LOGIN }, bearer(alpha.token));

    await Promise.all([bounce(first, sent.messageId, unknownUser("eve@example.com")), bounce(second, sent.messageId, unknownUser("eve@example.com"))]);

    expect(await reports(first, sent.messageId)).toEqual(["5.1.1"]);
    const applied = [...first.logs, ...second.logs].filter((line) => line["msg"] === "bounce applied");
    expect(applied).toHaveLength(2);
    expect(applied.filter((line) => line["suppressed"] === true)).toHaveLength(1);
    expect(applied.filter((line) => line["duplicate"] === true)).toHaveLength(1);
    // The suppression in force is one copy's whole write (SUPPRESSION_TTL, 30 days, on its instance's clock): the
    // store keeps the first write of a cause and the other copy leaves it. Which copy wrote first is not the one
    // whose report was stored first (the suppression is written before the report), so either clock may be the one.
    const { metadata } = await refusedSend(first, "eve@example.com", alpha.token);
    const until = Date.parse(metadata["suppressed_until"] ?? "");
    const off = (writerClock: number): number => Math.abs(until - (Date.now() + writerClock + 30 * 24 * hour));
    expect(Math.min(off(0), off(hour))).toBeLessThan(10 * 60_000);
  });
});

describe("a recipient suppressed by another caller's message", () => {
  it("is refused with the bounce's status and dates, but the bounced message is named only to the caller that sent it", async () => {
    const { instance } = await start();
    const recipient = "carol@example.com";
    const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }, bearer(alpha.token));
    await bounce(instance, sent.messageId, unknownUser(recipient));

    // beta: refused, actionable, and nothing of alpha's message id.
    const other = await refusedSend(instance, recipient, beta.token);
    expect(other.error.details).toMatch(/^email not sent: c\*\*\*@example\.com hard-bounced \(status 5\.1\.1\) at .*, so sends to it are suppressed until /);
    expect(other.metadata).toMatchObject({ suppression_reason: "hard_bounce", bounce_status: "5.1.1" });
    expect(other.metadata["suppressed_until"]).toMatch(/^\d{4}-/);
    expect(other.metadata["bounced_message_id"]).toBeUndefined();
    const otherRecord = await call(instance.client, getDeliveryStatus, { messageId: other.metadata["message_id"] ?? "" }, bearer(beta.token));
    expect(otherRecord.state).toBe(DeliveryState.SUPPRESSED);
    expect(otherRecord.suppression).toMatchObject({ bouncedMessageId: "", status: "5.1.1" });
    expect(otherRecord.suppression?.diagnosticCode).toContain("User unknown");
    expect(otherRecord.explanation).toMatch(/^Not sent: the recipient hard-bounced at .* \(status 5\.1\.1, ".*User unknown"\), so sends to it are refused until /);
    const shownToBeta = [other.error.details, JSON.stringify(other.metadata), toJsonString(GetDeliveryStatusResponseSchema, otherRecord)].join("\n");
    expect(shownToBeta).not.toContain(sent.messageId);

    // alpha, whose message it was: named in the error, the record and its explanation.
    const own = await refusedSend(instance, recipient, alpha.token);
    expect(own.metadata["bounced_message_id"]).toBe(sent.messageId);
    const ownRecord = await call(instance.client, getDeliveryStatus, { messageId: own.metadata["message_id"] ?? "" }, bearer(alpha.token));
    expect(ownRecord.suppression?.bouncedMessageId).toBe(sent.messageId);
    expect(ownRecord.explanation).toContain(`message ${sent.messageId}`);
  });
});
