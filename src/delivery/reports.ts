/**
 * What delivery status notifications (DSNs) say about a message. The sender
 * writes the record; the bounce intake appends reports beside it; a status
 * query joins the two here. Neither writer can overwrite the other's truth,
 * whichever instance runs it and in whatever order the writes land.
 */
import { createHash } from "node:crypto";
import { feedbackActions, type DeliveryRecord, type DeliveryReport, type DeliveryState } from "./record.js";

/** How an RFC 3463 status reads for a sender. */
export type StatusClass =
  /** The mailbox or its domain does not exist: retrying is pointless; the recipient is suppressed. */
  | "no_such_mailbox"
  /** Security or policy (5.7.x): SPF, DKIM, DMARC, reputation. About the sender, not the recipient. */
  | "policy"
  /** Any other permanent failure (full mailbox, message too big...). */
  | "permanent"
  /** 4.x.x: the relay keeps trying. */
  | "transient"
  /** 2.x.x. */
  | "success"
  /** No usable status. */
  | "unknown";

/**
 * Statuses that say the address itself is wrong, so a new code could never
 * arrive: bad mailbox (5.1.1), bad domain (5.1.2), bad syntax (5.1.3),
 * moved without forwarding (5.1.6), domain accepts no mail / null MX (5.1.10).
 */
const noSuchMailbox: ReadonlySet<string> = new Set(["5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"]);

const statusPattern = /\b([245])\.(\d{1,3})\.(\d{1,3})\b/;

/**
 * The most specific status a report carries: its Status field, unless that
 * is a generic `x.0.0` and the Diagnostic-Code names a specific one of the
 * same class (`Status: 5.0.0`, `smtp; 550 5.1.1 User unknown`).
 */
export function reportStatus(report: Pick<DeliveryReport, "status" | "diagnosticCode">): string {
  const own = statusPattern.exec(report.status)?.[0] ?? "";
  const fromDiagnostic = statusPattern.exec(report.diagnosticCode)?.[0] ?? "";
  if (own === "") return fromDiagnostic;
  if (/\.0\.0$/.test(own) && fromDiagnostic !== "" && fromDiagnostic[0] === own[0]) return fromDiagnostic;
  return own;
}

export function classifyStatus(status: string): StatusClass {
  const match = statusPattern.exec(status);
  if (match === null) return "unknown";
  const [, klass, subject] = match;
  if (klass === "2") return "success";
  if (klass === "4") return "transient";
  if (noSuchMailbox.has(match[0])) return "no_such_mailbox";
  if (subject === "7") return "policy";
  return "permanent";
}

/** True when a report is a hard bounce that should suppress the recipient. */
export function suppresses(report: DeliveryReport): boolean {
  return report.action === "failed" && classifyStatus(reportStatus(report)) === "no_such_mailbox";
}

const finalActions: ReadonlySet<DeliveryReport["action"]> = new Set(["failed", "delivered", "relayed", "expanded"]);

/**
 * The state the reports establish, or undefined when there are none. The
 * latest final DSN (failed, delivered, relayed, expanded) wins, so a
 * message may go DELIVERED -> BOUNCED as the world does; a delay notice
 * never overrides a final one, since it may arrive late. Without a final
 * DSN, a feedback report (a spam complaint, or not-spam) makes it
 * DELIVERED: the recipient saw the message in their mailbox. It never
 * overrides a final DSN (a complaint about a bounced message contradicts
 * the relay; the DSN keeps its word and the complaint stays on the record).
 */
export function stateFromReports(reports: readonly DeliveryReport[]): DeliveryState | undefined {
  const final = reports.findLast((report) => finalActions.has(report.action));
  if (final !== undefined) return final.action === "failed" ? "BOUNCED" : "DELIVERED";
  if (reports.some((report) => feedbackActions.has(report.action))) return "DELIVERED";
  return reports.length > 0 ? "DELAYED" : undefined;
}

/** The report that decided the state (the one an explanation quotes). */
export function decisiveReport(reports: readonly DeliveryReport[]): DeliveryReport | undefined {
  return (
    reports.findLast((report) => finalActions.has(report.action)) ??
    reports.findLast((report) => feedbackActions.has(report.action)) ??
    reports.at(-1)
  );
}

/**
 * The record as the reports leave it: their state (a DSN is evidence the
 * relay accepted the message, whatever the sender managed to write), the
 * reports attached, and the time of the latest one. A SUPPRESSED record was
 * never sent: reports cannot apply to it.
 */
export function withReports(record: DeliveryRecord, reports: readonly DeliveryReport[]): DeliveryRecord {
  if (reports.length === 0 || record.state === "SUPPRESSED") return record;
  const state = stateFromReports(reports) ?? record.state;
  const latest = Math.max(record.updatedAt, ...reports.map((report) => report.receivedAt));
  return { ...record, state, reports: [...reports], updatedAt: latest };
}

/**
 * True when appending `report` to a full list (`max` kept, the oldest
 * dropped) would drop the evidence that decides the state: a final DSN
 * pushed out by later delay notices or feedback reports would let them
 * override it. Such a report changes nothing the kept ones do not say, and
 * is not stored.
 */
export function appendDropsDecidingReport(earlier: readonly DeliveryReport[], report: DeliveryReport, max: number): boolean {
  const all = [...earlier, report];
  if (all.length <= max) return false;
  return stateFromReports(all.slice(-max)) !== stateFromReports(all);
}

/**
 * The identity of a report, for telling a copy (relays resend DSNs when
 * they did not see our 250; the intake may be handed one report twice) from
 * a new report: a hash of everything the report says but when it arrived,
 * and of the dates its sender gave (`dates`: a DSN's Arrival-Date and
 * Last-Attempt-Date), so that a later notice in the same words (a second
 * delay notice) is a report of its own. Not the DSN's Message-ID: it is
 * optional, and a relay that writes the notice again gives it a new one.
 * Made from the texts as stored (codes already redacted): a hash of a text
 * quoting a code would give the code away to anyone who tried them all.
 */
export function reportIdentity(report: Omit<DeliveryReport, "receivedAt" | "identity">, dates: readonly string[] = []): string {
  const said = [
    report.action,
    report.status,
    report.diagnosticCode,
    report.remoteMta,
    report.reportingMta,
    report.finalRecipient,
    report.envelopeId,
    report.feedbackType ?? "",
    report.userAgent ?? "",
    report.arrivalDate ?? "",
    ...dates,
  ];
  return createHash("sha256").update(JSON.stringify(said)).digest("hex").slice(0, 32);
}

/** Whether `report` is a copy of one of `kept`: a report with its identity is already stored. */
export function isCopy(report: DeliveryReport, kept: readonly DeliveryReport[]): boolean {
  return report.identity !== undefined && kept.some((earlier) => earlier.identity === report.identity);
}
