/**
 * The closed set of errors the domain raises. The domain knows nothing of
 * gRPC: `rpc/status.ts` is the one place that maps these (and any foreign
 * error) to gRPC status codes, messages and rich details.
 *
 * Messages are for the caller: short, naming the field or limit and saying
 * what to do. They never contain a code, a secret or a full address.
 */
export type OtpErrorKind =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "resource_exhausted"
  | "failed_precondition"
  | "unavailable"
  | "unauthenticated"
  | "permission_denied"
  | "internal";

/** One broken rule of one request field (google.rpc.BadRequest.FieldViolation). */
export interface FieldViolation {
  /** The field's name as in the .proto (`recipient`, `ttl`). */
  readonly field: string;
  /** What is wrong and what is allowed. */
  readonly description: string;
  /** A stable, machine-readable reason (`RECIPIENT_INVALID`). */
  readonly reason: string;
}

export interface OtpErrorOptions {
  /** Machine-readable reason for google.rpc.ErrorInfo, UPPER_SNAKE_CASE. */
  readonly reason?: string;
  readonly violations?: readonly FieldViolation[];
  /** For resource_exhausted and unavailable: when a retry may succeed. */
  readonly retryAfterMs?: number;
  /** Extra ErrorInfo metadata; never personal data. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** For resource_exhausted: every limit that refused the request (google.rpc.QuotaFailure). */
  readonly quotaViolations?: readonly QuotaViolation[];
  readonly cause?: unknown;
}

/** One limit that refused a request (google.rpc.QuotaFailure.Violation). */
export interface QuotaViolation {
  /** What was limited: `recipient`, `end_user_ip`, `caller:<name>`, `global`. Never an address. */
  readonly subject: string;
  /** The limit in words: "at most 5 codes per 15m to one recipient". */
  readonly description: string;
  /** Stable id of the limit and window: `recipient:15m`. */
  readonly quotaId: string;
  /** The limit's count per window. */
  readonly quotaValue: number;
}

export class OtpError extends Error {
  override readonly name = "OtpError";
  readonly kind: OtpErrorKind;
  readonly reason: string;
  readonly violations: readonly FieldViolation[];
  readonly retryAfterMs: number | undefined;
  readonly metadata: Readonly<Record<string, string>>;
  readonly quotaViolations: readonly QuotaViolation[];

  constructor(kind: OtpErrorKind, message: string, options: OtpErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
    this.reason = options.reason ?? kind.toUpperCase();
    this.violations = options.violations ?? [];
    this.retryAfterMs = options.retryAfterMs;
    this.metadata = options.metadata ?? {};
    this.quotaViolations = options.quotaViolations ?? [];
  }

  /** An INVALID_ARGUMENT naming the violated rules; the message is the first one's. */
  static invalid(violations: readonly FieldViolation[]): OtpError {
    const first = violations[0];
    if (first === undefined) throw new TypeError("OtpError.invalid needs at least one violation");
    const message =
      violations.length === 1
        ? `${first.field}: ${first.description}`
        : `${first.field}: ${first.description} (and ${violations.length - 1} more field error(s))`;
    return new OtpError("invalid_argument", message, { reason: first.reason, violations });
  }
}

/**
 * Storage (Redis) is full and refuses to store anything: retryable, though
 * not within a second (someone has to make room). The reason is the same as
 * `storageUnavailable`'s, which is what callers act on; what filled up is
 * the operator's business, said in the log, not in the answer.
 */
export function storageFull(cause: unknown): OtpError {
  const error = new OtpError("unavailable", "storage is full and cannot take this request; retry later", {
    reason: "STORAGE_UNAVAILABLE",
    retryAfterMs: 5000,
    cause,
  });
  refusedWhole.add(error);
  return error;
}

/** The errors of `storageFull`: told apart by identity, not by their words. */
const refusedWhole = new WeakSet<OtpError>();

/**
 * Whether `error` is a full storage's refusal (`storageFull`). Such an
 * operation did nothing at all (a full Redis refuses a write before it runs
 * any of it), so there is nothing to take back, unlike after a timeout.
 */
export function isStorageFull(error: unknown): boolean {
  return error instanceof OtpError && refusedWhole.has(error);
}

/** The errors of `asReplay`: told apart by identity, like `storageFull`'s. */
const replays = new WeakSet<OtpError>();

/**
 * Marks `error` as the answer to a repeated idempotency_key: the first
 * request's refusal, or its "still in progress", given again with nothing
 * attempted for this call. The caller gets the error as it is; the metrics
 * count the call as a replay, not as one more refusal. Returns `error`.
 */
export function asReplay(error: OtpError): OtpError {
  replays.add(error);
  return error;
}

/** Whether `error` answers a repeated idempotency_key (`asReplay`). */
export function isReplay(error: unknown): boolean {
  return error instanceof OtpError && replays.has(error);
}

/** Storage (Redis) could not be reached or answered in time: retryable. */
export function storageUnavailable(cause: unknown): OtpError {
  return new OtpError("unavailable", "storage is unavailable; retry shortly", {
    reason: "STORAGE_UNAVAILABLE",
    retryAfterMs: 1000,
    cause,
  });
}
