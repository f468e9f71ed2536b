/**
 * The storage the domain needs, as one interface with two implementations:
 * Redis (`redis-store.ts`, production) and memory (`memory-store.ts`, the
 * zero-config dev mode). Both pass the same contract suite
 * (test/integration/store-contract.ts).
 *
 * Every operation touches exactly one key, or (consumeLimits, verifyGuess)
 * several keys that share one hash tag, so the Redis implementation works on Redis
 * Cluster; every key carries a TTL. Suppressions live beside the limit logs
 * (same hash tag) so that consumeLimits can check one first.
 *
 * Errors: an unreachable or failing backend rejects with
 * `storageUnavailable(cause)` from `../errors.ts` (an OtpError of kind
 * "unavailable"), never with a raw ioredis error.
 */
import type { DeliveryRecord, DeliveryReport, SuppressionEntry } from "../delivery/record.js";

/** DSNs kept per message; a flood of reports keeps the newest. */
export const maxDeliveryReports = 20;

/** Message ids kept per recipient for support's look-up (`npm run deliveries`); more keeps the newest. */
export const maxRecipientMessages = 20;

/** One outstanding code: only its keyed HMAC is stored, never the code. */
export interface CodeEntry {
  /** Unique within its set (the message id that carried it). */
  readonly id: string;
  /** Hex HMAC-SHA256 of the code under the server secret. */
  readonly hmac: string;
  /** Epoch ms from which the code no longer verifies: it is live strictly before. */
  readonly expiresAt: number;
}

export interface CodeSetOptions {
  /** Wrong guesses after which the set is locked. */
  readonly maxFailures: number;
  /** Epoch ms, from the injected clock. */
  readonly now: number;
  /**
   * How long the set is kept after its last code expired, so that VerifyOtp
   * can answer EXPIRED rather than NOT_FOUND.
   */
  readonly keepExpiredMs: number;
}

/**
 * Names a code set. `id` is opaque and derived from (caller, recipient,
 * purpose); `group` is opaque and derived from (caller, recipient): the
 * sets of one group are verified against one failure cap, and the store
 * keeps them and that cap's log together (one Redis Cluster slot) so that
 * verifyGuess is one atomic step.
 */
export interface CodeSetRef {
  readonly group: string;
  readonly id: string;
}

/** The cap on failed guesses across a group's sets (per caller and recipient). */
export interface FailureCap {
  /** The failure log (kept with the group: the same log id in two groups is two logs). */
  readonly log: LimitLog;
  /** Unique id of this guess's failure, should it be one. */
  readonly entry: string;
}

export interface GuessOptions extends CodeSetOptions {
  /** When given, checked before the guess counts and added to when it is wrong. */
  readonly failureCap?: FailureCap | undefined;
}

/**
 * What one guess against a code set came to. The checks run in this order,
 * atomically: a set with no code, only expired codes, or locked answers
 * that and counts nothing; then a full failure cap refuses and counts
 * nothing; then the guess is compared with every live code.
 */
export type GuessOutcome =
  /** No code was ever sent (or the set was used up / has been dropped). */
  | { readonly state: "none" }
  /** Codes were sent, all have expired. */
  | { readonly state: "expired" }
  /** `failures >= maxFailures` and a code is still live. */
  | { readonly state: "locked"; readonly failures: number }
  /** The failure cap is full: `full` lists its full windows (`log` is always 0). */
  | { readonly state: "capped"; readonly full: readonly FullWindow[] }
  /** Wrong: counted in the set (`failures` includes it) and in the failure cap. */
  | { readonly state: "invalid"; readonly failures: number }
  /** Right: the set is deleted (every code of it is used up), nothing is counted. `id` is the matched entry's. */
  | { readonly state: "verified"; readonly id: string };

/** What an idempotency key remembers about the first call that used it. */
export interface IdempotencyClaim {
  /** Hash of the request's meaningful fields, to detect a different request. */
  readonly fingerprint: string;
  readonly messageId: string;
}

export type ClaimResult =
  | { readonly claimed: true }
  | { readonly claimed: false; readonly existing: IdempotencyClaim };

/** One cap on a limit log: at most `max` entries younger than `windowMs`. */
export interface LimitWindow {
  readonly max: number;
  readonly windowMs: number;
}

