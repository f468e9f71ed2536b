/**
 * Spam complaints (RFC 5965 feedback reports) over real SMTP to the bounce
 * intake (smtp-server on 127.0.0.1:0, nodemailer as the provider's MTA), with
 * the memory store: each sample is tied to its message by the VERP address
 * or our Message-ID, recorded as evidence, and suppresses on abuse or fraud;
 * reports that name no message, or two, apply to nothing; nothing of the
 * returned original (whose Subject and body hold the code) is kept or logged.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Writable } from "node:stream";
import { createTransport } from "nodemailer";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createBounceProcessor, type BounceOutcome } from "../../src/bounce/bounce-processor.js";
import { createFeedbackProcessor, type FeedbackOutcome } from "../../src/bounce/feedback-processor.js";
import { startBounceIntake, type BounceIntake } from "../../src/bounce/intake-server.js";
import { createSuppressionList, type SuppressionList } from "../../src/bounce/suppression.js";
import { systemClock } from "../../src/clock.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { withReports } from "../../src/delivery/reports.js";
import { newMessageId } from "../../src/otp/code.js";
import { createMemoryStore } from "../../src/store/memory-store.js";
import { createBounceTelemetry } from "../../src/telemetry/bounce-telemetry.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import type { OtpStore } from "../../src/store/types.js";
import { arfFixture, arfMessage, type ArfFixture } from "../support/arf-fixtures.js";
import { dsnMessage } from "../support/dsn-fixtures.js";

const bounceDomain = "bounces.acme.test";
const feedbackAddress = "fbl@bounces.acme.test";
const recipientKey = "jane.doe@yahoo.test";

let store: OtpStore;
let suppression: SuppressionList;
let intake: BounceIntake;
let outcomes: FeedbackOutcome[];
let bounces: BounceOutcome[];
let applied: DeliveryRecord[];
/** Every log line the processors and the intake wrote, at debug level. */
let logged: string[];

/** Starts the intake with `address` as the feedback address (null: FEEDBACK_ADDRESS=off). */
async function start(address: string | null = feedbackAddress): Promise<void> {
  const logger = pino(
    { level: "debug" },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        logged.push(chunk.toString("utf8"));
        done();
      },
    }),
  );
  const common = { store, suppression, clock: systemClock, logger, reportTtlMs: 3_600_000 };
  intake = await startBounceIntake({
    host: "127.0.0.1",
    port: 0,
    bounceDomain,
    logger,
    processor: createBounceProcessor({ ...common, onOutcome: (outcome) => bounces.push(outcome) }),
    feedback: {
      address: address ?? undefined,
      processor: createFeedbackProcessor({
        ...common,
        bounceDomain,
        messageIdDomain: "acme.test",
        onApplied: (record) => applied.push(record),
        onOutcome: (outcome) => outcomes.push(outcome),
      }),
    },
  });
}

beforeEach(async () => {
  store = createMemoryStore({ clock: systemClock });
  suppression = createSuppressionList({ store, secret: randomBytes(32), ttlMs: 3_600_000, clock: systemClock });
  outcomes = [];
  bounces = [];
  applied = [];
  logged = [];
  await start();
});

afterEach(async () => {
  await intake.close();
  await store.close();
});

/** Stores an ACCEPTED record for a fresh message id, as the sender would leave it. */
async function acceptedMessage(offset = 0): Promise<DeliveryRecord> {
  const now = Date.now();
  const record: DeliveryRecord = {
    messageId: newMessageId(now + offset),
    caller: "billing",
    state: "ACCEPTED",
    recipientMasked: "j***@yahoo.test",
    recipientDomain: "yahoo.test",
    purpose: "login",
    locale: "en",
    createdAt: now,
    updatedAt: now,
    expiresAt: now + 600_000,
    attempts: [],
    relayReply: { relay: "relay.test:25", text: "250 2.0.0 Ok: queued as 4F2A", queueId: "4F2A", acceptedAt: now, dsnRequested: true },
    traceId: "0af7651916cd43dd8448eb211c80319c",
    recipientHash: suppression.recipientHash(recipientKey),
  };
  await store.putRecord(record, 3_600_000);
  return record;
}

