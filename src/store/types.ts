/**
 * The storage the domain needs, as one interface with two implementations:
 * Redis (`redis-store.ts`, production) and memory (`memory-store.ts`, the
 * zero-config dev mode). Both pass the same contract suite
 * (test/integration/store-contract.ts).
 *
 * Every operation touches exactly one key, so the Redis implementation works
 * on Redis Cluster; every key carries a TTL.
 *
 * Errors: an unreachable or failing backend rejects with
 * `storageUnavailable(cause)` from `../errors.ts` (an OtpError of kind
 * "unavailable"), never with a raw ioredis error.
 */
import type { DeliveryRecord } from "../delivery/record.js";

/** One outstanding code: only its keyed HMAC is stored, never the code. */
export interface CodeEntry {
  /** Unique within its set (the message id that carried it). */
  readonly id: string;
  /** Hex HMAC-SHA256 of the code under the server secret. */
  readonly hmac: string;
  /** Epoch ms after which the code no longer verifies. */
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
 * The result of reserving one guess against a code set. A guess is counted
 * *before* it is compared, atomically, so concurrent guesses can never
 * exceed `maxFailures` comparisons.
 */
export type GuessReservation =
  /** No code was ever sent (or the set was used up / has been dropped). */
  | { readonly state: "none" }
  /** Codes were sent, all have expired. Not counted. */
  | { readonly state: "expired" }
  /** `failures >= maxFailures` and a code is still live. Not counted. */
  | { readonly state: "locked"; readonly failures: number }
  /**
   * Counted: `failures` includes this guess. `entries` are the live
   * (unexpired) codes to compare against.
   */
  | { readonly state: "open"; readonly failures: number; readonly entries: readonly CodeEntry[] };

/** What an idempotency key remembers about the first call that used it. */
export interface IdempotencyClaim {
  /** Hash of the request's meaningful fields, to detect a different request. */
  readonly fingerprint: string;
  readonly messageId: string;
}

export type ClaimResult =
  | { readonly claimed: true }
  | { readonly claimed: false; readonly existing: IdempotencyClaim };

export interface OtpStore {
  /**
   * Adds a code to the set `setId` (an opaque id derived from caller,
   * recipient and purpose). When the set is locked (failures >= maxFailures),
   * its old codes are discarded and the failure count restarts: a fresh code
   * starts over. Otherwise earlier live codes stay valid and the failure
   * count carries on. Expired entries are pruned. The key's TTL becomes
   * max(live expiresAt) + keepExpiredMs.
   */
  addCode(setId: string, entry: CodeEntry, options: CodeSetOptions): Promise<void>;

  /** Reserves (counts) one guess; see GuessReservation. */
  reserveGuess(setId: string, options: CodeSetOptions): Promise<GuessReservation>;

  /**
   * Consumes a matched code: atomically deletes the whole set if entry
   * `entryId` still holds `hmac`. Returns false when another call consumed
   * it first. After success every code of the set is gone (one-time use).
   */
  consumeCode(setId: string, entryId: string, hmac: string): Promise<boolean>;

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

  /** Resolves when the backend answers; rejects with storageUnavailable otherwise. */
  ping(): Promise<void>;

  /** Whether the backend is connected right now (for health), without a round trip. */
  isReady(): boolean;

  /** Subscribes to readiness changes (connected / lost). Returns an unsubscribe function. */
  onReadyChange(listener: (ready: boolean) => void): () => void;

  close(): Promise<void>;
}
