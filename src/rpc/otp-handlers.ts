/**
 * otp.v1.OtpEmailService handlers: translate protobuf messages to the
 * domain's `OtpService` and back, and nothing more. Validation is the
 * domain's job: an unknown purpose or an absurd ttl is passed through in a
 * form the domain rejects, so the rule and its message live in one place.
 */
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AttemptOutcome,
  DeliveryReportAction,
  DeliveryState,
  Purpose,
  SuppressionReason,
  VerifyResult,
  type DeliveryAttemptSchema,
  type DeliveryReportSchema,
  type GetDeliveryStatusResponseSchema,
  type OtpEmailService,
} from "../../gen/otp/v1/otp_email_pb.js";
import type {
  AttemptOutcome as DomainAttemptOutcome,
  DeliveryState as DomainDeliveryState,
  Purpose as DomainPurpose,
  AttemptRecord,
  DeliveryReport as DomainDeliveryReport,
  DeliveryReportAction as DomainDeliveryReportAction,
} from "../delivery/record.js";
import { suppressionReason } from "../delivery/record.js";
import type {
  CallContext,
  DeliveryStatus,
  OtpService,
  VerifyResult as DomainVerifyResult,
} from "../otp/types.js";
import type { HandlerContext, ServerCall, ServiceImpl } from "./service-adapter.js";

/**
 * Names the caller of a call (from its metadata, peer or TLS identity).
 * Throwing an `OtpError("unauthenticated", ...)` refuses the call.
 */
export type IdentifyCaller = (call: ServerCall) => string | Promise<string>;

/** The W3C trace id of a call, or "" when it is not traced. */
export type TraceIdOf = (call: ServerCall) => string;

/** The id of a call's span (16 hex digits), or undefined when it is not traced. */
export type SpanIdOf = (call: ServerCall) => string | undefined;

/**
 * Told of a call refused before it reached the domain: its caller could not
 * be identified (`identify` threw), or its request did not decode (told by
 * the server, `rpc/server.ts`). `method` is the handler's name (`sendOtp`),
 * `purpose` the domain's spelling of the request's purpose ("" when
 * unknown), `error` what the call is answered with.
 */
export type OnRefused = (method: OtpMethod, purpose: string, error: unknown) => void;

/** The OtpEmailService handlers by name. */
export type OtpMethod = "sendOtp" | "verifyOtp" | "getDeliveryStatus";

export interface OtpHandlersOptions {
  readonly otp: OtpService;
  /** Default: every caller is "dev" (until authentication is wired in). */
  readonly identify?: IdentifyCaller | undefined;
  /** Default: "" (until tracing is wired in). */
  readonly traceIdOf?: TraceIdOf | undefined;
  /** Default: none (until tracing is wired in). */
  readonly spanIdOf?: SpanIdOf | undefined;
  /**
   * Such a call never reaches `otp`, so whoever counts what `otp` answers
   * (telemetry/otp-metrics.ts) hears of it here. Default: nobody.
   */
  readonly onRefused?: OnRefused | undefined;
}

/** Creates the OtpEmailService handlers over a domain `OtpService`. */
export function createOtpHandlers(options: OtpHandlersOptions): ServiceImpl<typeof OtpEmailService> {
  const { otp } = options;
  const identify = options.identify ?? (() => "dev");
  const traceIdOf = options.traceIdOf ?? (() => "");
  const spanIdOf = options.spanIdOf ?? (() => undefined);
  const { onRefused } = options;

  // The caller's identity is usually known at once (a token or a certificate):
  // then the context is too, with no promise and no microtask turn of its own.
  const contextOf = ({ call }: HandlerContext, method: OtpMethod, purpose: string): CallContext | Promise<CallContext> => {
    let caller: string | Promise<string>;
    try {
      caller = identify(call);
    } catch (error) {
      onRefused?.(method, purpose, error);
      throw error;
    }
    if (typeof caller === "string") return { caller, traceId: traceIdOf(call), spanId: spanIdOf(call) };
    return caller.then(
      (name) => ({ caller: name, traceId: traceIdOf(call), spanId: spanIdOf(call) }),
      (error: unknown) => {
        onRefused?.(method, purpose, error);
        throw error;
      },
    );
  };

  return {
    async sendOtp(request, handler) {
      const purpose = domainPurpose(request.purpose);
      const ctx = contextOf(handler, "sendOtp", purpose);
      const known = ctx instanceof Promise ? await ctx : ctx;
      const answerBy = answerByOf(handler.call);
      const result = await otp.sendOtp(answerBy === undefined ? known : { ...known, answerBy }, {
        recipient: request.recipient,
        purpose,
        locale: request.locale,
        code: request.code,
        ttlMs: ttlMs(request.ttl),
        idempotencyKey: request.idempotencyKey,
        endUserIp: request.endUserIp,
      });
      return {
        messageId: result.messageId,
        state: protoDeliveryState[result.state],
        expiresAt: timestamp(result.expiresAt),
        resendAvailableAt: timestamp(result.resendAvailableAt),
      };
    },

    async getDeliveryStatus(request, handler) {
      const ctx = contextOf(handler, "getDeliveryStatus", "");
      const status = await otp.getDeliveryStatus(ctx instanceof Promise ? await ctx : ctx, request.messageId);
      return deliveryStatusResponse(status);
    },

    async verifyOtp(request, handler) {
      const purpose = domainPurpose(request.purpose);
      const ctx = contextOf(handler, "verifyOtp", purpose);
      const result = await otp.verifyOtp(ctx instanceof Promise ? await ctx : ctx, {
        recipient: request.recipient,
        purpose,
        code: request.code,
      });
      return { result: protoVerifyResult[result.result], attemptsRemaining: result.attemptsRemaining };
    },
  };
}