async function status(messageId: string): Promise<DeliveryRecord | undefined> {
  const record = await store.getRecord(messageId);
  return record === undefined ? undefined : withReports(record, await store.getDeliveryReports(messageId));
}

/** Sends `raw` with the null sender, as a feedback loop does. Resolves with the reply (or the error's code). */
async function deliver(to: string | string[], raw: Buffer): Promise<string> {
  const client = createTransport({ host: "127.0.0.1", port: intake.address.port, secure: false, ignoreTLS: true, logger: false });
  try {
    return (await client.sendMail({ envelope: { from: "", to }, raw })).response;
  } catch (error) {
    return String((error as { responseCode?: number }).responseCode ?? error);
  } finally {
    client.close();
  }
}

const verp = (messageId: string): string => `bounce+${messageId}@${bounceDomain}`;
const suppressionOf = (): ReturnType<SuppressionList["check"]> => suppression.check(suppression.recipientHash(recipientKey));

describe("feedback reports from real feedback loops", () => {
  const samples: { name: ArfFixture; to: "feedback" | "verp"; feedbackType: string; userAgent: string; arrivalDate: string; finalRecipient: string; reportingMta: string }[] = [
    {
      name: "yahoo-cfl",
      to: "feedback",
      feedbackType: "abuse",
      userAgent: "Yahoo!-Mail-Feedback/2.0",
      // Yahoo still writes the draft's Received-Date.
      arrivalDate: "Fri, 27 Nov 2026 07:59:31 +0000",
      finalRecipient: "rfc822; j***@yahoo.test",
      reportingMta: "",
    },
    {
      name: "microsoft-jmrp",
      to: "feedback",
      feedbackType: "abuse",
      userAgent: "Hotmail FBL",
      arrivalDate: "Fri, 27 Nov 2026 07:59:31 -0800",
      finalRecipient: "",
      reportingMta: "",
    },
    {
      name: "isp-rfc822-headers",
      to: "verp",
      feedbackType: "fraud",
      userAgent: "ISP-FBL/3.1",
      arrivalDate: "Fri, 27 Nov 2026 08:59:31 +0100",
      finalRecipient: "rfc822; j***@isp.example.test",
      reportingMta: "dns; fbl.isp.example.test",
    },
    {
      name: "rfc5965-example",
      to: "feedback",
      feedbackType: "abuse",
      userAgent: "SomeGenerator/1.0",
      arrivalDate: "Thu, 8 Mar 2005 14:00:00 EDT",
      finalRecipient: "rfc822; u***@example.test",
      reportingMta: "",
    },
  ];

  for (const sample of samples) {
    it(`${sample.name}: tied to its message, recorded as a ${sample.feedbackType} complaint, DELIVERED, recipient suppressed`, async () => {
      const record = await acceptedMessage();
      const code = String(100000 + Math.floor(Math.random() * 900000));
      const raw = arfFixture(sample.name, record.messageId, code);
      const to = sample.to === "feedback" ? feedbackAddress : verp(record.messageId);

      expect(await deliver(to, raw)).toMatch(/^250 /);

      const now = await status(record.messageId);
      expect(now?.state).toBe("DELIVERED");
      expect(now?.reports).toEqual([
        {
          receivedAt: expect.any(Number) as number,
          action: "complained",
          status: "",
          diagnosticCode: "",
          remoteMta: "",
          reportingMta: sample.reportingMta,
          finalRecipient: sample.finalRecipient,
          envelopeId: "",
          feedbackType: sample.feedbackType,
          userAgent: sample.userAgent,
          arrivalDate: sample.arrivalDate,
          identity: expect.stringMatching(/^[0-9a-f]{32}$/) as string,
        },
      ]);
      expect(await suppressionOf()).toMatchObject({ messageId: record.messageId, reason: "complaint", feedbackType: sample.feedbackType, status: "" });
      expect(outcomes).toMatchObject([{ kind: "applied", messageId: record.messageId, previousState: "ACCEPTED", state: "DELIVERED", suppressed: true }]);
      expect(applied.map((one) => one.state)).toEqual(["DELIVERED"]);
      expect(bounces).toEqual([]);
      // Nothing of the original is kept or logged: not the code, not the address.
      const kept = JSON.stringify([now, await suppressionOf(), outcomes]);
      for (const secret of [code, "jane.doe", "sign-in code", "redacted@"]) {
        expect(kept).not.toContain(secret);
        expect(logged.join("")).not.toContain(secret);
      }
      const line = logged.map((entry) => JSON.parse(entry) as Record<string, unknown>).find((entry) => entry["msg"] === "complaint applied");
      // The send's trace, to go from the complaint to the SMTP conversation.
      expect(line).toMatchObject({ message_id: record.messageId, send_trace_id: record.traceId });
    });
  }

  it("not-spam feedback is recorded as NOT_SPAM (DELIVERED) and suppresses nothing", async () => {
    const record = await acceptedMessage();
    const raw = Buffer.from(arfFixture("yahoo-cfl", record.messageId).toString("latin1").replace("Feedback-Type: abuse", "Feedback-Type: not-spam"), "latin1");

    expect(await deliver(feedbackAddress, raw)).toMatch(/^250 /);

    const now = await status(record.messageId);
    expect(now?.state).toBe("DELIVERED");
    expect(now?.reports).toMatchObject([{ action: "not_spam", feedbackType: "not-spam" }]);
    expect(await suppressionOf()).toBeUndefined();
    expect(outcomes).toMatchObject([{ kind: "applied", suppressed: false }]);
  });

  it("virus, other and unregistered feedback types are recorded as complaints but do not suppress", async () => {
    for (const [given, stored] of [["virus", "virus"], ["other", "other"], ["opt-out", "other"]] as const) {
      const record = await acceptedMessage();
      const raw = Buffer.from(arfFixture("yahoo-cfl", record.messageId).toString("latin1").replace("Feedback-Type: abuse", `Feedback-Type: ${given}`), "latin1");
      expect(await deliver(feedbackAddress, raw)).toMatch(/^250 /);
      expect((await status(record.messageId))?.reports, given).toMatchObject([{ action: "complained", feedbackType: stored }]);
    }
    expect(await suppressionOf()).toBeUndefined();
  });

  it("the same complaint received again is one report, counted once applied and once duplicate, one complaint, and does not suppress again what support lifted", async () => {
    const record = await acceptedMessage();
    const raw = arfFixture("yahoo-cfl", record.messageId);
    expect(await deliver(feedbackAddress, raw)).toMatch(/^250 /);
    expect(await suppression.lift(recipientKey)).toHaveLength(1);

    expect(await deliver(feedbackAddress, raw)).toMatch(/^250 /);

    expect((await status(record.messageId))?.reports).toHaveLength(1);
    expect(await suppressionOf()).toBeUndefined();
    expect(outcomes).toMatchObject([
      { kind: "applied", suppressed: true, duplicate: false },
      { kind: "applied", suppressed: false, duplicate: true },
    ]);
    // Only the first told the listeners (the delivery report span): the copy changed nothing.
    expect(applied.map(({ messageId }) => messageId)).toEqual([record.messageId]);
    // Both are counted as read, the copy apart (as a resent DSN is), the complaint once: a resent report
    // would inflate the complaint rate.
    const metrics = createMetrics({ providers: createProviderClassifier() });
    const telemetry = createBounceTelemetry({ metrics });
    for (const outcome of outcomes) telemetry.feedback(outcome);
    const text = await metrics.render("text");
    expect(text).toMatch(/^otp_feedback_reports_total\{kind="applied",feedback_type="abuse"\} 1$/m);
    expect(text).toMatch(/^otp_feedback_reports_total\{kind="duplicate",feedback_type="abuse"\} 1$/m);
    const complaints = [...text.matchAll(/^otp_spam_complaints_total\{feedback_type="abuse",provider="[a-z]+"\} (\d+)$/gm)];
    expect(complaints.reduce((sum, match) => sum + Number(match[1]), 0)).toBe(1);
  });

  it("a complaint about a message that hard-bounced keeps it BOUNCED, with the complaint beside the DSN", async () => {
    const record = await acceptedMessage();
    const to = verp(record.messageId);
    const dsn = dsnMessage({ to, envelopeId: record.messageId, recipients: [{ action: "failed", status: "5.2.2" }] });
    expect(await deliver(to, dsn)).toMatch(/^250 /);
    expect(await deliver(feedbackAddress, arfFixture("yahoo-cfl", record.messageId))).toMatch(/^250 /);

    const now = await status(record.messageId);
    expect(now?.state).toBe("BOUNCED");
    expect(now?.reports?.map((report) => report.action)).toEqual(["failed", "complained"]);
  });
});

