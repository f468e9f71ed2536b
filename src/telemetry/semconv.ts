/**
 * Every span name, attribute key and event name the service itself writes,
 * in one place (the optional instrumentation-ioredis names its own; the gRPC
 * server span is named `grpc.<service>/<method>` as instrumentation-grpc
 * names it, see server-tracing.ts). Standard OpenTelemetry names where one exists (`server.address`,
 * `error.type`); `smtp.*` where SMTP has no convention yet; `otp.*` for our
 * domain.
 *
 * Nothing here may ever carry a code or a full address: a recipient appears
 * masked (`j***@gmail.com`) or as its provider class (`gmail`).
 */

/** The instrumentation scope of every span the service creates itself. */
export const tracerName = "otp-email";

/** The instrumentation scope of the exported Node client's spans. */
export const clientTracerName = "otp-email-client";

export const spanNames = {
  /** One message's whole SMTP send: every attempt and the backoff between them. */
  smtpSend: "smtp.send",
  /** One SMTP transaction with the relay (MAIL FROM .. final reply). */
  smtpAttempt: "smtp.attempt",
  /** A delivery report (DSN) that changed a record, later; linked to the send's trace. */
  deliveryReport: "otp.delivery_report",
} as const;

export const attributes = {
  // Standard (OpenTelemetry semantic conventions).
  serverAddress: "server.address",
  serverPort: "server.port",
  errorType: "error.type",
  rpcSystem: "rpc.system",
  rpcService: "rpc.service",
  rpcMethod: "rpc.method",
  rpcGrpcStatusCode: "rpc.grpc.status_code",

  // The message.
  messageId: "otp.message_id",
  purpose: "otp.purpose",
  /** The locale the message was rendered in (on smtp.send). */
  locale: "otp.locale",
  /** `j***@gmail.com`: never the full address. */
  recipientMasked: "otp.recipient.masked",
  /** The recipient's mailbox provider class (`gmail`, `microsoft`, ... `other`). */
  recipientProvider: "otp.recipient.provider",
  /** The record's state when the send span ends (`ACCEPTED`, `FAILED`...). */
  deliveryState: "otp.delivery.state",

  // SMTP.
  /** 1 for the first attempt. */
  smtpAttempt: "smtp.attempt.number",
  /** Retries before this attempt: 0 for the first. */
  smtpRetryCount: "smtp.retry.count",
  /** How many attempts a send made in all. */
  smtpAttempts: "smtp.attempts",
  /** accepted, transient, permanent, abandoned, unanswered, expired or internal. */
  smtpOutcome: "smtp.outcome",
  /** The relay's reply code (250, 421, 550); 0 when it never replied. */
  smtpReplyCode: "smtp.reply.code",
  /** RFC 3463 enhanced status code (`4.7.0`), when the relay gave one. */
  smtpEnhancedStatus: "smtp.reply.enhanced_status",
  /** The relay's reply, addresses already masked by the transport. */
  smtpReplyText: "smtp.reply.text",
  /** The relay's queue id in its 250 reply (`queued as 4F2A`). */
  smtpQueueId: "smtp.queue_id",
  /** On a retry event: the number of the attempt that will follow, and the wait. */
  smtpNextAttempt: "smtp.retry.next_attempt",
  smtpRetryDelayMs: "smtp.retry.delay_ms",
} as const;

export const eventNames = {
  /** On the smtp.send span: a transient failure, another attempt follows after a backoff. */
  smtpRetry: "smtp.retry",
  /**
   * On the smtp.attempt span: a pooled connection took the message. Before it the attempt waited for one
   * (otp_smtp_pool_wait_seconds); from it on, the time is the relay's (otp_smtp_attempt_duration_seconds).
   */
  smtpConnection: "smtp.connection",
} as const;
