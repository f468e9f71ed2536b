/**
 * The OtpStore contract: behaviour every implementation must show, run
 * against each of them (store-memory.test.ts, store-redis.test.ts).
 *
 * Code-set times are passed explicitly (`now`), as the domain does with its
 * clock; TTL-driven expiry (records, claims) goes through `elapse`.
 */
import { createHash } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeliveryRecord, DeliveryReport, SuppressionEntry } from "../../src/delivery/record.js";
import { OtpError } from "../../src/errors.js";
import type { CodeEntry, CodeSetOptions, CodeSetRef, GuessOptions, OtpStore } from "../../src/store/types.js";
import { maxDeliveryReports, maxRecipientMessages } from "../../src/store/types.js";

/** One store, fresh and empty, for one test. */
export interface StoreUnderTest {
  readonly store: OtpStore;
  /** Lets `ms` pass for the store's TTLs: a fake clock jumps, Redis really waits (keep it short). */
  elapse(ms: number): Promise<void>;
  /** After the test: closes the store (maybe already closed) and checks/cleans what it left. */
  teardown(): Promise<void>;
}

/** Defines the contract tests for a store factory. */
export function describeStoreContract(name: string, open: () => Promise<StoreUnderTest>): void {
  describe(`OtpStore contract: ${name}`, () => {
    let subject: StoreUnderTest;
    let store: OtpStore;

    beforeEach(async () => {
      subject = await open();
      store = subject.store;
    });

    afterEach(async () => {
      await subject.teardown();
    });

    describe("code sets", () => {
      const set: CodeSetRef = { group: "group", id: "set" };

      it("answers none for a set that never had a code", async () => {
        expect(await store.verifyGuess(set, hmac("111111"), at(t0))).toEqual({ state: "none" });
      });

      it("counts a wrong guess, and verifies the right one once: the set is used up", async () => {
        const a = code("a", "111111", t0 + minute);
        await store.addCode(set, a, at(t0));

        expect(await store.verifyGuess(set, hmac("999999"), at(t0))).toEqual({ state: "invalid", failures: 1 });
        expect(await store.verifyGuess(set, hmac("999998"), at(t0))).toEqual({ state: "invalid", failures: 2 });
        expect(await store.verifyGuess(set, a.hmac, at(t0))).toEqual({ state: "verified", id: "a" });
        expect(await store.verifyGuess(set, a.hmac, at(t0))).toEqual({ state: "none" });
      });

      it("keeps two outstanding codes verifiable, and verifying either uses up the set", async () => {
        const a = code("a", "111111", t0 + minute);
        const b = code("b", "222222", t0 + 2 * minute);
        await store.addCode(set, a, at(t0));
        await store.addCode(set, b, at(t0 + 1000));

        expect(await store.verifyGuess(set, b.hmac, at(t0 + 2000))).toEqual({ state: "verified", id: "b" });
        expect(await store.verifyGuess(set, a.hmac, at(t0 + 2000))).toEqual({ state: "none" });
      });

      it("locks after maxFailures wrong guesses and stops counting; then even the right code is refused", async () => {
        const a = code("a", "111111", t0 + minute);
        await store.addCode(set, a, at(t0, 3));

        const failures: unknown[] = [];
        for (let i = 0; i < 3; i++) failures.push(await store.verifyGuess(set, hmac(`00000${i}`), at(t0, 3)));
        expect(failures).toEqual([1, 2, 3].map((n) => ({ state: "invalid", failures: n })));
        expect(await store.verifyGuess(set, a.hmac, at(t0, 3))).toEqual({ state: "locked", failures: 3 });
        expect(await store.verifyGuess(set, hmac("000009"), at(t0, 3))).toEqual({ state: "locked", failures: 3 });
      });

      it("resets a locked set when a fresh code is added, discarding the old codes", async () => {
        const a = code("a", "111111", t0 + minute);
        await store.addCode(set, a, at(t0, 2));
        await store.verifyGuess(set, hmac("000000"), at(t0, 2));
        await store.verifyGuess(set, hmac("000001"), at(t0, 2));
        expect((await store.verifyGuess(set, a.hmac, at(t0, 2))).state).toBe("locked");

        const b = code("b", "222222", t0 + 2 * minute);
        await store.addCode(set, b, at(t0 + 1000, 2));

        expect(await store.verifyGuess(set, a.hmac, at(t0 + 1000, 2))).toEqual({ state: "invalid", failures: 1 });
        expect(await store.verifyGuess(set, b.hmac, at(t0 + 1000, 2))).toEqual({ state: "verified", id: "b" });
      });

      it("keeps earlier codes and the failure count when a code is added to an unlocked set", async () => {
        const a = code("a", "111111", t0 + minute);
        const b = code("b", "222222", t0 + minute);
        await store.addCode(set, a, at(t0));
        await store.verifyGuess(set, hmac("000000"), at(t0));
        await store.addCode(set, b, at(t0));

        expect(await store.verifyGuess(set, hmac("000001"), at(t0))).toEqual({ state: "invalid", failures: 2 });
        expect(await store.verifyGuess(set, a.hmac, at(t0))).toEqual({ state: "verified", id: "a" });
      });

      it("keeps a code live strictly before its expiresAt; from that instant on answers expired without counting", async () => {
        const a = code("a", "111111", t0 + 1000);
        await store.addCode(set, a, at(t0));

        expect(await store.verifyGuess(set, hmac("000000"), at(t0 + 999))).toEqual({ state: "invalid", failures: 1 });
        expect(await store.verifyGuess(set, a.hmac, at(t0 + 1000))).toEqual({ state: "expired" });
        expect(await store.verifyGuess(set, hmac("000000"), at(t0 + 5000))).toEqual({ state: "expired" });

        // A new code prunes the expired one; the expired answers were not counted.
        const b = code("b", "222222", t0 + minute);
        await store.addCode(set, b, at(t0 + 5000));
        expect(await store.verifyGuess(set, a.hmac, at(t0 + 5000))).toEqual({ state: "invalid", failures: 2 });
        expect(await store.verifyGuess(set, b.hmac, at(t0 + 5000))).toEqual({ state: "verified", id: "b" });
      });

      it("verifies a code 1 ms before its expiresAt, and not at it", async () => {
        const a = code("a", "111111", t0 + 1000);
        await store.addCode(set, a, at(t0));
        expect(await store.verifyGuess(set, a.hmac, at(t0 + 1000))).toEqual({ state: "expired" });

        const b = code("b", "222222", t0 + 2000);
        await store.addCode(set, b, at(t0 + 1000));
        expect(await store.verifyGuess(set, b.hmac, at(t0 + 1999))).toEqual({ state: "verified", id: "b" });
      });

      it("a code at its expiresAt, beside a live one, does not verify: the guess counts as wrong", async () => {
        const a = code("a", "111111", t0 + 1000);
        const b = code("b", "222222", t0 + minute);
        await store.addCode(set, a, at(t0));
        await store.addCode(set, b, at(t0 + 1000));

        expect(await store.verifyGuess(set, a.hmac, at(t0 + 1000))).toEqual({ state: "invalid", failures: 1 });
        expect(await store.verifyGuess(set, b.hmac, at(t0 + 1000))).toEqual({ state: "verified", id: "b" });
      });

      it("verifies only the live codes when some have expired", async () => {
        const a = code("a", "111111", t0 + 1000);
        const b = code("b", "222222", t0 + minute);
        await store.addCode(set, a, at(t0));
        await store.addCode(set, b, at(t0));

        expect(await store.verifyGuess(set, a.hmac, at(t0 + 2000))).toEqual({ state: "invalid", failures: 1 });
        expect(await store.verifyGuess(set, b.hmac, at(t0 + 2000))).toEqual({ state: "verified", id: "b" });
      });

      it("forgets an expired set once keepExpiredMs has passed", async () => {
        const a = code("a", "111111", t0 + 1000);
        await store.addCode(set, a, at(t0));
        const keepExpiredMs = defaults.keepExpiredMs;

        expect(await store.verifyGuess(set, a.hmac, at(t0 + 1000 + keepExpiredMs - 1))).toEqual({ state: "expired" });
        expect(await store.verifyGuess(set, a.hmac, at(t0 + 1000 + keepExpiredMs))).toEqual({ state: "none" });
      });

      it("answers expired, not locked, once a locked set's codes have expired", async () => {
        const a = code("a", "111111", t0 + 1000);
        await store.addCode(set, a, at(t0, 1));
        await store.verifyGuess(set, hmac("000000"), at(t0, 1));
        expect(await store.verifyGuess(set, a.hmac, at(t0, 1))).toEqual({ state: "locked", failures: 1 });

        expect(await store.verifyGuess(set, a.hmac, at(t0 + 2000, 1))).toEqual({ state: "expired" });
      });

      it("lets exactly one of many concurrent right guesses verify", async () => {
        const a = code("a", "111111", t0 + minute);
        await store.addCode(set, a, at(t0));

        const outcomes = await Promise.all(Array.from({ length: 20 }, () => store.verifyGuess(set, a.hmac, at(t0))));

        expect(outcomes.filter((o) => o.state === "verified")).toHaveLength(1);
        expect(outcomes.filter((o) => o.state === "none")).toHaveLength(19);
      });

      it("counts exactly maxFailures of 100 concurrent wrong guesses", async () => {
        await store.addCode(set, code("a", "111111", t0 + minute), at(t0, 5));

        const outcomes = await Promise.all(
          Array.from({ length: 100 }, (_, i) => store.verifyGuess(set, hmac(`wrong-${i}`), at(t0, 5))),
        );

        const counted = outcomes.flatMap((o) => (o.state === "invalid" ? [o.failures] : []));
        expect(counted.sort((x, y) => x - y)).toEqual([1, 2, 3, 4, 5]);
        expect(outcomes.filter((o) => o.state === "locked")).toHaveLength(95);
      });

      it("loses no code when many are added concurrently", async () => {
        // Each round adds ten codes at once, then checks that the round's own one survived.
        for (let round = 0; round < 10; round++) {
          const roundSet = { group: "group", id: `set-${round}` };
          const codes = Array.from({ length: 10 }, (_, i) => code(`m${i}`, `${100000 + i}`, t0 + minute));
          await Promise.all(codes.map((c) => store.addCode(roundSet, c, at(t0))));
          expect(await store.verifyGuess(roundSet, codes[round]?.hmac ?? "", at(t0))).toEqual({ state: "verified", id: `m${round}` });
        }
      });

      it("keeps sets apart, within a group and across groups", async () => {
        const a = code("a", "111111", t0 + minute);
        await store.addCode({ group: "group", id: "set-1" }, a, at(t0));

        expect(await store.verifyGuess({ group: "group", id: "set-2" }, a.hmac, at(t0))).toEqual({ state: "none" });
        expect(await store.verifyGuess({ group: "other", id: "set-1" }, a.hmac, at(t0))).toEqual({ state: "none" });
        expect(await store.verifyGuess({ group: "group", id: "set-1" }, a.hmac, at(t0))).toEqual({ state: "verified", id: "a" });
      });
    });

    describe("failure cap", () => {
      const day = 24 * 60 * minute;
      const login: CodeSetRef = { group: "group", id: "login" };
      const signup: CodeSetRef = { group: "group", id: "signup" };
      const capOf = (max: number, entry: string) => ({ log: { id: "vf", windows: [{ max, windowMs: day }] }, entry });
      let entries = 0;
      /** Options for one guess under a cap of `max` per day (and maxFailures 100, out of the way). */
      const capped = (now: number, max = 3): GuessOptions => ({ ...at(now, 100), failureCap: capOf(max, `e${++entries}`) });

      it("counts only wrong guesses, refuses once full without counting, and frees up with its window", async () => {
        const a = code("a", "111111", t0 + minute);
        await store.addCode(login, a, at(t0, 100));
        expect(await store.verifyGuess(login, hmac("000000"), capped(t0))).toEqual({ state: "invalid", failures: 1 });
        expect(await store.verifyGuess(login, hmac("000001"), capped(t0))).toEqual({ state: "invalid", failures: 2 });
        // A right guess is not a failure.
        expect(await store.verifyGuess(login, a.hmac, capped(t0))).toEqual({ state: "verified", id: "a" });

        // A fresh code does not reset the cap: one failure left.
        const b = code("b", "222222", t0 + 2 * day);
        await store.addCode(login, b, at(t0, 100));
        expect(await store.verifyGuess(login, hmac("000002"), capped(t0 + 10))).toEqual({ state: "invalid", failures: 1 });
        const full = { state: "capped", full: [{ log: 0, window: 0, retryAt: t0 + day }] };
        expect(await store.verifyGuess(login, hmac("000003"), capped(t0 + 20))).toEqual(full);
        expect(await store.verifyGuess(login, b.hmac, capped(t0 + 20))).toEqual(full);

        // The refused guesses counted nowhere: once the first two failures leave the window, one more fits.
        expect(await store.verifyGuess(login, hmac("000004"), capped(t0 + day))).toEqual({ state: "invalid", failures: 2 });
        expect((await store.verifyGuess(login, hmac("000005"), capped(t0 + day))).state).toBe("invalid");
        expect(await store.verifyGuess(login, b.hmac, capped(t0 + day))).toEqual({
          state: "capped",
          full: [{ log: 0, window: 0, retryAt: t0 + 10 + day }],
        });
      });

      it("is exact under concurrency and shared by the group's sets; another group has its own", async () => {
        await store.addCode(login, code("a", "111111", t0 + minute), at(t0, 100));
        await store.addCode(signup, code("b", "222222", t0 + minute), at(t0, 100));

        const outcomes = await Promise.all(
          Array.from({ length: 100 }, (_, i) => store.verifyGuess(i % 2 === 0 ? login : signup, hmac(`wrong-${i}`), capped(t0, 5))),
        );

        expect(outcomes.filter((o) => o.state === "invalid")).toHaveLength(5);
        expect(outcomes.filter((o) => o.state === "capped")).toHaveLength(95);
        const other = { group: "other", id: "login" };
        await store.addCode(other, code("c", "333333", t0 + minute), at(t0, 100));
        expect(await store.verifyGuess(other, hmac("000000"), capped(t0, 5))).toEqual({ state: "invalid", failures: 1 });
      });

      it("answers none, expired and locked before looking at the cap", async () => {
        for (let i = 0; i < 3; i++) {
          await store.addCode(login, code(`a${i}`, "111111", t0 + minute), at(t0, 100));
          await store.verifyGuess(login, hmac(`wrong-${i}`), capped(t0));
        }
        expect(await store.verifyGuess(signup, hmac("000000"), capped(t0))).toEqual({ state: "none" });
        await store.addCode(signup, code("b", "222222", t0 + 1000), at(t0, 100));
        expect(await store.verifyGuess(signup, hmac("000000"), capped(t0 + 2000))).toEqual({ state: "expired" });
        expect(await store.verifyGuess(login, hmac("000000"), { ...capped(t0), maxFailures: 3 })).toEqual({ state: "locked", failures: 3 });
      });
    });

    describe("idempotency keys", () => {
      const first = { fingerprint: "fp-1", messageId: "msg-1" };
      const second = { fingerprint: "fp-2", messageId: "msg-2" };

      it("lets the first claim win and shows it to later claims", async () => {
        expect(await store.claimIdempotencyKey("key", first, minute)).toEqual({ claimed: true });
        expect(await store.claimIdempotencyKey("key", second, minute)).toEqual({ claimed: false, existing: first });
        expect(await store.claimIdempotencyKey("other-key", second, minute)).toEqual({ claimed: true });
      });

      it("releases a claim only for the message it names", async () => {
        await store.claimIdempotencyKey("key", first, minute);

        await store.releaseIdempotencyKey("key", second.messageId);
        expect(await store.claimIdempotencyKey("key", second, minute)).toEqual({ claimed: false, existing: first });

        await store.releaseIdempotencyKey("key", first.messageId);
        expect(await store.claimIdempotencyKey("key", second, minute)).toEqual({ claimed: true });
      });

      it("releasing an unknown key is harmless", async () => {
        await expect(store.releaseIdempotencyKey("never-claimed", "msg-1")).resolves.toBeUndefined();
      });

      it("frees a claim after its TTL", async () => {
        await store.claimIdempotencyKey("key", first, 50);
        await subject.elapse(120);

        expect(await store.claimIdempotencyKey("key", second, minute)).toEqual({ claimed: true });
      });

      it("lets exactly one of many concurrent claims win", async () => {
        const claims = Array.from({ length: 20 }, (_, i) => ({ fingerprint: "fp", messageId: `msg-${i}` }));

        const results = await Promise.all(claims.map((c) => store.claimIdempotencyKey("key", c, minute)));

        const winners = claims.filter((_, i) => results[i]?.claimed === true);
        expect(winners).toHaveLength(1);
        for (const result of results) {
          if (!result.claimed) expect(result.existing).toEqual(winners[0]);
        }
      });
    });

    describe("delivery records", () => {
      it("reads an unknown record as undefined", async () => {
        expect(await store.getRecord("unknown")).toBeUndefined();
      });

      it("reads a record back as written, and putRecord overwrites", async () => {
        const queued = record("msg-1");
        await store.putRecord(queued, minute);
        expect(await store.getRecord("msg-1")).toEqual(queued);

        const accepted: DeliveryRecord = {
          ...queued,
          state: "ACCEPTED",
          updatedAt: t0 + 900,
          attempts: [
            {
              number: 1,
              startedAt: t0 + 100,
              durationMs: 800,
              outcome: "accepted",
              replyCode: 250,
              enhancedStatus: "2.0.0",
              replyText: "250 2.0.0 Ok: queued as 4bX",
              errorCode: "",
            },
          ],
          relayReply: { relay: "relay.example:587", text: "250 2.0.0 Ok: queued as 4bX", queueId: "4bX", acceptedAt: t0 + 900 },
        };
        await store.putRecord(accepted, minute);
        expect(await store.getRecord("msg-1")).toEqual(accepted);
        expect(await store.getRecord("msg-2")).toBeUndefined();
      });

      it("forgets a record after its TTL", async () => {
        await store.putRecord(record("msg-1"), 50);
        await subject.elapse(120);

        expect(await store.getRecord("msg-1")).toBeUndefined();
      });
    });

    describe("delivery reports (DSNs)", () => {
      it("answers no reports for a message that has none", async () => {
        expect(await store.getDeliveryReports("msg-1")).toEqual([]);
      });

      it("keeps reports in arrival order, per message, apart from the record", async () => {
        const delayed = report("delayed", "4.4.1", t0 + 1000);
        const failed = report("failed", "5.1.1", t0 + 2000);
        await store.putRecord(record("msg-1"), minute);
        await store.addDeliveryReport("msg-1", delayed, minute);
        await store.addDeliveryReport("msg-1", failed, minute);
        await store.addDeliveryReport("msg-2", failed, minute);

        expect(await store.getDeliveryReports("msg-1")).toEqual([delayed, failed]);
        expect(await store.getDeliveryReports("msg-2")).toEqual([failed]);
        // A later write of the record (the sender's) leaves the reports alone.
        await store.putRecord({ ...record("msg-1"), state: "ACCEPTED" }, minute);
        expect(await store.getDeliveryReports("msg-1")).toHaveLength(2);
      });

      it("reads a record with its reports in one operation: either may be missing", async () => {
        const delayed = report("delayed", "4.4.1", t0 + 1000);
        const failed = report("failed", "5.1.1", t0 + 2000);
        await store.putRecord(record("msg-1"), minute);
        await store.addDeliveryReport("msg-1", delayed, minute);
        await store.addDeliveryReport("msg-1", failed, minute);
        await store.putRecord(record("msg-2"), minute);
        // A bounce can be read for a record that has already expired.
        await store.addDeliveryReport("msg-3", failed, minute);

        expect(await store.getRecordWithReports("msg-1")).toEqual([record("msg-1"), [delayed, failed]]);
        expect(await store.getRecordWithReports("msg-2")).toEqual([record("msg-2"), []]);
        expect(await store.getRecordWithReports("msg-3")).toEqual([undefined, [failed]]);
        expect(await store.getRecordWithReports("unknown")).toEqual([undefined, []]);
      });

      it(`keeps the newest ${maxDeliveryReports} reports when flooded`, async () => {
        for (let i = 0; i < maxDeliveryReports + 5; i++) {
          await store.addDeliveryReport("msg-1", report("delayed", "4.4.1", t0 + i), minute);
        }

        const kept = await store.getDeliveryReports("msg-1");
        expect(kept).toHaveLength(maxDeliveryReports);
        expect(kept[0]?.receivedAt).toBe(t0 + 5);
        expect(kept.at(-1)?.receivedAt).toBe(t0 + maxDeliveryReports + 4);
      });

      it("loses no report when many arrive at once", async () => {
        const many = Array.from({ length: 10 }, (_, i) => report("delayed", "4.4.1", t0 + i));

        await Promise.all(many.map((r) => store.addDeliveryReport("msg-1", r, minute)));

        const kept = await store.getDeliveryReports("msg-1");
        expect([...kept].sort((x, y) => x.receivedAt - y.receivedAt)).toEqual(many);
      });

      it("appends a report whose identity a kept one has only once, and says which write appended it", async () => {
        const failed = { ...report("failed", "5.1.1", t0 + 1000), identity: "id-failed" };
        const copy = { ...failed, receivedAt: t0 + 2000 };

        expect(await store.addDeliveryReport("msg-1", failed, minute)).toBe(true);
        expect(await store.addDeliveryReport("msg-1", copy, minute)).toBe(false);
        // Another message's report list, another identity, or none at all: appended.
        expect(await store.addDeliveryReport("msg-2", copy, minute)).toBe(true);
        expect(await store.addDeliveryReport("msg-1", { ...failed, identity: "id-other" }, minute)).toBe(true);
        expect(await store.addDeliveryReport("msg-1", report("delayed", "4.4.1", t0), minute)).toBe(true);
        expect(await store.addDeliveryReport("msg-1", report("delayed", "4.4.1", t0), minute)).toBe(true);

        expect((await store.getDeliveryReports("msg-1")).map((kept) => kept.identity)).toEqual(["id-failed", "id-other", undefined, undefined]);
        expect(await store.getDeliveryReports("msg-2")).toEqual([copy]);
      });

      it("of many copies of one report arriving at once, appends exactly one", async () => {
        const copies = Array.from({ length: 10 }, (_, i) => ({ ...report("failed", "5.1.1", t0 + i), identity: "id-failed" }));

        const appended = await Promise.all(copies.map((copy) => store.addDeliveryReport("msg-1", copy, minute)));

        expect(appended.filter(Boolean)).toHaveLength(1);
        expect(await store.getDeliveryReports("msg-1")).toHaveLength(1);
      });

      it("forgets reports after their TTL", async () => {
        await store.addDeliveryReport("msg-1", report("failed", "5.1.1", t0), 50);
        await subject.elapse(120);

        expect(await store.getDeliveryReports("msg-1")).toEqual([]);
      });
    });

    describe("a recipient's messages (the index support looks up)", () => {
      it("answers none for a recipient never sent to", async () => {
        expect(await store.getRecipientMessages("hash-1")).toEqual([]);
      });

      it("lists a recipient's message ids newest first, per recipient hash", async () => {
        await store.addRecipientMessage("hash-1", "msg-1", minute);
        await store.addRecipientMessage("hash-1", "msg-2", minute);
        await store.addRecipientMessage("hash-2", "msg-3", minute);

        expect(await store.getRecipientMessages("hash-1")).toEqual(["msg-2", "msg-1"]);
        expect(await store.getRecipientMessages("hash-2")).toEqual(["msg-3"]);
      });

      it(`keeps the newest ${maxRecipientMessages} when a recipient gets more`, async () => {
        for (let i = 0; i < maxRecipientMessages + 5; i++) await store.addRecipientMessage("hash-1", `msg-${i}`, minute);

        const kept = await store.getRecipientMessages("hash-1");
        expect(kept).toHaveLength(maxRecipientMessages);
        expect(kept[0]).toBe(`msg-${maxRecipientMessages + 4}`);
        expect(kept.at(-1)).toBe("msg-5");
      });

      it("loses no message id when many are added at once", async () => {
        const ids = Array.from({ length: 10 }, (_, i) => `msg-${i}`);

        await Promise.all(ids.map((id) => store.addRecipientMessage("hash-1", id, minute)));

        expect([...(await store.getRecipientMessages("hash-1"))].sort()).toEqual(ids);
      });

      it("forgets the list once its TTL has passed since the newest message; each message renews it", async () => {
        // Margins of 100 ms and more either side of each expiry: on Redis these are real milliseconds, on a loaded machine.
        await store.addRecipientMessage("hash-1", "msg-1", 250);
        await store.addRecipientMessage("hash-2", "msg-2", 250);
        await subject.elapse(100);
        await store.addRecipientMessage("hash-2", "msg-3", 400);
        await subject.elapse(250);

        expect(await store.getRecipientMessages("hash-1")).toEqual([]);
        expect(await store.getRecipientMessages("hash-2")).toEqual(["msg-3", "msg-2"]);
      });
    });

    describe("suppressions", () => {
      const entry: SuppressionEntry = {
        messageId: "msg-1",
        status: "5.1.1",
        diagnosticCode: "smtp; 550 5.1.1 <j***@example.com>: Recipient address rejected: User unknown",
        bouncedAt: t0,
        expiresAt: t0 + 30 * 86_400_000,
      };

      it("answers undefined for a recipient that is not suppressed", async () => {
        expect(await store.getSuppression("hash-1")).toBeUndefined();
      });

      it("reads a suppression back, per recipient hash, and a later one replaces it", async () => {
        await store.putSuppression("hash-1", entry, minute);
        expect(await store.getSuppression("hash-1")).toEqual(entry);
        expect(await store.getSuppression("hash-2")).toBeUndefined();

        const later = { ...entry, messageId: "msg-2", bouncedAt: t0 + 1000 };
        expect(await store.putSuppression("hash-1", later, minute)).toEqual(later);
        expect(await store.getSuppression("hash-1")).toEqual(later);
      });

      it("keeps a suppression in force with the same cause (the same report again) as it is, TTL included, and answers it", async () => {
        await store.putSuppression("hash-1", entry, 400);
        // The same message and reason, written later for longer: the entry in force stays as it was.
        const again = { ...entry, diagnosticCode: "smtp; 550 5.1.1 again", bouncedAt: t0 + 100, expiresAt: t0 + 100 + minute };
        expect(await store.putSuppression("hash-1", again, minute)).toEqual(entry);
        expect(await store.getSuppression("hash-1")).toEqual(entry);
        await subject.elapse(600);
        expect(await store.getSuppression("hash-1")).toBeUndefined();

        // A complaint about the same message is another cause: it replaces the entry; the same complaint again does not.
        const complaint = { ...again, status: "", diagnosticCode: "", reason: "complaint" as const, feedbackType: "abuse" };
        await store.putSuppression("hash-2", entry, minute);
        expect(await store.putSuppression("hash-2", complaint, minute)).toEqual(complaint);
        expect(await store.putSuppression("hash-2", { ...complaint, bouncedAt: t0 + 500 }, minute)).toEqual(complaint);
        expect(await store.getSuppression("hash-2")).toEqual(complaint);
      });

      it("of the same suppression written at once many times, keeps the first", async () => {
        const copies = Array.from({ length: 10 }, (_, i) => ({ ...entry, bouncedAt: t0 + i, expiresAt: t0 + i + minute }));
        const inForce = await Promise.all(copies.map((copy) => store.putSuppression("hash-1", copy, minute)));

        const kept = await store.getSuppression("hash-1");
        expect(copies).toContainEqual(kept);
        expect(inForce.every((answer) => answer.bouncedAt === kept?.bouncedAt)).toBe(true);
      });

      it("lifts a suppression after its TTL", async () => {
        await store.putSuppression("hash-1", entry, 50);
        await subject.elapse(120);

        expect(await store.getSuppression("hash-1")).toBeUndefined();
      });

      it("removes a suppression, answering the entry it removed; a second removal answers undefined; others stay", async () => {
        const other = { ...entry, messageId: "msg-2" };
        await store.putSuppression("hash-1", entry, minute);
        await store.putSuppression("hash-2", other, minute);

        expect(await store.removeSuppression("hash-1")).toEqual(entry);
        expect(await store.getSuppression("hash-1")).toBeUndefined();
        expect(await store.removeSuppression("hash-1")).toBeUndefined();
        expect(await store.removeSuppression("hash-never")).toBeUndefined();
        expect(await store.getSuppression("hash-2")).toEqual(other);
      });

      it("a removed suppression no longer refuses consumeLimits, which then admits and counts", async () => {
        const log = { id: "recipient-log", windows: [{ max: 5, windowMs: minute }] };
        await store.putSuppression("hash-1", entry, minute);
        expect(await store.consumeLimits([log], "a1", t0, { unlessSuppressed: ["hash-1", "hash-2"] })).toEqual({
          admitted: false,
          suppressed: entry,
        });

        await store.removeSuppression("hash-1");
        expect(await store.consumeLimits([log], "a2", t0, { unlessSuppressed: ["hash-1", "hash-2"] })).toEqual({
          admitted: true,
          nextAt: [t0],
        });
      });

      it("removing a suppression whose TTL has run out answers undefined", async () => {
        await store.putSuppression("hash-1", entry, 50);
        await subject.elapse(120);

        expect(await store.removeSuppression("hash-1")).toBeUndefined();
      });
    });

    describe("lifecycle", () => {
      it("answers ping and reports ready", async () => {
        await expect(store.ping()).resolves.toBeUndefined();
        expect(store.isReady()).toBe(true);
      });

      it("on close: unready, listeners told, safe to repeat, operations reject as unavailable", async () => {
        await store.ping();
        const seen: boolean[] = [];
        const unsubscribed: boolean[] = [];
        store.onReadyChange((ready) => seen.push(ready));
        const unsubscribe = store.onReadyChange((ready) => unsubscribed.push(ready));
        unsubscribe();

        await store.close();
        await store.close();

        expect(store.isReady()).toBe(false);
        expect(seen).toEqual([false]);
        expect(unsubscribed).toEqual([]);
        const failure: unknown = await store.getRecord("msg-1").catch((error: unknown) => error);
        expect(failure).toBeInstanceOf(OtpError);
        expect((failure as OtpError).kind).toBe("unavailable");
      });
    });
  });
}