describe("feedback reports that apply to nothing", () => {
  it("naming an unknown message: 250, counted as unmatched, nothing stored", async () => {
    const unknown = newMessageId(Date.now() - 86_400_000);

    expect(await deliver(feedbackAddress, arfFixture("yahoo-cfl", unknown))).toMatch(/^250 /);

    expect(outcomes).toEqual([{ kind: "unmatched", feedbackType: "abuse", reason: "unknown_message" }]);
    expect(await store.getDeliveryReports(unknown)).toEqual([]);
    expect(await suppressionOf()).toBeUndefined();
  });

  it("naming none of our messages (another sender's return path and Message-ID): unmatched", async () => {
    const raw = arfMessage({
      to: feedbackAddress,
      report: ["Feedback-Type: abuse", "User-Agent: ISP-FBL/3.1", "Version: 1", "Original-Mail-From: <bounce+01kbf3vq0m4x2c9d8e7f6g5h4j@other.test>"],
      original: ["Message-ID: <01kbf3vq0m4x2c9d8e7f6g5h4j@other.test>", "Subject: 123456 is your code", "", "Your code is 123456."],
    });

    expect(await deliver(feedbackAddress, raw)).toMatch(/^250 /);

    expect(outcomes).toEqual([{ kind: "unmatched", feedbackType: "abuse", reason: "no_message_id" }]);
  });

  it("whose VERP address and Message-ID name two messages: applied to neither", async () => {
    const [one, two] = [await acceptedMessage(), await acceptedMessage(1)];
    const raw = arfMessage({
      to: verp(one.messageId),
      report: ["Feedback-Type: abuse", "User-Agent: ISP-FBL/3.1", "Version: 1", `Original-Mail-From: <${verp(one.messageId)}>`],
      original: [`Return-Path: <${verp(one.messageId)}>`, `Message-ID: <${two.messageId}@acme.test>`, "Subject: 123456 is your code", ""],
    });

    expect(await deliver(verp(one.messageId), raw)).toMatch(/^250 /);

    expect(outcomes).toEqual([{ kind: "unmatched", feedbackType: "abuse", reason: "id_mismatch" }]);
    expect((await status(one.messageId))?.state).toBe("ACCEPTED");
    expect((await status(two.messageId))?.state).toBe("ACCEPTED");
    expect(await suppressionOf()).toBeUndefined();
  });

  it("that are not ARF (plain mail, a DSN, no Feedback-Type, an auth-failure report, garbage) are accepted and counted as not_arf", async () => {
    const record = await acceptedMessage();
    const reports = [
      Buffer.from("From: someone@example.test\r\nSubject: unsubscribe\r\n\r\nplease stop\r\n"),
      dsnMessage({ to: feedbackAddress, envelopeId: record.messageId, recipients: [{ action: "failed", status: "5.1.1" }] }),
      arfMessage({ to: feedbackAddress, report: ["User-Agent: ISP-FBL/3.1", "Version: 1", `Original-Mail-From: <${verp(record.messageId)}>`] }),
      arfMessage({ to: feedbackAddress, report: ["Feedback-Type: auth-failure", "Version: 1", `Original-Mail-From: <${verp(record.messageId)}>`] }),
      arfMessage({ to: feedbackAddress, report: [], contentType: "multipart/report; report-type=feedback-report; boundary=nowhere" }),
      randomBytes(2000),
    ];
    for (const raw of reports) expect(await deliver(feedbackAddress, raw)).toMatch(/^250 /);

    expect(outcomes.map((outcome) => outcome.kind)).toEqual(Array(reports.length).fill("not_arf"));
    expect(outcomes.map((outcome) => (outcome.kind === "not_arf" ? outcome.reason : ""))).toContain("an authentication failure report (RFC 6591), not a complaint");
    expect(bounces).toEqual([]);
    expect((await status(record.messageId))?.state).toBe("ACCEPTED");
  });

  it("a report for a message that was never sent (SUPPRESSED) is not applied", async () => {
    const record = { ...(await acceptedMessage()), state: "SUPPRESSED" as const };
    await store.putRecord(record, 3_600_000);

    expect(await deliver(feedbackAddress, arfFixture("yahoo-cfl", record.messageId))).toMatch(/^250 /);

    expect(outcomes).toEqual([{ kind: "unmatched", feedbackType: "abuse", reason: "not_sent" }]);
  });
});

