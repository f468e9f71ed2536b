/**
 * The MIME message of an OTP email, built in one pass into one Buffer.
 *
 * nodemailer can build it from fields, but through a tree of streams per
 * message (an AbortController per pipeline, random bytes per boundary,
 * header normalisation) whose chunks then reach the TLS socket one by one:
 * about 0.3 ms of CPU per message on this project's bench machine, more than
 * half of what the pooled SMTP send costs. An OTP email always has the same
 * shape (multipart/alternative: text and HTML, a handful of headers), so it
 * is written here directly and handed to nodemailer's pool (which still
 * dot-stuffs it on the wire; dkim-sign.ts signs it). Headers use
 * nodemailer's own encoders (encoded-words, folding); the bodies are encoded
 * here, byte by byte straight into Buffers (7bit, quoted-printable or
 * base64): nodemailer's string encoders (`qp.wrap` with a regex per line)
 * were the largest allocator of a send.
 *
 * Only plain ASCII addresses take this path (a From display name that is
 * not ASCII is written as an encoded-word, as nodemailer writes it); anything
 * else (an address that is not ASCII) returns undefined and nodemailer builds
 * the message from fields, as before.
 */
import { encodeWord, encodeWords, foldLines } from "nodemailer/lib/mime-funcs";
import type { OutgoingMail } from "./smtp-transport-types.js";

// Printable ASCII and space: what a header may carry without encoding.
const plainHeader = /^[\x20-\x7e]*$/;
const nonAscii = /[\u0080-\uffff]/g;
const headerName = /^[\x21-\x39\x3b-\x7e]+$/;

/** The longest line a body part writes, CRLF not counted (RFC 2045 for quoted-printable and base64). */
const maxLine = 76;

/** The message, or undefined when it needs what only nodemailer's full builder does. */
export function composeOtpMime(mail: OutgoingMail, date: Date, boundaryId: string): Buffer | undefined {
  const from = fromHeaderValue(mail.from);
  if (from === undefined || !plainHeader.test(mail.to) || !plainHeader.test(mail.messageId)) return undefined;
  let extra = "";
  for (const name of Object.keys(mail.headers)) {
    const value = mail.headers[name] ?? "";
    if (!headerName.test(name) || !plainHeader.test(value)) return undefined;
    extra += `${fold(`${name}: ${value}`)}\r\n`;
  }
  const boundary = `--_OtpEmail-${boundaryId}`;
  const head =
    `Content-Type: multipart/alternative;\r\n boundary="${boundary}"\r\n` +
    `${fold(`From: ${from}`)}\r\n` +
    `${fold(`To: ${lowerDomain(mail.to)}`)}\r\n` +
    `${fold(`Subject: ${encodeHeaderText(mail.subject)}`)}\r\n` +
    `Message-ID: ${mail.messageId}\r\n` +
    extra +
    `Date: ${date.toUTCString().replace("GMT", "+0000")}\r\n` +
    "MIME-Version: 1.0\r\n" +
    `\r\n--${boundary}\r\n`;
  const text = bodyPart("text/plain", mail.text);
  const html = bodyPart("text/html", mail.html);
  const between = `\r\n--${boundary}\r\n`;
  const end = `\r\n--${boundary}--\r\n`;
  // Every piece is ASCII: its length is its byte count (a body's bare LFs still to be written CRLF counted).
  const out = Buffer.allocUnsafe(
    head.length + text.head.length + bodyLength(text) + between.length + html.head.length + bodyLength(html) + end.length,
  );
  let at = out.write(head, 0, "latin1");
  at += out.write(text.head, at, "latin1");
  at += writeBody(out, at, text);
  at += out.write(between, at, "latin1");
  at += out.write(html.head, at, "latin1");
  at += writeBody(out, at, html);
  out.write(end, at, "latin1");
  return out;
}

function bodyLength(part: EncodedPart): number {
  return part.body.length + part.bareLf;
}

function writeBody(out: Buffer, at: number, part: EncodedPart): number {
  const { body } = part;
  if (typeof body !== "string") return body.copy(out, at);
  return part.bareLf === 0 ? out.write(body, at, "latin1") : writeWithCrlf(out, at, body, part.bareLf);
}

/**
 * Writes `text`, whose `bareLf` line breaks are LF alone, with every one
 * made CRLF, straight into `out`: the text goes in `bareLf` bytes to the
 * right of `at`, then each line moves left into place followed by CRLF
 * (the write position never passes the read position). Returns the bytes
 * written. The CRLF copy of the text that `replaceAll` made was the
 * largest allocation of a message.
 */
function writeWithCrlf(out: Buffer, at: number, text: string, bareLf: number): number {
  let from = at + bareLf;
  const end = from + out.write(text, from, "latin1");
  let to = at;
  for (;;) {
    const lf = out.indexOf(0x0a, from);
    if (lf === -1 || lf >= end) break;
    out.copyWithin(to, from, lf);
    to += lf - from;
    out[to++] = 0x0d;
    out[to++] = 0x0a;
    from = lf + 1;
  }
  out.copyWithin(to, from, end);
  return to + (end - from) - at;
}

