/**
 * RFC 3464 delivery status notifications: finds the `message/delivery-status`
 * part of a bounce (mailparser with `keepDeliveryStatus`) and reads its
 * per-message and per-recipient fields. Anything else (an auto-reply, a
 * provider's home-made bounce text, garbage) is "not a DSN": bounces are
 * only ever applied on evidence that follows the standard.
 *
 * Input is hostile by default: sizes, field counts and lengths are bounded,
 * control characters dropped, and addresses masked before anything leaves.
 */
import { simpleParser } from "mailparser";
import { maskAddress, maskAddressesIn } from "../otp/address.js";
import { dsnActions, type DsnAction } from "../delivery/record.js";

/** One per-recipient block. Addresses are masked; texts are single-line and bounded. */
export interface DsnRecipient {
  readonly action: DsnAction;
  /** Status as given (`5.1.1`), or "" when missing or malformed. */
  readonly status: string;
  readonly diagnosticCode: string;
  readonly remoteMta: string;
  /** `rfc822; j***@gmail.com`. */
  readonly finalRecipient: string;
  /** Last-Attempt-Date as given, or "": with Arrival-Date, tells a later notice from a copy of one. */
  readonly lastAttemptDate: string;
}

export interface ParsedDsn {
  /** Original-Envelope-Id, xtext-decoded; "" when absent. */
  readonly envelopeId: string;
  readonly reportingMta: string;
  /** Arrival-Date as given (when the reporting MTA received the message), or "". */
  readonly arrivalDate: string;
  /** At least one. */
  readonly recipients: readonly DsnRecipient[];
}

export type DsnParseResult =
  | { readonly ok: true; readonly dsn: ParsedDsn }
  /** Why the message is not an RFC 3464 DSN we can use; safe to log. */
  | { readonly ok: false; readonly reason: string };

/** Bytes of a delivery-status part that are read; real ones are well under 4 KB. */
const maxStatusBytes = 64 * 1024;
/** Per-recipient blocks read; a DSN about one message has one or two. */
const maxRecipientBlocks = 50;
/** Characters kept of one field value. */
const maxFieldLength = 1000;

const deliveryStatusTypes = new Set(["message/delivery-status", "message/global-delivery-status"]);

/** Parses a bounce. Never throws: malformed input is `{ ok: false }`. */
export async function parseDsn(raw: Buffer): Promise<DsnParseResult> {
  let parsed;
  try {
    parsed = await simpleParser(raw, { keepDeliveryStatus: true, skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true });
  } catch (error) {
    return { ok: false, reason: `unparseable MIME (${error instanceof Error ? error.message.slice(0, 200) : "unknown error"})` };
  }
  const part = parsed.attachments.find((attachment) => deliveryStatusTypes.has(attachment.contentType.toLowerCase()));
  if (part === undefined) {
    const type = parsed.headers.get("content-type");
    const shown = typeof type === "object" && type !== null && "value" in type && typeof type.value === "string" ? type.value : "none";
    return { ok: false, reason: `no message/delivery-status part (Content-Type: ${clean(shown).slice(0, 100)})` };
  }
  return parseDeliveryStatus(part.content.subarray(0, maxStatusBytes).toString("utf8"));
}

/**
 * Parses the body of a `message/delivery-status` part: a group of
 * per-message fields, then one group per recipient, separated by blank lines.
 */
export function parseDeliveryStatus(text: string): DsnParseResult {
  const groups = splitGroups(text);
  const perMessage = groups.shift();
  if (perMessage === undefined) return { ok: false, reason: "empty delivery-status part" };

  const recipients: DsnRecipient[] = [];
  /** Every recipient address the blocks name: the per-message fields may echo them too. */
  const named: string[] = [];
  let skipped = 0;
  for (const fields of groups.slice(0, maxRecipientBlocks)) {
    const action = (fields.get("action") ?? "").toLowerCase().split(/[\s(]/)[0] ?? "";
    if (!isAction(action)) {
      skipped++;
      continue;
    }
    const final = fields.get("final-recipient") ?? fields.get("original-recipient") ?? "";
    const address = addressOf(final);
    // After an alias or forward the two differ, and the texts may quote either.
    const original = addressOf(fields.get("original-recipient") ?? "");
    const mask = (text: string): string => maskAddressesIn(maskAddressesIn(text, address), original);
    named.push(address, original);
    recipients.push({
      action,
      status: /^[245]\.\d{1,3}\.\d{1,3}/.exec(fields.get("status") ?? "")?.[0] ?? "",
      diagnosticCode: mask(fields.get("diagnostic-code") ?? ""),
      remoteMta: mask(fields.get("remote-mta") ?? ""),
      finalRecipient: address === "" ? "" : `${typeOf(final)}; ${maskAddress(address)}`,
      lastAttemptDate: fields.get("last-attempt-date") ?? "",
    });
  }
  if (recipients.length === 0) {
    return {
      ok: false,
      reason:
        groups.length === 0
          ? "delivery-status part has no per-recipient fields"
          : `no per-recipient block has a valid Action (${skipped} block(s) skipped)`,
    };
  }
  return {
    ok: true,
    dsn: {
      envelopeId: decodeXtext(perMessage.get("original-envelope-id") ?? ""),
      // As free a text as the others: an address in it is masked too.
      reportingMta: named.reduce((text, address) => maskAddressesIn(text, address), perMessage.get("reporting-mta") ?? ""),
      arrivalDate: perMessage.get("arrival-date") ?? "",
      recipients,
    },
  };
}

/** Groups of `Name: value` fields; continuation lines fold into the field above. Names lower-cased. */
function splitGroups(text: string): Map<string, string>[] {
  const groups: Map<string, string>[] = [];
  let current: Map<string, string> | undefined;
  let last: string | undefined;
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "") {
      current = undefined;
      last = undefined;
      continue;
    }
    if (/^[ \t]/.test(line) && current !== undefined && last !== undefined) {
      current.set(last, limit(`${current.get(last) ?? ""} ${line.trim()}`));
      continue;
    }
    const match = /^([A-Za-z0-9-]{1,64})\s*:(.*)$/.exec(line);
    if (match === null) continue;
    if (current === undefined) {
      current = new Map();
      groups.push(current);
    }
    last = (match[1] ?? "").toLowerCase();
    // The first occurrence wins: a repeated field is malformed, not an override.
    if (!current.has(last)) current.set(last, limit((match[2] ?? "").trim()));
    else last = undefined;
  }
  return groups;
}

function isAction(value: string): value is DsnAction {
  return (dsnActions as readonly string[]).includes(value);
}

/** `rfc822; jane@x.test` -> `jane@x.test`; "" when there is no address. */
function addressOf(field: string): string {
  const value = field.includes(";") ? field.slice(field.indexOf(";") + 1) : field;
  const address = value.trim().replace(/^<|>$/g, "");
  return /^[^\s@]+@[^\s@]+$/.test(address) ? address : "";
}

function typeOf(field: string): string {
  const type = field.includes(";") ? field.slice(0, field.indexOf(";")).trim().toLowerCase() : "";
  return /^[a-z0-9-]{1,20}$/.test(type) ? type : "rfc822";
}

/** RFC 3461 xtext: `+XX` is the byte 0xXX. */
function decodeXtext(value: string): string {
  return value.replace(/\+([0-9A-Fa-f]{2})/g, (_all, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** Single line, printable, bounded. */
function clean(value: string): string {
  return value.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+/gu, " ").trim();
}

function limit(value: string): string {
  return clean(value).slice(0, maxFieldLength);
}
