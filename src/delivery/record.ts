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

/**
 * How an attempt ended. `abandoned`: the service stopped (its shutdown grace
 * ran out) while the attempt waited for the relay's reply; no reply came, and
 * whether the relay took the message is unknown. `unanswered`: the relay had
 * the whole message (end of data written) and gave no final reply in time,
 * or dropped the connection without one; whether it took the message is
 * unknown, so it is not sent again.
 */
export type AttemptOutcome = "accepted" | "transient" | "permanent" | "abandoned" | "unanswered";

/** One SMTP transaction with the relay. Times in epoch milliseconds. */
export interface AttemptRecord {
  readonly number: number;
  readonly startedAt: number;
  /** From handing the message to the transport to its end: the wait for a pooled connection included. */
  readonly durationMs: number;
  /**
   * Of durationMs, how long the attempt waited for a free pooled connection
   * (the sender's own backlog) before one took it; durationMs minus this is
   * the relay's time (connecting, TLS, AUTH, the transaction). All of
   * durationMs for an attempt no connection took. Absent on attempts recorded
   * before it was kept: unknown.
   */
  readonly poolWaitMs?: number | undefined;
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
  /**
   * True when the message asked for a DSN (NOTIFY=FAILURE,DELAY) and the
   * connection that carried it advertised DSN in EHLO; false when the relay
   * did not, so nodemailer left the parameters out. Absent on older records.
   */
  readonly dsnRequested?: boolean | undefined;
}

/** RFC 3464 Action values. */
export const dsnActions = ["failed", "delayed", "delivered", "relayed", "expanded"] as const;
export type DsnAction = (typeof dsnActions)[number];

/**
 * What a report says happened: a DSN's Action, or what a feedback report
 * (RFC 5965 ARF, from a mailbox provider's feedback loop) says the recipient
 * did: `complained` (Feedback-Type abuse, fraud, virus or other: marked it as
 * spam) or `not_spam` (marked it as not spam).
 */
export const deliveryReportActions = [...dsnActions, "complained", "not_spam"] as const;
export type DeliveryReportAction = (typeof deliveryReportActions)[number];

/** The actions of feedback reports (ARF) rather than DSNs. */
export const feedbackActions: ReadonlySet<DeliveryReportAction> = new Set(["complained", "not_spam"]);

/**
 * One per-recipient block of a delivery status notification (RFC 3464), or
 * one feedback report (RFC 5965), that the bounce intake tied to this
 * message. Addresses in it are masked; nothing of the original message a
 * feedback report returns is kept.
 */
export interface DeliveryReport {
  /** When the intake received the DSN (epoch ms). */
  readonly receivedAt: number;
  readonly action: DeliveryReportAction;
  /** RFC 3463 status (`5.1.1`, `5.7.26`, `4.4.1`), or "". */
  readonly status: string;
  /** Diagnostic-Code as sent (`smtp; 550 5.7.26 Unauthenticated email ...`), or "". */
  readonly diagnosticCode: string;
  /** Remote-MTA (`dns; gmail-smtp-in.l.google.com`), or "". */
  readonly remoteMta: string;
  /** Reporting-MTA (`dns; relay.example.com`), or "". */
  readonly reportingMta: string;
  /** Final-Recipient, masked (`rfc822; j***@gmail.com`), or "". */
  readonly finalRecipient: string;
  /** Original-Envelope-Id, or "" when the DSN had none. */
  readonly envelopeId: string;
  /** Feedback reports only: Feedback-Type (`abuse`, `fraud`, `virus`, `other`, `not-spam`). */
  readonly feedbackType?: string | undefined;
  /** Feedback reports only: User-Agent as given (`Yahoo!-Mail-Feedback/2.0`), or "". */
  readonly userAgent?: string | undefined;
  /** Feedback reports only: Arrival-Date as given (when the provider received the message), or "". */
  readonly arrivalDate?: string | undefined;
  /**
   * What makes two copies of one report the same report (`reportIdentity`):
   * a message's reports hold one copy of each. Never shown; absent on
   * reports stored before it was kept.
   */
  readonly identity?: string | undefined;
}

