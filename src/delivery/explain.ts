/**
 * What a delivery record means, in one sentence: what is known, and what is
 * not. Deterministic: UTC times, no locale-dependent formatting.
 */
import type { DeliveryRecord, DeliveryState } from "./record.js";

/**
 * How long after its code expired a record may still honestly be SENDING:
 * an attempt may start just before expiry and then take up to the
 * transport's send timeout. After that, an unfinished record was abandoned
 * (its process died) and reads as FAILED.
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
        `another attempt will follow, but none after the code expires at ${utc(record.expiresAt)}.`
      );
    case "ACCEPTED": {
      const reply = record.relayReply;
      if (reply === undefined) {
        return "Accepted by the relay; acceptance is not delivery: the relay may still bounce it.";
      }
      const queue = reply.queueId === "" ? "" : ` (queue id ${reply.queueId})`;
      return (
        `Accepted by ${reply.relay} at ${utc(reply.acceptedAt)}${queue}; ` +
        "acceptance is not delivery: the relay may still bounce it."
      );
    }
    case "DELAYED":
      return (
        `A delivery status notification at ${utc(record.updatedAt)} said delivery is delayed` +
        `${detail(record.failureReason)}; the relay is still trying, and the message may yet be delivered or bounce.`
      );
    case "DELIVERED":
      return (
        `A delivery status notification at ${utc(record.updatedAt)} said the receiving server took the message; ` +
        "whether it reached the inbox or the junk folder is not known."
      );
    case "BOUNCED":
      return (
        `The relay accepted the message, but a delivery status notification at ${utc(record.updatedAt)} said ` +
        `delivery failed${detail(record.failureReason)}.`
      );
    case "FAILED":
      return `Never accepted by the relay: ${record.failureReason ?? "no reason was recorded"}.`;
    case "SUPPRESSED":
      return `Not sent: the recipient hard-bounced recently${detail(record.failureReason)}.`;
  }
}

function describeAttempt(attempt: DeliveryRecord["attempts"][number]): string {
  return `attempt ${attempt.number} at ${utc(attempt.startedAt)} failed: "${attempt.replyText}"`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function detail(reason: string | undefined): string {
  return reason === undefined || reason === "" ? "" : ` (${reason})`;
}

/** `2026-11-27 10:02:03 UTC`. */
function utc(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}