/**
 * A sliding-window log: each admission it took part in is an entry stamped
 * with the time it was admitted, kept for its longest window. Several windows
 * over one log (5 per 15 min and 20 per day) cost one key.
 */
export interface LimitLog {
  /** Opaque id; the store adds its prefix and the limits' shared hash tag. */
  readonly id: string;
  /** At least one; every `max` >= 1 and `windowMs` >= 1, whole numbers. */
  readonly windows: readonly LimitWindow[];
}

/** A window that refused an admission, and when it will have room again. */
export interface FullWindow {
  /** Index into the logs passed to consumeLimits. */
  readonly log: number;
  /** Index into that log's windows. */
  readonly window: number;
  /** Epoch ms at which an entry leaves the window (if nothing else is added meanwhile). */
  readonly retryAt: number;
}

export type LimitOutcome =
  /**
   * Admitted: the entry was added to every log. `nextAt[i]` is when log `i`
   * alone would admit the next entry (`now` when it has room already).
   */
  | { readonly admitted: true; readonly nextAt: readonly number[] }
  /** Refused: no log changed. `full` lists every full window. */
  | { readonly admitted: false; readonly full: readonly FullWindow[] }
  /** Refused before any limit was looked at: the recipient is suppressed (see ConsumeLimitsOptions). */
  | { readonly admitted: false; readonly suppressed: SuppressionEntry };

export interface ConsumeLimitsOptions {
  /**
   * A recipient hash (as putSuppression takes). When that recipient is
   * suppressed, no window is checked and nothing is consumed: the outcome is
   * `{ admitted: false, suppressed }`. Checked in the same atomic step as
   * the limits, which saves SendOtp a round trip of its own. Several hashes
   * (one per secret while OTP_SECRET rotates): the first suppressed one in
   * order answers.
   */
  readonly unlessSuppressed?: string | readonly string[] | undefined;
}

export interface OtpStore {
  /**
   * Adds a code to a set. When the set is locked (failures >= maxFailures),
   * its old codes are discarded and the failure count restarts: a fresh code
   * starts over. Otherwise earlier live codes stay valid and the failure
   * count carries on. Expired entries are pruned. The key's TTL becomes
   * max(live expiresAt) + keepExpiredMs.
   */
  addCode(set: CodeSetRef, entry: CodeEntry, options: CodeSetOptions): Promise<void>;

  /**
   * Checks one guess (`hmac`, the keyed HMAC of what the user typed) against
   * a set, in one atomic step; see GuessOutcome. Concurrent wrong guesses
   * can never exceed maxFailures nor the failure cap, and a right guess
   * verifies exactly once.
   */
  verifyGuess(set: CodeSetRef, hmac: string, options: GuessOptions): Promise<GuessOutcome>;

  /** Writes (creates or replaces) a delivery record, kept for `ttlMs` from now. */
  putRecord(record: DeliveryRecord, ttlMs: number): Promise<void>;

  /** Reads a delivery record; undefined when unknown or expired. */
  getRecord(messageId: string): Promise<DeliveryRecord | undefined>;

  /**
   * Claims an idempotency key (an opaque id derived from caller and key) for
   * `ttlMs` if it is free (SET NX semantics); otherwise returns what it holds.
   */
  claimIdempotencyKey(keyId: string, claim: IdempotencyClaim, ttlMs: number): Promise<ClaimResult>;

  /** Frees a claim, only if it still names `messageId` (the first call failed). */
  releaseIdempotencyKey(keyId: string, messageId: string): Promise<void>;

  /**
   * Checks every window of every log and, only if all have room, adds
   * `entry` (unique per admission) stamped `now` to every log: all or
   * nothing, atomically, so concurrent callers can never overshoot a limit
   * and a refused request consumes nothing. Entries at or before
   * `now - windowMs` no longer count. Each log's key lives for its longest
   * window after its newest entry.
   */
  consumeLimits(logs: readonly LimitLog[], entry: string, now: number, options?: ConsumeLimitsOptions): Promise<LimitOutcome>;

