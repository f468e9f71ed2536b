/**
 * The limits contract: what the limiter must do over any store, run against
 * the memory store (limits-memory.test.ts) and Redis (limits-redis.test.ts).
 * Times are passed explicitly (`now`), as the domain does with its clock, so
 * windows pass without sleeping.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { OtpError } from "../../src/errors.js";
import { createLogger } from "../../src/logger.js";
import { createLimiter } from "../../src/limits/limiter.js";
import type { LimitsConfig, SendLimiter, VerifyLimiter } from "../../src/limits/types.js";
import type { CallContext } from "../../src/otp/types.js";
import type { OtpStore } from "../../src/store/types.js";

export interface LimitStoreUnderTest {
  readonly store: OtpStore;
  /** After the test: checks what the store left (TTLs) and cleans up. */
  teardown(): Promise<void>;
}

export const t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const second = 1000;
const minute = 60 * second;

const off: LimitsConfig = {
  recipient: [],
  resendCooldownMs: 0,
  endUserIp: [],
  caller: [],
  global: [],
  verifyFailures: [],
};

const alpha: CallContext = { caller: "alpha", traceId: "" };
const beta: CallContext = { caller: "beta", traceId: "" };

function send(recipientKey: string, now: number, extra: { purpose?: string; endUserIp?: string } = {}) {
  return { recipientKey, purpose: extra.purpose ?? "login", endUserIp: extra.endUserIp ?? "", now };
}

/** The OtpError a promise rejected with; fails when it resolved. */
async function refusal(promise: Promise<unknown>): Promise<OtpError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof OtpError) return error;
    throw error;
  }
  throw new Error("expected a refusal");
}

