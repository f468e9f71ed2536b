/**
 * The one-pass MIME builder against a real parser (mailparser) and against
 * what nodemailer's own builder makes of the same mail: every field must
 * read back the same.
 */
import { simpleParser, type ParsedMail } from "mailparser";
import MailComposer from "nodemailer/lib/mail-composer";
import { describe, expect, it } from "vitest";
import { buildOtpMail } from "../../src/delivery/message.js";
import { bodyPart, composeOtpMime, quotedPrintable } from "../../src/delivery/mime.js";
import { createRenderer } from "../../src/delivery/render.js";
import type { OutgoingMail } from "../../src/delivery/smtp-transport-types.js";

const renderer = createRenderer({ defaultLocale: "en", productName: "Acme" });
const date = new Date("2026-11-27T10:00:00Z");

function mailFor(locale: string, overrides: Partial<OutgoingMail> = {}): OutgoingMail {
  const rendered = renderer.render({ purpose: "login", locale, code: "482913", ttlMs: 600_000 });
  return {
    ...buildOtpMail({ rendered, to: "ana@Example.COM", fromName: "Acme Cloud", fromAddress: "no-reply@Acme.test", messageId: "01jabc1" }),
    ...overrides,
  };
}

async function nodemailerParsed(mail: OutgoingMail): Promise<ParsedMail> {
  const composer = new MailComposer({
    from: mail.from,
    to: mail.to,
    subject: mail.subject,
    text: mail.text,
    html: mail.html,
    messageId: mail.messageId,
    headers: { ...mail.headers },
    date,
  });
  return simpleParser(await composer.compile().build());
}

async function ours(mail: OutgoingMail): Promise<{ raw: string; parsed: ParsedMail }> {
  const raw = composeOtpMime(mail, date, "0123456789abcdef");
  if (raw === undefined) throw new Error("the fast path refused the mail");
  return { raw: raw.toString("latin1"), parsed: await simpleParser(raw) };
}

