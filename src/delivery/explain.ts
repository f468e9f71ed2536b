/**
 * What a delivery record means, in one sentence: what is known, and what is
 * not. Deterministic: UTC times, no locale-dependent formatting.
 */
import { suppressionReason, type DeliveryRecord, type DeliveryReport, type DeliveryState } from "./record.js";
import { classifyStatus, decisiveReport, reportStatus } from "./reports.js";

/**
 * How long after its code expired a record may still honestly be SENDING:
 * an attempt still running when its code expires is given up then, and its
 * FAILED record takes a moment to be written (longer while Redis is
 * failing over). After that, an unfinished record was abandoned (its
 * process died) and reads as FAILED.
 */
export const abandonAfterExpiryMs = 2 * 60_000;

const unfinished: ReadonlySet<DeliveryState> = new Set(["QUEUED", "SENDING", "RETRYING"]);

/** True when the record was left unfinished past its send window. */
export function isAbandoned(record: DeliveryRecord, now: number): boolean {
  return unfinished.has(record.state) && now > record.expiresAt + abandonAfterExpiryMs;
}

/** The state to report: the stored one, except that an abandoned record reads as FAILED. */
export function effectiveState(record: DeliveryRecord, now: number): DeliveryState {
  return isAbandoned(record, now) ? "FAILED" : record.state;
}

/** One sentence saying what is known about the message and what is not. */
export function explain(record: DeliveryRecord, now: number): string {
  const last = record.attempts.at(-1);
  if (isAbandoned(record, now)) {
    return (
      `Abandoned: the message was still ${record.state} when its code expired at ${utc(record.expiresAt)} ` +
      `(the sender probably stopped)${last === undefined ? "" : `; ${describeAttempt(last)}`}; ` +
      "it was never accepted by the relay as far as is known, and no further attempt will be made."
    );
  }
  switch (record.state) {
    case "QUEUED":
      return `Recorded at ${utc(record.createdAt)} and not yet handed to the relay; nothing is known about delivery yet.`;
    case "SENDING":
      return (
        `Attempt ${record.attempts.length + 1} to hand the message to the relay started at ${utc(record.updatedAt)} ` +
        "and has not finished; whether the relay will accept it is not known yet."
      );
    case "RETRYING":
      return (
        `Not accepted yet after ${count(record.attempts.length, "attempt")}` +
        `${last === undefined ? "" : `: ${describeAttempt(last)}`}; ` +
        `another attempt will follow, but none with less than a minute of the code left (it expires at ${utc(record.expiresAt)}).`
      );
    case "ACCEPTED": {
      const reply = record.relayReply;
      if (reply === undefined) {
        return "Accepted by the relay; acceptance is not delivery: the relay may still bounce it.";
      }
      const queue = reply.queueId === "" ? "" : ` (queue id ${reply.queueId})`;
      const accepted = `Accepted by ${reply.relay} at ${utc(reply.acceptedAt)}${queue}; acceptance is not delivery`;
      if (reply.dsnRequested === true) {
        return (
          `${accepted}: the relay may still bounce it. A delivery status notification (DSN) was requested ` +
          "on failure or delay, and none has arrived so far."
        );
      }
      if (reply.dsnRequested === false) {
        return (
          `${accepted}; the relay does not support DSN, so a later bounce will only be seen ` +
          "if it reaches the bounce domain's mailbox."
        );
      }
      return `${accepted}: the relay may still bounce it.`;
    }
    case "DELAYED": {
      const report = decisiveReport(record.reports ?? []);
      if (report === undefined) {
        return (
          `A delivery status notification at ${utc(record.updatedAt)} said delivery is delayed` +
          `${detail(record.failureReason)}; the relay is still trying, and the message may yet be delivered or bounce.`
        );
      }
      return (
        `A delivery status notification${from(report)} at ${utc(report.receivedAt)} said delivery is delayed` +
        `${evidence(report)}; the relay is still trying, and the message may yet be delivered or bounce.`
      );
    }
    case "DELIVERED": {
      const report = decisiveReport(record.reports ?? []);
      if (report?.action === "complained" || report?.action === "not_spam") return explainFeedback(report);
      if (report !== undefined && report.action !== "delivered") {
        return (
          `A delivery status notification${from(report)} at ${utc(report.receivedAt)} said the message was ` +
          `${report.action}${evidence(report)}: handed on to a system that sends no further notifications, ` +
          "so final delivery is not confirmed."
        );
      }
      return (
        `A delivery status notification${report === undefined ? "" : from(report)} at ` +
        `${utc(report?.receivedAt ?? record.updatedAt)} said the receiving server took the message` +
        `${report === undefined ? "" : evidence(report)}; whether it reached the inbox or the junk folder is not known.`
      );
    }
    case "BOUNCED": {
      const report = decisiveReport(record.reports ?? []);
      if (report === undefined) {
        return (
          `The relay accepted the message, but a delivery status notification at ${utc(record.updatedAt)} said ` +
          `delivery failed${detail(record.failureReason)}.`
        );
      }
      return (
        `The relay accepted the message, but a delivery status notification${from(report)} at ` +
        `${utc(report.receivedAt)} said delivery failed${evidence(report)}. ${bounceMeaning(report)}`
      );
    }
    case "FAILED":
      if (last?.outcome === "abandoned") {
        // Not "never accepted": the relay had the message when we stopped listening for its answer.
        return (
          `The sender stopped at ${utc(last.startedAt + last.durationMs)} while attempt ${last.number} (started at ` +
          `${utc(last.startedAt)}) waited for the relay's answer: whether the relay accepted the message is unknown, ` +
          "so it may still arrive; no further attempt will be made."
        );
      }
      if (last?.outcome === "unanswered") {
        // Not "never accepted" either: the relay had all of it and never said.
        return (
          `Attempt ${last.number} (started at ${utc(last.startedAt)}) handed the relay the whole message, and the relay gave ` +
          `no final reply (${last.errorCode === "" ? "no reply" : last.errorCode}): whether the relay accepted the message is unknown, ` +
          "so it may still arrive; it is not sent again."
        );
      }
      return `Never accepted by the relay: ${record.failureReason ?? "no reason was recorded"}.`;
    case "SUPPRESSED": {
      const cause = record.suppressedBy;
      if (cause === undefined) return `Not sent: the recipient hard-bounced recently${detail(record.failureReason)}.`;
      if (suppressionReason(cause) === "complaint") {
        return (
          `Not sent: the recipient marked an earlier message as spam (their mailbox provider's feedback report, type ` +
          `${cause.feedbackType ?? "abuse"}, at ${utc(cause.bouncedAt)}${whichMessage(cause.messageId)}), so sends to it are refused until ` +
          `${utc(cause.expiresAt)}. Nothing was sent and no rate budget was spent.`
        );
      }
      return (
        `Not sent: the recipient hard-bounced at ${utc(cause.bouncedAt)} (status ${cause.status}` +
        `${cause.diagnosticCode === "" ? "" : `, "${cause.diagnosticCode}"`}${whichMessage(cause.messageId)}), ` +
        `so sends to it are refused until ${utc(cause.expiresAt)}. Nothing was sent and no rate budget was spent.`
      );
    }
  }
}

