import { describe, expect, it } from "vitest";
import { abandonAfterExpiryMs, effectiveState, explain } from "../../src/delivery/explain.js";
import { deliveryStates, type AttemptRecord, type DeliveryRecord } from "../../src/delivery/record.js";

const created = Date.UTC(2026, 10, 27, 10, 2, 0); // 2026-11-27 10:02:00 UTC
const expires = created + 10 * 60_000;

function record(overrides: Partial<DeliveryRecord> = {}): DeliveryRecord {
  return {
    messageId: "01jabc",
    caller: "test",
    state: "QUEUED",
    recipientMasked: "j***@gmail.com",
    recipientDomain: "gmail.com",
    purpose: "login",
    locale: "en",
    createdAt: created,
    updatedAt: created,
    expiresAt: expires,
    attempts: [],
    traceId: "",
    ...overrides,
  };
}

function attempt(overrides: Partial<AttemptRecord> = {}): AttemptRecord {
  return {
    number: 1,
    startedAt: created + 1000,
    durationMs: 120,
    outcome: "transient",
    replyCode: 451,
    enhancedStatus: "4.3.0",
    replyText: "451 4.3.0 Temporary local problem",
    errorCode: "",
    ...overrides,
  };
}

describe("explain", () => {
  it("an accepted message names the relay, the time and the queue id, and says acceptance is not delivery", () => {
    const accepted = record({
      state: "ACCEPTED",
      relayReply: { relay: "smtp.example.com:587", text: "250 2.0.0 Ok: queued as 4F2A", queueId: "4F2A", acceptedAt: created + 3000 },
    });
    expect(explain(accepted, created + 5000)).toBe(
      "Accepted by smtp.example.com:587 at 2026-11-27 10:02:03 UTC (queue id 4F2A); acceptance is not delivery: the relay may still bounce it.",
    );
  });

  it("an accepted message without a queue id leaves the queue id out", () => {
    const accepted = record({
      state: "ACCEPTED",
      relayReply: { relay: "smtp.example.com:587", text: "250 OK", queueId: "", acceptedAt: created },
    });
    expect(explain(accepted, created)).toBe(
      "Accepted by smtp.example.com:587 at 2026-11-27 10:02:00 UTC; acceptance is not delivery: the relay may still bounce it.",
    );
  });

  it("a failed message gives the recorded reason, with the relay's words", () => {
    const failed = record({
      state: "FAILED",
      attempts: [attempt({ outcome: "permanent", replyCode: 550, replyText: "550 5.1.1 <j***@gmail.com>: User unknown" })],
      failureReason: 'the relay smtp.example.com:587 refused the message: "550 5.1.1 <j***@gmail.com>: User unknown"',
    });
    expect(explain(failed, created)).toBe(
      'Never accepted by the relay: the relay smtp.example.com:587 refused the message: "550 5.1.1 <j***@gmail.com>: User unknown".',
    );
  });

  it("a message abandoned at shutdown says the relay's answer is unknown, not that the relay never accepted it", () => {
    const abandoned = record({
      state: "FAILED",
      attempts: [
        attempt({
          outcome: "abandoned",
          durationMs: 10_000,
          replyCode: 0,
          enhancedStatus: "",
          replyText: "no reply: the sender stopped while waiting for the relay's answer",
        }),
      ],
      failureReason:
        "the sender stopped while attempt 1 was in progress; the relay's answer is unknown (it may still have accepted the message)",
    });
    const sentence = explain(abandoned, created + 20_000);
    expect(sentence).toBe(
      "The sender stopped at 2026-11-27 10:02:11 UTC while attempt 1 (started at 2026-11-27 10:02:01 UTC) waited for the " +
        "relay's answer: whether the relay accepted the message is unknown, so it may still arrive; no further attempt will be made.",
    );
    expect(sentence).not.toMatch(/never accepted/i);
  });

  it("a message the relay had whole and never answered says its answer is unknown and that it is not sent again", () => {
    const unanswered = record({
      state: "FAILED",
      attempts: [attempt({ outcome: "unanswered", durationMs: 30_000, replyCode: 0, enhancedStatus: "", errorCode: "ETIMEDOUT" })],
      failureReason: "the relay smtp.example.com:587 had the whole message and gave no final reply",
    });
    const sentence = explain(unanswered, created + 40_000);
    expect(sentence).toBe(
      "Attempt 1 (started at 2026-11-27 10:02:01 UTC) handed the relay the whole message, and the relay gave no final reply " +
        "(ETIMEDOUT): whether the relay accepted the message is unknown, so it may still arrive; it is not sent again.",
    );
    expect(sentence).not.toMatch(/never accepted/i);
  });

  it("a retrying message gives the attempt count and the last error", () => {
    const retrying = record({
      state: "RETRYING",
      attempts: [attempt(), attempt({ number: 2, startedAt: created + 2000, replyCode: 421, replyText: "421 4.7.0 Try later" })],
    });
    expect(explain(retrying, created + 3000)).toBe(
      'Not accepted yet after 2 attempts: attempt 2 at 2026-11-27 10:02:02 UTC failed: "421 4.7.0 Try later"; ' +
        "another attempt will follow, but none with less than a minute of the code left (it expires at 2026-11-27 10:12:00 UTC).",
    );
  });

  it("queued and sending messages say that nothing is known yet", () => {
    expect(explain(record(), created)).toBe(
      "Recorded at 2026-11-27 10:02:00 UTC and not yet handed to the relay; nothing is known about delivery yet.",
    );
    expect(explain(record({ state: "SENDING", updatedAt: created + 1000 }), created + 1500)).toBe(
      "Attempt 1 to hand the message to the relay started at 2026-11-27 10:02:01 UTC and has not finished; " +
        "whether the relay will accept it is not known yet.",
    );
  });

  it("says something for every state, and only DELIVERED speaks of the receiving server taking it", () => {
    for (const state of deliveryStates) {
      const sentence = explain(record({ state }), created);
      expect(sentence).toMatch(/^[A-Z].*\.$/);
      if (state !== "DELIVERED") expect(sentence).not.toMatch(/receiving server took/);
    }
  });
});

describe("effectiveState", () => {
  it("keeps an unfinished record's state within its send window and the margin after it", () => {
    const sending = record({ state: "SENDING" });
    expect(effectiveState(sending, created)).toBe("SENDING");
    expect(effectiveState(sending, expires + abandonAfterExpiryMs)).toBe("SENDING");
  });

  it("reads a record left unfinished past its send window as FAILED (abandoned)", () => {
    for (const state of ["QUEUED", "SENDING", "RETRYING"] as const) {
      const stale = record({ state, attempts: state === "RETRYING" ? [attempt()] : [] });
      const now = expires + abandonAfterExpiryMs + 1;
      expect(effectiveState(stale, now)).toBe("FAILED");
      expect(explain(stale, now)).toMatch(
        new RegExp(`^Abandoned: the message was still ${state} when its code expired at 2026-11-27 10:12:00 UTC`),
      );
    }
  });

  it("never rewrites a finished record", () => {
    const late = expires + 365 * 86_400_000;
    for (const state of ["ACCEPTED", "DELAYED", "DELIVERED", "BOUNCED", "FAILED", "SUPPRESSED"] as const) {
      expect(effectiveState(record({ state }), late)).toBe(state);
    }
  });
});