/**
 * The From header's value: as is (domain lower-cased) when plain ASCII;
 * `"Display name" <address>` with a name that is not ASCII gets the name as
 * one encoded-word, as nodemailer's builder writes it (Q when latin letters
 * outnumber the rest, else B); undefined for anything else, an address that
 * is not ASCII above all.
 */
function fromHeaderValue(from: string): string | undefined {
  // A process sends from one MAIL_FROM: the encoded value is kept for the next message.
  if (from === lastFrom.from) return lastFrom.value;
  const value = encodeFrom(from);
  lastFrom = { from, value };
  return value;
}

let lastFrom: { readonly from: string; readonly value: string | undefined } = { from: "", value: "" };

function encodeFrom(from: string): string | undefined {
  if (plainHeader.test(from)) return lowerDomain(from);
  const named = /^"((?:[^"\\]|\\.)*)" <([\x21-\x7e]+)>$/.exec(from);
  if (named === null) return undefined;
  const name = (named[1] ?? "").replace(/\\(.)/g, "$1");
  // Control characters are formatFrom's to remove; one here means the name came from elsewhere.
  if (/[\p{Cc}]/u.test(name)) return undefined;
  return `${encodeWord(name, mostlyLatin(name) ? "Q" : "B", 52)} <${lowerDomain(named[2] ?? "")}>`;
}

/** nodemailer's choice of encoded-word encoding: Q when latin letters outnumber the characters outside ASCII. */
function mostlyLatin(text: string): boolean {
  const outside = text.match(nonAscii)?.length ?? 0;
  const latin = text.match(/[A-Za-z]/g)?.length ?? 0;
  return outside < latin;
}

/** A header line folded at 76 characters; most are shorter and need no work. */
function fold(line: string): string {
  return line.length <= 76 ? line : foldLines(line, 76);
}

/** `"Name" <a@Example.COM>` -> `"Name" <a@example.com>`, as nodemailer writes addresses (domains are case-blind). */
function lowerDomain(address: string): string {
  const at = address.lastIndexOf("@");
  return at === -1 ? address : address.slice(0, at) + address.slice(at).toLowerCase();
}

/** Header text: as is when plain ASCII, else encoded-words (Q or B, whichever is shorter for this text). */
function encodeHeaderText(value: string): string {
  const clean = value.replace(/[\r\n]+/g, " ");
  if (plainHeader.test(clean)) return clean;
  return encodeWords(clean, mostlyAscii(clean, false) ? "Q" : "B", 52);
}

/** One body part: its MIME headers (with the blank line after them) and its encoded body. */
export interface EncodedPart {
  readonly head: string;
  /** ASCII only: its length is its byte count, before its bare LFs are written CRLF. */
  readonly body: string | Buffer;
  /** How many line breaks of a string body are LF alone, each to be written CRLF (0 for a Buffer). */
  readonly bareLf: number;
}

/**
 * One body part, its line breaks made CRLF (a lone LF counts as a line
 * break, as `\r?\n` would): 7bit when plain ASCII without NUL, lone CR or a
 * line longer than 76 characters; else quoted-printable when fewer than half
 * the characters are outside ASCII; else base64.
 */
export function bodyPart(type: string, content: string): EncodedPart {
  // Native scans (regex, indexOf) rather than a loop over the characters:
  // a rendered text is a rope of template pieces, which charCodeAt walks slowly.
  const hasCr = content.includes("\r");
  let encoding: string;
  let body: string | Buffer;
  let bareLf = 0;
  const lines = nonAsciiOne.test(content) || content.includes("\0") || (hasCr && loneCr.test(content)) ? -1 : lineFeeds(content);
  if (lines !== -1) {
    encoding = "7bit";
    // Without CR every line break is a bare LF: written CRLF as the body goes into the message.
    if (hasCr) body = withCrlf(content, hasCr);
    else {
      body = content;
      bareLf = lines;
    }
  } else if (mostlyAscii(content, hasCr)) {
    encoding = "quoted-printable";
    body = quotedPrintable(Buffer.from(content, "utf8"));
  } else {
    encoding = "base64";
    body = base64Lines(Buffer.from(withCrlf(content, hasCr), "utf8"));
  }
  return { head: `Content-Type: ${type}; charset=utf-8\r\nContent-Transfer-Encoding: ${encoding}\r\n\r\n`, body, bareLf };
}

const nonAsciiOne = /[\u0080-\uffff]/;
const loneCr = /\r(?!\n)/;

/** The number of LFs in the text, or -1 when a line (ended by LF or CRLF) is longer than 76 characters, CR not counted. */
function lineFeeds(text: string): number {
  let start = 0;
  let count = 0;
  for (;;) {
    const lf = text.indexOf("\n", start);
    const end = lf === -1 ? text.length : text.charCodeAt(lf - 1) === 0x0d ? lf - 1 : lf;
    if (end - start > maxLine) return -1;
    if (lf === -1) return count;
    count++;
    start = lf + 1;
  }
}