/** A message the recipient's provider sent a feedback report (ARF) about. */
function explainFeedback(report: DeliveryReport): string {
  const by = report.userAgent === undefined || report.userAgent === "" ? "" : ` (${report.userAgent})`;
  const arrived = report.arrivalDate === undefined || report.arrivalDate === "" ? "" : `, which it received ${report.arrivalDate}`;
  if (report.action === "not_spam") {
    return (
      `The recipient's mailbox provider${by} reported at ${utc(report.receivedAt)} that the recipient marked the message ` +
      `as not spam${arrived}: it reached the mailbox. Nothing is suppressed.`
    );
  }
  const type = report.feedbackType ?? "abuse";
  const effect =
    type === "abuse" || type === "fraud"
      ? "The recipient is suppressed: further codes to it are refused for a while (support can lift it)."
      : "The recipient is not suppressed: only abuse and fraud complaints suppress.";
  return (
    `The recipient's mailbox provider${by} reported at ${utc(report.receivedAt)} a spam complaint (feedback type ${type}) ` +
    `about the message${arrived}: it reached the mailbox, and the recipient did not want it. ${effect}`
  );
}

/** ` from <reporting MTA>`, or "" when the report does not name it. */
function from(report: DeliveryReport): string {
  const mta = report.reportingMta.replace(/^\s*dns\s*;\s*/i, "");
  return mta === "" ? "" : ` from ${mta}`;
}

/** ` (status 5.7.26, "smtp; 550 5.7.26 ...", remote MTA mx.example.com)`. */
function evidence(report: DeliveryReport): string {
  const parts: string[] = [];
  const status = reportStatus(report);
  if (status !== "") parts.push(`status ${status}`);
  if (report.diagnosticCode !== "") parts.push(`"${report.diagnosticCode}"`);
  const remote = report.remoteMta.replace(/^\s*dns\s*;\s*/i, "");
  if (remote !== "") parts.push(`remote MTA ${remote}`);
  return parts.length === 0 ? "" : ` (${parts.join(", ")})`;
}

/** What a failed DSN means for the operator, by status class. */
function bounceMeaning(report: DeliveryReport): string {
  switch (classifyStatus(reportStatus(report))) {
    case "no_such_mailbox":
      return "The address does not exist: the recipient is suppressed, and further codes to it are refused for a while.";
    case "policy":
      return (
        "This is a policy or authentication rejection (5.7.x): it points at our sending domain's DNS " +
        "(SPF, DKIM, DMARC) or the relay's reputation, not at the recipient, so the recipient is not suppressed; " +
        "run `npm run doctor -- <sender domain>` to see what to fix."
      );
    case "permanent":
    case "transient":
    case "success":
    case "unknown":
      return "The recipient is not suppressed: the failure does not say the address is wrong.";
  }
}

function describeAttempt(attempt: DeliveryRecord["attempts"][number]): string {
  return `attempt ${attempt.number} at ${utc(attempt.startedAt)} failed: "${attempt.replyText}"`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** `; message <id>`, or "" when the message is not named (another caller's: see causeSeenBy in otp/otp-service.ts). */
function whichMessage(messageId: string): string {
  return messageId === "" ? "" : `; message ${messageId}`;
}

function detail(reason: string | undefined): string {
  return reason === undefined || reason === "" ? "" : ` (${reason})`;
}

/** `2026-11-27 10:02:03 UTC`. */
function utc(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}
