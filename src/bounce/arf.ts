/**
 * RFC 5965 feedback reports (ARF): what a mailbox provider's feedback loop
 * (Yahoo's CFL, Microsoft's JMRP, most ISPs' FBLs) sends when a recipient
 * marks a message as spam. A `multipart/report; report-type=feedback-report`
 * with a `message/feedback-report` part and the original message
 * (`message/rfc822`) or its headers (`text/rfc822-headers`).
 *
 * The original holds the OTP code in clear (the Subject, and the body): of
 * it only Return-Path and Message-ID are read, to tie the report to its
 * message, and nothing of it ever leaves this module. Of the report, only
 * bounded, single-line fields leave, the recipient masked.
 */
import { maskAddress, maskAddressesIn } from "../otp/address.js";

/**
 * Feedback types applied to a message (RFC 5965 section 7.3; `not-spam`
 * from RFC 6650). An unregistered type reads as `other`; `auth-failure`
 * (RFC 6591) is an authentication failure report, not the recipient's word,
 * and is not applied.
 */
export const feedbackTypes = ["abuse", "fraud", "virus", "other", "not-spam"] as const;
export type FeedbackType = (typeof feedbackTypes)[number];

/** Feedback types that say the recipient did not want the message: they suppress the recipient. */
export const suppressingFeedbackTypes: ReadonlySet<FeedbackType> = new Set(["abuse", "fraud"]);

export interface ParsedFeedbackReport {
  readonly feedbackType: FeedbackType;
  /** User-Agent as given (`Yahoo!-Mail-Feedback/2.0`), bounded; "" when absent. */
  readonly userAgent: string;
  /** Arrival-Date (or the older Received-Date) as given, bounded; "" when absent. */
  readonly arrivalDate: string;
  /** Reporting-MTA as given (`dns; fbl.example.net`), or "". */
  readonly reportingMta: string;
  /** Original-Rcpt-To, masked (`rfc822; j***@yahoo.com`), or "" when absent. */
  readonly originalRcptTo: string;
  /**
   * The addresses that may name our message: Original-Mail-From and the
   * original's Return-Path (each an envelope sender), and the original's
   * Message-ID. Used to correlate, never stored.
   */
  readonly candidates: {
    readonly originalMailFrom: string;
    readonly returnPath: string;
    readonly messageId: string;
  };
}

export type FeedbackParseResult =
  | { readonly ok: true; readonly report: ParsedFeedbackReport }
  /** Why the message is not a usable feedback report; safe to log (never a part of the original). */
  | { readonly ok: false; readonly reason: string };

/** Characters of the feedback-report part read; real ones are well under 2 KB. */
const maxReportLength = 16 * 1024;
/** Parts of a report looked at; a real one has three. */
const maxParts = 10;
/** Bytes of the original's header section read. */
const maxHeaderBytes = 64 * 1024;
const maxFieldLength = 200;

/**
 * True when a raw message's top-level Content-Type is a feedback report: a
 * cheap look at its header section, so the intake can route a report that
 * came to a VERP address without parsing it twice.
 */
export function looksLikeFeedbackReport(raw: Buffer): boolean {
  const head = headerSection(raw.subarray(0, maxHeaderBytes).toString("latin1"));
  const type = unfoldedField(head, "content-type").toLowerCase();
  return /^multipart\/report\s*;/.test(type) && /;\s*report-type\s*=\s*"?feedback-report"?\s*(;|$)/.test(type);
}

/**
 * Reads a feedback report. Never throws: anything else is `{ ok: false }`.
 *
 * The report's own parts are split here rather than by a general MIME
 * parser: mailparser merges an inline `message/rfc822` part (as Yahoo and
 * the RFC's example send it) into the report's own text, headers lost.
 */
export function feedbackReportFrom(raw: Buffer): FeedbackParseResult {
  const text = raw.toString("latin1");
  const type = unfoldedField(headerSection(text), "content-type");
  if (!looksLikeFeedbackReport(raw)) {
    return { ok: false, reason: `not a feedback report (Content-Type: ${limit(type).slice(0, 100) || "none"})` };
  }
  const parts = partsOf(bodyOf(text), /;\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))/i.exec(type));
  const report = parts.find((part) => part.type === "message/feedback-report");
  if (report === undefined) return { ok: false, reason: "no message/feedback-report part" };
  const fields = fieldsOf(report.body.slice(0, maxReportLength));
  const given = (fields.get("feedback-type") ?? "").toLowerCase();
  if (given === "") return { ok: false, reason: "feedback report without Feedback-Type" };
  if (given === "auth-failure") return { ok: false, reason: "an authentication failure report (RFC 6591), not a complaint" };
  const feedbackType: FeedbackType = (feedbackTypes as readonly string[]).includes(given) ? (given as FeedbackType) : "other";
  // The original (or its headers): only two fields of its header section are read.
  const original = parts.find((part) => part.type === "message/rfc822" || part.type === "text/rfc822-headers");
  const head = original === undefined ? "" : headerSection(original.body.slice(0, maxHeaderBytes));
  const rcpt = addressOf(fields.get("original-rcpt-to") ?? "");
  return {
    ok: true,
    report: {
      feedbackType,
      // Free texts, like Reporting-MTA: an address in them is masked too.
      userAgent: limit(maskAddressesIn(fields.get("user-agent") ?? "", rcpt)),
      arrivalDate: limit(maskAddressesIn(fields.get("arrival-date") ?? fields.get("received-date") ?? "", rcpt)),
      reportingMta: limit(maskAddressesIn(fields.get("reporting-mta") ?? "", rcpt)),
      originalRcptTo: rcpt === "" ? "" : `rfc822; ${maskAddress(rcpt)}`,
      candidates: {
        originalMailFrom: addressOf(fields.get("original-mail-from") ?? ""),
        returnPath: addressOf(unfoldedField(head, "return-path")),
        messageId: unfoldedField(head, "message-id").replace(/^<|>$/g, "").trim(),
      },
    },
  };
}