/** Fewer than half the characters outside ASCII (line breaks counted as CRLF): quoted-printable stays shorter than base64. */
function mostlyAscii(text: string, hasCr: boolean): boolean {
  const outside = text.match(nonAscii)?.length ?? 0;
  if (outside === 0) return true;
  const lf = text.match(/\n/g)?.length ?? 0;
  const bareLf = hasCr ? (text.match(/(?<!\r)\n/g)?.length ?? 0) : lf;
  return outside * 2 < text.length + bareLf;
}

/** The text with every LF that has no CR before it preceded by one. */
function withCrlf(text: string, hasCr: boolean): string {
  return hasCr ? text.replace(/\r?\n/g, "\r\n") : text.replaceAll("\n", "\r\n");
}

const hex = Buffer.from("0123456789ABCDEF", "latin1");

/** 0 for a byte quoted-printable writes as is wherever it stands (printable ASCII but `=`), else 1. */
const qpSpecial = new Uint8Array(256).map((_zero, b) => (b >= 0x21 && b <= 0x7e && b !== 0x3d ? 0 : 1));

/**
 * Quoted-printable (RFC 2045 6.7) of UTF-8 bytes, lines of at most 76
 * characters. CRLF and a lone LF are line breaks, written CRLF; a lone CR is
 * data (`=0D`). Printable ASCII but `=` is literal; space and tab too, except
 * before a line break or at the end, where a decoder may strip them. A soft
 * break (`=` CRLF) goes after the last space of the line when one is near its
 * end, else where the line is full; never inside an `=XX`.
 */
export function quotedPrintable(bytes: Buffer): Buffer {
  const len = bytes.length;
  // Sized for what this text needs, not for the worst case: each escape
  // writes 2 more bytes (every space, tab and line break counted: a few too
  // many), and a soft-broken line keeps at least 39 of them (more than 63
  // before a UTF-8 character of 12 escaped bytes, less at most 24 moved to
  // the next line after a space).
  let escapes = 0;
  for (let i = 0; i < len; i++) escapes += qpSpecial[bytes[i] ?? 0] ?? 1;
  const encoded = len + 2 * escapes;
  const out = Buffer.allocUnsafe(encoded + Math.ceil(encoded / 39) * 3 + 3);
  let o = 0;
  // Where the current line starts in `out`, and where after its last literal space (-1: none).
  let lineStart = 0;
  let afterSpace = -1;
  for (let i = 0; i < len; i++) {
    const b = bytes[i] ?? 0;
    // Most bytes: printable, and room left on the line.
    if (qpSpecial[b] === 0 && o - lineStart < maxLine - 1) {
      out[o++] = b;
      continue;
    }
    if (b === 0x0a || (b === 0x0d && bytes[i + 1] === 0x0a)) {
      if (b === 0x0d) i++;
      out[o++] = 0x0d;
      out[o++] = 0x0a;
      lineStart = o;
      afterSpace = -1;
      continue;
    }
    let literal = b >= 0x21 && b <= 0x7e && b !== 0x3d;
    if (b === 0x20 || b === 0x09) {
      const next = bytes[i + 1];
      literal = next !== undefined && next !== 0x0a && !(next === 0x0d && bytes[i + 2] === 0x0a);
    }
    // A UTF-8 sequence is kept on one line: some decoders convert line by line.
    const width = literal ? 1 : b >= 0xf0 ? 12 : b >= 0xe0 ? 9 : b >= 0xc0 ? 6 : 3;
    // A soft-broken line is at most 75 characters and its `=`.
    if (o - lineStart + width > maxLine - 1) {
      if (afterSpace > lineStart && o - afterSpace <= 24) {
        // Break after the space: move what follows it to the next line.
        out.copyWithin(afterSpace + 3, afterSpace, o);
        out[afterSpace] = 0x3d;
        out[afterSpace + 1] = 0x0d;
        out[afterSpace + 2] = 0x0a;
        o += 3;
        lineStart = afterSpace + 3;
      } else {
        out[o++] = 0x3d;
        out[o++] = 0x0d;
        out[o++] = 0x0a;
        lineStart = o;
      }
      afterSpace = -1;
    }
    if (literal) {
      out[o++] = b;
      if (b === 0x20 || b === 0x09) afterSpace = o;
    } else {
      out[o++] = 0x3d;
      out[o++] = hex[b >> 4] ?? 0;
      out[o++] = hex[b & 15] ?? 0;
    }
  }
  // Writes past the end of a Buffer are dropped silently: never send a truncated body.
  if (o > out.length) throw new Error("quotedPrintable: the output outgrew its bound");
  return out.subarray(0, o);
}

/** Base64 in lines of 76 characters. */
function base64Lines(bytes: Buffer): Buffer {
  const encoded = Buffer.from(bytes.toString("base64"), "latin1");
  const lines = Math.ceil(encoded.length / maxLine);
  const out = Buffer.allocUnsafe(encoded.length + Math.max(0, lines - 1) * 2);
  let o = 0;
  for (let from = 0; from < encoded.length; from += maxLine) {
    if (from > 0) {
      out[o++] = 0x0d;
      out[o++] = 0x0a;
    }
    o += encoded.copy(out, o, from, Math.min(from + maxLine, encoded.length));
  }
  return out;
}
