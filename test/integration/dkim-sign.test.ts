/**
 * Our DKIM signer (src/delivery/dkim-sign.ts) against nodemailer's, on the
 * same bytes: RSA PKCS#1 v1.5 signatures are deterministic, so the same
 * canonical input and tags must give the very same DKIM-Signature field,
 * byte for byte. The messages are the service's own (every built-in locale
 * and purpose, through the one-pass builder) and hand-made ones with what relaxed
 * canonicalization exists for: folded and repeated header fields, runs of
 * spaces and tabs, trailing whitespace, empty lines at the end, bare LFs and
 * lone CRs. Both independent verifiers (mailauth, python3-dkim) check the
 * service's messages as well.
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import DKIM from "nodemailer/lib/dkim/index.js";
import { describe, expect, it } from "vitest";
import { createDkimSigner, relaxedBodyHash } from "../../src/delivery/dkim-sign.js";
import { dkimTxtRecord, type DkimSigningOptions } from "../../src/delivery/dkim.js";
import { buildOtpMail } from "../../src/delivery/message.js";
import { composeOtpMime } from "../../src/delivery/mime.js";
import { createRenderer } from "../../src/delivery/render.js";
import { verifyWithDkimpy, verifyWithMailauth, type DkimKeyRecord } from "../support/dkim-verifiers.js";

const privateKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
const options: DkimSigningOptions = { domainName: "acme.test", keySelector: "s2026", privateKey };
const keyRecord: DkimKeyRecord = { name: "s2026._domainkey.acme.test", txt: dkimTxtRecord(privateKey) };

/** nodemailer's signature of `raw`, as sendMail's pipeline would write it. */
async function nodemailerSigned(raw: Buffer, signing: DkimSigningOptions = options): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of new DKIM({ ...signing }).sign(raw)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** The built-in templates' locales and purposes, with an ASCII product name and a Korean one (encoded words). */
const variants = ["en", "ko"].flatMap((locale) =>
  (["login", "signup", "password_reset"] as const).flatMap((purpose) => ["Acme Cloud", "Acme 클라우드"].map((product) => ({ locale, purpose, product }))),
);

function serviceMessage(locale: string, purpose: "login" | "signup" | "password_reset" = "login", product = "Acme Cloud"): Buffer {
  const rendered = createRenderer({ defaultLocale: "en", productName: product }).render({ purpose, locale, code: "482913", ttlMs: 600_000 });
  if (rendered.locale !== locale) throw new Error(`no built-in ${locale} template`);
  const mail = buildOtpMail({
    rendered,
    to: "jane.doe@example.com",
    fromName: "Acme Cloud",
    fromAddress: "no-reply@acme.test",
    messageId: "01kbf3vq0m4x2c9d8e7f6g5h4j",
    bounceDomain: "bounces.acme.test",
  });
  const raw = composeOtpMime(mail, new Date("2026-11-29T03:00:00Z"), "0123456789abcdef01234567");
  if (raw === undefined) throw new Error(`the one-pass builder refused the ${locale} message`);
  return raw;
}

const crlf = (lines: readonly string[]): Buffer => Buffer.from(lines.join("\r\n"), "latin1");

