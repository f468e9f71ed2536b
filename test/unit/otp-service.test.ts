/**
 * The OTP domain on the memory store with a recording delivery double: the
 * store and the delivery are not the boundaries under test here (the
 * integration suites cover them for real); the code rules are.
 */
import * as crypto from "node:crypto";
import { describe, expect, it, vi } from "vitest";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { createRenderer } from "../../src/delivery/render.js";
import type { OutgoingMail } from "../../src/delivery/smtp-transport-types.js";
import { OtpError, storageUnavailable } from "../../src/errors.js";
import { createSuppressionList } from "../../src/bounce/suppression.js";
import { createLimiter } from "../../src/limits/limiter.js";
import { unlimited, type SendLimiter, type VerifyLimiter } from "../../src/limits/types.js";
import { createLogger } from "../../src/logger.js";
import { createHasher } from "../../src/otp/code.js";
import { createOtpService } from "../../src/otp/otp-service.js";
import { createMemoryStore } from "../../src/store/memory-store.js";

vi.mock("node:crypto", async (importOriginal) => {
  const actual = await importOriginal<typeof crypto>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const ctx = { caller: "tests", traceId: "" };

const secret = Buffer.from("unit-test-secret-0123456789abcdefgh");

/** What every service here is made with besides its store, delivery, limiter and clock. */
function fixedOptions() {
  return {
    renderer: createRenderer({ defaultLocale: "en", productName: "Acme" }),
    hasher: createHasher(secret),
    logger: createLogger({ level: "silent" }),
    from: { name: "Acme", address: "no-reply@acme.test" },
    codeLength: 6,
    ttl: { defaultMs: 600_000, minMs: 60_000, maxMs: 3_600_000 },
    maxFailedAttempts: 5,
    recordRetentionMs: 7 * 86_400_000,
    idempotencyTtlMs: 86_400_000,
  };
}

function setup(outcome: DeliveryRecord["state"] = "ACCEPTED", limits: "off" | "on" = "off") {
  let now = 1_800_000_000_000;
  const clock = { now: () => now };
  const store = createMemoryStore({ clock });
  const suppression = createSuppressionList({ store, secret, ttlMs: 86_400_000, clock });
  const limiter: SendLimiter & VerifyLimiter =
    limits === "off"
      ? unlimited
      : createLimiter({
          store,
          secret,
          logger: createLogger({ level: "silent" }),
          limits: {
            recipient: [{ max: 1, windowMs: 900_000 }],
            resendCooldownMs: 0,
            endUserIp: [],
            caller: [],
            global: [],
            verifyFailures: [{ max: 3, windowMs: 86_400_000 }],
          },
        });
  const sent: OutgoingMail[] = [];
  const service = createOtpService({
    store,
    delivery: {
      // Like the real delivery service, the double writes its final record.
      dispatch: async (record: DeliveryRecord, mail: OutgoingMail) => {
        sent.push(mail);
        const attempts =
          outcome === "FAILED"
            ? [{ number: 1, startedAt: now, durationMs: 1, outcome: "permanent" as const, replyCode: 550, enhancedStatus: "5.1.1", replyText: "550 5.1.1 no such user", errorCode: "" }]
            : [];
        const final = { ...record, state: outcome, attempts, failureReason: outcome === "FAILED" ? "the relay refused" : undefined };
        await store.putRecord(final, 86_400_000);
        return final;
      },
    },
    limiter,
    verifyLimiter: limiter,
    suppression,
    clock,
    ...fixedOptions(),
  });
  return { service, store, sent, suppression, advance: (ms: number) => (now += ms) };
}

const send = { recipient: "ana@example.com", purpose: "login", locale: "", code: "", ttlMs: undefined, idempotencyKey: "", endUserIp: "" };

describe("otp service", () => {
  it("compares a guess with timingSafeEqual against every live code", async () => {
    const { service } = setup();
    await service.sendOtp(ctx, { ...send, code: "1111" });
    await service.sendOtp(ctx, { ...send, code: "2222" });
    await service.sendOtp(ctx, { ...send, code: "3333" });
    const spy = vi.mocked(crypto.timingSafeEqual);
    spy.mockClear();
    const result = await service.verifyOtp(ctx, { recipient: "ana@example.com", purpose: "login", code: "1111" });
    expect(result.result).toBe("VERIFIED");
    // No early exit on the first match: all three were compared.
    expect(spy).toHaveBeenCalledTimes(3);
  });

  it("refuses a locale that is not a well-formed BCP 47 tag, as the proto says, and sends nothing", async () => {
    const { service, sent } = setup();
    for (const locale of ["en-US-US", "en-a", "ko-x", "en-US-a-b", "ko-KR-", "en_US", "e"]) {
      const refused = await service.sendOtp(ctx, { ...send, locale }).catch((error: unknown) => error);
      expect(refused, locale).toMatchObject({ kind: "invalid_argument", violations: [{ field: "locale" }] });
    }
    expect(sent).toHaveLength(0);
    for (const locale of ["ko-KR", "zh-Hant-TW", "zh-yue-HK", "es-419", "de-CH-1996", "en-US-u-ca-gregory", "sr-Latn-x-private"]) {
      expect((await service.sendOtp(ctx, { ...send, locale, code: "1111" })).state, locale).toBe("ACCEPTED");
    }
  });

  it.each(["off", "on"] as const)(
    "refuses a suppressed recipient, records it SUPPRESSED, stores no code and spends no budget (limits %s)",
    async (limits) => {
      const { service, store, sent, suppression, advance } = setup("ACCEPTED", limits);
      const hash = suppression.recipientHash("ana@example.com");
      await suppression.suppress(hash, { messageId: "bounced-1", status: "5.1.1", diagnosticCode: "" });

      const refused = await service.sendOtp(ctx, { ...send, code: "1111" }).catch((error: unknown) => error);

      expect(refused).toMatchObject({ kind: "failed_precondition", reason: "RECIPIENT_SUPPRESSED" });
      const messageId = (refused as OtpError).metadata["message_id"] ?? "";
      expect(await store.getRecord(messageId)).toMatchObject({ state: "SUPPRESSED", suppressedBy: { messageId: "bounced-1" } });
      expect(sent).toHaveLength(0);
      expect((await service.verifyOtp(ctx, { recipient: "ana@example.com", purpose: "login", code: "1111" })).result).toBe("NOT_FOUND");
      // Once the suppression lapses, the recipient's one send per 15 minutes (limits on) is still unspent.
      // (putSuppression keeps an entry of the same cause in force, as a resent DSN does: the entry goes instead.)
      await store.removeSuppression(hash);
      advance(2);
      expect((await service.sendOtp(ctx, { ...send, code: "2222" })).state).toBe("ACCEPTED");
    },
  );

  it("lists every message to a recipient under its hash, newest first: sent, suppressed, not a replay, not another address", async () => {
    const { service, store, suppression } = setup();
    const hash = suppression.recipientHash("ana@example.com");
    const first = await service.sendOtp(ctx, { ...send, recipient: "Ana@Example.com", idempotencyKey: "k-index" });
    const replayed = await service.sendOtp(ctx, { ...send, recipient: "Ana@Example.com", idempotencyKey: "k-index" });
    expect(replayed.messageId).toBe(first.messageId);
    await service.sendOtp(ctx, { ...send, recipient: "ana+work@example.com" });
    await suppression.suppress(hash, { messageId: first.messageId, status: "5.1.1", diagnosticCode: "" });
    const refused = await service.sendOtp(ctx, send).catch((error: unknown) => error);
    expect(refused).toMatchObject({ reason: "RECIPIENT_SUPPRESSED" });

    expect(await store.getRecipientMessages(hash)).toEqual([(refused as OtpError).metadata["message_id"], first.messageId]);
    const record = await store.getRecord(first.messageId);
    expect(record?.recipientHash).toBe(hash);
  });

  it("sends all the same when the recipient's message list cannot be written (it is support's index, not the send)", async () => {
    const { service, store, sent } = setup();
    vi.spyOn(store, "addRecipientMessage").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));

    const result = await service.sendOtp(ctx, send);

    expect(result.state).toBe("ACCEPTED");
    expect(sent).toHaveLength(1);
    expect(await store.getRecord(result.messageId)).toMatchObject({ state: "ACCEPTED" });
  });

  it("stores only an HMAC: the code appears nowhere in the stored record", async () => {
    const { service, store, sent } = setup();
    const result = await service.sendOtp(ctx, { ...send, code: "9Z8Y7X" });
    expect(sent[0]?.subject).toContain("9Z8Y7X");
    const record = await store.getRecord(result.messageId);
    expect(JSON.stringify(record)).not.toContain("9Z8Y7X");
    expect(JSON.stringify(record)).not.toContain("ana@example.com");
    expect(record?.recipientMasked).toBe("a***@example.com");
  });

  it("generates six-digit codes by default and answers with the expiry", async () => {
    const { service, sent } = setup();
    const result = await service.sendOtp(ctx, send);
    expect(sent[0]?.subject).toMatch(/\b\d{6}\b/);
    expect(result.expiresAt - result.resendAvailableAt).toBe(600_000);
  });

  it("scopes codes to their caller", async () => {
    const { service } = setup();
    await service.sendOtp(ctx, { ...send, code: "4444" });
    const other = await service.verifyOtp({ caller: "someone-else", traceId: "" }, { recipient: "ana@example.com", purpose: "login", code: "4444" });
    expect(other.result).toBe("NOT_FOUND");
    await expect(service.getDeliveryStatus({ caller: "someone-else", traceId: "" }, "0".repeat(26))).rejects.toMatchObject({ kind: "not_found" });
  });

  it("reports a permanent relay refusal as FAILED_PRECONDITION and replays it for the same idempotency key", async () => {
    const { service, sent } = setup("FAILED");
    const first = await service.sendOtp(ctx, { ...send, idempotencyKey: "k1" }).catch((error: unknown) => error);
    expect(first).toBeInstanceOf(OtpError);
    expect(first).toMatchObject({ kind: "failed_precondition", reason: "RELAY_REJECTED" });
    const again = await service.sendOtp(ctx, { ...send, idempotencyKey: "k1" }).catch((error: unknown) => error);
    expect(again).toMatchObject({ kind: "failed_precondition" });
    expect(sent).toHaveLength(1);
  });

  it("lets a retryable failure's idempotency key be used again, so the retry really sends", async () => {
    const { service, store, sent } = setup();
    const failing = vi.spyOn(store, "addCode").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    await expect(service.sendOtp(ctx, { ...send, idempotencyKey: "k2" })).rejects.toMatchObject({ kind: "unavailable" });
    failing.mockRestore();
    const retried = await service.sendOtp(ctx, { ...send, idempotencyKey: "k2" });
    expect(retried.state).toBe("ACCEPTED");
    expect(sent).toHaveLength(1);
  });

  it("takes over a key whose first call stopped before its record and could not release it, once that call cannot still be running", async () => {
    const { service, store, sent, advance } = setup();
    // Storage fails after the claim, and again for the release: the key names a message that will never exist.
    const failedWrite = vi.spyOn(store, "putRecord").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    const failedRelease = vi.spyOn(store, "releaseIdempotencyKey").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    await expect(service.sendOtp(ctx, { ...send, idempotencyKey: "k3" })).rejects.toMatchObject({ kind: "unavailable" });
    failedWrite.mockRestore();
    failedRelease.mockRestore();

    // So soon, the first call might still be on its way to writing its record.
    advance(60_000);
    await expect(service.sendOtp(ctx, { ...send, idempotencyKey: "k3" })).rejects.toMatchObject({
      reason: "IDEMPOTENT_REQUEST_IN_PROGRESS",
    });
    expect(sent).toHaveLength(0);

    // Not any more: the retry sends, under the key, and the key answers it from then on.
    advance(5 * 60_000);
    const retried = await service.sendOtp(ctx, { ...send, idempotencyKey: "k3" });
    expect(retried.state).toBe("ACCEPTED");
    const again = await service.sendOtp(ctx, { ...send, idempotencyKey: "k3" });
    expect(again.messageId).toBe(retried.messageId);
    expect(sent).toHaveLength(1);
  });

  it("sends again for a key whose message failed retryably after SendOtp had answered", async () => {
    const { service, store, sent } = setup();
    const first = await service.sendOtp(ctx, { ...send, idempotencyKey: "k5" });
    // The background attempts ran out on 4xx replies after the call had answered.
    const [record] = await store.getRecordWithReports(first.messageId);
    const transient = { number: 1, startedAt: 0, durationMs: 1, outcome: "transient" as const, replyCode: 451, enhancedStatus: "4.3.0", replyText: "451 4.3.0 try later", errorCode: "" };
    await store.putRecord({ ...record!, state: "FAILED", attempts: [transient], failureReason: "gave up after 1 attempt" }, 86_400_000);
    const retried = await service.sendOtp(ctx, { ...send, idempotencyKey: "k5" });
    expect(retried.messageId).not.toBe(first.messageId);
    expect(sent).toHaveLength(2);
  });

  it("takes the limits of a send whose code could not be stored back, once, so the retry is admitted", async () => {
    const { service, store, sent } = setup("ACCEPTED", "on");
    const failing = vi.spyOn(store, "addCode").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    const refunds = vi.spyOn(store, "refundLimits");
    await expect(service.sendOtp(ctx, send)).rejects.toMatchObject({ kind: "unavailable" });
    failing.mockRestore();
    expect(refunds).toHaveBeenCalledTimes(1);
    // The recipient's one send per 15 minutes was not spent on it.
    expect((await service.sendOtp(ctx, send)).state).toBe("ACCEPTED");
    expect(sent).toHaveLength(1);
    expect(refunds).toHaveBeenCalledTimes(1);
  });

  it("keeps the admission of a send handed to the delivery, whatever became of it", async () => {
    const { service, store, sent } = setup("FAILED", "on");
    const refunds = vi.spyOn(store, "refundLimits");
    await expect(service.sendOtp(ctx, send)).rejects.toMatchObject({ reason: "RELAY_REJECTED" });
    expect(refunds).not.toHaveBeenCalled();
    await expect(service.sendOtp(ctx, send)).rejects.toMatchObject({ kind: "resource_exhausted", reason: "RECIPIENT_RATE_LIMITED" });
    expect(sent).toHaveLength(1);
  });

  it("a replay answers resend_available_at from the limits, spending nothing; the first answer's when it cannot read them", async () => {
    const { service, store, sent, advance } = setup("ACCEPTED", "on");
    const first = await service.sendOtp(ctx, { ...send, idempotencyKey: "k6" });
    const sentAt = first.resendAvailableAt - 900_000;
    advance(60_000);
    const replayed = await service.sendOtp(ctx, { ...send, idempotencyKey: "k6" });
    // The first answer, saying it is a replay (nothing sent: the metrics count it apart).
    expect(replayed).toEqual({ ...first, replayed: true });

    const failing = vi.spyOn(store, "peekLimits").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    expect(await service.sendOtp(ctx, { ...send, idempotencyKey: "k6" })).toEqual({ ...first, replayed: true });
    failing.mockRestore();

    // Nothing was spent by the replays: the next send is admitted exactly when the first said.
    advance(first.resendAvailableAt - sentAt - 60_000 - 1);
    await expect(service.sendOtp(ctx, send)).rejects.toMatchObject({ reason: "RECIPIENT_RATE_LIMITED", retryAfterMs: 1 });
    advance(1);
    expect((await service.sendOtp(ctx, send)).state).toBe("ACCEPTED");
    expect(sent).toHaveLength(2);
  });

  it("takes over a key whose message was recorded but never sent (the call died, the key stayed), once the record reads abandoned", async () => {
    const { service, store, sent, advance } = setup();
    // The record is written, the code is not, and the key cannot be released: nothing is ever dispatched.
    const failedCode = vi.spyOn(store, "addCode").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    const failedRelease = vi.spyOn(store, "releaseIdempotencyKey").mockRejectedValueOnce(new OtpError("unavailable", "storage is unavailable"));
    await expect(service.sendOtp(ctx, { ...send, idempotencyKey: "k4" })).rejects.toMatchObject({ kind: "unavailable" });
    failedCode.mockRestore();
    failedRelease.mockRestore();

    // Past the code's expiry the record reads FAILED (abandoned), a retryable failure: the retry really sends.
    advance(3_600_000);
    const retried = await service.sendOtp(ctx, { ...send, idempotencyKey: "k4" });
    expect(retried.state).toBe("ACCEPTED");
    expect(sent).toHaveLength(1);
  });

  it("storage failing after the limits admitted a send, and refusing their refund too: the retry delay waits for the limits", async () => {
    let now = 1_800_000_000_000;
    const clock = { now: () => now };
    const memory = createMemoryStore({ clock });
    // Storage answers the limits, then fails: the code cannot be stored and the admission cannot be taken back.
    const store = Object.assign(Object.create(memory) as typeof memory, {
      addCode: () => Promise.reject(storageUnavailable(new Error("connection lost"))),
      refundLimits: () => Promise.reject(storageUnavailable(new Error("connection lost"))),
    });
    const limiter = createLimiter({
      store,
      secret,
      logger: createLogger({ level: "silent" }),
      limits: { recipient: [], resendCooldownMs: 30_000, endUserIp: [], caller: [], global: [], verifyFailures: [] },
    });
    const service = createOtpService({
      store,
      delivery: { dispatch: (record: DeliveryRecord) => Promise.resolve(record) },
      limiter,
      verifyLimiter: limiter,
      clock,
      ...fixedOptions(),
    });

    const failed = (await service.sendOtp(ctx, send).catch((error: unknown) => error)) as OtpError;
    expect(failed).toMatchObject({ kind: "unavailable", reason: "STORAGE_UNAVAILABLE" });
    // The cooldown still counts the send that did not happen: a retry sooner than 30 s is refused.
    expect(failed.retryAfterMs).toBeGreaterThanOrEqual(30_000);
    now += 1000;
    const early = await service.sendOtp(ctx, send).catch((error: unknown) => error);
    expect(early).toMatchObject({ kind: "resource_exhausted", reason: "RESEND_COOLDOWN" });
  });

  it("a record stored while its code could not be: marked FAILED, not left SENDING for a mail that never goes", async () => {
    const memory = createMemoryStore({ clock: { now: () => 1_800_000_000_000 } });
    const written: DeliveryRecord[] = [];
    const store = Object.assign(Object.create(memory) as typeof memory, {
      putRecord: (record: DeliveryRecord, ttlMs: number) => {
        written.push(record);
        return memory.putRecord(record, ttlMs);
      },
      addCode: () => Promise.reject(storageUnavailable(new Error("connection lost"))),
    });
    const dispatched: DeliveryRecord[] = [];
    const service = createOtpService({
      store,
      delivery: {
        dispatch: (record: DeliveryRecord) => {
          dispatched.push(record);
          return Promise.resolve(record);
        },
      },
      limiter: unlimited,
      verifyLimiter: unlimited,
      clock: { now: () => 1_800_000_000_000 },
      ...fixedOptions(),
    });

    const failed = await service.sendOtp(ctx, send).catch((error: unknown) => error);
    expect(failed).toMatchObject({ kind: "unavailable", reason: "STORAGE_UNAVAILABLE" });
    expect(dispatched).toEqual([]);
    const messageId = written[0]?.messageId ?? "";
    await vi.waitFor(async () => expect((await memory.getRecord(messageId))?.state).toBe("FAILED"));
    expect((await memory.getRecord(messageId))?.failureReason).toBe("not sent: the code could not be stored");
  });
});