/**
 * When a SendOtp must answer for its caller to hear it: the call's deadline
 * less a tenth of the time the caller gave (50 ms to 1 s), room for the
 * answer to travel back. Undefined without a deadline. A send the relay has
 * not answered by then answers with its state (SENDING, RETRYING) and its
 * message_id, as after the wait budget, instead of leaving the caller with
 * DEADLINE_EXCEEDED and no message_id for a mail that still goes.
 */
function answerByOf(call: ServerCall): number | undefined {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return undefined;
  const margin = Math.min(answerMarginMaxMs, Math.max(answerMarginMinMs, (at - Date.now()) / 10));
  return at - margin;
}

const answerMarginMinMs = 50;
const answerMarginMaxMs = 1000;

const domainPurposeOf: ReadonlyMap<Purpose, DomainPurpose> = new Map([
  [Purpose.LOGIN, "login"],
  [Purpose.SIGNUP, "signup"],
  [Purpose.PASSWORD_RESET, "password_reset"],
]);

const protoPurposeOf: Readonly<Record<DomainPurpose, Purpose>> = {
  login: Purpose.LOGIN,
  signup: Purpose.SIGNUP,
  password_reset: Purpose.PASSWORD_RESET,
};

/** UNSPECIFIED and numbers this build does not know become "", which the domain rejects. */
function domainPurpose(purpose: Purpose): string {
  return domainPurposeOf.get(purpose) ?? "";
}

/**
 * Unset -> undefined (the default TTL). Otherwise plain arithmetic, with no
 * clamping: a negative or enormous duration stays so, for the domain to reject.
 * A Duration that google.protobuf.Duration's own rules make invalid (nanos
 * of the other sign than seconds, or of a whole second or more) is NaN, which
 * the domain rejects too: `{seconds: 60, nanos: 2e9}` is not 62 s.
 */
function ttlMs(ttl: Duration | undefined): number | undefined {
  if (ttl === undefined) return undefined;
  const { seconds, nanos } = ttl;
  if (nanos <= -1e9 || nanos >= 1e9 || (seconds > 0n && nanos < 0) || (seconds < 0n && nanos > 0)) return Number.NaN;
  return Number(seconds) * 1000 + nanos / 1e6;
}

const protoDeliveryState: Readonly<Record<DomainDeliveryState, DeliveryState>> = {
  QUEUED: DeliveryState.QUEUED,
  SENDING: DeliveryState.SENDING,
  RETRYING: DeliveryState.RETRYING,
  ACCEPTED: DeliveryState.ACCEPTED,
  DELAYED: DeliveryState.DELAYED,
  DELIVERED: DeliveryState.DELIVERED,
  BOUNCED: DeliveryState.BOUNCED,
  FAILED: DeliveryState.FAILED,
  SUPPRESSED: DeliveryState.SUPPRESSED,
};

