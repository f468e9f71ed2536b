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
  /**
   * Delivery status notifications to ask the relay for (RFC 3461). Sent only
   * when the relay advertises DSN in EHLO; SmtpAcceptance.dsnRequested says
   * whether it did.
   */
  readonly dsn?: DsnRequest;
  /**
   * Texts the relay's replies must not carry into records, logs or errors:
   * the code, which the Subject holds and a content filter refusing the
   * message may quote. Each is replaced by `[redacted]`, in any case.
   */
  readonly redact?: readonly string[];
}

/** The DSN parameters of one message: `MAIL FROM ... RET= ENVID=`, `RCPT TO ... NOTIFY=`. */
export interface DsnRequest {
  /** ENVID: comes back as Original-Envelope-Id in the DSN. xtext-safe characters only. */
  readonly envelopeId: string;
  readonly notify: readonly ("SUCCESS" | "FAILURE" | "DELAY")[];
  /** HDRS: the DSN returns only the headers (the code stays out of the bounce). */
  readonly ret: "HDRS" | "FULL";
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
  /** Whether the connection that carried the message advertised DSN in its EHLO reply. */
  readonly dsnSupported: boolean;
  /** The message asked for a DSN and the relay advertised DSN: the parameters really went out. */
  readonly dsnRequested: boolean;
}

/**
 * - transient: worth retrying (connection refused/reset, timeout, 4xx), and
 *   nothing says the relay has the message: whatever failed, failed before the
 *   end of the message's data was written to the connection.
 * - permanent: retrying cannot help (5xx).
 * - auth: the relay rejected our credentials: an operator error.
 * - unanswered: the whole message, end-of-data dot included, was written to
 *   the relay's connection, and no final reply came (a timeout, the code's
 *   expiry, a connection the relay dropped). The relay may well have taken
 *   it (RFC 5321 4.5.3.2.6, 6.1): a resend could make a second mail, so it
 *   must not be retried. replyCode is 0; errorCode says what ended the wait.
 */
export type SmtpFailureKind = "transient" | "permanent" | "auth" | "unanswered";

export class SmtpSendError extends Error {
  override readonly name = "SmtpSendError";
  constructor(
    readonly kind: SmtpFailureKind,
    /** The relay's reply text, or a description of the connection error. */
    readonly replyText: string,
    /** SMTP reply code; 0 when the relay never replied. */
    readonly replyCode: number,
    readonly enhancedStatus: string,
    /**
     * nodemailer/Node error code (`ECONNECTION`, `ETIMEDOUT`, `EAUTH`...), one
     * of ours (`EEXPIRED`, `ESTOPPED`: see SendOptions; `EINTERNAL`: a bug of
     * ours, no evidence about the relay), or "".
     */
    readonly errorCode: string,
    options?: { cause?: unknown },
  ) {
    super(replyText, options);
  }
}