export function describeLimitsContract(name: string, open: () => Promise<LimitStoreUnderTest>): void {
  describe(`limits contract: ${name}`, () => {
    let subject: LimitStoreUnderTest;

    beforeEach(async () => {
      subject = await open();
    });

    afterEach(async () => {
      await subject.teardown();
    });

    const limiter = (limits: Partial<LimitsConfig>): SendLimiter & VerifyLimiter =>
      createLimiter({
        store: subject.store,
        limits: { ...off, ...limits },
        secret: Buffer.from("limits-contract-secret-0123456789abcdef"),
        logger: createLogger({ level: "silent" }),
      });

    it("admits exactly the limit out of 1,000 concurrent sends and refuses the rest", async () => {
      const limits = limiter({ recipient: [{ max: 5, windowMs: 15 * minute }] });
      const results = await Promise.allSettled(
        Array.from({ length: 1000 }, (_, i) => limits.admit(alpha, send("victim@example.com", t0 + (i % 7)))),
      );
      const refused = results.filter((r) => r.status === "rejected").map((r) => r.reason as unknown);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(5);
      expect(refused).toHaveLength(995);
      for (const error of refused) {
        expect(error).toBeInstanceOf(OtpError);
        expect(error).toMatchObject({ kind: "resource_exhausted", reason: "RECIPIENT_RATE_LIMITED" });
      }
    });

    it("a refused send consumes nothing, not even the limits it passed", async () => {
      const limits = limiter({ recipient: [{ max: 2, windowMs: 15 * minute }], global: [{ max: 3, windowMs: minute }] });
      await limits.admit(alpha, send("a@example.com", t0));
      await limits.admit(alpha, send("a@example.com", t0));
      for (let i = 0; i < 10; i++) {
        expect(await refusal(limits.admit(alpha, send("a@example.com", t0)))).toMatchObject({ reason: "RECIPIENT_RATE_LIMITED" });
      }
      // The ten refusals did not touch the global budget: one send remains.
      await limits.admit(alpha, send("b@example.com", t0));
      expect(await refusal(limits.admit(alpha, send("c@example.com", t0)))).toMatchObject({ reason: "GLOBAL_BUDGET_EXHAUSTED" });
    });

    it("refundLimits takes one admission back out of every log it entered, and ignores an unknown one", async () => {
      const logs = [
        { id: "refund-recipient", windows: [{ max: 2, windowMs: 15 * minute }] },
        { id: "refund-global", windows: [{ max: 3, windowMs: minute }] },
      ];
      expect(await subject.store.consumeLimits(logs, "first", t0)).toMatchObject({ admitted: true });
      expect(await subject.store.consumeLimits(logs, "second", t0)).toMatchObject({ admitted: true });
      expect(await subject.store.consumeLimits(logs, "third", t0)).toMatchObject({ admitted: false });

      await subject.store.refundLimits(logs, "second");
      await subject.store.refundLimits(logs, "never-admitted");
      expect(await subject.store.consumeLimits(logs, "third", t0)).toMatchObject({ admitted: true });
      expect(await subject.store.consumeLimits(logs, "fourth", t0)).toMatchObject({ admitted: false });
    });

    it("checks the recipient's suppression first: a suppressed send is refused with the entry and spends nothing", async () => {
      const limits = limiter({ recipient: [{ max: 1, windowMs: 15 * minute }], global: [{ max: 2, windowMs: minute }] });
      expect(limits.checksSuppression).toBe(true);
      const entry = {
        messageId: "bounced-1",
        status: "5.1.1",
        diagnosticCode: "smtp; 550 5.1.1 user unknown",
        bouncedAt: t0,
        expiresAt: t0 + 30 * 86_400_000,
      };
      await subject.store.putSuppression("hash-a", entry, minute);

      for (let i = 0; i < 5; i++) {
        expect(await limits.admit(alpha, { ...send("a@example.com", t0), recipientHash: "hash-a" })).toEqual({ suppressedBy: entry });
      }
      // Nothing was spent: the recipient's one send and the global two are all still there.
      expect(await limits.admit(alpha, { ...send("a@example.com", t0), recipientHash: "hash-b" })).toMatchObject({ resendAvailableAt: t0 + 15 * minute });
      await limits.admit(alpha, send("b@example.com", t0));
      expect(await refusal(limits.admit(alpha, send("c@example.com", t0)))).toMatchObject({ reason: "GLOBAL_BUDGET_EXHAUSTED" });
      // Suppression is checked even with every limit off, and before a full window.
      expect(await limiter({}).admit(alpha, { ...send("c@example.com", t0), recipientHash: "hash-a" })).toEqual({ suppressedBy: entry });
      expect(await limits.admit(alpha, { ...send("c@example.com", t0), recipientHash: "hash-a" })).toEqual({ suppressedBy: entry });
    });

    it("checks the recipient's hash under the previous secret too, in the same step, spending nothing", async () => {
      const limits = limiter({ recipient: [{ max: 1, windowMs: 15 * minute }] });
      const entry = {
        messageId: "bounced-before-rotation",
        status: "5.1.1",
        diagnosticCode: "smtp; 550 5.1.1 user unknown",
        bouncedAt: t0,
        expiresAt: t0 + 30 * 86_400_000,
      };
      await subject.store.putSuppression("old-hash-a", entry, minute);
      const request = { ...send("a@example.com", t0), recipientHash: "new-hash-a", previousRecipientHash: "old-hash-a" };
      for (let i = 0; i < 3; i++) expect(await limits.admit(alpha, request)).toEqual({ suppressedBy: entry });
      expect(await limiter({}).admit(alpha, request)).toEqual({ suppressedBy: entry });
      // The current hash wins when both are suppressed (it is the newer bounce's).
      const newer = { ...entry, messageId: "bounced-after-rotation", bouncedAt: t0 + 1 };
      await subject.store.putSuppression("new-hash-a", newer, minute);
      expect(await limits.admit(alpha, request)).toEqual({ suppressedBy: newer });
      // Nothing was spent; with neither hash suppressed the send is admitted.
      expect(
        await limits.admit(alpha, { ...send("a@example.com", t0), recipientHash: "new-hash-b", previousRecipientHash: "old-hash-b" }),
      ).toMatchObject({ resendAvailableAt: t0 + 15 * minute });
    });

    it("admits again exactly when the oldest send leaves the window, and says when in RetryInfo", async () => {
      const limits = limiter({ recipient: [{ max: 2, windowMs: 15 * minute }] });
      await limits.admit(alpha, send("a@example.com", t0));
      await limits.admit(alpha, send("a@example.com", t0 + 10 * second));

      const early = await refusal(limits.admit(alpha, send("a@example.com", t0 + minute)));
      expect(early.retryAfterMs).toBe(14 * minute);
      expect(early.message).toBe("limit recipient reached: at most 2 codes per 15m to one recipient; retry in 840s");
      expect(early.metadata).toMatchObject({ limit: "recipient", max: "2", window: "15m" });
      expect(early.quotaViolations).toEqual([
        { subject: "recipient", description: "at most 2 codes per 15m to one recipient", quotaId: "recipient:15m", quotaValue: 2 },
      ]);

      await refusal(limits.admit(alpha, send("a@example.com", t0 + 15 * minute - 1)));
      await limits.admit(alpha, send("a@example.com", t0 + 15 * minute));
      // The second send (t0 + 10 s) is still in the window: full again until it leaves.
      const again = await refusal(limits.admit(alpha, send("a@example.com", t0 + 15 * minute)));
      expect(again.retryAfterMs).toBe(10 * second);
    });

    it("resendAvailableAt is exact: the cooldown, or the window when the send filled it", async () => {
      const limits = limiter({ recipient: [{ max: 3, windowMs: 15 * minute }], resendCooldownMs: 30 * second });
      expect(await limits.admit(alpha, send("a@example.com", t0))).toMatchObject({ resendAvailableAt: t0 + 30 * second });

      const cooling = await refusal(limits.admit(alpha, send("a@example.com", t0 + 10 * second)));
      expect(cooling).toMatchObject({ reason: "RESEND_COOLDOWN", retryAfterMs: 20 * second });

      expect(await limits.admit(alpha, send("a@example.com", t0 + 30 * second))).toMatchObject({ resendAvailableAt: t0 + 60 * second });
      // The third fills the 15-minute window: the next send waits for the first to leave it.
      expect(await limits.admit(alpha, send("a@example.com", t0 + 60 * second))).toMatchObject({ resendAvailableAt: t0 + 15 * minute });
      await refusal(limits.admit(alpha, send("a@example.com", t0 + 15 * minute - 1)));
      await limits.admit(alpha, send("a@example.com", t0 + 15 * minute));
    });

    it("resendAvailableAt counts every limit the send counted against: a caller quota, the global budget or an end-user IP it filled", async () => {
      const limits = limiter({
        resendCooldownMs: 30 * second,
        endUserIp: [{ max: 2, windowMs: 2 * minute }],
        caller: [{ max: 3, windowMs: 3 * minute }],
        global: [{ max: 4, windowMs: 4 * minute }],
      });
      const ip = { endUserIp: "198.51.100.7" };
      expect(await limits.admit(alpha, send("a@example.com", t0, ip))).toMatchObject({ resendAvailableAt: t0 + 30 * second });
      // The IP's window (2 per 2m) is full now: the same send from it waits for the first to leave.
      expect(await limits.admit(alpha, send("b@example.com", t0 + 1, ip))).toMatchObject({ resendAvailableAt: t0 + 2 * minute });
      expect(await refusal(limits.admit(alpha, send("b@example.com", t0 + 2 * minute - 1, ip)))).toMatchObject({
        reason: "END_USER_IP_RATE_LIMITED",
      });
      // The caller's quota (3 per 3m), then the global budget (4 per 4m).
      expect(await limits.admit(alpha, send("c@example.com", t0 + 2))).toMatchObject({ resendAvailableAt: t0 + 3 * minute });
      expect(await limits.admit(beta, send("d@example.com", t0 + 3))).toMatchObject({ resendAvailableAt: t0 + 4 * minute });
      expect(await refusal(limits.admit(beta, send("d@example.com", t0 + 4 * minute - 1)))).toMatchObject({
        reason: "GLOBAL_BUDGET_EXHAUSTED",
        retryAfterMs: 1,
      });
      expect(await limits.admit(beta, send("d@example.com", t0 + 4 * minute))).toMatchObject({ resendAvailableAt: t0 + 4 * minute + 30 * second });
    });

    it("resendAvailableAt(request) reads when admit would next admit the send, without spending: what the admission said", async () => {
      const limits = limiter({ recipient: [{ max: 2, windowMs: 15 * minute }], resendCooldownMs: 30 * second, global: [{ max: 10, windowMs: minute }] });
      const request = send("a@example.com", t0);
      expect(await limits.resendAvailableAt(alpha, request)).toBe(t0);
      const first = await limits.admit(alpha, request);
      if (!("resendAvailableAt" in first)) throw new Error("not admitted");
      // Asked any number of times, it says what the admission said and spends nothing.
      for (let i = 0; i < 5; i++) expect(await limits.resendAvailableAt(alpha, send("a@example.com", t0 + 10 * second))).toBe(first.resendAvailableAt);
      expect(first.resendAvailableAt).toBe(t0 + 30 * second);
      // Another caller's send to the same mailbox fills its window: a later answer than the admission's.
      await limits.admit(beta, send("a@example.com", t0 + 20 * second));
      expect(await limits.resendAvailableAt(alpha, send("a@example.com", t0 + 20 * second))).toBe(t0 + 15 * minute);
      expect((await refusal(limits.admit(alpha, send("a@example.com", t0 + 15 * minute - 1)))).retryAfterMs).toBe(1);
      // The window has room again at exactly that time, and nothing read above was counted.
      expect(await limits.resendAvailableAt(alpha, send("a@example.com", t0 + 15 * minute))).toBe(t0 + 15 * minute);
      await limits.admit(alpha, send("a@example.com", t0 + 15 * minute));
      // A purpose or caller with no cooldown running answers now (the recipient window has room at t0 + 15m 20s).
      expect(await limits.resendAvailableAt(beta, send("a@example.com", t0 + 16 * minute, { purpose: "signup" }))).toBe(t0 + 16 * minute);
    });

    it("peekLimits is consumeLimits' nextAt without the entry: nothing added, and a full window says when it frees up", async () => {
      const logs = [
        { id: "peek-recipient", windows: [{ max: 2, windowMs: 15 * minute }, { max: 3, windowMs: 60 * minute }] },
        { id: "peek-cooldown", windows: [{ max: 1, windowMs: 30 * second }] },
        { id: "peek-unused", windows: [{ max: 5, windowMs: minute }] },
      ];
      expect(await subject.store.peekLimits(logs, t0)).toEqual([t0, t0, t0]);
      const admitted = await subject.store.consumeLimits(logs.slice(0, 2), "first", t0);
      expect(admitted).toEqual({ admitted: true, nextAt: [t0, t0 + 30 * second] });
      expect(await subject.store.peekLimits(logs, t0)).toEqual([t0, t0 + 30 * second, t0]);
      await subject.store.consumeLimits(logs.slice(0, 2), "second", t0 + minute);
      for (let i = 0; i < 3; i++) {
        expect(await subject.store.peekLimits(logs, t0 + minute)).toEqual([t0 + 15 * minute, t0 + minute + 30 * second, t0 + minute]);
      }
      // Past a window, its entries no longer count.
      expect(await subject.store.peekLimits(logs, t0 + 15 * minute)).toEqual([t0 + 15 * minute, t0 + 15 * minute, t0 + 15 * minute]);
      // The peeks added nothing: exactly two entries are in the 15-minute window.
      const refused = await subject.store.consumeLimits(logs.slice(0, 1), "third", t0 + 2 * minute);
      expect(refused).toEqual({ admitted: false, full: [{ log: 0, window: 0, retryAt: t0 + 15 * minute }] });
      expect(await subject.store.peekLimits([], t0)).toEqual([]);
    });

    it("an admission's refund takes it back once: a second refund takes nothing more", async () => {
      const limits = limiter({ recipient: [{ max: 2, windowMs: 15 * minute }] });
      const first = await limits.admit(alpha, send("a@example.com", t0));
      await limits.admit(alpha, send("a@example.com", t0 + 1));
      if (!("refund" in first)) throw new Error("not admitted");
      await first.refund();
      await first.refund();
      expect(await limits.resendAvailableAt(alpha, send("a@example.com", t0 + 2))).toBe(t0 + 2);
      await limits.admit(alpha, send("a@example.com", t0 + 2));
      // Two in the window again (the second and the third): the refunds took one, not two.
      expect(await refusal(limits.admit(alpha, send("a@example.com", t0 + 3)))).toMatchObject({ reason: "RECIPIENT_RATE_LIMITED" });
    });

    it("a refund the store cannot make rejects with the store's error; with every limit off there is nothing to refund", async () => {
      const limits = limiter({ recipient: [{ max: 2, windowMs: 15 * minute }] });
      const admission = await limits.admit(alpha, send("a@example.com", t0));
      if (!("refund" in admission)) throw new Error("not admitted");
      const unlimitedAdmission = await limiter({}).admit(alpha, send("a@example.com", t0));
      await subject.store.close();
      expect(await refusal(admission.refund())).toMatchObject({ kind: "unavailable", reason: "STORAGE_UNAVAILABLE" });
      if (!("refund" in unlimitedAdmission)) throw new Error("not admitted");
      await unlimitedAdmission.refund();
    });

    it("the cooldown is per caller and purpose; the recipient windows count every caller and purpose", async () => {
      const limits = limiter({ recipient: [{ max: 3, windowMs: 15 * minute }], resendCooldownMs: 30 * second });
      await limits.admit(alpha, send("a@example.com", t0));
      await limits.admit(alpha, send("a@example.com", t0, { purpose: "signup" }));
      await limits.admit(beta, send("a@example.com", t0));
      const full = await refusal(limits.admit(beta, send("a@example.com", t0, { purpose: "password_reset" })));
      expect(full).toMatchObject({ reason: "RECIPIENT_RATE_LIMITED" });
    });

    it("with several full windows, the one that frees up last decides, and every one is listed", async () => {
      const limits = limiter({
        recipient: [
          { max: 2, windowMs: minute },
          { max: 3, windowMs: 60 * minute },
        ],
        global: [{ max: 3, windowMs: 60 * minute }],
      });
      await limits.admit(alpha, send("a@example.com", t0));
      await limits.admit(alpha, send("a@example.com", t0 + 1));
      expect((await refusal(limits.admit(alpha, send("a@example.com", t0 + 2)))).retryAfterMs).toBe(minute - 2);
      await limits.admit(alpha, send("a@example.com", t0 + minute));

      const error = await refusal(limits.admit(alpha, send("a@example.com", t0 + minute + 1)));
      expect(error.reason).toBe("RECIPIENT_RATE_LIMITED");
      expect(error.retryAfterMs).toBe(59 * minute - 1);
      expect(error.quotaViolations.map((v) => v.quotaId)).toEqual(["recipient:1h", "global:1h"]);
    });

    it("counts each caller's quota apart and every caller's sends in the global budget", async () => {
      const limits = limiter({ caller: [{ max: 2, windowMs: minute }], global: [{ max: 3, windowMs: minute }] });
      await limits.admit(alpha, send("a1@example.com", t0));
      await limits.admit(alpha, send("a2@example.com", t0));
      const quota = await refusal(limits.admit(alpha, send("a3@example.com", t0)));
      expect(quota).toMatchObject({ reason: "CALLER_QUOTA_EXCEEDED" });
      expect(quota.quotaViolations[0]?.subject).toBe("caller:alpha");
      await limits.admit(beta, send("b1@example.com", t0));
      expect(await refusal(limits.admit(beta, send("b2@example.com", t0)))).toMatchObject({ reason: "GLOBAL_BUDGET_EXHAUSTED" });
      await limits.admit(beta, send("b2@example.com", t0 + minute));
    });

    it("limits an end-user IP only when given; an IPv6 /64 is one end user", async () => {
      const limits = limiter({ endUserIp: [{ max: 2, windowMs: minute }] });
      await limits.admit(alpha, send("a@example.com", t0, { endUserIp: "2001:db8:1:2::1" }));
      await limits.admit(alpha, send("b@example.com", t0, { endUserIp: "2001:db8:1:2:ffff::9" }));
      const error = await refusal(limits.admit(alpha, send("c@example.com", t0, { endUserIp: "2001:0db8:0001:0002::abcd" })));
      expect(error).toMatchObject({ reason: "END_USER_IP_RATE_LIMITED" });
      await limits.admit(alpha, send("c@example.com", t0, { endUserIp: "2001:db8:1:3::1" }));
      await limits.admit(alpha, send("c@example.com", t0, { endUserIp: "192.0.2.7" }));
      await limits.admit(alpha, send("d@example.com", t0, { endUserIp: "::ffff:192.0.2.7" }));
      await refusal(limits.admit(alpha, send("e@example.com", t0, { endUserIp: "192.0.2.7" })));
      for (let i = 0; i < 5; i++) await limits.admit(alpha, send(`f${i}@example.com`, t0));
    });

    it("caps failed verifications per caller and recipient, exactly under concurrency, with RetryInfo", async () => {
      const limits = limiter({ verifyFailures: [{ max: 3, windowMs: 24 * 60 * minute }] });
      const request = { recipientKey: "a@example.com", now: t0 };
      const set = { group: "alpha+a", id: "login" };
      const setOptions = { now: t0, maxFailures: 100, keepExpiredMs: minute };
      await subject.store.addCode(set, { id: "m1", hmac: "aa".repeat(32), expiresAt: t0 + 2 * 24 * 60 * minute }, setOptions);
      /** One guess under alpha's cap, as the OTP service makes it. */
      const guess = async (hmac: string, now = t0) => {
        const cap = limits.failureCap(alpha, { ...request, now });
        if (cap === undefined) throw new Error("no cap");
        const outcome = await subject.store.verifyGuess(set, hmac, { ...setOptions, now, failureCap: cap });
        return outcome.state === "capped" ? cap.refuse(outcome.full) : outcome;
      };

      const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => guess(`${i}`.padStart(64, "0"))));
      expect(results.filter((r) => r.status === "fulfilled").map((r) => r.value.state)).toEqual(["invalid", "invalid", "invalid"]);
      const refused = results.find((r) => r.status === "rejected")?.reason as unknown;
      expect(refused).toBeInstanceOf(OtpError);
      expect(refused).toMatchObject({
        kind: "resource_exhausted",
        reason: "VERIFY_FAILURES_EXCEEDED",
        retryAfterMs: 24 * 60 * minute,
        metadata: { limit: "verify_failures", max: "3", window: "1d" },
      });
      expect((refused as OtpError).message).toMatch(/^limit verify_failures reached: at most 3 failed verifications per 1d for one recipient/);
      // Refused, even for the right code, until the window frees up.
      await refusal(guess("aa".repeat(32), t0 + 24 * 60 * minute - 1));
      expect(await guess("aa".repeat(32), t0 + 24 * 60 * minute)).toEqual({ state: "verified", id: "m1" });

      // The cap's log is per caller and recipient.
      expect(limits.failureCap(beta, request)?.log.id).not.toBe(limits.failureCap(alpha, request)?.log.id);
      expect(limits.failureCap(alpha, { ...request, recipientKey: "b@example.com" })?.log.id).not.toBe(
        limits.failureCap(alpha, request)?.log.id,
      );
    });

    it("with every limit off, admits without asking the store", async () => {
      const limits = limiter({});
      await subject.store.close();
      expect(await limits.admit(alpha, send("a@example.com", t0))).toMatchObject({ resendAvailableAt: t0 });
      expect(await limits.resendAvailableAt(alpha, send("a@example.com", t0))).toBe(t0);
      expect(limits.failureCap(alpha, { recipientKey: "a@example.com", now: t0 })).toBeUndefined();
    });
  });
}
