/**
 * DKIM signing (rsa-sha256, relaxed/relaxed) of a message built here
 * (mime.ts), with the RSA operation on libuv's thread pool.
 *
 * nodemailer signs inside sendMail's stream pipeline: a MessageParser and a
 * RelaxedBody stream per message, the private key parsed from its PEM text
 * per message, and the RSA signature (about a millisecond of CPU for a
 * 2048-bit key on the bench machine) computed on the event loop, where it
 * holds up every other call. This signer produces the same bytes (the same
 * header fields in the same order, the same tags and folding; RSA PKCS#1 v1.5
 * signatures are deterministic, and test/integration/dkim-sign.test.ts checks
 * the result byte for byte against nodemailer's), from a Buffer in one pass,
 * with the key parsed once and `crypto.sign` given a callback, so the RSA
 * work runs beside the event loop. A message that cannot take the pooled
 * path (pool-send.ts) is still signed by nodemailer.
 */
import { createHash, createPrivateKey, sign as rsaSign, type KeyObject } from "node:crypto";
import { domainToASCII } from "node:url";
import { foldLines } from "nodemailer/lib/mime-funcs/index.js";
import type { DkimSigningOptions } from "./dkim.js";

/**
 * The header fields signed when present, in this order (nodemailer's
 * default list: RFC 6376 section 5.4.1's, with List-Unsubscribe-Post).
 */
const signedFields = [
  "from",
  "sender",
  "reply-to",
  "subject",
  "date",
  "message-id",
  "to",
  "cc",
  "mime-version",
  "content-type",
  "content-transfer-encoding",
  "content-id",
  "content-description",
  "resent-date",
  "resent-from",
  "resent-sender",
  "resent-to",
  "resent-cc",
  "resent-message-id",
  "in-reply-to",
  "references",
  "list-id",
  "list-help",
  "list-unsubscribe",
  "list-unsubscribe-post",
  "list-subscribe",
  "list-post",
  "list-owner",
  "list-archive",
  "otp-token",
] as const;
const signedFieldSet: ReadonlySet<string> = new Set(signedFields);

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const TAB = 0x09;

export interface DkimSigner {
  /** `raw` (headers, a blank line, the body) with a DKIM-Signature header field in front. */
  sign(raw: Buffer): Promise<Buffer>;
}

/** A tag value as nodemailer writes it: no control characters, DEL, `;` or `=`. */
function cleanTagValue(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\x00-\x1f\x7f;=]/g, "");
}

/** The relaxed canonical form of a header field's value (RFC 6376 section 3.4.2). */
function relaxedHeaderValue(line: string): string {
  return line
    .slice(line.indexOf(":") + 1)
    .replace(/\r?\n/g, "")
    .replace(/[ \t]+/g, " ")
    .replace(/^ | $/g, "");
}

/**
 * The header block's fields, unfolded into one entry per field (each with
 * its original line breaks), keyed by lower-cased name.
 */
function headerFields(block: string): { key: string; line: string }[] {
  const fields: { key: string; line: string }[] = [];
  for (const line of block.split(/\r?\n/)) {
    const last = fields.at(-1);
    if ((line.startsWith(" ") || line.startsWith("\t")) && last !== undefined) {
      last.line += `\r\n${line}`;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon === -1) continue;
    fields.push({ key: line.slice(0, colon).replace(/^[ \t]+|[ \t]+$/g, "").toLowerCase(), line });
  }
  return fields;
}

/**
 * The relaxed body hash (RFC 6376 section 3.4.4) in base64: whitespace at a
 * line's end dropped, runs of whitespace within it made one space, every line
 * ended with CRLF, empty lines at the end ignored, a non-empty body ended
 * with CRLF. A CR not followed by LF is content; a bare LF ends a line.
 */
export function relaxedBodyHash(body: Uint8Array): string {
  // Each input byte yields at most two (a bare LF becomes CRLF), plus a final CRLF.
  const out = Buffer.allocUnsafe(body.length * 2 + 2);
  let position = 0;
  let lineHasContent = false;
  let pendingSpace = false;
  let pendingCr = false;
  let emptyLines = 0;
  const content = (byte: number): void => {
    if (!lineHasContent) {
      for (; emptyLines > 0; emptyLines--) {
        out[position++] = CR;
        out[position++] = LF;
      }
      lineHasContent = true;
    }
    if (pendingSpace) {
      out[position++] = SP;
      pendingSpace = false;
    }
    out[position++] = byte;
  };
  for (const byte of body) {
    if (byte === LF) {
      if (lineHasContent) {
        out[position++] = CR;
        out[position++] = LF;
        lineHasContent = false;
      } else {
        emptyLines++;
      }
      pendingSpace = false;
      pendingCr = false;
      continue;
    }
    if (pendingCr) {
      content(CR);
      pendingCr = false;
    }
    if (byte === CR) pendingCr = true;
    else if (byte === SP || byte === TAB) pendingSpace = true;
    else content(byte);
  }
  if (pendingCr) content(CR);
  if (lineHasContent) {
    out[position++] = CR;
    out[position++] = LF;
  }
  return createHash("sha256").update(out.subarray(0, position)).digest("base64");
}

/** Signs with the key of `options` (checked by prepareDkim): parsed here once, never per message. */
export function createDkimSigner(options: DkimSigningOptions): DkimSigner {
  const key: KeyObject = createPrivateKey(options.privateKey);
  const domain = cleanTagValue(options.domainName);
  const tagPrefix = [
    "v=1",
    "a=rsa-sha256",
    "c=relaxed/relaxed",
    `d=${domainToASCII(domain) || domain.toLowerCase()}`,
    "q=dns/txt",
    `s=${cleanTagValue(options.keySelector)}`,
  ].join("; ");

  return {
    sign(raw: Buffer): Promise<Buffer> {
      const split = raw.indexOf("\r\n\r\n");
      const headerEnd = split === -1 ? raw.length : split;
      const bodyStart = split === -1 ? raw.length : split + 4;
      // Header bytes as latin1: one character per byte, so the signed data is the original bytes.
      const fields = headerFields(raw.toString("latin1", 0, headerEnd));
      // The last instance of each signed field (RFC 6376 section 5.4.2: a verifier takes them bottom up).
      const lastOf = new Map<string, string>();
      for (const field of fields) if (signedFieldSet.has(field.key)) lastOf.set(field.key, field.line);
      const names: string[] = [];
      let canonical = "";
      for (const name of signedFields) {
        const line = lastOf.get(name);
        if (line === undefined) continue;
        names.push(name);
        canonical += `${name}:${relaxedHeaderValue(line)}\r\n`;
      }
      const tags = `${tagPrefix}; bh=${relaxedBodyHash(raw.subarray(bodyStart))}; h=${names.join(":")}`;
      const header = `${foldLines(`DKIM-Signature: ${tags}`, 76)};\r\n b=`;
      canonical += `dkim-signature:${relaxedHeaderValue(header)}`;
      return new Promise((resolve, reject) => {
        // With a callback, crypto.sign runs on libuv's thread pool.
        rsaSign("sha256", Buffer.from(canonical, "latin1"), key, (error, signature) => {
          if (error !== null) {
            reject(error);
            return;
          }
          const folded = signature
            .toString("base64")
            .replace(/(^.{73}|.{75}(?!\r?\n|\r))/g, "$&\r\n ")
            .trim();
          resolve(Buffer.concat([Buffer.from(`${header}${folded}\r\n`, "latin1"), raw]));
        });
      });
    },
  };
}
