/**
 * The DeliveryObserver that turns what delivery/ reports into spans and
 * metrics:
 *
 *   smtp.send    one per message, child of the request that dispatched it
 *                (purpose, locale, masked recipient, provider class, relay);
 *                a `smtp.retry` event per retry; ends with the final state.
 *   smtp.attempt one per SMTP transaction, child of smtp.send: relay address
 *                and port, reply code, enhanced status, error.type, attempt
 *                and retry number.
 *
 * plus otp_smtp_attempts_total, the relay's time per attempt, the wait for a
 * pooled connection and the send duration histograms (with the trace as
 * exemplar), the attempts in flight and
 * otp_delivery_state_transitions_total by provider class; and the trace
 * fields of log lines about a send or one of its attempts (logFields): the
 * attempt span is never made active, so the logger's mixin alone would name
 * the request's span.
 */
import { context, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from "@opentelemetry/api";
import type { DeliveryObserver, SendObservation } from "../delivery/observer.js";
import type { AttemptRecord, DeliveryRecord } from "../delivery/record.js";
import { spanLogFields } from "./log-correlation.js";
import { observeWithTrace, purposeLabel, resultsWithoutRelayTime, type Metrics } from "./metrics.js";
import { attributes, eventNames, spanNames } from "./semconv.js";
import { serviceTracer } from "./tracing.js";

export interface DeliveryTelemetryOptions {
  readonly metrics: Pick<
    Metrics,
    | "providers"
    | "smtpAttempts"
    | "smtpAttemptSeconds"
    | "smtpPoolWaitSeconds"
    | "smtpSendSeconds"
    | "smtpAttemptsInFlight"
    | "deliveryTransitions"
  >;
  readonly tracer?: Tracer;
}

/** `relay.example:587` -> relay.example, 587; `[::1]:25` -> ::1, 25. */
function splitRelay(relay: string): { address: string; port: number | undefined } {
  const colon = relay.lastIndexOf(":");
  const host = colon === -1 ? relay : relay.slice(0, colon);
  const port = colon === -1 ? Number.NaN : Number(relay.slice(colon + 1));
  return {
    address: host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host,
    port: Number.isInteger(port) ? port : undefined,
  };
}

/** The server.address and server.port of the last relay seen: a process sends to one relay (or very few). */
interface RelayServer {
  readonly relay: string;
  readonly address: string;
  readonly port: number | undefined;
}

/** ok / transient / permanent / abandoned / unanswered / expired / internal, as the metrics name attempt outcomes. */
function resultOf(attempt: AttemptRecord): "ok" | "transient" | "permanent" | "abandoned" | "unanswered" | "expired" | "internal" {
  if (attempt.outcome === "accepted") return "ok";
  // Before expired: the relay had the whole message when the code's expiry ended the wait, and whether it took it is unknown.
  if (attempt.outcome === "unanswered") return "unanswered";
  // Recorded transient (the message fails or retries as for one), but the code's time ran out, or our own
  // code broke, not the relay: counted as a transient failure either would read as a relay problem.
  if (attempt.errorCode === "EEXPIRED") return "expired";
  if (attempt.errorCode === "EINTERNAL") return "internal";
  return attempt.outcome;
}

/**
 * A send's verdict for otp_smtp_send_duration_seconds: given up at shutdown is not the relay failing it. One the
 * relay had whole and never answered is: it counts as failed (OtpSendFailureRatioHigh must see a relay that hangs).
 */
function sendOutcomeOf(record: DeliveryRecord): "accepted" | "failed" | "abandoned" {
  if (record.state === "ACCEPTED") return "accepted";
  return record.attempts.at(-1)?.outcome === "abandoned" ? "abandoned" : "failed";
}

function replyClassOf(replyCode: number): string {
  return replyCode >= 200 && replyCode < 600 ? `${Math.floor(replyCode / 100)}xx` : "none";
}

/** The low-cardinality error.type of a failed attempt: the connection error code, else the reply code. */
function errorTypeOf(attempt: AttemptRecord): string {
  if (attempt.outcome === "abandoned") return "abandoned";
  if (attempt.errorCode !== "") return attempt.errorCode;
  return attempt.replyCode > 0 ? String(attempt.replyCode) : "_OTHER";
}

export function createDeliveryTelemetry(options: DeliveryTelemetryOptions): DeliveryObserver {
  const { metrics } = options;
  const tracer = options.tracer ?? serviceTracer();
  let inFlight = 0;
  const setInFlight = (delta: number): void => {
    inFlight += delta;
    metrics.smtpAttemptsInFlight.set(inFlight);
  };
  const providerOf = (record: DeliveryRecord): string => metrics.providers.classify(record.recipientDomain);
  let lastRelay: RelayServer | undefined;
  const serverOf = (relay: string): RelayServer => {
    if (lastRelay?.relay !== relay) lastRelay = { relay, ...splitRelay(relay) };
    return lastRelay;
  };

  return {
    stateChanged(record) {
      metrics.deliveryTransitions.inc({ state: record.state, provider: providerOf(record) });
    },

    sendStarted(record, relay): SendObservation {
      const provider = providerOf(record);
      metrics.deliveryTransitions.inc({ state: record.state, provider });
      const server = serverOf(relay);
      // Attribute objects are built literally, not spread: the SDK copies them anyway, and this runs per message.
      const parent = context.active();
      const sendSpan = tracer.startSpan(
        spanNames.smtpSend,
        {
          kind: SpanKind.INTERNAL,
          attributes: {
            [attributes.messageId]: record.messageId,
            [attributes.purpose]: record.purpose,
            [attributes.locale]: record.locale,
            [attributes.recipientMasked]: record.recipientMasked,
            [attributes.recipientProvider]: provider,
            [attributes.serverAddress]: server.address,
            [attributes.serverPort]: server.port,
          },
        },
        parent,
      );
      const sendContext = trace.setSpan(parent, sendSpan);
      const sendStartedAt = performance.now();
      let attemptSpan: Span | undefined;
      // Kept after the attempt ends (attemptSpan is cleared then): lines about the attempt are written after it.
      let latestAttemptSpan: Span | undefined;
      let attemptStartedAt = 0;
      // When a pooled connection took the attempt in flight; undefined while it waits for one (or between attempts).
      let attemptTakenAt: number | undefined;
      // Log fields, made when a line first asks (most sends log one attempt line and no send line), then kept.
      let sendLogFields: Readonly<Record<string, string>> | undefined;
      let attemptLogFields: Readonly<Record<string, string>> | undefined;

      return {
        attemptStarted(number) {
          attemptStartedAt = performance.now();
          attemptTakenAt = undefined;
          setInFlight(+1);
          attemptLogFields = undefined;
          attemptSpan = tracer.startSpan(
            spanNames.smtpAttempt,
            {
              kind: SpanKind.CLIENT,
              attributes: {
                [attributes.serverAddress]: server.address,
                [attributes.serverPort]: server.port,
                [attributes.smtpAttempt]: number,
                [attributes.smtpRetryCount]: number - 1,
              },
            },
            sendContext,
          );
          latestAttemptSpan = attemptSpan;
        },

        attemptTaken() {
          // Once per attempt, and only while it is in flight: a connection may take one drain() withdrew.
          if (attemptSpan === undefined || attemptTakenAt !== undefined) return;
          attemptTakenAt = performance.now();
          attemptSpan.addEvent(eventNames.smtpConnection);
          observeWithTrace(metrics.smtpPoolWaitSeconds, {}, (attemptTakenAt - attemptStartedAt) / 1000, attemptSpan.spanContext());
        },

        attemptFinished(attempt) {
          setInFlight(-1);
          const result = resultOf(attempt);
          metrics.smtpAttempts.inc({ result, reply_class: replyClassOf(attempt.replyCode) });
          const span = attemptSpan;
          attemptSpan = undefined;
          const now = performance.now();
          if (attemptTakenAt === undefined) {
            // It never got a connection (its code expired, its send timed out, the transport was closed): all of it was
            // the wait, and none of it the relay's.
            observeWithTrace(metrics.smtpPoolWaitSeconds, {}, (now - attemptStartedAt) / 1000, span?.spanContext());
          } else if (!resultsWithoutRelayTime.has(result)) {
            observeWithTrace(metrics.smtpAttemptSeconds, { result }, (now - attemptTakenAt) / 1000, span?.spanContext());
          }
          if (span === undefined) return;
          // An expired or internal attempt is recorded transient (the message fails as for one) but counted apart: its span agrees.
          span.setAttribute(attributes.smtpOutcome, result === "expired" || result === "internal" ? result : attempt.outcome);
          span.setAttribute(attributes.smtpReplyCode, attempt.replyCode);
          // Masked by the transport: relays echo the recipient in their replies.
          span.setAttribute(attributes.smtpReplyText, attempt.replyText);
          if (attempt.enhancedStatus !== "") span.setAttribute(attributes.smtpEnhancedStatus, attempt.enhancedStatus);
          if (result !== "ok") {
            const errorType = errorTypeOf(attempt);
            span.setAttribute(attributes.errorType, errorType);
            span.setStatus({
              code: SpanStatusCode.ERROR,
              message:
                result === "abandoned" ? "abandoned"
                : result === "unanswered" ? `unanswered: the relay had the whole message and gave no final reply (${errorType}); whether it took it is unknown`
                : result === "expired" ? "expired: the code expired before the relay took the message"
                : result === "internal" ? "internal error: EINTERNAL (a bug of the service, not the relay's doing)"
                : `${attempt.outcome} failure: ${errorType}`,
            });
          }
          span.end();
        },

        attemptWithdrawn() {
          // No transaction with the relay took place: not an SMTP attempt for the metrics, only its span ends.
          const span = attemptSpan;
          attemptSpan = undefined;
          if (span === undefined) return;
          setInFlight(-1);
          span.setAttribute(attributes.errorType, "withdrawn");
          span.setStatus({ code: SpanStatusCode.ERROR, message: "withdrawn: the sender stopped before the relay had the whole message (nothing was delivered)" });
          span.end();
        },

        retryScheduled(number, delayMs) {
          sendSpan.addEvent(eventNames.smtpRetry, {
            [attributes.smtpNextAttempt]: number + 1,
            [attributes.smtpRetryDelayMs]: delayMs,
          });
        },

        finished(finalRecord) {
          if (attemptSpan !== undefined) {
            // The sender stopped while this attempt ran: its answer never came.
            attemptSpan.setAttribute(attributes.errorType, "abandoned");
            attemptSpan.setStatus({ code: SpanStatusCode.ERROR, message: "abandoned" });
            attemptSpan.end();
            attemptSpan = undefined;
            setInFlight(-1);
          }
          const outcome = sendOutcomeOf(finalRecord);
          const purpose = purposeLabel(finalRecord.purpose);
          observeWithTrace(metrics.smtpSendSeconds, { purpose, outcome }, (performance.now() - sendStartedAt) / 1000, sendSpan.spanContext());
          sendSpan.setAttribute(attributes.deliveryState, finalRecord.state);
          sendSpan.setAttribute(attributes.smtpAttempts, finalRecord.attempts.length);
          const queueId = finalRecord.relayReply?.queueId;
          if (queueId) sendSpan.setAttribute(attributes.smtpQueueId, queueId);
          if (outcome !== "accepted") {
            sendSpan.setStatus({ code: SpanStatusCode.ERROR, message: finalRecord.failureReason ?? finalRecord.state });
          }
          sendSpan.end();
        },

        logFields(of) {
          if (of === "attempt" && latestAttemptSpan !== undefined) {
            return (attemptLogFields ??= spanLogFields(latestAttemptSpan.spanContext()));
          }
          return (sendLogFields ??= spanLogFields(sendSpan.spanContext()));
        },
      };
    },
  };
}