  /**
   * When each log alone would admit one more entry at or after `now` (`now`
   * when it has room already): what consumeLimits' `nextAt` says after an
   * admission, read without adding, trimming or expiring anything. One
   * atomic read; in Redis a read-only script, which a full Redis
   * (noeviction) still runs.
   */
  peekLimits(logs: readonly LimitLog[], now: number): Promise<readonly number[]>;

  /**
   * Takes `entry` back out of every log, for an admission whose send is not
   * going to happen: a consumeLimits that failed without an answer (a
   * timeout; Redis may still run it later: issued after it on the same
   * connection, this runs after it if it runs at all, so the admission never
   * outlives the caller's UNAVAILABLE), or a send whose code or record could
   * not be stored. Entries not there are ignored, so a second refund of the
   * same entry changes nothing.
   */
  refundLimits(logs: readonly LimitLog[], entry: string): Promise<void>;

  /**
   * Appends a DSN to the reports of `messageId` (oldest first; beyond
   * `maxDeliveryReports` the oldest are dropped); the reports live `ttlMs`
   * from now. Kept apart from the record so the sender's writes and the
   * bounce intake's never overwrite each other. A report whose `identity`
   * one of the kept reports already has is a copy (a resent DSN) and is not
   * appended: checked and appended in one atomic step, so of two copies
   * arriving at once, on two instances, exactly one is. Resolves true when
   * `report` was appended, false for a copy. A report without an identity
   * is always appended.
   */
  addDeliveryReport(messageId: string, report: DeliveryReport, ttlMs: number): Promise<boolean>;

  /** The reports of a message, oldest first; empty when none. */
  getDeliveryReports(messageId: string): Promise<readonly DeliveryReport[]>;

  /**
   * `getRecord` and `getDeliveryReports` of one message together, as
   * GetDeliveryStatus needs them: one operation (in Redis, one command)
   * instead of two. The reports of an unknown message are empty.
   */
  getRecordWithReports(messageId: string): Promise<readonly [DeliveryRecord | undefined, readonly DeliveryReport[]]>;

  /**
   * Suppresses a recipient, identified by an opaque HMAC (never the address),
   * for `ttlMs` from now, replacing an earlier suppression; resolves with the
   * entry in force. An entry in force with the same cause as `entry` (the
   * same message, the same reason: see sameSuppressionCause) is kept as it
   * is, with its own start and end, and resolved instead: checked and
   * written in one atomic step, so that the same report handled at once on
   * two instances, or again after its report could not be stored, never
   * moves the suppression's end.
   */
  putSuppression(recipientHash: string, entry: SuppressionEntry, ttlMs: number): Promise<SuppressionEntry>;

  /** The recipient's suppression, or undefined when none is in force. */
  getSuppression(recipientHash: string): Promise<SuppressionEntry | undefined>;

  /**
   * Lifts a recipient's suppression at once (an operator's decision: the
   * mailbox exists again, or the bounce was forged), in one atomic step:
   * resolves with the entry removed, or undefined when none was in force
   * (an unreadable entry, which suppresses nothing, is removed all the same).
   */
  removeSuppression(recipientHash: string): Promise<SuppressionEntry | undefined>;

  /**
   * Adds `messageId` to the recipient's list of recent messages (newest
   * first; beyond `maxRecipientMessages` the oldest are dropped), which
   * lives `ttlMs` from now: what support looks up by address. The recipient
   * is an opaque HMAC, as for suppressions: the address is never stored.
   */
  addRecipientMessage(recipientHash: string, messageId: string, ttlMs: number): Promise<void>;

  /** The recipient's recent message ids, newest first; empty when none. */
  getRecipientMessages(recipientHash: string): Promise<readonly string[]>;

  /** Resolves when the backend answers; rejects with storageUnavailable otherwise. */
  ping(): Promise<void>;

  /** Whether the backend is connected right now (for health), without a round trip. */
  isReady(): boolean;

  /**
   * Why the backend is not connected, when it knows more than that (for
   * health): with Redis Sentinel, what each sentinel answered. Undefined
   * while connected, or when nothing more is known.
   */
  unreadyReason?(): string | undefined;

  /** Subscribes to readiness changes (connected / lost). Returns an unsubscribe function. */
  onReadyChange(listener: (ready: boolean) => void): () => void;

  close(): Promise<void>;
}
