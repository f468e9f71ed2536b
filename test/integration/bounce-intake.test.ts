/**
 * The bounce intake over real SMTP (smtp-server on 127.0.0.1:0, nodemailer
 * and raw sockets as clients) with the memory store: who may send, what is
 * applied to which message, what suppresses, and that no garbage can crash
 * it or touch a record it does not name.
 */
import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import { Writable } from "node:stream";
import { createTransport } from "nodemailer";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createBounceProcessor, type BounceOutcome, type BounceProcessor } from "../../src/bounce/bounce-processor.js";
import type { IntakeRejectionReason } from "../../src/bounce/intake-rejections.js";
import { startBounceIntake, type BounceIntake, type BounceIntakeOptions } from "../../src/bounce/intake-server.js";
import { createSuppressionList, type SuppressionList } from "../../src/bounce/suppression.js";
import { systemClock } from "../../src/clock.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { withReports } from "../../src/delivery/reports.js";
import { newMessageId } from "../../src/otp/code.js";
import { createMemoryStore } from "../../src/store/memory-store.js";
import { maxDeliveryReports, type OtpStore } from "../../src/store/types.js";
import { dsnMessage, gmailDmarcDiagnostic, postfixUnknownUserDsn } from "../support/dsn-fixtures.js";
import { makeSelfSigned } from "../support/self-signed.js";

let logged: string[] = [];
const logger = pino(
  { level: "info" },
  new Writable({
    write(chunk: Buffer, _encoding, done) {
      logged.push(chunk.toString("utf8"));
      done();
    },
  }),
);
const loggedLines = (): Record<string, unknown>[] => logged.map((line) => JSON.parse(line) as Record<string, unknown>);
const bounceDomain = "bounces.acme.test";
const recipientKey = "jane.doe@gmail.test";

let store: OtpStore;
let suppression: SuppressionList;
let processor: BounceProcessor;
let intake: BounceIntake;
let outcomes: BounceOutcome[];
let applied: { record: DeliveryRecord; traceId: string }[];
/** Every refusal the intake reported (onRejection), in order. */
let reported: IntakeRejectionReason[];
const onRejection = (reason: IntakeRejectionReason): void => void reported.push(reason);

async function start(options: Partial<Pick<BounceIntakeOptions, "connectionsPerMinute" | "maxBytes" | "maxClients" | "tls" | "logger">> = {}): Promise<void> {
  await intake.close();
  intake = await startBounceIntake({ host: "127.0.0.1", port: 0, bounceDomain, processor, logger, onRejection, ...options });
}

beforeEach(async () => {
  store = createMemoryStore({ clock: systemClock });
  suppression = createSuppressionList({ store, secret: randomBytes(32), ttlMs: 3_600_000, clock: systemClock });
  outcomes = [];
  applied = [];
  reported = [];
  logged = [];
  processor = createBounceProcessor({
    store,
    suppression,
    clock: systemClock,
    logger,
    reportTtlMs: 3_600_000,
    onOutcome: (outcome) => outcomes.push(outcome),
    onBounceApplied: (record, traceId) => applied.push({ record, traceId }),
  });
  intake = await startBounceIntake({ host: "127.0.0.1", port: 0, bounceDomain, processor, logger, onRejection });
});

afterEach(async () => {
  await intake.close();
  await store.close();
});