describe("the feedback address", () => {
  it("FEEDBACK_ADDRESS off: 550 at fbl@, reports still taken at the VERP addresses", async () => {
    await intake.close();
    await start(null);
    const record = await acceptedMessage();

    expect(await deliver(feedbackAddress, arfFixture("yahoo-cfl", record.messageId))).toBe("550");
    expect(await deliver(verp(record.messageId), arfFixture("yahoo-cfl", record.messageId))).toMatch(/^250 /);

    expect(outcomes).toMatchObject([{ kind: "applied", messageId: record.messageId }]);
  });

  it("is matched without regard to case, on any domain", async () => {
    await intake.close();
    await start("complaints@acme.test");
    const record = await acceptedMessage();

    expect(await deliver("Complaints@ACME.test", arfFixture("microsoft-jmrp", record.messageId))).toMatch(/^250 /);
    expect(await deliver(feedbackAddress, arfFixture("microsoft-jmrp", record.messageId))).toBe("550");

    expect(outcomes).toMatchObject([{ kind: "applied", messageId: record.messageId }]);
  });

  it("README's demo complaint (deploy/examples/complaint.eml, as its curl command sends it) applies to its message", async () => {
    await intake.close();
    const demoDomain = "otp-email.localhost";
    const logger = pino({ level: "silent" });
    const common = { store, suppression, clock: systemClock, logger, reportTtlMs: 3_600_000 };
    intake = await startBounceIntake({
      host: "127.0.0.1",
      port: 0,
      bounceDomain: demoDomain,
      logger,
      processor: createBounceProcessor(common),
      feedback: {
        address: `fbl@${demoDomain}`,
        processor: createFeedbackProcessor({ ...common, bounceDomain: demoDomain, messageIdDomain: demoDomain, onOutcome: (outcome) => outcomes.push(outcome) }),
      },
    });
    const record = await acceptedMessage();
    const demo = readFileSync(new URL("../../deploy/examples/complaint.eml", import.meta.url), "utf8");

    expect(await deliver(`fbl@${demoDomain}`, Buffer.from(demo.replaceAll("MESSAGE_ID", record.messageId).replace(/\r?\n/g, "\r\n")))).toMatch(/^250 /);

    expect(outcomes).toMatchObject([{ kind: "applied", messageId: record.messageId, feedbackType: "abuse", suppressed: true }]);
    expect((await status(record.messageId))?.reports).toMatchObject([{ action: "complained", finalRecipient: "rfc822; a***@yahoo.com" }]);
  });

  it("a DSN at a VERP address still goes to the bounce processor", async () => {
    const record = await acceptedMessage();
    const to = verp(record.messageId);

    expect(await deliver(to, dsnMessage({ to, envelopeId: record.messageId, recipients: [{ action: "delayed", status: "4.4.1" }] }))).toMatch(/^250 /);

    expect(bounces).toMatchObject([{ kind: "applied" }]);
    expect(outcomes).toEqual([]);
  });
});
