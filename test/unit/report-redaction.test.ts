import { describe, expect, it } from "vitest";
import { createReportRedactor } from "../../src/bounce/report-redaction.js";
import { createHasher } from "../../src/otp/code.js";

const current = createHasher(Buffer.from("current-secret-0123456789abcdefghijkl"));
const previous = createHasher(Buffer.from("previous-secret-0123456789abcdefghijk"));
const messageId = "01kbf3vq0m4x2c9d8e7f6g5h4j";
const messageOf = (code: string, hasher = current) => ({
  messageId,
  codeFingerprint: { length: code.length, hmac: hasher.reportCodeHmac(messageId, code) },
});
const base64Word = (text: string): string => `=?UTF-8?B?${Buffer.from(text, "utf8").toString("base64")}?=`;

describe("report redaction: a message's code where a report quotes it", () => {
  const redactor = createReportRedactor([current]);

  it("replaces the code in a quoted Subject and leaves every other word, number and id as it was", () => {
    const text = 'smtp; 550 5.7.1 Message 01kbf3vq0m4x2c9d8e7f6g5h4j rejected (Subject "482913 is your Acme sign-in code"), ref 102938';
    expect(redactor.redact(text, messageOf("482913"))).toBe(
      'smtp; 550 5.7.1 Message 01kbf3vq0m4x2c9d8e7f6g5h4j rejected (Subject "[redacted] is your Acme sign-in code"), ref 102938',
    );
  });

  it("finds a code in another case, glued to other letters, and every time it appears", () => {
    expect(redactor.redact("code qx7zk4w9 / CodeQX7ZK4W9x / QX7ZK4W9", messageOf("QX7ZK4W9"))).toBe("code [redacted] / Code[redacted]x / [redacted]");
  });

  it("replaces an encoded Subject that holds the code whole: base64, split over two words, or quoted-printable", () => {
    const subject = "[Acme] 로그인 인증 코드: 482913";
    const whole = base64Word(subject);
    const bytes = Buffer.from(subject, "utf8");
    // The code's digits split between the two words.
    const split = `=?UTF-8?B?${bytes.subarray(0, bytes.length - 3).toString("base64")}?=\t=?UTF-8?B?${bytes.subarray(bytes.length - 3).toString("base64")}?=`;
    const quoted = "=?utf-8?q?=5BAcme=5D_=EB=A1=9C=EA=B7=B8=EC=9D=B8_4829?= =?utf-8?q?13?=";
    for (const encoded of [whole, split, quoted]) {
      expect(redactor.redact(`smtp; 554 rejected, Subject: ${encoded} (spam)`, messageOf("482913")), encoded).toBe(
        "smtp; 554 rejected, Subject: [redacted] (spam)",
      );
    }
    // One that does not hold this message's code stays as it was.
    const other = `smtp; 554 rejected, Subject: ${base64Word("[Acme] 로그인 인증 코드: 777111")}`;
    expect(redactor.redact(other, messageOf("482913"))).toBe(other);
  });

  it("recognises the code of a message sent before OTP_SECRET rotated, under the previous secret", () => {
    const rotating = createReportRedactor([current, previous]);
    expect(rotating.redact("Subject: 482913 is your code", messageOf("482913", previous))).toBe("Subject: [redacted] is your code");
  });

  it("for a record without a fingerprint, redacts every token that could be a code and every encoded word", () => {
    const text = `smtp; 550 5.1.1 user unknown; Subject: 482913 is your Acme code (ref QX7ZK4W9, host mx01) ${base64Word("코드")}`;
    expect(redactor.redact(text, { messageId })).toBe("smtp; 550 5.1.1 user unknown; Subject: [redacted] is your Acme code (ref [redacted], host mx01) [redacted]");
    expect(redactor.redact(text)).toBe(redactor.redact(text, { messageId }));
  });
});
