/**
 * The SMTP transport's contract. The transport knows nothing about OTPs: it
 * sends a finished message over a pooled nodemailer connection and reports
 * the relay's own reply, or a classified failure.
 */

/** A finished message, ready for the wire. */
export interface OutgoingMail {
  /** RFC 5322 From with display name: `"Acme" <no-reply@acme.test>`. */
  readonly from: string;
  /** The single recipient address. */
  readonly to: string;
  readonly subject: string;
  readonly text: string;
  readonly html: string;
  /** Explicit Message-ID, with angle brackets, at the sender's domain. */
  readonly messageId: string;
  /** Extra headers (`Auto-Submitted`...). */
  readonly headers: Readonly<Record<string, string>>;
  /** SMTP envelope; defaults to the From address and `to`. */
  readonly envelope?: { readonly from: string; readonly to: string };
}

/** The relay accepted the message (2xx). Acceptance is not delivery. */
export interface SmtpAcceptance {
  /** `host:port` of the relay. */
  readonly relay: string;
  readonly replyCode: number;
  readonly enhancedStatus: string;
  /** The full reply line (`250 2.0.0 Ok: queued as 4F2A`). */
  readonly text: string;
  /** Queue id parsed from the reply, or "". */
  readonly queueId: string;
}

/**
 * - transient: worth retrying (connection refused/reset, timeout, 4xx).
 * - permanent: retrying cannot help (5xx).
 * - auth: the relay rejected our credentials: an operator error.
 */
export type SmtpFailureKind = "transient" | "permanent" | "auth";

export class SmtpSendError extends Error {
  override readonly name = "SmtpSendError";
  constructor(
    readonly kind: SmtpFailureKind,
    /** The relay's reply text, or a description of the connection error. */
    readonly replyText: string,
    /** SMTP reply code; 0 when the relay never replied. */
    readonly replyCode: number,
    readonly enhancedStatus: string,
    /** nodemailer/Node error code (`ECONNECTION`, `ETIMEDOUT`, `EAUTH`...), or "". */
    readonly errorCode: string,
    options?: { cause?: unknown },
  ) {
    super(replyText, options);
  }
}

export interface SmtpTransport {
  /** `host:port` of the relay, for records and explanations. */
  readonly relay: string;
  /** Sends one message. Rejects only with SmtpSendError. */
  send(mail: OutgoingMail): Promise<SmtpAcceptance>;
  /** Connects, negotiates TLS and authenticates, then hangs up. Rejects with SmtpSendError. */
  verify(): Promise<void>;
  /** Closes the pool; in-flight sends finish first. */
  close(): Promise<void>;
}