const handMade: Readonly<Record<string, Buffer>> = {
  "folded fields, runs of spaces and tabs, a repeated Subject (the last one is signed)": crlf([
    "From:   Acme \t Cloud   <no-reply@acme.test>  ",
    "Subject: first",
    "To: jane@example.com,",
    " \t john@example.com",
    "X-Unsigned: not in h=",
    "Subject:\t  second \t subject  ",
    "Date: Sun, 29 Nov 2026 03:00:00 +0000",
    "Message-ID: <a@acme.test>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain;",
    "\tcharset=utf-8",
    "",
    "Your code:  \t 482913 \t ",
    "",
    "",
    "",
  ]),
  "whitespace-only lines inside and at the end of the body, no final line break": crlf([
    "From: <no-reply@acme.test>",
    "Subject: x",
    "",
    "  ",
    "line \t one",
    " \t ",
    "",
    "last line",
  ]),
  "bare LFs and a lone CR in the body": Buffer.from("From: <no-reply@acme.test>\r\nSubject: lf\r\n\r\none\nthree\rfour \n\n\n", "latin1"),
  "an empty body": crlf(["From: <no-reply@acme.test>", "Subject: empty", "", ""]),
  "8-bit header bytes (latin1 in, the same bytes signed)": Buffer.concat([
    Buffer.from("From: <no-reply@acme.test>\r\nSubject: ", "latin1"),
    Buffer.from("Привет, код", "utf8"),
    Buffer.from("\r\n\r\nbody\r\n", "latin1"),
  ]),
};

describe("DKIM signing off the event loop (dkim-sign.ts)", () => {
  const signer = createDkimSigner(options);

  it("signs the service's messages (every built-in locale and purpose) exactly as nodemailer does, byte for byte", async () => {
    for (const { locale, purpose, product } of variants) {
      const label = `${locale} ${purpose} ${product}`;
      const raw = serviceMessage(locale, purpose, product);
      const ours = await signer.sign(raw);
      expect(ours.toString("latin1"), label).toBe((await nodemailerSigned(raw)).toString("latin1"));
      expect(ours.subarray(ours.length - raw.length).equals(raw), label).toBe(true);
    }
  });

  it("canonicalizes headers and body as nodemailer does where relaxed canonicalization matters", async () => {
    for (const [name, raw] of Object.entries(handMade)) {
      expect((await signer.sign(raw)).toString("latin1"), name).toBe((await nodemailerSigned(raw)).toString("latin1"));
    }
  });

  it("the relaxed body hash of an empty body and of a body of empty lines is the hash of nothing (RFC 6376 3.4.4)", () => {
    const empty = createHash("sha256").update("").digest("base64");
    expect(relaxedBodyHash(Buffer.alloc(0))).toBe(empty);
    expect(relaxedBodyHash(Buffer.from("\r\n\r\n \t\r\n"))).toBe(empty);
    expect(relaxedBodyHash(Buffer.from("a  b \t\r\n\r\n"))).toBe(createHash("sha256").update("a b\r\n").digest("base64"));
  });

  it("the service's messages verify with mailauth and python3-dkim; a changed byte fails", async () => {
    for (const locale of ["en", "ko"]) {
      const signed = await signer.sign(serviceMessage(locale, "signup", "Acme 클라우드"));
      expect(await verifyWithMailauth(signed, keyRecord), locale).toMatchObject({ result: "pass", signingDomain: "acme.test" });
      expect(await verifyWithDkimpy(signed, keyRecord), locale).toBe(true);
      const tampered = Buffer.from(signed.toString("latin1").replace("482913", "482914"), "latin1");
      expect(await verifyWithDkimpy(tampered, keyRecord), locale).toBe(false);
    }
  });

  it("tag values lose the characters that would end a tag, as nodemailer's do", async () => {
    const hostile = { ...options, keySelector: "s2026;x=1" };
    const raw = serviceMessage("en");
    const ours = (await createDkimSigner(hostile).sign(raw)).toString("latin1");
    expect(ours).toBe((await nodemailerSigned(raw, hostile)).toString("latin1"));
    expect(ours).toContain("s=s2026x1;");
  });

  it("many signatures at once all complete, each over its own message", async () => {
    const raws = Array.from({ length: 32 }, (_, index) => Buffer.from(serviceMessage("en").toString("latin1").replace("482913", String(100000 + index)), "latin1"));
    const signed = await Promise.all(raws.map((raw) => signer.sign(raw)));
    for (const [index, message] of signed.entries()) {
      expect(message.toString("latin1")).toContain(String(100000 + index));
      expect(await verifyWithMailauth(message, keyRecord)).toMatchObject({ result: "pass" });
    }
  });
});