interface Part {
  /** Media type, lower-cased (`message/rfc822`). */
  readonly type: string;
  /** Its body, transfer encoding undone, as latin1 text. */
  readonly body: string;
}

/** The parts of a multipart body, given the top-level Content-Type's boundary match. */
function partsOf(body: string, boundaryMatch: RegExpExecArray | null): Part[] {
  const boundary = boundaryMatch?.[1] ?? boundaryMatch?.[2];
  if (boundary === undefined || boundary === "") return [];
  const delimiter = `--${boundary}`;
  const parts: Part[] = [];
  const chunks = body.split(/\r?\n/);
  let current: string[] | undefined;
  const finish = (): void => {
    if (current === undefined || parts.length >= maxParts) return;
    const text = current.join("\r\n");
    const head = headerSection(text);
    const type = (unfoldedField(head, "content-type").split(";")[0] ?? "").trim().toLowerCase() || "text/plain";
    const encoding = unfoldedField(head, "content-transfer-encoding").trim().toLowerCase();
    parts.push({ type, body: decode(bodyOf(text), encoding) });
  };
  for (const line of chunks) {
    if (line.startsWith(delimiter)) {
      const rest = line.slice(delimiter.length);
      if (rest.trim() === "" || rest.startsWith("--")) {
        finish();
        current = rest.startsWith("--") ? undefined : [];
        if (rest.startsWith("--")) break;
        continue;
      }
    }
    current?.push(line);
  }
  return parts;
}

/** A part's body with its Content-Transfer-Encoding undone (base64, quoted-printable; others as they are). */
function decode(body: string, encoding: string): string {
  if (encoding === "base64") return Buffer.from(body.replace(/[^A-Za-z0-9+/=]/g, ""), "base64").toString("latin1");
  if (encoding === "quoted-printable") {
    return body.replace(/=\r?\n/g, "").replace(/=([0-9A-Fa-f]{2})/g, (_all, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  }
  return body;
}

/** What follows a message's (or part's) header section; "" when it has none. */
function bodyOf(text: string): string {
  const end = /\r?\n\r?\n/.exec(text);
  return end === null ? "" : text.slice(end.index + end[0].length);
}

/** `Name: value` fields of a report part, names lower-cased, continuation lines folded in; the first occurrence wins. */
function fieldsOf(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  let last: string | undefined;
  for (const line of text.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && last !== undefined) {
      fields.set(last, `${fields.get(last) ?? ""} ${line.trim()}`.slice(0, 1000));
      continue;
    }
    const match = /^([A-Za-z0-9-]{1,64})\s*:(.*)$/.exec(line);
    last = undefined;
    if (match === null) continue;
    const name = (match[1] ?? "").toLowerCase();
    if (fields.has(name)) continue;
    fields.set(name, (match[2] ?? "").trim().slice(0, 1000));
    last = name;
  }
  return fields;
}

/** The header section of a message: everything before the first empty line. */
function headerSection(text: string): string {
  const end = /\r?\n\r?\n/.exec(text);
  return end === null ? text : text.slice(0, end.index);
}

/** The first field `name` of a header section, unfolded; "" when absent. */
function unfoldedField(head: string, name: string): string {
  return fieldsOf(head).get(name) ?? "";
}

/** `<jane@x.test>` or `rfc822; jane@x.test` -> `jane@x.test`; "" when there is no single plain address. */
function addressOf(field: string): string {
  const value = field.includes(";") ? field.slice(field.indexOf(";") + 1) : field;
  const address = value.trim().replace(/^<|>$/g, "").trim();
  return /^[^\s@<>]+@[^\s@<>]+$/.test(address) ? address : "";
}

/** Single line, printable, bounded. */
function limit(value: string): string {
  return value
    .replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\s]+/gu, " ")
    .trim()
    .slice(0, maxFieldLength);
}
