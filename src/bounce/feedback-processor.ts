/**
 * Turns one received feedback report (RFC 5965 ARF: a recipient marked our
 * message as spam, or as not spam) into evidence on its message: parse,
 * correlate (VERP address, Original-Mail-From, the original's Return-Path
 * and Message-ID), suppress the recipient on an abuse or fraud complaint,
 * append the report beside the record, and tell listeners. Like a
 * bounce, a report that cannot be tied to exactly one sent message is
 * counted and logged, never applied.
 *
 * Privacy: the report returns the original message, whose Subject and body
 * hold the code, and the recipient's address. Nothing of the original is
 * stored, logged or counted (arf.ts reads only its Return-Path and
 * Message-ID); the recipient is stored masked.
 */
import type { Clock } from "../clock.js";
import type { DeliveryRecord, DeliveryReport, DeliveryState } from "../delivery/record.js";
import { isCopy, reportIdentity, withReports } from "../delivery/reports.js";
import type { Logger } from "../logger.js";
import { messageIdPattern } from "../otp/code.js";
import type { OtpStore } from "../store/types.js";
import { feedbackReportFrom, suppressingFeedbackTypes, type FeedbackType } from "./arf.js";
import { storeReport, type BounceSource } from "./bounce-processor.js";
import { createReportRedactor, type ReportRedactor } from "./report-redaction.js";
import type { SuppressionList } from "./suppression.js";

export type FeedbackUnmatchedReason =
  /** Nothing in the report names one of our messages (no VERP address, no Message-ID of ours). */
  | "no_message_id"
  /** It names a message id no record has (never sent by us, or expired). */
  | "unknown_message"
  /** It names more than one of our messages (the VERP address and the Message-ID disagree...). */
  | "id_mismatch"
  /** The record says nothing was ever sent (QUEUED, SUPPRESSED). */
  | "not_sent";

export type FeedbackOutcome =
  | {
      readonly kind: "applied";
      readonly messageId: string;
      readonly feedbackType: FeedbackType;
      readonly report: DeliveryReport;
      /** The record as a status query now sees it (its provider class is a metric label). */
      readonly record: DeliveryRecord;
      readonly previousState: DeliveryState;
      readonly state: DeliveryState;
      readonly suppressed: boolean;
      /** A copy of a report already kept (a provider resending it): nothing stored or suppressed, not a new complaint. */
      readonly duplicate: boolean;
    }
  | { readonly kind: "unmatched"; readonly feedbackType: FeedbackType; readonly reason: FeedbackUnmatchedReason }
  /** Not a usable RFC 5965 feedback report (a DSN sent to the feedback address, an auth-failure report, garbage). */
  | { readonly kind: "not_arf"; readonly reason: string };

export interface FeedbackProcessorOptions {
  readonly store: Pick<OtpStore, "getRecord" | "getDeliveryReports" | "addDeliveryReport">;
  readonly suppression: SuppressionList;
  readonly clock: Clock;
  readonly logger: Logger;
  /** How long reports are kept (the record retention). */
  readonly reportTtlMs: number;
  /**
   * Takes the message's code out of the report's texts before anything is
   * stored, logged or shown (as BounceProcessorOptions.redactor). Default:
   * one without hashers, which redacts everything that could be a code.
   */
  readonly redactor?: ReportRedactor | undefined;
  /** BOUNCE_DOMAIN: a VERP address `bounce+<id>@<bounceDomain>` names a message. */
  readonly bounceDomain: string;
  /** The From address's domain: a Message-ID `<id@messageIdDomain>` names a message. */
  readonly messageIdDomain: string;
  /** As BounceProcessorOptions.onBounceApplied: after a report changed what is known (never for a copy). Must not throw. */
  readonly onApplied?: ((record: DeliveryRecord, previousTraceId: string, previousState: DeliveryState) => void) | undefined;
  /** Told every outcome (metrics). Must not throw. */
  readonly onOutcome?: ((outcome: FeedbackOutcome) => void) | undefined;
}

export interface FeedbackProcessor {
  /**
   * Processes the feedback report `raw`. `envelopeIds`: the message ids of
   * the VERP addresses it was delivered to (none when it came to the
   * feedback address). Resolves with the outcome; rejects only when
   * storage failed, so the sender should be told to retry (4xx).
   */
  process(raw: Buffer, source: BounceSource | undefined, envelopeIds: readonly string[]): Promise<FeedbackOutcome>;
}