/**
 * A recipient's suppression: the hard bounce or spam complaint that caused
 * it. Stored under an HMAC of the recipient (never the address) until
 * `expiresAt`.
 */
export interface SuppressionEntry {
  /** The message whose bounce (or complaint) caused the suppression. */
  readonly messageId: string;
  /**
   * The caller that sent that message. Callers are told the message's id
   * only when it is their own: another caller's message id is not theirs
   * to know. Absent on entries written before it was kept.
   */
  readonly caller?: string | undefined;
  /** The DSN's status (`5.1.1`); "" for a complaint. */
  readonly status: string;
  readonly diagnosticCode: string;
  /** What caused it; absent on entries written before complaints suppressed (a hard bounce). */
  readonly reason?: SuppressionReason | undefined;
  /** For a complaint: its Feedback-Type (`abuse`, `fraud`). */
  readonly feedbackType?: string | undefined;
  readonly bouncedAt: number;
  readonly expiresAt: number;
}

/** A message's code as a report quoting it can be recognised by, without the code. */
export interface CodeFingerprint {
  /** The code's length: the run of characters each candidate in a report is. */
  readonly length: number;
  /** Keyed HMAC of the code, bound to its message (Hasher.reportCodeHmac). */
  readonly hmac: string;
}

/** `hard_bounce`: a "no such mailbox" DSN; `complaint`: the recipient marked a message as spam (ARF). */
export type SuppressionReason = "hard_bounce" | "complaint";

/** What caused a suppression, reading an entry without `reason` (older ones) as a hard bounce. */
export function suppressionReason(entry: Pick<SuppressionEntry, "reason">): SuppressionReason {
  return entry.reason ?? "hard_bounce";
}

/**
 * Whether two suppressions have one cause: the same message, for the same
 * reason (its DSN or its complaint, received again). The Redis store's
 * suppression script compares entries the same way.
 */
export function sameSuppressionCause(
  a: Pick<SuppressionEntry, "messageId" | "reason">,
  b: Pick<SuppressionEntry, "messageId" | "reason">,
): boolean {
  return a.messageId === b.messageId && suppressionReason(a) === suppressionReason(b);
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
  /**
   * The span of the SendOtp call that wrote the record (its gRPC server
   * span; the caller's span when nothing is exported): what a delivery
   * report's span, hours later, links to. That span, not smtp.send, because
   * it exists when the record is first written (before the first attempt)
   * and is where the trace starts in this service: its children are the
   * send and every attempt. Absent on records written before it was kept,
   * and when the call was not traced.
   */
  readonly spanId?: string | undefined;
  /**
   * Opaque keyed HMAC of the recipient (see bounce/suppression.ts): what a
   * hard bounce of this message suppresses. Never shown to callers.
   */
  readonly recipientHash?: string | undefined;
  /**
   * What recognises this message's code where a bounce or feedback report
   * quotes it (see bounce/report-redaction.ts); a keyed HMAC, never the
   * code. Never shown to callers. Absent on older records.
   */
  readonly codeFingerprint?: CodeFingerprint | undefined;
  /**
   * DSNs tied to this message, oldest first. Stored apart from the record
   * (the sender and the bounce intake never overwrite each other) and joined
   * to it when read; see delivery/reports.ts.
   */
  readonly reports?: readonly DeliveryReport[] | undefined;
  /** For SUPPRESSED: the earlier hard bounce that stopped this send. */
  readonly suppressedBy?: SuppressionEntry | undefined;
  /**
   * The resend_available_at SendOtp answered (epoch ms): what an idempotent
   * replay falls back on when it cannot read the limits. Never shown in
   * GetDeliveryStatus. Absent on older records.
   */
  readonly resendAvailableAt?: number | undefined;
}