/** A fixed, realistic epoch time (2030) unrelated to the wall clock. */
export const t0 = Date.UTC(2030, 0, 1);
const minute = 60_000;
const defaults = { maxFailures: 5, keepExpiredMs: 10 * minute };

function at(now: number, maxFailures = defaults.maxFailures): CodeSetOptions {
  return { now, maxFailures, keepExpiredMs: defaults.keepExpiredMs };
}

function hmac(value: string): string {
  return createHash("sha256").update(`test-secret:${value}`).digest("hex");
}

function code(id: string, value: string, expiresAt: number): CodeEntry {
  return { id, hmac: hmac(value), expiresAt };
}

function report(action: DeliveryReport["action"], status: string, receivedAt: number): DeliveryReport {
  return {
    receivedAt,
    action,
    status,
    diagnosticCode: `smtp; ${status.startsWith("5") ? 550 : 451} ${status} test`,
    remoteMta: "dns; mx.example.com",
    reportingMta: "dns; relay.example.com",
    finalRecipient: "rfc822; j***@example.com",
    envelopeId: "msg-1",
  };
}

function record(messageId: string): DeliveryRecord {
  return {
    messageId,
    caller: "billing",
    state: "QUEUED",
    recipientMasked: "j***@example.com",
    recipientDomain: "example.com",
    purpose: "login",
    locale: "en",
    createdAt: t0,
    updatedAt: t0,
    expiresAt: t0 + 10 * minute,
    attempts: [],
    traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
  };
}
