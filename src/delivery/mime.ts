/**
 * The MIME message of an OTP email, built in one pass into one Buffer.
 *
 * nodemailer can build it from fields, but through a tree of streams per
 * message (an AbortController per pipeline, random bytes per boundary,
 * header normalisation) whose chunks then reach the TLS socket one by one:
 * about 0.3 ms of CPU per message on this project's bench machine, more than
 * half of what the pooled SMTP send costs. An OTP email always has the same
 * shape (multipart/alternative: text and HTML, a handful of headers), so it
 * is written here directly, with nodemailer's own encoders for encoded-words,
 * folding, quoted-printable and base64, and handed to nodemailer as `raw`
 * (nodemailer still dot-stuffs it on the wire and DKIM-signs it).
 *
 * Only plain ASCII addresses take this path; anything else (a non-ASCII
 * display name or address) returns undefined and nodemailer builds the
 * message from fields, as before.
 */
import { encode as base64Encode, wrap as base64Wrap } from "nodemailer/lib/base64";
import { encodeWords, foldLines } from "nodemailer/lib/mime-funcs";
import { encode as qpEncode, wrap as qpWrap } from "nodemailer/lib/qp";
import type { OutgoingMail } from "./smtp-transport-types.js";

// Printable ASCII and space: what a header may carry without encoding.
const plainHeader = /^[\x20-\x7e]*$/;
const nonAscii = /[\u0080-\uffff]/g;
const headerName = /^[\x21-\x39\x3b-\x7e]+$/;

/** The message, or undefined when it needs what only nodemailer's full builder does. */
export function composeOtpMime(mail: OutgoingMail, date: Date, boundaryId: string): Buffer | undefined {
  if (!plainHeader.test(mail.from) || !plainHeader.test(mail.to) || !plainHeader.test(mail.messageId)) return undefined;
  const extra: string[] = [];
  for (const [name, value] of Object.entries(mail.headers)) {
    if (!headerName.test(name) || !plainHeader.test(value)) return undefined;
    extra.push(foldLines(`${name}: ${value}`, 76));
  }
  const boundary = `--_OtpEmail-${boundaryId}`;
  const head = [
    `Content-Type: multipart/alternative;\r\n boundary="${boundary}"`,
    foldLines(`From: ${lowerDomain(mail.from)}`, 76),
    foldLines(`To: ${lowerDomain(mail.to)}`, 76),
    foldLines(`Subject: ${encodeHeaderText(mail.subject)}`, 76),
    `Message-ID: ${mail.messageId}`,
    ...extra,
    `Date: ${date.toUTCString().replace(/GMT/, "+0000")}`,
    "MIME-Version: 1.0",
  ];
  const parts = [
    head.join("\r\n"),
    "",
    `--${boundary}`,
    bodyPart("text/plain", mail.text),
    `--${boundary}`,
    bodyPart("text/html", mail.html),
    `--${boundary}--`,
    "",
  ];
  return Buffer.from(parts.join("\r\n"), "utf8");
}

/** `"Name" <a@Example.COM>` -> `"Name" <a@example.com>`, as nodemailer writes addresses (domains are case-blind). */
function lowerDomain(address: string): string {
  const at = address.lastIndexOf("@");
  return at === -1 ? address : address.slice(0, at) + address.slice(at).toLowerCase();
}

/** Whether a CRLF text has a line longer than 76 characters (a loop: a regex for it backtracks at every position). */
function hasLongLine(text: string): boolean {
  let start = 0;
  for (;;) {
    const end = text.indexOf("\r\n", start);
    if ((end === -1 ? text.length : end) - start > 76) return true;
    if (end === -1) return false;
    start = end + 2;
  }
}

/** Header text: as is when plain ASCII, else encoded-words (Q or B, whichever is shorter for this text). */
function encodeHeaderText(value: string): string {
  const clean = value.replace(/[\r\n]+/g, " ");
  if (plainHeader.test(clean)) return clean;
  return encodeWords(clean, mostlyAscii(clean) ? "Q" : "B", 52);
}

/** One body part: 7bit when plain ASCII with short lines, else quoted-printable or base64. */
function bodyPart(type: string, content: string): string {
  const text = content.replace(/\r?\n/g, "\r\n");
  let encoding: string;
  let body: string;
  const sevenBit = !/[\u0080-\uffff]/.test(text) && !text.includes("\0") && !/\r(?!\n)|(?<!\r)\n/.test(text);
  if (sevenBit && !hasLongLine(text)) {
    encoding = "7bit";
    body = text;
  } else if (mostlyAscii(text)) {
    encoding = "quoted-printable";
    body = qpWrap(qpEncode(text), 76);
  } else {
    encoding = "base64";
    body = base64Wrap(base64Encode(Buffer.from(text, "utf8")), 76);
  }
  return `Content-Type: ${type}; charset=utf-8\r\nContent-Transfer-Encoding: ${encoding}\r\n\r\n${body}`;
}

/** Fewer than half the characters outside ASCII: quoted-printable stays shorter than base64. */
function mostlyAscii(text: string): boolean {
  return (text.match(nonAscii)?.length ?? 0) * 2 < text.length;
}
