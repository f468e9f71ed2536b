/**
 * Turns one received bounce into evidence on its message: parse (RFC 3464),
 * correlate (VERP id and Original-Envelope-Id), suppress the recipient on a
 * "no such mailbox" failure, append the report beside the record, and tell
 * listeners. A bounce that cannot be tied to exactly one sent message is
 * counted and logged, never applied.
 */
import type { Clock } from "../clock.js";
import type { DeliveryRecord, DeliveryReport, DeliveryState } from "../delivery/record.js";
import { appendDropsDecidingReport, isCopy, reportIdentity, reportStatus, suppresses, withReports } from "../delivery/reports.js";
import type { Logger } from "../logger.js";
import { maskAddressesIn } from "../otp/address.js";
import { maxDeliveryReports, type OtpStore } from "../store/types.js";
import { parseDsn, type DsnRecipient } from "./dsn.js";
import { createReportRedactor, type ReportRedactor } from "./report-redaction.js";
import type { SuppressionList } from "./suppression.js";

export type UnmatchedReason =
  /** No record with the VERP id (never sent by us, or expired). */
  | "unknown_message"
  /** The DSN's Original-Envelope-Id names another message than the VERP address. */
  | "envelope_id_mismatch"
  /** The record says nothing was ever sent (QUEUED, SUPPRESSED): the bounce cannot be about it. */
  | "not_sent";

export type BounceOutcome =
  | {
      readonly kind: "applied";
      readonly messageId: string;
      readonly report: DeliveryReport;
      readonly previousState: DeliveryState;
      readonly state: DeliveryState;
      readonly suppressed: boolean;
      /** A copy of a report already kept (a relay resending its DSN): nothing stored, suppressed or changed. */
      readonly duplicate: boolean;
    }
  | { readonly kind: "unmatched"; readonly messageId: string; readonly reason: UnmatchedReason }
  /** Not an RFC 3464 DSN (auto-reply, home-made bounce text, garbage). */
  | { readonly kind: "not_dsn"; readonly messageId: string; readonly reason: string };

export interface BounceProcessorOptions {
  readonly store: Pick<OtpStore, "getRecord" | "getDeliveryReports" | "addDeliveryReport">;
  readonly suppression: SuppressionList;
  readonly clock: Clock;
  readonly logger: Logger;
  /** How long reports are kept (the record retention). */
  readonly reportTtlMs: number;
  /**
   * Takes the message's code out of the DSN's texts (a Diagnostic-Code may
   * quote the Subject) before anything is stored, logged or shown. Default:
   * one without hashers, which redacts everything that could be a code.
   */
  readonly redactor?: ReportRedactor | undefined;
  /**
   * While OTP_SECRET rotates: a record made before `rotatedAt` carries its
   * recipient's hash under the previous secret, which SendOtp consults only
   * until `suppressionUntil`; the log line says so.
   */
  readonly previousSecret?: { readonly rotatedAt: number; readonly suppressionUntil: number } | undefined;
  /**
   * Called after a bounce changed what is known about a message, with the
   * record as a status query now sees it, the trace id of the send (so the
   * change can be traced as a span linked to that trace) and the state the
   * record read as before this report (the same state when the report
   * changed none, like a late delay notice). Not called for a copy of a
   * report already kept (a duplicate), which changed nothing. Must not
   * throw (a throw is logged and ignored).
   */
  readonly onBounceApplied?: ((record: DeliveryRecord, previousTraceId: string, previousState: DeliveryState) => void) | undefined;
  /** Told every outcome (metrics). Must not throw. */
  readonly onOutcome?: ((outcome: BounceOutcome) => void) | undefined;
}

/**
 * Who handed a bounce over, as the intake saw it. A DSN's own fields
 * (Reporting-MTA...) are whatever its sender wrote; this is the evidence that
 * tells a relay's report from one anybody could have sent, so every log line
 * about a bounce carries it.
 */