export function createFeedbackProcessor(options: FeedbackProcessorOptions): FeedbackProcessor {
  const { store, suppression, clock } = options;
  const baseLogger = options.logger.child({ component: "feedback" });
  const redactor = options.redactor ?? createReportRedactor([]);
  const escape = (text: string): string => text.toLowerCase().replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const verp = new RegExp(`^bounce\\+([0-9a-z]+)@${escape(options.bounceDomain)}$`, "i");
  const ownMessageId = new RegExp(`^([0-9a-z]+)@${escape(options.messageIdDomain)}$`, "i");
  const ours = (pattern: RegExp, value: string): string[] => {
    const id = pattern.exec(value)?.[1]?.toLowerCase();
    return id !== undefined && messageIdPattern.test(id) ? [id] : [];
  };

  function finish(outcome: FeedbackOutcome): FeedbackOutcome {
    try {
      options.onOutcome?.(outcome);
    } catch (error) {
      baseLogger.error({ err: error }, "feedback onOutcome listener threw");
    }
    return outcome;
  }

  async function process(raw: Buffer, source: BounceSource | undefined, envelopeIds: readonly string[]): Promise<FeedbackOutcome> {
    const logger = source === undefined ? baseLogger : baseLogger.child({ remote: source.remoteAddress, helo: source.helo, tls: source.tls });
    const read = feedbackReportFrom(raw);
    if (!read.ok) {
      logger.warn({ reason: read.reason, bytes: raw.length }, "feedback report is not RFC 5965 ARF; not applied");
      return finish({ kind: "not_arf", reason: read.reason });
    }
    const { report: feedback } = read;
    // Until the record is known, whatever could be a code is kept out of the log.
    const described = { feedback_type: feedback.feedbackType, user_agent: redactor.redact(feedback.userAgent) };

    // Every place that may name the message must name the same one.
    const ids = [
      ...new Set([
        ...envelopeIds,
        ...ours(verp, feedback.candidates.originalMailFrom),
        ...ours(verp, feedback.candidates.returnPath),
        ...ours(ownMessageId, feedback.candidates.messageId),
      ]),
    ];
    if (ids.length !== 1) {
      const reason = ids.length === 0 ? "no_message_id" : "id_mismatch";
      logger.warn(
        { ...described, reason, ...(ids.length > 1 ? { message_ids: ids } : {}) },
        ids.length === 0 ? "feedback report names none of our messages; not applied" : "feedback report names more than one message; not applied",
      );
      return finish({ kind: "unmatched", feedbackType: feedback.feedbackType, reason });
    }
    const messageId = ids[0] ?? "";
    const record = await store.getRecord(messageId);
    if (record === undefined) {
      logger.warn({ ...described, message_id: messageId }, "feedback report for an unknown message; not applied");
      return finish({ kind: "unmatched", feedbackType: feedback.feedbackType, reason: "unknown_message" });
    }
    if (record.state === "QUEUED" || record.state === "SUPPRESSED") {
      logger.warn({ ...described, message_id: messageId, state: record.state }, "feedback report for a message that was never sent; not applied");
      return finish({ kind: "unmatched", feedbackType: feedback.feedbackType, reason: "not_sent" });
    }

    const redact = (text: string): string => redactor.redact(text, record);
    const said: Omit<DeliveryReport, "receivedAt" | "identity"> = {
      action: feedback.feedbackType === "not-spam" ? "not_spam" : "complained",
      status: "",
      diagnosticCode: "",
      remoteMta: "",
      reportingMta: redact(feedback.reportingMta),
      finalRecipient: feedback.originalRcptTo,
      envelopeId: "",
      feedbackType: feedback.feedbackType,
      userAgent: redact(feedback.userAgent),
      // A date-time (RFC 5965 section 3.1), which quotes nothing of the original: kept as
      // given, its numbers never taken for a code (as they would be for a record without a fingerprint).
      arrivalDate: feedback.arrivalDate,
    };
    const report: DeliveryReport = { receivedAt: clock.now(), ...said, identity: reportIdentity(said) };
    const earlier = await store.getDeliveryReports(messageId);
    const previousState = withReports(record, earlier).state;

    let suppressed = false;
    // As for a bounce: a copy never touches the suppression, so it is written before the report (see storeReport).
    if (!isCopy(report, earlier) && suppressingFeedbackTypes.has(feedback.feedbackType)) {
      if (record.recipientHash === undefined) {
        logger.warn({ message_id: messageId }, "complaint about a record without a recipient hash; recipient not suppressed");
      } else {
        await suppression.suppress(record.recipientHash, {
          messageId,
          caller: record.caller,
          status: "",
          diagnosticCode: "",
          reason: "complaint",
          feedbackType: feedback.feedbackType,
        });
        suppressed = true;
      }
    }
    const fresh = await storeReport(store, messageId, report, earlier, options.reportTtlMs, logger);
    // Stored first by another instance (two copies at once): that one tells of the suppression.
    suppressed &&= fresh;
    const updated = fresh ? withReports(record, [...earlier, report]) : withReports(record, earlier);

    logger.info(
      {
        ...described,
        user_agent: report.userAgent,
        message_id: messageId,
        arrival_date: feedback.arrivalDate,
        ...(fresh ? {} : { duplicate: true }),
        previous_state: previousState,
        state: updated.state,
        suppressed,
        // The send's trace (the record's), to go from this line to the SMTP conversation complained about.
        ...(record.traceId === "" ? {} : { send_trace_id: record.traceId }),
      },
      feedback.feedbackType === "not-spam" ? "not-spam feedback applied" : "complaint applied",
    );
    // A copy is no news about the message: no span says it changed.
    if (fresh) {
      try {
        options.onApplied?.(updated, record.traceId, previousState);
      } catch (error) {
        logger.error({ err: error, message_id: messageId }, "feedback onApplied listener threw");
      }
    }
    return finish({
      kind: "applied",
      messageId,
      feedbackType: feedback.feedbackType,
      report,
      record: updated,
      previousState,
      state: updated.state,
      suppressed,
      duplicate: !fresh,
    });
  }

  return { process };
}