/** Stores an ACCEPTED record for a fresh message id, as the sender would leave it. */
async function acceptedMessage(): Promise<DeliveryRecord> {
  const now = Date.now();
  const record: DeliveryRecord = {
    messageId: newMessageId(now),
    caller: "billing",
    state: "ACCEPTED",
    recipientMasked: "j***@gmail.test",
    recipientDomain: "gmail.test",
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

/** Sends `raw` over SMTP with the null sender, as an MTA sends a bounce. Resolves with the final reply. */
async function deliver(to: string | string[], raw: Buffer, via: { host?: string; localAddress?: string } = {}): Promise<string> {
  const client = createTransport({ host: "127.0.0.1", ...via, port: intake.address.port, secure: false, ignoreTLS: true, logger: false });
  try {
    const info = await client.sendMail({ envelope: { from: "", to }, raw });
    return info.response;
  } finally {
    client.close();
  }
}

/** Sends and returns the SMTP error's reply code (or 250). */
async function replyCode(to: string | string[], raw: Buffer, via: { host?: string; localAddress?: string } = {}): Promise<number> {
  try {
    await deliver(to, raw, via);
    return 250;
  } catch (error) {
    return (error as { responseCode?: number }).responseCode ?? -1;
  }
}

/** Speaks `commands` one by one on a raw connection; resolves with the greeting and each command's full reply. */
function smtpDialogue(commands: readonly string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = connect(intake.address.port, "127.0.0.1");
    const replies: string[] = [];
    let pending = "";
    socket.on("data", (data) => {
      pending += data.toString("latin1");
      // A reply ends with a line whose code is followed by a space.
      while (/^\d{3} .*\r\n/m.test(pending)) {
        const end = /^\d{3} .*\r\n/m.exec(pending);
        if (end === null) break;
        replies.push(pending.slice(0, end.index + end[0].length));
        pending = pending.slice(end.index + end[0].length);
        const next = commands[replies.length - 1];
        if (next === undefined) socket.end();
        else socket.write(`${next}\r\n`);
      }
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(replies));
  });
}

const verp = (messageId: string): string => `bounce+${messageId}@${bounceDomain}`;

/** Postfix's 5.1.1 bounce (RET=HDRS), about `messageId`. */
const unknownUserDsn = (messageId: string): Buffer =>
  Buffer.from(postfixUnknownUserDsn().toString("latin1").replaceAll("01kbf3vq0m4x2c9d8e7f6g5h4j", messageId), "latin1");

describe("bounce intake: who may send what", () => {
  it("takes a bounce from the null sender for bounce+<id>@<bounce domain>, and 550s every other recipient", async () => {
    const lines: Record<string, unknown>[] = [];
    const capture = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    await start({ logger: capture });
    const record = await acceptedMessage();
    const dsn = dsnMessage({ to: verp(record.messageId), envelopeId: record.messageId, recipients: [{ action: "delayed", status: "4.4.1" }] });

    expect(await deliver(verp(record.messageId), dsn)).toMatch(/^250 /);
    for (const other of [
      "postmaster@bounces.acme.test",
      `bounce+${record.messageId}@acme.test`,
      `bounce+${record.messageId}@bounces.acme.test.evil.test`,
      "bounce+not-a-message-id@bounces.acme.test",
      `bounce+${record.messageId}x@bounces.acme.test`,
    ]) {
      expect(await replyCode(other, dsn), other).toBe(550);
    }
    expect(intake.rejections().badRecipient).toBe(5);
    expect(reported).toEqual(Array(5).fill("bad_recipient"));
    // Each refusal has its log line, naming the peer (the metric has no peer label), the recipient masked.
    const refusals = lines.filter((line) => line["msg"] === "bounce intake refused a recipient: neither a VERP address of ours nor the feedback address");
    expect(refusals).toHaveLength(5);
    expect(refusals[0]).toMatchObject({ remote: "127.0.0.1", tls: "none", recipient: "p***@bounces.acme.test" });
    expect(outcomes.map((outcome) => outcome.kind)).toEqual(["applied"]);
  });

  it("refuses a message over the size limit with 552 and records nothing", async () => {
    const lines: Record<string, unknown>[] = [];
    const capture = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    await start({ maxBytes: 10_000, logger: capture });
    const record = await acceptedMessage();
    const big = dsnMessage({
      to: verp(record.messageId),
      recipients: [{ action: "failed", status: "5.1.1", extra: [`X-Padding: ${"x".repeat(20_000)}`] }],
    });

    expect(await replyCode(verp(record.messageId), big)).toBe(552);
    expect(reported).toEqual(["too_large"]);
    expect(outcomes).toEqual([]);
    expect((await status(record.messageId))?.state).toBe("ACCEPTED");
    // Like every line about a bounce, it names who sent it.
    expect(lines.find((line) => line["msg"] === "bounce larger than the size limit refused")).toMatchObject({
      remote: "127.0.0.1",
      helo: expect.any(String) as unknown,
      tls: "none",
    });
  });

  it("refuses a MAIL that declares a size over the limit (SIZE=) with 552, and counts it", async () => {
    await start({ maxBytes: 10_000 });
    const record = await acceptedMessage();
    const replies = await smtpDialogue(["EHLO relay.test", "MAIL FROM:<> SIZE=20000", `MAIL FROM:<> SIZE=9000`, `RCPT TO:<${verp(record.messageId)}>`, "QUIT"]);
    expect(replies[1]).toMatch(/^250[ -]/m);
    expect(replies[2]).toMatch(/^552 5\.3\.4 Message too big \(limit 10000 bytes\)/);
    expect(replies[3]).toMatch(/^250 /);
    expect(replies[4]).toMatch(/^250 /);
    expect(reported).toEqual(["too_large"]);
    expect(outcomes).toEqual([]);
  });

  it("limits new connections per address: the one over the limit gets 421", async () => {
    await start({ connectionsPerMinute: 3 });
    const record = await acceptedMessage();
    const dsn = dsnMessage({ to: verp(record.messageId), recipients: [{ action: "delayed", status: "4.4.1" }] });

    const codes: number[] = [];
    for (let i = 0; i < 4; i++) codes.push(await replyCode(verp(record.messageId), dsn));

    expect(codes).toEqual([250, 250, 250, 421]);
    expect(intake.rejections().rateLimited).toBe(1);
    expect(reported).toEqual(["rate_limited"]);
  });

  it("past the simultaneous connections, a new one gets 421 from smtp-server, and the refusal is reported", async () => {
    await start({ maxClients: 1 });
    const greeting = (): Promise<{ text: string; socket: ReturnType<typeof connect> }> =>
      new Promise((resolve, reject) => {
        const socket = connect(intake.address.port, "127.0.0.1");
        socket.once("error", reject);
        socket.once("data", (data: Buffer) => resolve({ text: data.toString("latin1"), socket }));
      });
    const first = await greeting();
    try {
      const second = await greeting();
      second.socket.destroy();
      // It greets as the bounce domain, the name its MX record gives.
      expect(first.text).toMatch(new RegExp(`^220 ${bounceDomain.replace(/\./g, "\\.")} `));
      expect(second.text).toMatch(/^421 /);
      expect(reported).toEqual(["too_many_clients"]);
    } finally {
      first.socket.destroy();
    }
  });

  it("a bounce cut off mid-DATA is one unreadable refusal, logged as a warning: not also an internal error", async () => {
    const record = await acceptedMessage();
    await new Promise<void>((resolve) => {
      const socket = connect(intake.address.port, "127.0.0.1");
      let text = "";
      // However the server ends the connection (a reset included), the test looks at what it counted and logged.
      socket.on("error", () => resolve());
      socket.on("close", () => resolve());
      socket.on("data", (data: Buffer) => {
        text += data.toString("latin1");
        if (/^220 /m.test(text) && !text.includes("SENT")) {
          text += "SENT";
          socket.write(`EHLO mx.relay.test\r\nMAIL FROM:<>\r\nRCPT TO:<${verp(record.messageId)}>\r\nDATA\r\n`);
        }
        // The relay goes away in the middle of the message.
        if (/^354 /m.test(text)) socket.end("Subject: Undelivered Mail Returned to Sender\r\nContent-Type: multipart/report;");
      });
    });
    for (let waited = 0; reported.length === 0; waited += 10) {
      expect(waited, "the cut-off message was never counted").toBeLessThan(5000);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    // Whatever else the intake does about it happens in the turns right after the stream's error.
    await new Promise((resolve) => setTimeout(resolve, 100));

    expect(reported).toEqual(["unreadable"]);
    const lines = loggedLines();
    expect(lines.filter((line) => (line["level"] as number) >= 50)).toEqual([]);
    expect(lines.filter((line) => line["msg"] === "bounce intake could not read a message")).toHaveLength(1);
    expect(outcomes).toEqual([]);
  });

  it("takes a bounce's first recipients and refuses those past the fifth with 452", async () => {
    const record = await acceptedMessage();
    const dsn = dsnMessage({ to: verp(record.messageId), recipients: [{ action: "delayed", status: "4.4.1" }] });

    const others = Array.from({ length: 6 }, (_, i) => verp(newMessageId(Date.now() + i + 1)));

    const response = await deliver([verp(record.messageId), ...others], dsn);

    expect(response).toMatch(/^250 /);
    expect(reported).toEqual(["too_many_recipients", "too_many_recipients"]);
  });

  it("on a dual-stack listener, counts an IPv6 peer by its /64 (::1 here) and each IPv4 peer by its own address, and logs its own address bracketed", async () => {
    const lines: Record<string, unknown>[] = [];
    const capture = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    await intake.close();
    intake = await startBounceIntake({ host: "::", port: 0, bounceDomain, processor, logger: capture, connectionsPerMinute: 1 });
    const record = await acceptedMessage();
    const dsn = dsnMessage({ to: verp(record.messageId), recipients: [{ action: "delayed", status: "4.4.1" }] });
    const from = (host: string, localAddress: string): Promise<number> =>
      replyCode(verp(record.messageId), dsn, { host, localAddress });

    // IPv4 peers arrive IPv4-mapped (::ffff:127.0.0.x), inside ::/64 like ::1, yet each is a peer of its own.
    const codes = [await from("127.0.0.1", "127.0.0.1"), await from("127.0.0.1", "127.0.0.2"), await from("::1", "::1"), await from("::1", "::1")];

    expect(codes).toEqual([250, 250, 250, 421]);
    expect(lines.filter((line) => line["msg"] === "bounce intake connection refused: rate limit")).toMatchObject([
      { remote: "::1", peer: "0:0:0:0::/64" },
    ]);
    // The listener's address as BOUNCE_SMTP_ADDR writes it: "::" in brackets.
    expect(lines.find((line) => line["msg"] === "bounce intake listening")?.["address"]).toMatch(/^\[::\]:\d+$/);
  });
});

let notices = 0;
/** A DSN about `record` attempted later than the ones before it (Last-Attempt-Date): a new notice, not a copy. */
function laterNotice(record: DeliveryRecord, action: string, status: string): Buffer {
  const lastAttempt = new Date(Date.UTC(2026, 10, 27, 8) + ++notices * 60_000).toUTCString();
  return dsnMessage({ to: verp(record.messageId), envelopeId: record.messageId, recipients: [{ action, status, extra: [`Last-Attempt-Date: ${lastAttempt}`] }] });
}

describe("bounce intake: correlation and evidence", () => {
  it("a failed 5.1.1 DSN makes the message BOUNCED with its evidence and suppresses the recipient (by HMAC)", async () => {
    const record = await acceptedMessage();
    const raw = postfixUnknownUserDsn().toString("latin1").replaceAll("01kbf3vq0m4x2c9d8e7f6g5h4j", record.messageId);

    expect(await deliver(verp(record.messageId), Buffer.from(raw, "latin1"))).toMatch(/^250 /);

    expect(await status(record.messageId)).toMatchObject({
      state: "BOUNCED",
      reports: [
        {
          action: "failed",
          status: "5.1.1",
          diagnosticCode: 'X-Postfix; unknown user: "n***"',
          reportingMta: "dns; relay.local.test",
          finalRecipient: "rfc822; n***@local.test",
          envelopeId: record.messageId,
        },
      ],
    });
    expect(await suppression.check(suppression.recipientHash(recipientKey))).toMatchObject({
      messageId: record.messageId,
      status: "5.1.1",
    });
    expect(outcomes).toMatchObject([{ kind: "applied", previousState: "ACCEPTED", state: "BOUNCED", suppressed: true }]);
    // The hook gets the record as a status query sees it, and the send's trace.
    expect(applied).toMatchObject([{ record: { messageId: record.messageId, state: "BOUNCED" }, traceId: record.traceId }]);
    // So does the log line: from the bounce to the SMTP conversation it reports on.
    expect(loggedLines().find((line) => line["msg"] === "bounce applied")).toMatchObject({ message_id: record.messageId, send_trace_id: record.traceId });
  });

  it("a 5.7.26 DSN makes the message BOUNCED with the diagnostic and does not suppress", async () => {
    const record = await acceptedMessage();
    const dsn = dsnMessage({
      to: verp(record.messageId),
      envelopeId: record.messageId,
      recipients: [{ action: "failed", status: "5.7.26", remoteMta: "dns; gmail-smtp-in.l.google.com", diagnosticCode: gmailDmarcDiagnostic }],
    });

    await deliver(verp(record.messageId), dsn);

    const bounced = await status(record.messageId);
    expect(bounced?.state).toBe("BOUNCED");
    expect(bounced?.reports?.[0]?.diagnosticCode).toMatch(/^smtp; 550-5\.7\.26 Unauthenticated email from acme\.test is not accepted due to domain's DMARC policy/);
    expect(await suppression.check(suppression.recipientHash(recipientKey))).toBeUndefined();
  });

  it("delayed, then failed, then a late delay: DELAYED, BOUNCED, still BOUNCED", async () => {
    const record = await acceptedMessage();
    const send = (action: string, status: string): Promise<string> => deliver(verp(record.messageId), laterNotice(record, action, status));

    await send("delayed", "4.4.1");
    expect((await status(record.messageId))?.state).toBe("DELAYED");
    await send("failed", "5.2.2");
    expect((await status(record.messageId))?.state).toBe("BOUNCED");
    await send("delayed", "4.4.1");
    expect((await status(record.messageId))?.state).toBe("BOUNCED");
    expect((await status(record.messageId))?.reports).toHaveLength(3);
  });

  it("the same DSN again (a relay resending it) is one report, changes nothing, and does not suppress again what support lifted", async () => {
    const record = await acceptedMessage();
    const raw = Buffer.from(postfixUnknownUserDsn().toString("latin1").replaceAll("01kbf3vq0m4x2c9d8e7f6g5h4j", record.messageId), "latin1");

    expect(await deliver(verp(record.messageId), raw)).toMatch(/^250 /);
    expect(await suppression.lift(recipientKey)).toHaveLength(1);
    expect(await deliver(verp(record.messageId), raw)).toMatch(/^250 /);

    expect((await status(record.messageId))?.reports).toHaveLength(1);
    expect(await suppression.check(suppression.recipientHash(recipientKey))).toBeUndefined();
    expect(outcomes).toMatchObject([
      { kind: "applied", state: "BOUNCED", suppressed: true, duplicate: false },
      { kind: "applied", previousState: "BOUNCED", state: "BOUNCED", suppressed: false, duplicate: true },
    ]);
    expect(loggedLines().filter((line) => line["msg"] === "bounce applied").map((line) => line["duplicate"])).toEqual([undefined, true]);
    // Only the first told the listeners (the delivery report span): the copy changed nothing.
    expect(applied.map(({ record: { messageId } }) => messageId)).toEqual([record.messageId]);
  });

  it("a flood of late delay notices never pushes the final DSN out of the kept reports", async () => {
    const record = await acceptedMessage();
    const send = (action: string, status: string): Promise<string> => deliver(verp(record.messageId), laterNotice(record, action, status));

    await send("failed", "5.2.2");
    for (let i = 0; i < maxDeliveryReports + 2; i++) await send("delayed", "4.4.1");

    const after = await status(record.messageId);
    expect(after?.state).toBe("BOUNCED");
    expect(after?.reports).toHaveLength(maxDeliveryReports);
    expect(after?.reports?.filter((report) => report.action === "failed")).toHaveLength(1);
  });

  it("an Original-Envelope-Id that names another message is not applied to either", async () => {
    const record = await acceptedMessage();
    const other = await acceptedMessage();
    const dsn = dsnMessage({ to: verp(record.messageId), envelopeId: other.messageId, recipients: [{ action: "failed", status: "5.1.1" }] });

    expect(await deliver(verp(record.messageId), dsn)).toMatch(/^250 /);

    expect(outcomes).toEqual([{ kind: "unmatched", messageId: record.messageId, reason: "envelope_id_mismatch" }]);
    expect((await status(record.messageId))?.state).toBe("ACCEPTED");
    expect((await status(other.messageId))?.state).toBe("ACCEPTED");
    expect(await suppression.check(suppression.recipientHash(recipientKey))).toBeUndefined();
  });

  it("a bounce for an unknown message, and a non-RFC 3464 bounce, are counted and applied to nothing", async () => {
    const record = await acceptedMessage();
    const unknown = newMessageId(Date.now());
    const plain = Buffer.from(
      `From: MAILER-DAEMON@relay.test\r\nTo: ${verp(record.messageId)}\r\nSubject: failure notice\r\n\r\nHi. This is the qmail-send program. Sorry.\r\n`,
    );

    await deliver(verp(unknown), dsnMessage({ to: verp(unknown), recipients: [{ action: "failed", status: "5.1.1" }] }));
    await deliver(verp(record.messageId), plain);

    expect(outcomes.map((outcome) => [outcome.kind, "reason" in outcome ? outcome.reason : ""])).toEqual([
      ["unmatched", "unknown_message"],
      ["not_dsn", expect.stringMatching(/^no message\/delivery-status part/)],
    ]);
    expect(processor.counts()).toEqual({ applied: 0, unmatched: 1, not_dsn: 1 });
    expect((await status(record.messageId))?.state).toBe("ACCEPTED");
    expect(await store.getDeliveryReports(unknown)).toEqual([]);
  });

  it("asks the sending MTA to retry (451) when storage cannot record the bounce", async () => {
    const record = await acceptedMessage();
    await store.close();

    const code = await replyCode(
      verp(record.messageId),
      dsnMessage({ to: verp(record.messageId), recipients: [{ action: "failed", status: "5.1.1" }] }),
    );

    expect(code).toBe(451);
    expect(reported).toEqual(["record_failed"]);
  });
});

describe("bounce intake: who sent it", () => {
  it("every log line about a bounce names the connecting address and its HELO name, so a forged report can be told from the relay's", async () => {
    const lines: Record<string, unknown>[] = [];
    const capture = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    processor = createBounceProcessor({ store, suppression, clock: systemClock, logger: capture, reportTtlMs: 3_600_000 });
    await start();
    const record = await acceptedMessage();
    const unknown = newMessageId(Date.now());
    // Anybody can connect to the bounce domain's MX and claim to be any reporting MTA.
    const forger = createTransport({ host: "127.0.0.1", port: intake.address.port, secure: false, ignoreTLS: true, name: "mx.forger.test", logger: false });
    try {
      for (const id of [record.messageId, unknown]) {
        const raw = dsnMessage({ to: verp(id), reportingMta: "mx.google.com", recipients: [{ action: "failed", status: "5.2.2" }] });
        await forger.sendMail({ envelope: { from: "", to: verp(id) }, raw });
      }
    } finally {
      forger.close();
    }

    const about = lines.filter((line) => line["component"] === "bounce");
    expect(about.map((line) => line["msg"])).toEqual(["bounce applied", "bounce for an unknown message; not applied"]);
    for (const line of about) expect(line).toMatchObject({ remote: "127.0.0.1", helo: "mx.forger.test", tls: "none", reporting_mta: "dns; mx.google.com" });
  });
});

describe("bounce intake: what its log lines say about the sender", () => {
  /** Speaks SMTP on a raw socket: `EHLO helo`, a bounce for `messageId`, QUIT. Resolves when the server closes. */
  function rawBounce(helo: string, messageId: string, raw: Buffer): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const socket = connect(intake.address.port, "127.0.0.1");
      let text = "";
      let sent = false;
      socket.on("error", reject);
      socket.on("close", () => resolve(text));
      // A server that stops answering ends the conversation; the caller looks at the transcript.
      socket.setTimeout(5000, () => socket.destroy());
      socket.on("data", (data: Buffer) => {
        text += data.toString("utf8");
        if (!sent && /^220 /m.test(text)) {
          sent = true;
          socket.write(`EHLO ${helo}\r\nMAIL FROM:<>\r\nRCPT TO:<${verp(messageId)}>\r\nDATA\r\n`, "utf8");
        }
        if (/^354 /m.test(text) && !text.includes("DATA-SENT")) {
          text += "DATA-SENT\n";
          socket.write(Buffer.concat([raw, Buffer.from("\r\n.\r\nQUIT\r\n")]));
        }
      });
    });
  }

  it("logs the HELO name as printable ASCII of at most 255 characters, the peer's IP unmasked, and nothing of the report's headers", async () => {
    const lines: string[] = [];
    const capture = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
    processor = createBounceProcessor({ store, suppression, clock: systemClock, logger: capture, reportTtlMs: 3_600_000 });
    await intake.close();
    intake = await startBounceIntake({ host: "127.0.0.1", port: 0, bounceDomain, processor, logger: capture });
    const record = await acceptedMessage();
    // smtp-server takes up to 300 characters, of any kind but control characters.
    const helo = `Ünïcode-${"a".repeat(280)}.test`;
    // RET=HDRS returns the original headers: their Subject holds the code (482913), their To the address.
    const raw = unknownUserDsn(record.messageId);
    expect(raw.toString("latin1")).toMatch(/^Subject: 482913 is your Acme sign-in code/m);

    const transcript = await rawBounce(helo, record.messageId, raw);

    expect(transcript).toMatch(/^250 2\.0\.0 Report received/m);
    const applied = lines.map((line) => JSON.parse(line) as Record<string, unknown>).find((line) => line["msg"] === "bounce applied");
    expect(applied).toMatchObject({ remote: "127.0.0.1", tls: "none" });
    expect(applied?.["helo"]).toMatch(/^\?+n\?+code-a+$/);
    expect(applied?.["helo"]).toHaveLength(255);
    const everything = lines.join("\n");
    for (const secret of ["482913", "nobody@"]) expect(everything).not.toContain(secret);
  });
});

