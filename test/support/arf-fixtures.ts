/**
 * Feedback reports (RFC 5965 ARF) for tests: realistic samples under
 * test/fixtures/arf/, about message `arfFixtureMessageId` (VERP domain
 * bounces.acme.test, Message-ID domain acme.test), each returning an
 * original whose Subject and body hold the code `arfFixtureCode`.
 *
 * - yahoo-cfl.eml: Yahoo's CFL to the feedback address, Feedback-Type abuse,
 *   Original-Mail-From (our VERP address), the whole original as message/rfc822.
 * - microsoft-jmrp.eml: a JMRP report to the feedback address, no
 *   Original-Mail-From, the original base64-encoded with the recipient
 *   redacted and no Return-Path: tied by the original's Message-ID only.
 * - isp-rfc822-headers.eml: an ISP FBL to the message's return path,
 *   Feedback-Type fraud, the original's headers only (text/rfc822-headers).
 * - rfc5965-example.eml: RFC 5965 appendix B.2's example with our ids.
 */
import { readFileSync } from "node:fs";

export const arfFixtureMessageId = "01kbf3vq0m4x2c9d8e7f6g5h4j";
export const arfFixtureCode = "482913";

export type ArfFixture = "yahoo-cfl" | "microsoft-jmrp" | "isp-rfc822-headers" | "rfc5965-example";

/** A fixture about `messageId` (every id in it replaced, the base64-encoded original's too). */
export function arfFixture(name: ArfFixture, messageId = arfFixtureMessageId, code = arfFixtureCode): Buffer {
  const text = readFileSync(new URL(`../fixtures/arf/${name}.eml`, import.meta.url), "latin1");
  const swap = (part: string): string => part.replaceAll(arfFixtureMessageId, messageId).replaceAll(arfFixtureCode, code);
  // The JMRP original is base64: decode, swap, encode again, in 76-character lines.
  const replaced = swap(text).replace(/(Content-Transfer-Encoding: base64\r\n\r\n)([A-Za-z0-9+/=\r\n]+?)(\r\n--)/, (_all, head: string, body: string, tail: string) => {
    const decoded = swap(Buffer.from(body.replace(/\r\n/g, ""), "base64").toString("latin1"));
    const encoded = Buffer.from(decoded, "latin1").toString("base64").replace(/.{76}/g, "$&\r\n");
    return `${head}${encoded}${tail}`;
  });
  return Buffer.from(replaced, "latin1");
}

/** A feedback report built from its parts, for the cases no sample covers. */
export function arfMessage(options: {
  readonly to: string;
  /** Lines of the message/feedback-report part. */
  readonly report: readonly string[];
  /** The original's header lines (and body, after an empty line), or undefined for none. */
  readonly original?: readonly string[] | undefined;
  readonly originalType?: "message/rfc822" | "text/rfc822-headers";
  /** The top-level Content-Type. */
  readonly contentType?: string;
}): Buffer {
  const boundary = "ARF.boundary.0001";
  return Buffer.from(
    [
      "From: fbl@isp.example.test",
      `To: ${options.to}`,
      "Subject: Abuse report",
      "MIME-Version: 1.0",
      `Content-Type: ${options.contentType ?? `multipart/report; report-type=feedback-report; boundary="${boundary}"`}`,
      "",
      `--${boundary}`,
      "Content-Type: text/plain",
      "",
      "A user marked this message as spam.",
      "",
      `--${boundary}`,
      "Content-Type: message/feedback-report",
      "",
      ...options.report,
      "",
      ...(options.original === undefined ? [] : [`--${boundary}`, `Content-Type: ${options.originalType ?? "message/rfc822"}`, "", ...options.original, ""]),
      `--${boundary}--`,
      "",
    ].join("\r\n"),
  );
}
