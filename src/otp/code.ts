/**
 * Codes and ids: generation from the CSPRNG, the keyed HMACs that are all the
 * store ever sees, and the constant-time comparison.
 */
import { createHmac, createSecretKey, randomBytes, randomInt, timingSafeEqual } from "node:crypto";
import type { RandomBytes } from "../random-pool.js";

/** A caller-supplied or normalised typed code: 4-10 of [0-9A-Z]. */
export const codePattern = /^[0-9A-Z]{4,10}$/;

/** A fresh numeric code of `length` digits, uniformly distributed. */
export function generateCode(length: number): string {
  let code = "";
  for (let i = 0; i < length; i++) code += String(randomInt(10));
  return code;
}

/**
 * Invisible format characters (Unicode Cf) that ride along when a code is
 * copied: the left-to-right and right-to-left marks of text copied from a
 * right-to-left (Arabic, Hebrew, Persian) email, zero-width spaces, a BOM.
 * A typed code may carry them; they are dropped, not refused.
 */
export const invisibleMarks = /\p{Cf}/gu;

/**
 * What the user typed, made comparable: compatibility forms folded (NFKC:
 * the full-width `１２３` an East Asian input method types by default is
 * `123`), the decimal digits of other scripts read as ASCII (`١٢٣` from an
 * Arabic keyboard, `۱۲۳` Persian, `१२३` Devanagari: NFKC leaves them be),
 * spaces and dashes of any kind (`-`, `–`, `ー`...) and invisible format
 * marks (`invisibleMarks`) dropped, letters upper-cased.
 */
export function normalizeTypedCode(typed: string): string {
  return typed
    .normalize("NFKC")
    .replace(/[\s\p{Pd}\p{Cf}\u30FC]/gu, "")
    .replace(/[^ -~]/gu, asciiDigit)
    .toUpperCase();
}

const decimalDigit = /^\p{Nd}$/u;

/**
 * A decimal digit (Unicode Nd) of any script as its ASCII digit; anything
 * else unchanged. Unicode assigns every script's digits in runs of ten,
 * zero first, so a digit's value is its distance from the start of its run.
 */
function asciiDigit(char: string): string {
  if (!decimalDigit.test(char)) return char;
  const point = char.codePointAt(0) ?? 0;
  let start = point;
  while (point - start < 60 && decimalDigit.test(String.fromCodePoint(start - 1))) start--;
  return String((point - start) % 10);
}

const crockford = "0123456789abcdefghjkmnpqrstvwxyz";

/**
 * A message id: 48 bits of milliseconds then 80 random bits, in lower-case
 * Crockford base32 (26 characters). Sortable by time, and safe inside an SMTP
 * local part (`bounce+<id>@...`) where case may not survive. `random` is
 * the CSPRNG by default; the OTP service passes a pooled one
 * (`createRandomPool`), which saves a crypto call per id.
 */
export function newMessageId(now: number, random: RandomBytes = randomBytes): string {
  let id = "";
  let time = now;
  for (let i = 0; i < 10; i++) {
    id = crockford[time % 32] + id;
    time = Math.floor(time / 32);
  }
  let bits = 0;
  let value = 0;
  for (const byte of random(10)) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      id += crockford[(value >> bits) & 31];
    }
  }
  return id;
}

export const messageIdPattern = /^[0-9a-hjkmnp-tv-z]{26}$/;

/** When a message id was made (the `now` given to `newMessageId`), in ms since the epoch. */
export function messageIdTime(id: string): number {
  let time = 0;
  for (const char of id.slice(0, 10)) time = time * 32 + crockford.indexOf(char);
  return time;
}

/**
 * Keyed HMACs under the server secret. Each use has its own label so that a
 * value derived for one purpose can never stand in for another; the code's
 * HMAC is bound to its caller, recipient and purpose.
 */
export interface Hasher {
  /** Opaque id of the code set of (caller, recipient, purpose); no address appears in storage keys. */
  codeSetId(caller: string, recipientKey: string, purpose: string): string;
  /** Opaque id of the group of (caller, recipient): its code sets and failure cap are stored together. */
  codeGroupId(caller: string, recipientKey: string): string;
  /** HMAC of a code within its set. */
  codeHmac(setId: string, code: string): string;
  /** Opaque id of an idempotency key of a caller. */
  idempotencyKeyId(caller: string, key: string): string;
  /** Fingerprint of the fields that make two SendOtp requests "the same request". */
  requestFingerprint(parts: readonly string[]): string;
  /**
   * HMAC of a message's code, bound to the message: how a bounce or
   * feedback report that quotes the code is recognised (CodeFingerprint).
   * The code upper-cased, as reports may quote it in another case.
   */
  reportCodeHmac(messageId: string, code: string): string;
}

export function createHasher(secret: Buffer): Hasher {
  // A KeyObject, made once: given a Buffer, every createHmac first probes
  // whether it is a KeyObject or a CryptoKey, which on Node 24 costs ~10x
  // the HMAC itself (about 15 us against 2 us; see bench/ and the profile).
  const key = createSecretKey(secret);
  const mac = (label: string, parts: readonly string[]): string =>
    createHmac("sha256", key).update(`${label}\0${parts.join("\0")}`).digest("hex");
  return {
    codeSetId: (caller, recipientKey, purpose) => mac("code-set", [caller, recipientKey, purpose]).slice(0, 32),
    codeGroupId: (caller, recipientKey) => mac("code-group", [caller, recipientKey]).slice(0, 32),
    codeHmac: (setId, code) => mac("code", [setId, code]),
    idempotencyKeyId: (caller, key) => mac("idempotency", [caller, key]).slice(0, 32),
    requestFingerprint: (parts) => mac("request", parts),
    reportCodeHmac: (messageId, code) => mac("report-code", [messageId, code.toUpperCase()]).slice(0, 32),
  };
}

/** Constant-time equality of two hex HMACs (false for different lengths). */
export function hmacEquals(a: string, b: string): boolean {
  const left = Buffer.from(a, "hex");
  const right = Buffer.from(b, "hex");
  return left.length === right.length && timingSafeEqual(left, right);
}