describe("composeOtpMime", () => {
  for (const locale of ["en", "ko"]) {
    it(`reads back like nodemailer's own message (${locale})`, async () => {
      const mail = mailFor(locale);
      const { parsed } = await ours(mail);
      const reference = await nodemailerParsed(mail);
      expect(parsed.subject).toBe(mail.subject);
      expect(parsed.subject).toBe(reference.subject);
      expect(parsed.text?.trim()).toBe(reference.text?.trim());
      expect(parsed.html && parsed.html.trim()).toBe(reference.html && reference.html.trim());
      expect(parsed.from?.value).toEqual(reference.from?.value);
      expect(parsed.from?.value).toEqual([{ name: "Acme Cloud", address: "no-reply@acme.test" }]);
      expect(JSON.stringify(parsed.to)).toBe(JSON.stringify(reference.to));
      expect(parsed.messageId).toBe("<01jabc1@acme.test>");
      expect(parsed.date?.toISOString()).toBe(date.toISOString());
      for (const name of ["auto-submitted", "x-auto-response-suppress", "content-language", "mime-version"]) {
        expect(parsed.headers.get(name)).toEqual(reference.headers.get(name));
      }
    });
  }

  it("keeps every line within 78 characters, CRLF only, and headers ASCII", async () => {
    const longLine = `<p>${"0123456789 ".repeat(30)}한국어 ${"x".repeat(200)}</p>`;
    const mail = mailFor("ko", { html: longLine, subject: "로그인 코드 482913 ".repeat(6).trim() });
    const { raw, parsed } = await ours(mail);
    const lines = raw.split("\r\n");
    expect(lines.every((line) => line.length <= 78)).toBe(true);
    expect(raw.replace(/\r\n/g, "")).not.toMatch(/[\r\n]/);
    expect(raw).toMatch(/^[\x20-\x7e\r\n\t]*$/);
    expect(parsed.html).toBe(longLine);
    expect(parsed.subject).toBe(mail.subject);
  });

  it("uses 7bit for short ASCII lines, quoted-printable for mostly ASCII, base64 for mostly other text", async () => {
    const ascii = await ours(mailFor("en", { text: "Your code is 482913.\nIt expires soon.", html: "<p>482913</p>" }));
    expect(ascii.raw).toMatch(/Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit/);
    const long = await ours(mailFor("en", { text: `short\n${"y".repeat(100)}\nshort`, html: "<p>482913</p>" }));
    expect(long.raw).toMatch(/Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable/);
    expect(long.parsed.text?.trim()).toBe(`short\n${"y".repeat(100)}\nshort`);
    const mixed = await ours(mailFor("en", { text: "Code 482913 — é", html: "<p>482913</p>" }));
    expect(mixed.raw).toMatch(/Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable/);
    expect(mixed.parsed.text?.trim()).toBe("Code 482913 — é");
    const korean = await ours(mailFor("en", { text: "인증 코드를 입력하세요", html: "<p>482913</p>" }));
    expect(korean.raw).toMatch(/Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64/);
    expect(korean.parsed.text?.trim()).toBe("인증 코드를 입력하세요");
  });

  it("sends the built-in English templates as 7bit, both parts", async () => {
    for (const purpose of ["login", "signup", "password_reset"] as const) {
      const rendered = renderer.render({ purpose, locale: "en", code: "48291307", ttlMs: 600_000 });
      const mail = buildOtpMail({ rendered, to: "ana@example.com", fromName: "Acme", fromAddress: "no-reply@acme.test", messageId: "01jabc1" });
      const { raw, parsed } = await ours(mail);
      expect(raw.match(/Content-Transfer-Encoding: 7bit/g)).toHaveLength(2);
      expect(parsed.html).toBe(rendered.html);
      expect(parsed.html).toContain(">48291307</p>");
    }
  });

  it("writes a From display name that is not ASCII as nodemailer does: one encoded-word, Q or B, reading back the same", async () => {
    for (const fromName of ["Acme 클라우드", "Müller & Söhne", 'Acmé "Cloud" \\ Ltd', "アクメ・クラウド株式会社のサインインサービス窓口", "Ünïcødé 🔐"]) {
      const rendered = renderer.render({ purpose: "login", locale: "en", code: "482913", ttlMs: 600_000 });
      const mail = buildOtpMail({ rendered, to: "ana@example.com", fromName, fromAddress: "no-reply@Acme.test", messageId: "01jabc1" });
      const { raw, parsed } = await ours(mail);
      const reference = await nodemailerParsed(mail);
      expect(parsed.from?.value, fromName).toEqual([{ name: fromName, address: "no-reply@acme.test" }]);
      expect(parsed.from?.value, fromName).toEqual(reference.from?.value);
      // The same header nodemailer's builder writes, folding included.
      const fromOf = (message: string): string | undefined => /^From: .*(?:\r\n[ \t].*)*/m.exec(message)?.[0];
      const referenceRaw = (
        await new MailComposer({ from: mail.from, to: mail.to, subject: mail.subject, text: mail.text, messageId: mail.messageId, date }).compile().build()
      ).toString("latin1");
      expect(fromOf(raw), fromName).toBe(fromOf(referenceRaw));
      expect(raw).toMatch(/^[\x20-\x7e\r\n\t]*$/);
    }
  });

  it("leaves to nodemailer what is not plain ASCII: an address", () => {
    expect(composeOtpMime(mailFor("en", { from: '"Acme" <nö-reply@acme.test>' }), date, "x")).toBeUndefined();
    expect(composeOtpMime(mailFor("en", { from: '"Acmé\u0007" <no-reply@acme.test>' }), date, "x")).toBeUndefined();
    expect(composeOtpMime(mailFor("en", { to: "ana@bücher.example" }), date, "x")).toBeUndefined();
    expect(composeOtpMime(mailFor("en", { to: "añа@example.com" }), date, "x")).toBeUndefined();
    expect(composeOtpMime(mailFor("en", { headers: { "Content-Language": "ko\r\nBcc: x@y" } }), date, "x")).toBeUndefined();
  });

  it("keeps a text with CRLF, LF and CR line breaks readable back to the same text", async () => {
    const text = "line one\r\nline two\nline three\r\n\r\nend";
    const { raw, parsed } = await ours(mailFor("en", { text, html: "<p>482913</p>" }));
    expect(raw).toMatch(/Content-Transfer-Encoding: 7bit\r\n\r\nline one\r\nline two\r\nline three\r\n\r\nend\r\n--/);
    expect(parsed.text).toBe("line one\nline two\nline three\n\nend");
    // A lone CR is data, not a line break: never 7bit, and it survives the trip.
    const lone = await ours(mailFor("en", { text: "a\rb\nc", html: "<p>482913</p>" }));
    expect(lone.raw).toMatch(/Content-Transfer-Encoding: quoted-printable\r\n\r\na=0Db\r\nc\r\n--/);
    expect(lone.parsed.text).toBe("a\rb\nc");
  });
});

/** Decodes quoted-printable the way RFC 2045 reads it (soft breaks joined, =XX as bytes). */
function decodeQp(encoded: string): string {
  const joined = encoded.replace(/=\r\n/g, "");
  expect(joined).not.toMatch(/=(?![0-9A-F]{2})/);
  return Buffer.from(
    joined.replace(/=([0-9A-F]{2})/g, (_all, hex: string) => String.fromCharCode(Number.parseInt(hex, 16))),
    "latin1",
  ).toString("utf8");
}