export interface SendOptions {
  /**
   * Gives the send up when it has not finished within this many ms (when the
   * code it carries expires): it rejects with an SmtpSendError whose
   * errorCode is `EEXPIRED`, transient when the end of the message's data had
   * not been written to the relay yet (it still waited for a pooled
   * connection, or the relay for the envelope), `unanswered` when the relay
   * had the whole message and had not replied (the connection is closed
   * before the relay said whether it took it). Only a bound shorter than the
   * transport's own send timeout changes anything.
   */
  readonly withinMs?: number | undefined;
  /**
   * Asked once, when a pooled connection takes the message (after any wait
   * for one, just before its envelope goes out), what to send then: `mail`
   * itself sends the message as built, at no cost; another mail (the same
   * sender, recipient, Message-ID and headers, another text) is built and
   * sent instead; `{ withdrawn: reason, errorCode }` sends nothing: the send
   * rejects with a transient SmtpSendError, text `reason`, errorCode as given
   * (`EEXPIRED` when not). A message only nodemailer's own builder can make
   * (an address that is not plain ASCII) is asked when handed to nodemailer
   * instead.
   */
  readonly atDeparture?: ((mail: OutgoingMail) => OutgoingMail | Withdrawal) | undefined;
  /**
   * Told once, when a pooled connection takes the message off the pool's
   * queue: before it connects, when the connection is new (then atDeparture
   * is asked once connected), at once when one is free. The time before is
   * the wait for a connection (a backlog of the sender's own); the time after
   * is the relay's. Not told for a send that got no connection. A message only
   * nodemailer's own builder can make is told when handed to nodemailer,
   * whose queue it then waits in out of sight. Must not throw.
   */
  readonly onTaken?: (() => void) | undefined;
  /**
   * Told once, synchronously, when the relay may have the whole message
   * from then on: as the end of its data (the final dot) is let go to the
   * relay's connection, with the rest of the message, once the relay has
   * taken the envelope and DATA is under way. A message only
   * nodemailer's own builder can make (its stream does not tell) is told when
   * handed to nodemailer. Not told for a send that never got that far. Must
   * not throw.
   */
  readonly onEndOfData?: (() => void) | undefined;
  /**
   * Stops the send, when aborted before onEndOfData was told: the end of the
   * message's data is then never let go (no bytes of it are written after
   * the abort), so the relay cannot take the message whatever it does later;
   * the send rejects with a transient SmtpSendError, errorCode `ESTOPPED`,
   * once it gets to the data, or when its connection closes (a relay stalled
   * before DATA: close the transport). The transport only looks at it: an
   * abort and a look at whether onEndOfData was told, in the same tick, are
   * certain either way. Aborted after onEndOfData, it changes nothing. A
   * message only nodemailer's own builder can make is never stopped.
   */
  readonly signal?: AbortSignal | undefined;
  /**
   * Fields put in the transport's log lines about this send (the attempt's
   * `trace_id` and `span_id`): they are written where the active context is
   * the request's, or for a pooled connection's departure another request's.
   */
  readonly logFields?: Readonly<Record<string, string>> | undefined;
}

/** A message withdrawn as it leaves the pool's queue (SendOptions.atDeparture): nothing of it is sent. */
export interface Withdrawal {
  /** Why, in words: the failure's replyText. */
  readonly withdrawn: string;
  /**
   * Why, as the failure's errorCode: `EEXPIRED` (the default), its code
   * expired or has too little left for its text to state; `ESTOPPED`, the
   * sender stopped (a shutdown gave the send up). Neither says anything
   * about the relay.
   */
  readonly errorCode?: "EEXPIRED" | "ESTOPPED" | undefined;
}

export interface SmtpTransport {
  /** `host:port` of the relay, for records and explanations. */
  readonly relay: string;
  /** Sends one message. Rejects only with SmtpSendError. */
  send(mail: OutgoingMail, options?: SendOptions): Promise<SmtpAcceptance>;
  /**
   * Sends given to `send` that have not finished: on a pooled connection or
   * waiting for one (at most the pool's size are on a connection).
   */
  inProgress(): number;
  /**
   * Of inProgress, the sends the pool has not had its turn at yet: being
   * DKIM-signed, or in its queue until its next turn (in the same turn of
   * the event loop as `send`), when an idle connection takes each at once.
   * They wait only if that turn gives them none: then they count in
   * waitingForConnection. A message only nodemailer's own builder can make
   * counts as taken once handed to nodemailer.
   */
  handingOver(): number;
  /**
   * Of inProgress, the sends the pool had its turn at and no pooled
   * connection has taken yet: in the pool's queue. Counted as the pool takes
   * them (see SendOptions.onTaken), not estimated from the pool's size: a
   * send waits here while connections are free but not taking it (the pool
   * pauses before it opens a connection again after one failed or was
   * recycled). A message only nodemailer's own builder can make counts as
   * taken once handed to nodemailer, whose queue it then waits in out of sight.
   */
  waitingForConnection(): number;
  /** Of inProgress, the sends a pooled connection has taken (connecting it first, when new) and not finished. */
  onConnection(): number;
  /** Connects, negotiates TLS and authenticates, then hangs up. Rejects with SmtpSendError. */
  verify(): Promise<void>;
  /**
   * Closes the pool; in-flight sends finish first, unless `abandonInFlight`:
   * then their connections are closed too and the sends fail at once (for a
   * caller that has already given up on them, such as a shutdown whose grace
   * period ran out: a relay that never answers must not hold it up).
   */
  close(options?: { readonly abandonInFlight?: boolean }): Promise<void>;
}
