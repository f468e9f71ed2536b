/**
 * The suppression list: recipients whose mailbox was reported not to exist
 * (a hard bounce, 5.1.1 and the like), or who marked a message as spam (an
 * abuse or fraud feedback report), get no more mail for a while. A
 * recipient is known only by a keyed HMAC of its normalised address, so
 * storage never holds an address, and the key cannot be recomputed without
 * the server secret.
 */
import { createHmac, createSecretKey, type KeyObject } from "node:crypto";
import type { Clock } from "../clock.js";
import type { SuppressionEntry, SuppressionReason } from "../delivery/record.js";
import type { OtpStore } from "../store/types.js";

export interface SuppressionListOptions {
  readonly store: Pick<OtpStore, "getSuppression" | "putSuppression" | "removeSuppression">;
  /** The server secret (OTP_SECRET) that keys the recipient HMAC. */
  readonly secret: Buffer;
  /** How long a hard bounce or complaint suppresses its recipient (SUPPRESSION_TTL). */
  readonly ttlMs: number;
  readonly clock: Clock;
  /**
   * While OTP_SECRET rotates: the secret it replaced, consulted until
   * `until` (exclusive), so that a recipient suppressed under it stays
   * suppressed (see src/otp/secret-rotation.ts).
   */
  readonly previous?: { readonly secret: Buffer; readonly until: number } | undefined;
}

/** What caused a suppression: the bounced message and its DSN, or the message complained about. */
export interface SuppressionCause {
  readonly messageId: string;
  /** The caller that sent that message: only it is told the message's id (see SuppressionEntry.caller). */
  readonly caller?: string | undefined;
  readonly status: string;
  readonly diagnosticCode: string;
  /** Absent: a hard bounce. */
  readonly reason?: SuppressionReason | undefined;
  /** For a complaint: its Feedback-Type. */
  readonly feedbackType?: string | undefined;
}

/** A suppression in force for a recipient, and which secret's HMAC keys it. */
export interface KeyedSuppression {
  /** `current`: OTP_SECRET; `previous`: OTP_SECRET_PREVIOUS, while a rotation is consulted. */
  readonly secret: "current" | "previous";
  readonly entry: SuppressionEntry;
}

export interface SuppressionList {
  /** The opaque id of a recipient (its lower-cased address): stored on records, keys the list. */
  recipientHash(recipientKey: string): string;
  /** The recipient's hash under the previous secret while a rotation's grace lasts, else undefined. */
  previousRecipientHash(recipientKey: string): string | undefined;
  /** The suppression in force for a recipient (either hash; the current one's first), or undefined. */
  check(recipientHash: string, previousRecipientHash?: string): Promise<SuppressionEntry | undefined>;
  /**
   * Suppresses a recipient from now for the configured time; returns the
   * entry in force. A cause about the message whose report already
   * suppresses the recipient (a DSN or feedback report received twice)
   * leaves that entry as it is: it does not restart the clock.
   */
  suppress(recipientHash: string, cause: SuppressionCause): Promise<SuppressionEntry>;
  /**
   * Every suppression SendOtp would find for a recipient (`recipientKey` as
   * SendOtp keys it: ParsedAddress.key), under each secret it consults, the
   * current one's first (that one answers SendOtp).
   */
  find(recipientKey: string): Promise<readonly KeyedSuppression[]>;
  /** Lifts the suppressions `find` would list, under every secret at once; resolves with those removed. */
  lift(recipientKey: string): Promise<readonly KeyedSuppression[]>;
}

export function createSuppressionList(options: SuppressionListOptions): SuppressionList {
  const { store, secret, ttlMs, clock } = options;
  if (!(Number.isInteger(ttlMs) && ttlMs > 0)) throw new Error(`suppression: ttlMs must be a positive integer, got ${ttlMs}`);
  if (secret.length === 0) throw new Error("suppression: the secret must not be empty");
  // A KeyObject, made once: createHmac given a Buffer costs several times the HMAC itself (see otp/code.ts).
  const key = createSecretKey(secret);
  const previous = options.previous === undefined ? undefined : { key: createSecretKey(options.previous.secret), until: options.previous.until };
  // Its own label, so the value can never collide with another HMAC of the service.
  const hash = (hashKey: KeyObject, recipientKey: string): string =>
    createHmac("sha256", hashKey).update(`suppression\0${recipientKey.toLowerCase()}`).digest("hex").slice(0, 32);
  const previousRecipientHash = (recipientKey: string): string | undefined =>
    previous !== undefined && clock.now() < previous.until ? hash(previous.key, recipientKey) : undefined;
  /** The hashes SendOtp checks for a recipient, each with its secret, the current one first. */
  const hashesOf = (recipientKey: string): { secret: KeyedSuppression["secret"]; hash: string }[] => {
    const older = previousRecipientHash(recipientKey);
    return [{ secret: "current", hash: hash(key, recipientKey) }, ...(older === undefined ? [] : [{ secret: "previous" as const, hash: older }])];
  };
  /** Runs `read` on every hash of a recipient at once, keeping those that found an entry. */
  const each = async (
    recipientKey: string,
    read: (recipientHash: string) => Promise<SuppressionEntry | undefined>,
  ): Promise<readonly KeyedSuppression[]> => {
    const hashes = hashesOf(recipientKey);
    const entries = await Promise.all(hashes.map(({ hash: recipientHash }) => read(recipientHash)));
    return hashes.flatMap(({ secret }, i) => {
      const entry = entries[i];
      return entry === undefined ? [] : [{ secret, entry }];
    });
  };
  return {
    recipientHash: (recipientKey) => hash(key, recipientKey),
    previousRecipientHash,
    async check(recipientHash, previousRecipientHash) {
      const current = await store.getSuppression(recipientHash);
      if (current !== undefined || previousRecipientHash === undefined) return current;
      return store.getSuppression(previousRecipientHash);
    },
    suppress(recipientHash, cause) {
      // Relays resend DSNs and the intake may be handed one report twice: the same
      // report again is no news about the mailbox, so the suppression it already
      // caused keeps its start and end (the store checks and writes in one step,
      // so two instances handling it at once agree). A report about another
      // message (a newer bounce) does start the clock again.
      const now = clock.now();
      return store.putSuppression(recipientHash, { ...cause, bouncedAt: now, expiresAt: now + ttlMs }, ttlMs);
    },
    find: (recipientKey) => each(recipientKey, (recipientHash) => store.getSuppression(recipientHash)),
    lift: (recipientKey) => each(recipientKey, (recipientHash) => store.removeSuppression(recipientHash)),
  };
}
