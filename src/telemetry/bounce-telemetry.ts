/**
 * Telemetry for what the bounce intake learns hours after a send: each
 * change is a span of its own (the send's trace ended long ago), linked to
 * the send's trace, and the reports (DSNs and feedback reports) are counted,
 * as is what the intake refused.
 *
 * The link names the span of the SendOtp call that sent the message (the
 * record's `spanId`: its gRPC server span, parent of smtp.send and its
 * attempts), so Jaeger and Tempo land on a span that exists. Records written
 * before they kept a span id link to their trace with a fixed placeholder
 * span id (`0000000000000001`), from which Jaeger and Tempo still open the
 * trace.
 */
import { SpanKind, TraceFlags, type Link, type Tracer } from "@opentelemetry/api";
import { feedbackTypes } from "../bounce/arf.js";
import type { IntakeRejectionReason } from "../bounce/intake-rejections.js";
import type { DeliveryRecord } from "../delivery/record.js";
import type { Metrics } from "./metrics.js";
import { attributes, spanNames } from "./semconv.js";
import { serviceTracer } from "./tracing.js";

/** The span id a link to a send's trace carries when its record has none (see the module comment). */
export const linkedTraceSpanId = "0000000000000001";

const validTraceId = /^(?!0{32})[0-9a-f]{32}$/;
const validSpanId = /^(?!0{16})[0-9a-f]{16}$/;

/** What the bounce processor reports for every message it reads. */
export interface BounceReportOutcome {
  /** applied, unmatched or not_dsn. */
  readonly kind: string;
  /** The record's state after an applied report (DELIVERED, DELAYED, BOUNCED...). */
  readonly state?: string;
  /** For applied: a copy of a report already kept, which changed nothing (counted as kind="duplicate"). */
  readonly duplicate?: boolean;
}

/** What the feedback processor reports for every message it reads. */
export interface FeedbackReportOutcome {
  /** applied, unmatched or not_arf. */
  readonly kind: string;
  /** abuse, fraud, virus, other or not-spam; absent for not_arf. */
  readonly feedbackType?: string;
  /** For applied: the message's record (its recipient domain gives the provider class). */
  readonly record?: Pick<DeliveryRecord, "recipientDomain">;
  /** For applied: a copy of a report already kept, which is no new complaint (counted as kind="duplicate"). */
  readonly duplicate?: boolean;
}

export interface BounceTelemetry {
  /**
   * A report was applied to a record (now `record.state`, `previousState`
   * before it); `sendTraceId` is the trace of its send, `record.spanId`
   * (when kept) the span its link names. A transition is
   * counted only when the state changed: a duplicate DSN or a late delay
   * notice after a final one enters no state.
   */
  applied(record: DeliveryRecord, sendTraceId: string, previousState?: string): void;
  outcome(outcome: BounceReportOutcome): void;
  /** A feedback report (ARF) was read (otp_feedback_reports_total; an applied complaint, otp_spam_complaints_total too). */
  feedback(outcome: FeedbackReportOutcome): void;
  /** The intake refused a connection, a command or a message (otp_bounce_intake_rejections_total). */
  rejected(reason: IntakeRejectionReason): void;
}

export function createBounceTelemetry(options: {
  readonly metrics: Pick<
    Metrics,
    "providers" | "deliveryTransitions" | "bounceReports" | "feedbackReports" | "spamComplaints" | "bounceIntakeRejections"
  >;
  readonly tracer?: Tracer;
}): BounceTelemetry {
  const { metrics } = options;
  const tracer = options.tracer ?? serviceTracer();
  return {
    applied(record, sendTraceId, previousState) {
      const provider = metrics.providers.classify(record.recipientDomain);
      if (record.state !== previousState) metrics.deliveryTransitions.inc({ state: record.state, provider });
      const spanId = record.spanId !== undefined && validSpanId.test(record.spanId) ? record.spanId : linkedTraceSpanId;
      const links: Link[] = validTraceId.test(sendTraceId)
        ? [{ context: { traceId: sendTraceId, spanId, traceFlags: TraceFlags.SAMPLED, isRemote: true } }]
        : [];
      tracer
        .startSpan(spanNames.deliveryReport, {
          kind: SpanKind.INTERNAL,
          root: true,
          links,
          attributes: {
            [attributes.messageId]: record.messageId,
            [attributes.deliveryState]: record.state,
            [attributes.recipientMasked]: record.recipientMasked,
            [attributes.recipientProvider]: provider,
          },
        })
        .end();
    },
    outcome(outcome) {
      const read = ["applied", "unmatched", "not_dsn"].includes(outcome.kind) ? outcome.kind : "other";
      // A resent DSN changed nothing: counted apart, or the applied rate would read as news that is not there.
      const kind = read === "applied" && outcome.duplicate === true ? "duplicate" : read;
      metrics.bounceReports.inc({ kind, state: kind === "applied" ? (outcome.state ?? "unknown") : "none" });
    },
    feedback(outcome) {
      const read = ["applied", "unmatched", "not_arf"].includes(outcome.kind) ? outcome.kind : "other";
      // A resent report changed nothing: counted apart, as a resent DSN is, and not as a second complaint
      // (otp_spam_complaints_total), which would inflate the rate.
      const kind = read === "applied" && outcome.duplicate === true ? "duplicate" : read;
      const type = outcome.feedbackType ?? "none";
      const feedbackType = kind === "not_arf" || !(feedbackTypes as readonly string[]).includes(type) ? "none" : type;
      metrics.feedbackReports.inc({ kind, feedback_type: feedbackType });
      if (kind === "applied" && feedbackType !== "none" && feedbackType !== "not-spam" && outcome.record !== undefined) {
        metrics.spamComplaints.inc({ feedback_type: feedbackType, provider: metrics.providers.classify(outcome.record.recipientDomain) });
      }
    },
    rejected(reason) {
      metrics.bounceIntakeRejections.inc({ reason });
    },
  };
}
