/**
 * The delivery record: what is known about one message, with the evidence
 * for it. Written before the first SMTP attempt and at every transition.
 */

export const deliveryStates = [
  "QUEUED",
  "SENDING",
  "RETRYING",
  "ACCEPTED",
  "DELAYED",
  "DELIVERED",
  "BOUNCED",
  "FAILED",
  "SUPPRESSED",
] as const;
export type DeliveryState = (typeof deliveryStates)[number];

/** States after which no SMTP attempt follows. */
export const terminalSendStates: ReadonlySet<DeliveryState> = new Set([
  "ACCEPTED",
  "DELAYED",
  "DELIVERED",
  "BOUNCED",
  "FAILED",
  "SUPPRESSED",
]);

export const purposes = ["login", "signup", "password_reset"] as const;
export type Purpose = (typeof purposes)[number];

export type AttemptOutcome = "accepted" | "transient" | "permanent";

/** One SMTP transaction with the relay. Times in epoch milliseconds. */
export interface AttemptRecord {
  readonly number: number;
  readonly startedAt: number;
  readonly durationMs: number;
  readonly outcome: AttemptOutcome;
  /** SMTP reply code; 0 when the relay never replied. */
  readonly replyCode: number;
  /** RFC 3463 enhanced status code (`4.7.0`), or "". */
  readonly enhancedStatus: string;
  /** The relay's reply text, or a description of the connection error. */
  readonly replyText: string;
  /** Connection-level error kind (`ECONNREFUSED`, `ETIMEDOUT`...), or "". */
  readonly errorCode: string;
}

export interface RelayReplyRecord {
  readonly relay: string;
  readonly text: string;
  readonly queueId: string;
  readonly acceptedAt: number;
}

export interface DeliveryRecord {
  readonly messageId: string;
  /** The caller that sent it; records are only visible to their caller. */
  readonly caller: string;
  readonly state: DeliveryState;
  /** Masked recipient (`j***@gmail.com`); the full address is never stored here. */
  readonly recipientMasked: string;
  /** The recipient's domain, lower-cased (for explanations and provider classes). */
  readonly recipientDomain: string;
  readonly purpose: Purpose;
  readonly locale: string;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** When the code expires: no attempt starts after it. */
  readonly expiresAt: number;
  readonly attempts: readonly AttemptRecord[];
  readonly relayReply?: RelayReplyRecord | undefined;
  readonly failureReason?: string | undefined;
  readonly traceId: string;
}
