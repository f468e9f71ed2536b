/**
 * Keeps a message's code out of what reports about it quote. A DSN's
 * Diagnostic-Code (a content filter's `550 5.7.1 Subject "482913 is your
 * Acme sign-in code" rejected`), or another field of a bounce or feedback
 * report, may quote the Subject, and the Subject holds the code; by the time
 * the report arrives the code is only stored hashed.
 *
 * So a record carries its code's fingerprint (CodeFingerprint: the code's
 * length and a keyed HMAC bound to the message), and every run of that many
 * letters and digits in a report's text is hashed the same way: a run that
 * matches is the code, and becomes `[redacted]`, as the relay's replies are
 * at send time (OutgoingMail.redact). Nothing else of the text changes. An
 * RFC 2047 encoded word (`=?UTF-8?B?...?=`: a non-ASCII Subject quoted as
 * it went out) hides the code from that scan: a run of them is decoded and,
 * when it holds the code, replaced whole.
 *
 * A record without a fingerprint (sent before records had one) cannot be
 * told apart that way: then every token that could be a code (4-10 capitals
 * and digits, a digit among them) and every encoded word is redacted.
 */
import type { CodeFingerprint } from "../delivery/record.js";
import type { Hasher } from "../otp/code.js";

/** What the redactor hashes candidates with: the current secret's Hasher, then the previous one's while it rotates. */
export type CodeHasher = Pick<Hasher, "reportCodeHmac">;

/** What a code in a report's text is replaced with. */
export const redactedCode = "[redacted]";

export interface ReportRedactor {
  /**
   * `text` from a report about `message` with its code redacted wherever it
   * appears. `message` undefined (the report is tied to no record yet) or
   * without a fingerprint: everything that could be a code is redacted.
   */
  redact(text: string, message?: { readonly messageId: string; readonly codeFingerprint?: CodeFingerprint | undefined }): string;
}

/** Runs of letters and digits: a code is never split by anything else. */
const alphanumericRun = /[0-9A-Za-z]+/g;
/** What could be a code (otp/code.ts codePattern, with a digit: generated codes are digits), standing alone. */
const codeLike = /(?<![0-9A-Za-z])(?=[A-Z]*[0-9])[0-9A-Z]{4,10}(?![0-9A-Za-z])/g;
/** A run of RFC 2047 encoded words: one header value is often split over several, a code across two of them. */
const encodedWords = /=\?[^?\s]{1,64}\?[BbQq]\?[^?\s]*\?=(?:\s+=\?[^?\s]{1,64}\?[BbQq]\?[^?\s]*\?=)*/g;
const encodedWord = /=\?[^?\s]{1,64}\?([BbQq])\?([^?\s]*)\?=/g;

/**
 * `hashers`: the current secret's first; the previous one's while OTP_SECRET
 * rotates, for records made before the rotation.
 */
export function createReportRedactor(hashers: readonly CodeHasher[]): ReportRedactor {
  return {
    redact(text, message) {
      const fingerprint = message?.codeFingerprint;
      if (message === undefined || fingerprint === undefined || hashers.length === 0) return redactCodeLike(text);
      const { messageId } = message;
      const isCode = (candidate: string): boolean => hashers.some((hasher) => hasher.reportCodeHmac(messageId, candidate) === fingerprint.hmac);
      const scan = (part: string): string => redactRuns(part, fingerprint.length, isCode);
      const holdsCode = (words: string): boolean => {
        const decoded = decodeWords(words);
        return scan(decoded) !== decoded;
      };
      return scan(text.replace(encodedWords, (words) => (holdsCode(words) ? redactedCode : words)));
    },
  };
}

/** `text` with each window of `length` letters and digits that `isCode` recognises replaced. */
function redactRuns(text: string, length: number, isCode: (candidate: string) => boolean): string {
  if (!Number.isInteger(length) || length < 1) return text;
  return text.replace(alphanumericRun, (run) => {
    if (run.length < length) return run;
    let out = "";
    let from = 0;
    for (let at = 0; at + length <= run.length; ) {
      if (isCode(run.slice(at, at + length))) {
        out += run.slice(from, at) + redactedCode;
        at += length;
        from = at;
      } else {
        at++;
      }
    }
    return out + run.slice(from);
  });
}

function redactCodeLike(text: string): string {
  return text.replace(encodedWords, redactedCode).replace(codeLike, redactedCode);
}

/**
 * The text of a run of encoded words, each byte as a latin1 character: the
 * letters and digits of a code read the same in every charset a Subject is
 * sent in (UTF-8, EUC-KR, ISO-8859-x), so the charset is not needed.
 */
function decodeWords(words: string): string {
  let decoded = "";
  for (const [, encoding, payload = ""] of words.matchAll(encodedWord)) {
    decoded +=
      encoding?.toUpperCase() === "B"
        ? Buffer.from(payload, "base64").toString("latin1")
        : payload.replace(/_/g, " ").replace(/=([0-9A-Fa-f]{2})/g, (_all, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  }
  return decoded;
}