export interface BounceSource {
  /** The connecting peer's IP address. */
  readonly remoteAddress: string;
  /** The name it gave in HELO/EHLO (bounded, control characters dropped). */
  readonly helo: string;
  /** The TLS protocol it came over (`TLSv1.3`), or `none` in clear. */
  readonly tls?: string | undefined;
}

export interface BounceProcessor {
  /**
   * Processes the bounce `raw` received for `bounce+<messageId>@...` from
   * `source`. Resolves with the outcome; rejects only when storage failed,
   * so the sending MTA should be told to retry (4xx).
   */
  process(messageId: string, raw: Buffer, source?: BounceSource): Promise<BounceOutcome>;
  /** Outcomes so far, by kind. */
  counts(): Readonly<Record<BounceOutcome["kind"], number>>;
}

/** Severity order for picking the block that speaks for the message. */
const severity: Readonly<Record<DsnRecipient["action"], number>> = {
  failed: 3,
  delayed: 2,
  delivered: 1,
  relayed: 1,
  expanded: 1,
};

export function createBounceProcessor(options: BounceProcessorOptions): BounceProcessor {
  const { store, suppression, clock } = options;
  const baseLogger = options.logger.child({ component: "bounce" });
  const counts = { applied: 0, unmatched: 0, not_dsn: 0 };
  const redactor = options.redactor ?? createReportRedactor([]);

  function finish(outcome: BounceOutcome): BounceOutcome {
    counts[outcome.kind]++;
    try {
      options.onOutcome?.(outcome);
    } catch (error) {
      baseLogger.error({ err: error }, "bounce onOutcome listener threw");
    }
    return outcome;
  }

  async function processBounce(messageId: string, raw: Buffer, source?: BounceSource): Promise<BounceOutcome> {
    const logger = source === undefined ? baseLogger : baseLogger.child({ remote: source.remoteAddress, helo: source.helo, tls: source.tls });
    const parsed = await parseDsn(raw);
    if (!parsed.ok) {
      logger.warn({ message_id: messageId, reason: parsed.reason, bytes: raw.length }, "bounce is not an RFC 3464 DSN; not applied");
      return finish({ kind: "not_dsn", messageId, reason: parsed.reason });
    }
    const { dsn } = parsed;
    // Before the record is known: whatever could be a code is kept out of the log.
    const unmatchedMta = (): string => redactor.redact(dsn.reportingMta);
    // The VERP address names the message; an ENVID, when present, must agree.
    if (dsn.envelopeId !== "" && dsn.envelopeId.toLowerCase() !== messageId) {
      logger.warn(
        { message_id: messageId, envelope_id: redactor.redact(maskAddressesIn(dsn.envelopeId.slice(0, 64))), reporting_mta: unmatchedMta() },
        "bounce's Original-Envelope-Id does not match its VERP address; not applied",
      );
      return finish({ kind: "unmatched", messageId, reason: "envelope_id_mismatch" });
    }
    const record = await store.getRecord(messageId);
    if (record === undefined) {
      logger.warn({ message_id: messageId, reporting_mta: unmatchedMta() }, "bounce for an unknown message; not applied");
      return finish({ kind: "unmatched", messageId, reason: "unknown_message" });
    }
    if (record.state === "QUEUED" || record.state === "SUPPRESSED") {
      logger.warn({ message_id: messageId, state: record.state }, "bounce for a message that was never sent; not applied");
      return finish({ kind: "unmatched", messageId, reason: "not_sent" });
    }

    // One recipient per message: the most severe block speaks for it.
    const block = [...dsn.recipients].sort((a, b) => severity[b.action] - severity[a.action])[0];
    if (block === undefined) return finish({ kind: "not_dsn", messageId, reason: "no recipient block" });
    const redact = (text: string): string => redactor.redact(text, record);
    const said: Omit<DeliveryReport, "receivedAt" | "identity"> = {
      action: block.action,
      status: block.status,
      diagnosticCode: redact(block.diagnosticCode),
      remoteMta: redact(block.remoteMta),
      reportingMta: redact(dsn.reportingMta),
      finalRecipient: block.finalRecipient,
      envelopeId: dsn.envelopeId,
    };
    const report: DeliveryReport = { receivedAt: clock.now(), ...said, identity: reportIdentity(said, [dsn.arrivalDate, block.lastAttemptDate]) };
    const earlier = await store.getDeliveryReports(messageId);
    const previousState = withReports(record, earlier).state;

    let suppressed = false;
    // Which secret the record's recipient hash was made under, when it is not the current one.
    const { previousSecret } = options;
    const previousUntil =
      previousSecret !== undefined && record.createdAt < previousSecret.rotatedAt ? previousSecret.suppressionUntil : undefined;
    // A copy never touches the suppression (it would undo a lift by support, or push back the end of
    // a newer bounce's), so the suppression is written before the report: see storeReport.
    if (!isCopy(report, earlier) && suppresses(report)) {
      if (record.recipientHash === undefined) {
        logger.warn({ message_id: messageId }, "hard bounce for a record without a recipient hash; recipient not suppressed");
      } else {
        await suppression.suppress(record.recipientHash, {
          messageId,
          caller: record.caller,
          status: reportStatus(report),
          diagnosticCode: report.diagnosticCode,
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
        message_id: messageId,
        action: report.action,
        status: reportStatus(report),
        ...(fresh ? {} : { duplicate: true }),
        previous_state: previousState,
        state: updated.state,
        suppressed,
        ...(suppressed && previousUntil !== undefined
          ? { recipient_hash_before_rotation: true, suppression_consulted_until: new Date(previousUntil).toISOString() }
          : {}),
        reporting_mta: report.reportingMta,
        // The send's trace (the record's), to go from this line to the SMTP conversation it reports on.
        ...(record.traceId === "" ? {} : { send_trace_id: record.traceId }),
      },
      "bounce applied",
    );
    // A copy is no news about the message: no span says it changed.
    if (fresh) {
      try {
        options.onBounceApplied?.(updated, record.traceId, previousState);
      } catch (error) {
        logger.error({ err: error, message_id: messageId }, "onBounceApplied listener threw");
      }
    }
    return finish({ kind: "applied", messageId, report, previousState, state: updated.state, suppressed, duplicate: !fresh });
  }

  return { process: processBounce, counts: () => ({ ...counts }) };
}

/**
 * Stores a report unless it is a copy of one already kept, or would push the
 * deciding report out of a full list (then it is logged instead). Resolves
 * whether the report is new. Shared with the feedback processor.
 *
 * The processors call this only after a report's suppression was written:
 * once stored, every later delivery of the report is a copy, and a copy
 * never suppresses. Should the suppression fail (Redis, or the Cluster node
 * holding it, down), or the report's own write, or this process stop in
 * between, the report is not stored, the intake answers 4xx (or nothing),
 * and the sender's retry is a new report: it suppresses, and a suppression
 * the first try did write keeps its start, end and cause (the same cause:
 * see OtpStore.putSuppression).
 */
export async function storeReport(
  store: Pick<OtpStore, "addDeliveryReport">,
  messageId: string,
  report: DeliveryReport,
  earlier: readonly DeliveryReport[],
  ttlMs: number,
  logger: Logger,
): Promise<boolean> {
  if (isCopy(report, earlier)) return false;
  // A full list drops its oldest report: never the one that decides (a final DSN before a flood of delay notices).
  if (appendDropsDecidingReport(earlier, report, maxDeliveryReports)) {
    logger.info({ message_id: messageId, action: report.action, kept: earlier.length }, "report not stored: the message's report list is full and it would push out the deciding one");
    return true;
  }
  // Atomic: of two copies read as new at once (two instances), the store appends one.
  return store.addDeliveryReport(messageId, report, ttlMs);
}
