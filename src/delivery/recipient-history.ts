/**
 * What happened to the codes sent to one address: the recipient's recent
 * messages (from the list SendOtp keeps under the recipient's opaque hash,
 * see OtpStore.addRecipientMessage), each with its record, its DSNs and the
 * explanation GetDeliveryStatus gives, and the suppression in force, if any.
 * What support needs when a user says "I never got the code".
 */
import type { KeyedSuppression, SuppressionList } from "../bounce/suppression.js";
import type { Clock } from "../clock.js";
import type { OtpStore } from "../store/types.js";
import { effectiveState, explain } from "./explain.js";
import type { DeliveryRecord } from "./record.js";
import { withReports } from "./reports.js";

export interface RecipientHistoryOptions {
  readonly store: Pick<OtpStore, "getRecipientMessages" | "getRecordWithReports">;
  /** Keys the address as SendOtp does, under OTP_SECRET and, during a rotation, OTP_SECRET_PREVIOUS. */
  readonly suppression: Pick<SuppressionList, "recipientHash" | "previousRecipientHash" | "find">;
  readonly clock: Clock;
}

/** One message to the recipient, as GetDeliveryStatus would answer it. */
export interface RecipientMessage {
  /** Which secret's hash listed it: `previous` for messages sent before OTP_SECRET rotated. */
  readonly keyedBy: "current" | "previous";
  /** The record with its DSNs joined and its effective state (an abandoned send reads FAILED). */
  readonly record: DeliveryRecord;
  /** GetDeliveryStatus's explanation. */
  readonly explanation: string;
}

export interface RecipientHistory {
  /** Newest first, at most the limit asked for. */
  readonly messages: readonly RecipientMessage[];
  /** Messages on record beyond the limit. */
  readonly notShown: number;
  /** The suppressions SendOtp would find for the address, the current secret's first. */
  readonly suppressions: readonly KeyedSuppression[];
}

export interface RecipientHistoryReader {
  /** The history of a recipient (`recipientKey` as SendOtp keys it: ParsedAddress.key). */
  lookup(recipientKey: string, limit: number): Promise<RecipientHistory>;
}

export function createRecipientHistory(options: RecipientHistoryOptions): RecipientHistoryReader {
  const { store, suppression, clock } = options;
  return {
    async lookup(recipientKey, limit) {
      if (!(Number.isInteger(limit) && limit > 0)) throw new TypeError(`recipient history: limit must be a positive integer, got ${limit}`);
      const hashes: { keyedBy: RecipientMessage["keyedBy"]; hash: string }[] = [{ keyedBy: "current", hash: suppression.recipientHash(recipientKey) }];
      const previous = suppression.previousRecipientHash(recipientKey);
      if (previous !== undefined) hashes.push({ keyedBy: "previous", hash: previous });
      // Everything at once: a handful of commands in one or two round trips.
      const [lists, suppressions] = await Promise.all([
        Promise.all(hashes.map(({ hash }) => store.getRecipientMessages(hash))),
        suppression.find(recipientKey),
      ]);
      const seen = new Set<string>();
      const listed = hashes.flatMap(({ keyedBy }, i) =>
        (lists[i] ?? []).flatMap((messageId) => {
          if (seen.has(messageId)) return [];
          seen.add(messageId);
          return [{ keyedBy, messageId }];
        }),
      );
      const read = await Promise.all(listed.map(({ messageId }) => store.getRecordWithReports(messageId)));
      const now = clock.now();
      // A listed message whose record has expired (RECORD_RETENTION) is known no more: left out.
      const messages = listed
        .flatMap(({ keyedBy }, i) => {
          const [record, reports] = read[i] ?? [undefined, []];
          if (record === undefined) return [];
          const known = withReports(record, reports);
          return [{ keyedBy, record: { ...known, state: effectiveState(known, now) }, explanation: explain(known, now) }];
        })
        .sort((a, b) => b.record.createdAt - a.record.createdAt);
      return { messages: messages.slice(0, limit), notShown: Math.max(0, messages.length - limit), suppressions };
    },
  };
}