describe("bounce intake: STARTTLS", () => {
  // The intake's certificate (for 127.0.0.1), which the clients below are told to trust.
  const certificate = makeSelfSigned();

  /** What the intake says to EHLO. */
  async function ehlo(): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const socket = connect(intake.address.port, "127.0.0.1");
      let text = "";
      socket.on("error", reject);
      socket.on("data", (data: Buffer) => {
        text += data.toString("latin1");
        if (/^220 /m.test(text) && !text.includes("EHLO sent")) {
          text += "EHLO sent\n";
          socket.write("EHLO relay.test\r\n");
        }
        if (/^250 /m.test(text)) {
          socket.end("QUIT\r\n");
          resolve(text);
        }
      });
    });
  }

  it("warns at start when it listens beyond loopback without STARTTLS, and only then", async () => {
    const warnings: unknown[] = [];
    const capture = pino({ level: "warn" }, { write: (line: string) => void warnings.push((JSON.parse(line) as Record<string, unknown>)["msg"]) });
    const cases: [string, BounceIntakeOptions["tls"]][] = [
      ["127.0.0.1", undefined],
      ["::1", undefined],
      ["::", { ...certificate, required: false }],
      ["::", undefined],
    ];
    const seen: number[] = [];
    for (const [host, tls] of cases) {
      await intake.close();
      intake = await startBounceIntake({ host, port: 0, bounceDomain, processor, logger: capture, tls });
      seen.push(warnings.length);
    }

    expect(seen).toEqual([0, 0, 0, 1]);
    expect(warnings[0]).toBe(
      "bounce intake listens beyond loopback without STARTTLS: DSNs, whose returned headers hold the code, reach it in clear; set BOUNCE_TLS_CERT and BOUNCE_TLS_KEY",
    );
  });

  it("offers STARTTLS only with a certificate of its own", async () => {
    expect(await ehlo()).not.toMatch(/STARTTLS/);

    await start({ tls: { ...certificate, required: false } });

    expect(await ehlo()).toMatch(/^250[- ]STARTTLS\r$/m);
  });

  it("a relay that upgrades with STARTTLS delivers its DSN: the message becomes BOUNCED, and the log says it came over TLS", async () => {
    const lines: Record<string, unknown>[] = [];
    const capture = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    processor = createBounceProcessor({ store, suppression, clock: systemClock, logger: capture, reportTtlMs: 3_600_000 });
    await start({ tls: { ...certificate, required: false } });
    const record = await acceptedMessage();
    // requireTLS: the client fails rather than send in clear if the upgrade does not happen.
    const relay = createTransport({
      host: "127.0.0.1",
      port: intake.address.port,
      secure: false,
      requireTLS: true,
      tls: { ca: [certificate.cert] },
      name: "relay.postfix.test",
      logger: false,
    });
    try {
      const info = await relay.sendMail({ envelope: { from: "", to: verp(record.messageId) }, raw: unknownUserDsn(record.messageId) });
      expect(info.response).toMatch(/^250 /);
    } finally {
      relay.close();
    }

    expect((await status(record.messageId))?.state).toBe("BOUNCED");
    const about = lines.filter((line) => line["component"] === "bounce");
    expect(about).toMatchObject([{ msg: "bounce applied", remote: "127.0.0.1", helo: "relay.postfix.test" }]);
    expect(about[0]?.["tls"]).toMatch(/^TLSv1\.[23]$/);
  });

  it("with TLS required, a client that will not upgrade is refused (530 5.7.0) and nothing is recorded; one that upgrades is not", async () => {
    await start({ tls: { ...certificate, required: true } });
    const record = await acceptedMessage();
    const plain = createTransport({ host: "127.0.0.1", port: intake.address.port, secure: false, ignoreTLS: true, logger: false });
    const refused = await plain
      .sendMail({ envelope: { from: "", to: verp(record.messageId) }, raw: unknownUserDsn(record.messageId) })
      .then(
        () => undefined,
        (error: unknown) => error as { responseCode?: number; response?: string },
      )
      .finally(() => plain.close());

    expect(refused?.responseCode).toBe(530);
    expect(refused?.response).toBe("530 5.7.0 Must issue a STARTTLS command first");
    expect(intake.rejections().withoutTls).toBe(1);
    expect(reported).toEqual(["tls_required"]);
    expect(outcomes).toEqual([]);
    expect((await status(record.messageId))?.state).toBe("ACCEPTED");

    const secure = createTransport({ host: "127.0.0.1", port: intake.address.port, secure: false, requireTLS: true, tls: { ca: [certificate.cert] }, logger: false });
    try {
      await secure.sendMail({ envelope: { from: "", to: verp(record.messageId) }, raw: unknownUserDsn(record.messageId) });
    } finally {
      secure.close();
    }
    expect((await status(record.messageId))?.state).toBe("BOUNCED");
  });
});

