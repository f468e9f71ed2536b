import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { buildOtpMail } from "../../src/delivery/message.js";
import { createRenderer, RendererSetupError, type RenderedMessage } from "../../src/delivery/render.js";
import { createSmtpTransport } from "../../src/delivery/smtp-transport.js";
import type { SmtpTransport } from "../../src/delivery/smtp-transport-types.js";
import { startSmtpSink, type CapturedMail, type SmtpSink } from "../support/smtp-sink.js";

const logger = pino({ level: "silent" });
const recipient = "jane.doe@example.com";
const tenMinutes = 10 * 60_000;

let sink: SmtpSink;
let transport: SmtpTransport;
beforeAll(async () => {
  sink = await startSmtpSink();
  transport = createSmtpTransport({ url: sink.url, logger, socketTimeoutMs: 2000 });
});
afterAll(async () => {
  await transport.close();
  await sink.close();
});

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function templatesDir(files: Record<string, string | Buffer>): string {
  const dir = mkdtempSync(join(tmpdir(), "otp-templates-"));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return dir;
}

let sent = 0;
/** Builds the mail, sends it through the real transport and returns what the SMTP server received. */
async function deliver(
  rendered: RenderedMessage,
  from: { name: string; address: string } = { name: "Acme Cloud", address: "no-reply@Acme.test" },
): Promise<CapturedMail> {
  sent++;
  const mail = buildOtpMail({ rendered, to: recipient, fromName: from.name, fromAddress: from.address, messageId: `01jabc${sent}` });
  await transport.send(mail);
  const received = await sink.waitForMessages(sent);
  const last = received.at(-1);
  if (last === undefined) throw new Error("nothing received");
  return last;
}