const protoAttemptOutcome: Readonly<Record<DomainAttemptOutcome, AttemptOutcome>> = {
  accepted: AttemptOutcome.ACCEPTED,
  transient: AttemptOutcome.TRANSIENT_FAILURE,
  permanent: AttemptOutcome.PERMANENT_FAILURE,
  abandoned: AttemptOutcome.ABANDONED,
  unanswered: AttemptOutcome.UNANSWERED,
};

const protoVerifyResult: Readonly<Record<DomainVerifyResult, VerifyResult>> = {
  VERIFIED: VerifyResult.VERIFIED,
  INVALID: VerifyResult.INVALID,
  EXPIRED: VerifyResult.EXPIRED,
  LOCKED: VerifyResult.LOCKED,
  NOT_FOUND: VerifyResult.NOT_FOUND,
};

type Init<S extends DescMessage> = MessageInitShape<S>;

function deliveryStatusResponse({ record, explanation }: DeliveryStatus): Init<typeof GetDeliveryStatusResponseSchema> {
  return {
    messageId: record.messageId,
    state: protoDeliveryState[record.state],
    recipient: record.recipientMasked,
    purpose: protoPurposeOf[record.purpose],
    createdAt: timestamp(record.createdAt),
    updatedAt: timestamp(record.updatedAt),
    attempts: record.attempts.map(deliveryAttempt),
    relayReply:
      record.relayReply === undefined
        ? undefined
        : {
            relay: record.relayReply.relay,
            text: record.relayReply.text,
            queueId: record.relayReply.queueId,
            acceptedAt: timestamp(record.relayReply.acceptedAt),
            dsnRequested: record.relayReply.dsnRequested === true,
          },
    traceId: record.traceId,
    explanation,
    failureReason: record.failureReason ?? "",
    expiresAt: timestamp(record.expiresAt),
    deliveryReports: (record.reports ?? []).map(deliveryReport),
    suppression:
      record.suppressedBy === undefined
        ? undefined
        : {
            bouncedMessageId: record.suppressedBy.messageId,
            status: record.suppressedBy.status,
            diagnosticCode: record.suppressedBy.diagnosticCode,
            bouncedAt: timestamp(record.suppressedBy.bouncedAt),
            expiresAt: timestamp(record.suppressedBy.expiresAt),
            reason: suppressionReason(record.suppressedBy) === "complaint" ? SuppressionReason.COMPLAINT : SuppressionReason.HARD_BOUNCE,
            feedbackType: record.suppressedBy.feedbackType ?? "",
          },
  };
}

const protoReportAction: Readonly<Record<DomainDeliveryReportAction, DeliveryReportAction>> = {
  failed: DeliveryReportAction.FAILED,
  delayed: DeliveryReportAction.DELAYED,
  delivered: DeliveryReportAction.DELIVERED,
  relayed: DeliveryReportAction.RELAYED,
  expanded: DeliveryReportAction.EXPANDED,
  complained: DeliveryReportAction.COMPLAINED,
  not_spam: DeliveryReportAction.NOT_SPAM,
};

function deliveryReport(report: DomainDeliveryReport): Init<typeof DeliveryReportSchema> {
  return {
    receivedAt: timestamp(report.receivedAt),
    action: protoReportAction[report.action],
    status: report.status,
    diagnosticCode: report.diagnosticCode,
    remoteMta: report.remoteMta,
    reportingMta: report.reportingMta,
    finalRecipient: report.finalRecipient,
    originalEnvelopeId: report.envelopeId,
    feedbackType: report.feedbackType ?? "",
    userAgent: report.userAgent ?? "",
    arrivalDate: report.arrivalDate ?? "",
  };
}

function deliveryAttempt(attempt: AttemptRecord): Init<typeof DeliveryAttemptSchema> {
  return {
    number: attempt.number,
    startedAt: timestamp(attempt.startedAt),
    duration: duration(attempt.durationMs),
    outcome: protoAttemptOutcome[attempt.outcome],
    replyCode: attempt.replyCode,
    enhancedStatusCode: attempt.enhancedStatus,
    replyText: attempt.replyText,
    errorCode: attempt.errorCode,
    // Unset, not zero, for an attempt recorded before the wait was kept: unknown.
    ...(attempt.poolWaitMs === undefined ? {} : { poolWait: duration(attempt.poolWaitMs) }),
  };
}

// Whole milliseconds: fractional ones would give fractional nanos, which do not encode.
function timestamp(epochMs: number): Timestamp {
  return timestampFromMs(Math.round(epochMs));
}

function duration(ms: number): Duration {
  return durationFromMs(Math.round(ms));
}