describe("bounce intake: garbage", () => {
  /** Deterministic pseudo-random bytes, so a failure can be replayed. */
  function prng(seed: number): () => number {
    let state = seed;
    return () => {
      state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
      return state / 2 ** 31;
    };
  }

  it("survives truncated, oversized and malformed reports: never throws, never applies to another record", async () => {
    const victim = await acceptedMessage();
    const bystander = await acceptedMessage();
    const unknown = newMessageId(Date.now());
    const real = postfixUnknownUserDsn();
    const random = prng(20261127);
    const corpus: Buffer[] = [
      Buffer.alloc(0),
      Buffer.from("\r\n\r\n\r\n"),
      randomBytes(4096),
      Buffer.from(`Content-Type: multipart/report; boundary="x"\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n`),
      Buffer.from(`Content-Type: multipart/report; boundary=\r\n\r\n--\r\n--\r\n`),
      Buffer.from(`Content-Type: multipart/report; boundary="a"\r\n\r\n${"--a\r\nContent-Type: multipart/mixed; boundary=\"a\"\r\n\r\n".repeat(200)}`),
      Buffer.from(`Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n`),
      Buffer.from(`Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nAction: failed\r\nStatus: 5.1.1\r\n${"Diagnostic-Code: " + "y".repeat(200_000)}\r\n`),
      Buffer.from(`Content-Type: message/delivery-status\r\n\r\n${"Reporting-MTA: x\r\n\r\nAction: failed\r\n\r\n".repeat(5000)}`),
      Buffer.from("Subject: =?utf-8?B?////?=\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n\u0000\u0001\u0002"),
    ];
    // Truncations of a real bounce at random points, and random byte flips.
    for (let i = 0; i < 40; i++) corpus.push(real.subarray(0, Math.floor(random() * real.length)));
    for (let i = 0; i < 20; i++) {
      const copy = Buffer.from(real);
      for (let flips = 0; flips < 20; flips++) copy[Math.floor(random() * copy.length)] = Math.floor(random() * 256);
      corpus.push(copy);
    }

    // Straight into the processor (every input), for the unknown id and for the victim.
    for (const raw of corpus) {
      expect(["unmatched", "not_dsn"]).toContain((await processor.process(unknown, raw)).kind);
      await expect(processor.process(victim.messageId, raw)).resolves.toBeDefined();
    }
    // And over SMTP, a sample.
    for (const raw of corpus.slice(0, 15)) {
      expect([250, 552]).toContain(await replyCode(verp(victim.messageId), raw));
    }

    expect(await store.getDeliveryReports(unknown)).toEqual([]);
    expect(await store.getDeliveryReports(bystander.messageId)).toEqual([]);
    expect((await status(bystander.messageId))?.state).toBe("ACCEPTED");
    // Whatever was applied to the victim came from a parseable report about it.
    for (const report of (await status(victim.messageId))?.reports ?? []) {
      expect(["failed", "delayed", "delivered", "relayed", "expanded"]).toContain(report.action);
    }
  });

  it("survives SMTP-level garbage and still takes a good bounce afterwards", async () => {
    const garbage = [
      "HELO\r\nMAIL FROM:<<<>>>\r\nRCPT TO:\r\nDATA\r\n",
      "EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<bounce+@bounces.acme.test>\r\nDATA\r\n.\r\n",
      `${"A".repeat(100_000)}\r\n`,
      "EHLO x\r\nBDAT 10 LAST\r\n0123456789",
      "\u0000\u0001\u0002\r\n\u00ff\u00fe\r\n",
      "EHLO x\r\nMAIL FROM:<> SIZE=999999999999\r\n",
      "EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<bounce+01kbf3vq0m4x2c9d8e7f6g5h4j@bounces.acme.test>\r\nDATA\r\nSubject: half", // no end of data
    ];
    for (const text of garbage) {
      await new Promise<void>((resolve) => {
        const socket = connect(intake.address.port, "127.0.0.1");
        socket.on("error", () => resolve());
        socket.on("data", () => undefined);
        socket.write(text, "latin1", () => setTimeout(() => socket.destroy(), 50));
        socket.on("close", () => resolve());
      });
    }

    const record = await acceptedMessage();
    await deliver(verp(record.messageId), dsnMessage({ to: verp(record.messageId), recipients: [{ action: "delivered", status: "2.0.0" }] }));
    expect((await status(record.messageId))?.state).toBe("DELIVERED");
  });
});