describe("quotedPrintable", () => {
  const qp = (text: string): string => quotedPrintable(Buffer.from(text, "utf8")).toString("latin1");

  it("escapes = and what is not printable ASCII, and keeps the rest as is", () => {
    expect(qp("a=b")).toBe("a=3Db");
    expect(qp("tab\there")).toBe("tab\there");
    expect(qp("é")).toBe("=C3=A9");
    expect(qp("nul\0")).toBe("nul=00");
    expect(qp("~!")).toBe("~!");
    expect(qp("\x7f")).toBe("=7F");
  });

  it("escapes a space or tab before a line break and at the end, not elsewhere", () => {
    expect(qp("a b ")).toBe("a b=20");
    expect(qp("a \r\nb\t\nc\t")).toBe("a=20\r\nb=09\r\nc=09");
    expect(qp("a \rb")).toBe("a =0Db");
  });

  it("writes lines of at most 76 characters and breaks after a space when one is near", () => {
    const words = "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(12);
    const encoded = qp(words);
    const lines = encoded.split("\r\n");
    expect(lines.length).toBeGreaterThan(5);
    for (const line of lines.slice(0, -1)) {
      expect(line.length).toBeLessThanOrEqual(76);
      expect(line.endsWith(" =")).toBe(true);
    }
    expect(decodeQp(encoded)).toBe(words);
  });

  it("never splits an =XX escape or a UTF-8 character across lines", () => {
    for (const text of ["=".repeat(200), "x".repeat(73) + "é".repeat(40), `${"y".repeat(70)}😀${"한".repeat(30)}`, "€".repeat(60)]) {
      const encoded = qp(text);
      for (const line of encoded.split("\r\n")) {
        expect(line.length).toBeLessThanOrEqual(76);
        // Every line decodes on its own to whole characters.
        expect(decodeQp(line.replace(/=$/, ""))).not.toContain("\ufffd");
      }
      expect(decodeQp(encoded)).toBe(text);
    }
  });

  it("round-trips random text of spaces, tabs, =, line breaks and 1- to 4-byte characters", () => {
    const alphabet = ["a", "b", " ", " ", "\t", "=", ".", "\n", "\r\n", "é", "€", "한", "😀"];
    let seed = 12345;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (let round = 0; round < 300; round++) {
      let text = "";
      const length = next(400);
      for (let i = 0; i < length; i++) text += alphabet[next(alphabet.length)];
      const encoded = qp(text);
      expect(encoded).toMatch(/^[\x21-\x7e \t\r\n]*$/);
      for (const line of encoded.split("\r\n")) {
        expect(line.length).toBeLessThanOrEqual(76);
        expect(line).not.toMatch(/[ \t]$/);
      }
      expect(decodeQp(encoded)).toBe(text.replace(/\r?\n/g, "\r\n"));
    }
  });

  it("round-trips awkward text through mailparser", async () => {
    const text = `=start ${"long ".repeat(40)}\ttrailing \nsecond line with é and = and 3D \r\n.dot line\n\nend `;
    const { raw, parsed } = await ours(mailFor("en", { text, html: "<p>482913</p>" }));
    expect(raw).toMatch(/text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable/);
    expect(raw.split("\r\n").every((line) => line.length <= 78)).toBe(true);
    expect(parsed.text).toBe(text.replace(/\r\n/g, "\n"));
  });
});

describe("7bit bodies", () => {
  // Each body goes into the message with its LFs made CRLF as it is written:
  // lines at the start and end, empty lines and a body without any LF.
  const texts = ["one line", "first\nsecond", "\nstarts and ends with a break\n", "a\n\n\nb\n\n", "\n", ".dot\n..two"];
  for (const text of texts) {
    it(`writes ${JSON.stringify(text)} with CRLF line breaks, byte for byte`, () => {
      const html = `<p>${text}</p>`;
      const raw = composeOtpMime(mailFor("en", { text, html }), date, "0123456789abcdef")?.toString("latin1") ?? "";
      const part = (type: string, body: string) =>
        `Content-Type: ${type}; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n${body.replaceAll("\n", "\r\n")}\r\n--`;
      expect(raw).toContain(part("text/plain", text));
      expect(raw).toContain(part("text/html", html));
      expect(raw.endsWith("\r\n----_OtpEmail-0123456789abcdef--\r\n")).toBe(true);
      expect(raw.replaceAll("\r\n", "")).not.toMatch(/[\r\n]/);
    });
  }

  it("keeps a body already written with CRLF as it is", () => {
    const text = "first\r\nsecond\nthird\r\n";
    const raw = composeOtpMime(mailFor("en", { text }), date, "0123456789abcdef")?.toString("latin1") ?? "";
    expect(raw).toContain("7bit\r\n\r\nfirst\r\nsecond\r\nthird\r\n\r\n--");
  });
});

describe("bodyPart", () => {
  it("chooses 7bit up to 76 characters a line and quoted-printable from 77", () => {
    expect(bodyPart("text/plain", "x".repeat(76)).head).toContain("7bit");
    expect(bodyPart("text/plain", "x".repeat(77)).head).toContain("quoted-printable");
  });

  it("writes base64 in lines of 76 characters, CRLF line breaks encoded", () => {
    const text = "인증 코드를 입력하세요\n".repeat(10);
    const { head, body } = bodyPart("text/plain", text);
    expect(head).toContain("Content-Transfer-Encoding: base64");
    const lines = body.toString("latin1").split("\r\n");
    expect(lines.slice(0, -1).every((line) => line.length === 76)).toBe(true);
    expect(Buffer.from(lines.join(""), "base64").toString("utf8")).toBe(text.replace(/\n/g, "\r\n"));
  });
});