function header(mail: CapturedMail, name: string): string {
  const value = mail.parsed.headers.get(name);
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** The raw header block, unfolded. */
function rawHeaders(mail: CapturedMail): string {
  return mail.raw.toString("latin1").split("\r\n\r\n")[0]?.replace(/\r\n[ \t]+/g, " ") ?? "";
}

describe("an OTP email, rendered, built and sent over real SMTP", () => {
  it("has the From display name, a Message-ID at the sender's domain, the automation headers and the code", async () => {
    const renderer = createRenderer({ defaultLocale: "en", productName: "Acme" });
    const mail = await deliver(renderer.render({ purpose: "login", locale: "en", code: "482913", ttlMs: tenMinutes }));

    expect(mail.parsed.from?.value).toEqual([{ name: "Acme Cloud", address: "no-reply@acme.test" }]);
    expect(mail.parsed.messageId).toBe(`<01jabc${sent}@acme.test>`);
    expect(rawHeaders(mail).match(/^Message-ID:/gim)).toHaveLength(1);
    expect(header(mail, "auto-submitted")).toBe("auto-generated");
    expect(header(mail, "x-auto-response-suppress")).toBe("OOF, AutoReply");
    expect(header(mail, "content-language")).toBe("en");
    expect(mail.parsed.subject).toBe("482913 is your Acme sign-in code");
    expect(mail.parsed.text).toContain("482913");
    expect(mail.parsed.text).toContain("valid for 10 min");
    expect(mail.parsed.text).toMatch(/did not ask for this code, you can safely ignore this email/);
    expect(mail.parsed.html).toContain(">482913</p>");
    expect(mail.parsed.html).not.toMatch(/<a\s|<img/i);
    expect(rawHeaders(mail)).toMatch(/Content-Type: multipart\/alternative/i);
    expect(mail.envelope).toMatchObject({ mailFrom: "no-reply@acme.test", rcptTo: [recipient] });
  });

  it("asks Exchange to hold back auto-replies, never the delivery reports that bounces are", async () => {
    const renderer = createRenderer({ defaultLocale: "en", productName: "Acme" });
    const mail = await deliver(renderer.render({ purpose: "login", locale: "en", code: "482913", ttlMs: tenMinutes }));
    // MS-OXCMAIL 2.1.3.2.20: All is every bit, DR and NDR (reports from transport) among them.
    const values = header(mail, "x-auto-response-suppress").split(/\s*,\s*/);
    expect(values).toEqual(expect.arrayContaining(["OOF", "AutoReply"]));
    expect(values).not.toContain("All");
    expect(values).not.toContain("NDR");
    expect(values).not.toContain("DR");
  });

  it("has built-in templates for every purpose in English and Korean, none with links or images", () => {
    const renderer = createRenderer({ defaultLocale: "en", productName: "Acme" });
    for (const purpose of ["login", "signup", "password_reset"] as const) {
      for (const locale of ["en", "ko"]) {
        const rendered = renderer.render({ purpose, locale, code: "ZX81QK", ttlMs: 5 * 60_000 });
        expect(rendered.locale).toBe(locale);
        expect(rendered.subject).toContain("ZX81QK");
        expect(rendered.text).toContain("ZX81QK");
        expect(rendered.html).toContain("ZX81QK");
        expect(rendered.text).toContain("5");
        expect(rendered.html).not.toMatch(/<a\s|<img|https?:/i);
      }
    }
  });

  it("sends the Korean template as UTF-8 with an encoded-word subject that decodes exactly", async () => {
    const renderer = createRenderer({ defaultLocale: "en", productName: "에이크미" });
    const rendered = renderer.render({ purpose: "password_reset", locale: "ko-KR", code: "550192", ttlMs: tenMinutes });
    expect(rendered.locale).toBe("ko");

    const mail = await deliver(rendered, { name: '에이크미 "클라우드"', address: "no-reply@acme.test" });

    expect(mail.parsed.subject).toBe("[에이크미] 비밀번호 재설정 인증 코드: 550192");
    expect(rawHeaders(mail)).toMatch(/^Subject: =\?UTF-8\?[BQ]\?/im);
    expect(mail.parsed.from?.value[0]?.name).toBe('에이크미 "클라우드"');
    expect(mail.parsed.text).toContain("에이크미 비밀번호를 재설정하려면 아래 인증 코드를 입력하세요.");
    expect(mail.parsed.text).toContain("이 코드는 10분 동안 유효합니다.");
    expect(mail.parsed.text).toContain("본인이 요청하지 않았다면 이 메일을 무시하셔도 됩니다.");
    expect(mail.parsed.html).toContain("이 코드는 10분 동안 유효합니다.");
    expect(header(mail, "content-language")).toBe("ko");
  });

  it("escapes the product name in HTML, in built-in and operator templates alike", async () => {
    const productName = "Acme <script>alert(1)</script> & Co";
    const dir = templatesDir({
      "login.en.subject.txt": "Code {{code}} for {{product}}\n",
      "login.en.txt": "{{product}}: {{code}} ({{minutes}} minutes)\n",
      "login.en.html": '<p style="color:#333">{{product}}: <b>{{code}}</b> for {{minutes}} minutes</p>\n',
    });
    for (const renderer of [
      createRenderer({ defaultLocale: "en", productName }),
      createRenderer({ defaultLocale: "en", productName, templatesDir: dir }),
    ]) {
      const mail = await deliver(renderer.render({ purpose: "login", locale: "en", code: "123456", ttlMs: tenMinutes }));
      expect(mail.parsed.html).toContain("Acme &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co");
      expect(mail.parsed.html).not.toContain("<script>");
      // Plain text and subject are not HTML: the name stays as written there.
      expect(mail.parsed.text).toContain(productName);
      expect(mail.parsed.subject).toContain(productName);
    }
  });

  it("falls back from a region to its language, and from an unknown language to the default", () => {
    const english = createRenderer({ defaultLocale: "en", productName: "Acme" });
    const render = (locale: string): string =>
      english.render({ purpose: "signup", locale, code: "111111", ttlMs: tenMinutes }).locale;
    expect(render("ko-KR")).toBe("ko");
    expect(render("KO")).toBe("ko");
    expect(render("ko_kr")).toBe("ko");
    expect(render("fr")).toBe("en");
    expect(render("fr-CA")).toBe("en");
    expect(render("")).toBe("en");

    const korean = createRenderer({ defaultLocale: "ko", productName: "Acme" });
    expect(korean.render({ purpose: "login", locale: "fr", code: "111111", ttlMs: tenMinutes }).locale).toBe("ko");
  });

  it("looks a locale up in its canonical form, ever shorter, then by its likely script, then its language", () => {
    const loginIn = (...locales: string[]): Record<string, string> =>
      Object.fromEntries(
        locales.flatMap((locale) => [
          [`login.${locale}.subject.txt`, `${locale} {{code}}`],
          [`login.${locale}.txt`, `${locale} {{code}}`],
          [`login.${locale}.html`, `<p lang="${locale}">{{code}}</p>`],
        ]),
      );
    const resolve = (dir: string, locale: string): string =>
      createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir }).render({
        purpose: "login",
        locale,
        code: "111111",
        ttlMs: tenMinutes,
      }).locale;

    const chinese = templatesDir(loginIn("zh", "zh-Hant", "he", "sr-Latn"));
    // Traditional Chinese as iOS, browsers and Android name it.
    expect(resolve(chinese, "zh-Hant-TW")).toBe("zh-Hant");
    expect(resolve(chinese, "zh-TW")).toBe("zh-Hant");
    expect(resolve(chinese, "zh-hk")).toBe("zh-Hant");
    expect(resolve(chinese, "zh-CN")).toBe("zh");
    expect(resolve(chinese, "zh-Hans-SG")).toBe("zh");
    // Hebrew as Java's Locale.getLanguage() still spells it; Serbo-Croatian's tag.
    expect(resolve(chinese, "iw")).toBe("he");
    expect(resolve(chinese, "iw-IL")).toBe("he");
    expect(resolve(chinese, "sh")).toBe("sr-Latn");
    expect(resolve(chinese, "sr-Latn-RS")).toBe("sr-Latn");
    // Serbian is Cyrillic unless it says otherwise: no template, the default.
    expect(resolve(chinese, "sr-RS")).toBe("en");
    expect(resolve(chinese, "en-GB-u-ca-gregory")).toBe("en");
    expect(resolve(chinese, "ko-Kore-KR")).toBe("ko");

    // A template named by region answers the tag that spells its script out.
    const taiwan = templatesDir(loginIn("zh-TW", "iw"));
    expect(resolve(taiwan, "zh-Hant-TW")).toBe("zh-TW");
    expect(resolve(taiwan, "zh-Hant")).toBe("zh-TW");
    expect(resolve(taiwan, "zh-CN")).toBe("en");
    // The file named with the old code is read under the current one, and found under both.
    expect(resolve(taiwan, "he-IL")).toBe("he");
    expect(resolve(taiwan, "iw")).toBe("he");
    expect(createRenderer({ defaultLocale: "ko-KR", productName: "Acme" }).render({
      purpose: "login",
      locale: "fr",
      code: "111111",
      ttlMs: tenMinutes,
    }).locale).toBe("ko");
  });

  it("never promises more minutes than the code has", () => {
    const renderer = createRenderer({ defaultLocale: "en", productName: "Acme" });
    expect(renderer.render({ purpose: "login", locale: "en", code: "111111", ttlMs: 90_000 }).text).toContain("valid for 1 min");
    expect(renderer.render({ purpose: "login", locale: "en", code: "111111", ttlMs: 30 * 60_000 }).text).toContain("valid for 30 min");
  });

  describe("operator templates folder", () => {
    const japanese = {
      "login.ja.subject.txt": "{{product}} ログインコード: {{code}}\n",
      "login.ja.txt": "ログインコード: {{code}}\n{{minutes}}分間有効です。\n",
      "login.ja.html": "<p>ログインコード: <b>{{ code }}</b></p><p>{{minutes}}分間有効です。</p>\n",
    };

    it("adds locales and overrides built-in templates, and ignores other files", () => {
      const dir = templatesDir({
        ...japanese,
        "signup.en.subject.txt": "Welcome to {{product}}: {{code}}",
        "signup.en.txt": "Your code: {{code}}",
        "signup.en.html": "<p>Your code: {{code}}</p>",
        "README.md": "these are our templates {{whatever}}",
      });
      const renderer = createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir });

      const ja = renderer.render({ purpose: "login", locale: "ja-JP", code: "424242", ttlMs: tenMinutes });
      expect(ja).toEqual({
        locale: "ja",
        subject: "Acme ログインコード: 424242",
        text: "ログインコード: 424242\n10分間有効です。\n",
        html: "<p>ログインコード: <b>424242</b></p><p>10分間有効です。</p>\n",
      });
      expect(renderer.render({ purpose: "signup", locale: "en", code: "424242", ttlMs: tenMinutes }).subject).toBe(
        "Welcome to Acme: 424242",
      );
      // Not overridden: the built-in template stays.
      expect(renderer.render({ purpose: "login", locale: "en", code: "424242", ttlMs: tenMinutes }).subject).toBe(
        "424242 is your Acme sign-in code",
      );
      // Japanese exists for login only: signup falls back to the default.
      expect(renderer.render({ purpose: "signup", locale: "ja", code: "424242", ttlMs: tenMinutes }).locale).toBe("en");
      // ...which the renderer tells (the service logs it at start-up).
      expect(renderer.incompleteLocales).toEqual(new Map([["ja", ["signup", "password_reset"]]]));
    });

    it.each([
      ["an unknown placeholder", { "login.ja.txt": "Hello {{name}}, {{code}}" }, "login.ja.txt: unknown placeholder {{name}}"],
      ["a missing {{code}}", { "login.ja.html": "<p>{{minutes}}</p>" }, "login.ja.html: must contain {{code}}"],
      ["a stray brace pair", { "login.ja.txt": "{{code}} {{ oops" }, 'login.ja.txt: has a "{{" or "}}"'],
      ["a multi-line subject", { "login.ja.subject.txt": "line one {{code}}\nline two" }, "login.ja.subject.txt: a subject must be a single line"],
      ["an unknown purpose", { "logout.ja.txt": "{{code}}" }, 'logout.ja.txt: unknown purpose "logout"'],
      ["a badly named file", { "login.txt": "{{code}}" }, "login.txt: template files are named"],
      ["a bad locale tag", { "login.x!.txt": "{{code}}" }, 'login.x!.txt: "x!" is not a BCP 47 language tag'],
    ])("refuses %s, naming the file", (_what, change, message) => {
      const dir = templatesDir({ ...japanese, ...change });
      expect(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir })).toThrow(message);
    });

    it("refuses a file that is not UTF-8 (saved as EUC-KR or UTF-16), naming it, and reads one with a BOM", () => {
      // "로그인 코드" in EUC-KR, as a Korean Windows editor saves it.
      const eucKr = Buffer.concat([Buffer.from([0xb7, 0xce, 0xb1, 0xd7, 0xc0, 0xce, 0x20, 0xc4, 0xda, 0xb5, 0xe5]), Buffer.from(": {{code}}\n")]);
      const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from("{{code}}\n", "utf16le")]);
      for (const [name, bytes] of [["login.ja.txt", eucKr], ["login.ja.html", utf16]] as const) {
        const dir = templatesDir({ ...japanese, [name]: bytes });
        expect(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir })).toThrow(
          `${join(dir, name)}: is not UTF-8 text`,
        );
      }
      const withBom = templatesDir({ ...japanese, "login.ja.txt": Buffer.from("\uFEFFログイン {{code}}\n") });
      const renderer = createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: withBom });
      expect(renderer.render({ purpose: "login", locale: "ja", code: "424242", ttlMs: tenMinutes }).text).toBe("ログイン 424242\n");
    });

    it("reads templates through symbolic links, as a Kubernetes ConfigMap volume holds them, and names a broken one", () => {
      // A ConfigMap volume: the files live in a timestamped folder reached through `..data`; the names are links.
      const dir = templatesDir({});
      mkdirSync(join(dir, "..2026_11_29_10_00_00.000000001"));
      for (const [name, content] of Object.entries(japanese)) writeFileSync(join(dir, "..2026_11_29_10_00_00.000000001", name), content);
      symlinkSync("..2026_11_29_10_00_00.000000001", join(dir, "..data"));
      for (const name of Object.keys(japanese)) symlinkSync(join("..data", name), join(dir, name));

      const renderer = createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir });
      expect(renderer.render({ purpose: "login", locale: "ja", code: "424242", ttlMs: tenMinutes })).toMatchObject({
        locale: "ja",
        subject: "Acme ログインコード: 424242",
      });

      symlinkSync(join("..data", "signup.ja.txt"), join(dir, "signup.ja.txt"));
      expect(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir })).toThrow(
        `${join(dir, "signup.ja.txt")}: cannot be read`,
      );
    });

    it("refuses an incomplete template, naming the missing file", () => {
      const dir = templatesDir({ "login.ja.subject.txt": "{{code}}", "login.ja.txt": "{{code}}" });
      expect(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: dir })).toThrow(
        `${join(dir, "login.ja.html")}: missing`,
      );
    });

    it("refuses a folder that does not exist, and a default locale without templates", () => {
      expect(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: "/nonexistent/templates" })).toThrow(
        "templates folder /nonexistent/templates cannot be read",
      );
      expect(() => createRenderer({ defaultLocale: "fr", productName: "Acme" })).toThrow(
        'no login template for the default locale "fr"',
      );
    });

    it("says which option to fix, so the service can name the variable (exit 78)", () => {
      const optionOf = (make: () => unknown): unknown => {
        try {
          make();
        } catch (error) {
          return error instanceof RendererSetupError ? error.option : error;
        }
        return "no error";
      };
      expect(optionOf(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: "/nonexistent/templates" }))).toBe("templatesDir");
      expect(optionOf(() => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: templatesDir({ "login.txt": "{{code}}" }) }))).toBe(
        "templatesDir",
      );
      expect(optionOf(() => createRenderer({ defaultLocale: "fr", productName: "Acme" }))).toBe("defaultLocale");
      expect(optionOf(() => createRenderer({ defaultLocale: "en", productName: "Ac\tme" }))).toBe("productName");
    });
  });

  it("buildOtpMail refuses a malformed sender or message id", () => {
    const rendered = createRenderer({ defaultLocale: "en", productName: "Acme" }).render({
      purpose: "login",
      locale: "en",
      code: "123456",
      ttlMs: tenMinutes,
    });
    const base = { rendered, to: recipient, fromName: "Acme", fromAddress: "no-reply@acme.test", messageId: "abc" };
    expect(() => buildOtpMail({ ...base, fromAddress: "Acme <no-reply@acme.test>" })).toThrow(/not a plain address/);
    expect(() => buildOtpMail({ ...base, messageId: "a b>" })).toThrow(/not a dot-atom/);
    expect(buildOtpMail({ ...base, fromName: 'Evil\r\nBcc: x@y "Co" \\' }).from).toBe(
      '"Evil Bcc: x@y \\"Co\\" \\\\" <no-reply@acme.test>',
    );
  });
});
