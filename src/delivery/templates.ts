/**
 * OTP email templates: the placeholder format, the built-in English and
 * Korean templates, and the operator's template folder.
 *
 * A template is three texts (subject, plain text, HTML) with placeholders
 * `{{code}}`, `{{minutes}}` and `{{product}}`. Every text must contain
 * `{{code}}`. In HTML, placeholder values are HTML-escaped when filled in; the
 * template's own markup is the operator's (simple inline styles, no links,
 * no images).
 */
import { readdirSync, readFileSync, statSync, type Dirent } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { purposes, type Purpose } from "./record.js";

export const placeholderNames = ["code", "minutes", "product"] as const;
export type PlaceholderName = (typeof placeholderNames)[number];

/** One purpose's message in one locale. */
export interface MessageTemplate {
  /** The locale tag as written (canonical case: `ko`, `pt-BR`). */
  readonly locale: string;
  readonly subject: string;
  readonly text: string;
  readonly html: string;
  /** `built-in` or the operator's folder, for error messages. */
  readonly source: string;
}

/** Templates by purpose, then by lower-cased locale tag. */
export type TemplateCatalog = ReadonlyMap<Purpose, ReadonlyMap<string, MessageTemplate>>;

// `{{ name }}`; anything else that opens with `{{` or closes with `}}` is a mistake.
const placeholderPattern = /\{\{\s*([^{}]*?)\s*\}\}/g;

/**
 * Checks one template text; throws an Error that starts with `where` (the
 * file name) on an unknown placeholder, a missing `{{code}}` or a stray brace pair.
 */
export function checkTemplateText(source: string, where: string): void {
  let hasCode = false;
  for (const match of source.matchAll(placeholderPattern)) {
    const name = match[1] ?? "";
    if (!(placeholderNames as readonly string[]).includes(name)) {
      throw new Error(
        `${where}: unknown placeholder {{${name}}}; the known ones are ${placeholderNames.map((known) => `{{${known}}}`).join(", ")}`,
      );
    }
    if (name === "code") hasCode = true;
  }
  const rest = source.replace(placeholderPattern, "");
  if (rest.includes("{{") || rest.includes("}}")) {
    throw new Error(`${where}: has a "{{" or "}}" that is not part of a placeholder such as {{code}}`);
  }
  if (!hasCode) throw new Error(`${where}: must contain {{code}}, the code the email exists to carry`);
}

/**
 * A template text split at its placeholders, {{product}} already filled in:
 * filling it joins its pieces around a code and a number of minutes, with no
 * pattern matching per message.
 */
export interface CompiledText {
  /** The text with `code` and `minutes` (already escaped as the text needs) in their places. */
  fill(code: string, minutes: string): string;
}

/** Compiles a checked template text; `product` is the value of {{product}}, escaped as the text needs. */
export function compileTemplate(source: string, product: string): CompiledText {
  const pieces: string[] = [];
  const slots: Array<"code" | "minutes"> = [];
  let literal = "";
  let from = 0;
  for (const match of source.matchAll(placeholderPattern)) {
    literal += source.slice(from, match.index);
    from = match.index + match[0].length;
    const name = match[1] ?? "";
    if (name === "product") {
      literal += product;
    } else if (name === "code" || name === "minutes") {
      pieces.push(literal);
      slots.push(name);
      literal = "";
    } else {
      throw new Error(`compileTemplate: unknown placeholder {{${name}}}`);
    }
  }
  pieces.push(literal + source.slice(from));
  return {
    fill(code: string, minutes: string): string {
      let out = pieces[0] ?? "";
      for (let i = 0; i < slots.length; i++) out += (slots[i] === "code" ? code : minutes) + (pieces[i + 1] ?? "");
      return out;
    },
  };
}

/** Escapes text for HTML element content and double-quoted attribute values. */
export function escapeHtml(value: string): string {
  if (!/[&<>"']/.test(value)) return value;
  return value
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

// ---------------------------------------------------------------------------
// Built-in templates

/** The words of one purpose in one language; `{{...}}` placeholders allowed. */
interface Phrases {
  readonly subject: string;
  readonly heading: string;
  readonly intro: string;
}

/** Lines every purpose shares in one language. */
interface CommonPhrases {
  readonly validity: string;
  readonly ignore: string;
  readonly share: string;
}

const builtinPhrases: Readonly<Record<string, { common: CommonPhrases; purposes: Readonly<Record<Purpose, Phrases>> }>> = {
  en: {
    common: {
      validity: "The code is valid for {{minutes}} min.",
      ignore: "If you did not ask for this code, you can safely ignore this email.",
      share: "Never share this code with anyone.",
    },
    purposes: {
      login: {
        subject: "{{code}} is your {{product}} sign-in code",
        heading: "Sign in to {{product}}",
        intro: "Use this code to sign in to {{product}}:",
      },
      signup: {
        subject: "{{code}} is your {{product}} verification code",
        heading: "Confirm your email address",
        intro: "Use this code to confirm your email address for {{product}}:",
      },
      password_reset: {
        subject: "{{code}} is your {{product}} password reset code",
        heading: "Reset your password",
        intro: "Use this code to reset your {{product}} password:",
      },
    },
  },
  ko: {
    common: {
      validity: "이 코드는 {{minutes}}분 동안 유효합니다.",
      ignore: "본인이 요청하지 않았다면 이 메일을 무시하셔도 됩니다.",
      share: "이 코드를 다른 사람에게 알려 주지 마세요.",
    },
    purposes: {
      login: {
        subject: "[{{product}}] 로그인 인증 코드: {{code}}",
        heading: "{{product}} 로그인",
        intro: "{{product}}에 로그인하려면 아래 인증 코드를 입력하세요.",
      },
      signup: {
        subject: "[{{product}}] 회원가입 인증 코드: {{code}}",
        heading: "이메일 주소 확인",
        intro: "{{product}} 회원가입을 완료하려면 아래 인증 코드를 입력하세요.",
      },
      password_reset: {
        subject: "[{{product}}] 비밀번호 재설정 인증 코드: {{code}}",
        heading: "비밀번호 재설정",
        intro: "{{product}} 비밀번호를 재설정하려면 아래 인증 코드를 입력하세요.",
      },
    },
  },
};

function builtinTemplate(locale: string, common: CommonPhrases, phrases: Phrases): MessageTemplate {
  const text = [phrases.intro, "", "    {{code}}", "", common.validity, common.ignore, common.share, ""].join("\n");
  // Static words are escaped here; placeholder values are escaped when filled in.
  const e = escapeHtml;
  const paragraph = "margin:0 0 16px;font-size:15px;line-height:1.5;";
  // Lines of at most 76 characters (style attributes broken after a `;` or
  // `,`, text on its own line, where a line break is white space): an
  // English message then goes out as 7bit, with no quoted-printable to
  // encode or decode.
  const html = [
    "<!DOCTYPE html>",
    `<html lang="${e(locale)}">`,
    '<head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${e(phrases.heading)}</title></head>`,
    '<body style="margin:0;padding:24px;background-color:#f4f5f7;color:#1f2328;',
    "font-family:-apple-system,'Segoe UI',Roboto,",
    "'Apple SD Gothic Neo','Malgun Gothic',sans-serif;\">",
    '<div style="max-width:480px;margin:0 auto;padding:32px;',
    'background-color:#ffffff;border-radius:8px;">',
    '<h1 style="margin:0 0 16px;font-size:20px;">',
    `${e(phrases.heading)}</h1>`,
    `<p style="${paragraph}">`,
    `${e(phrases.intro)}</p>`,
    '<p style="margin:0 0 16px;font-size:32px;font-weight:bold;',
    "letter-spacing:6px;font-family:Menlo,Consolas,",
    "'Courier New',monospace;\">{{code}}</p>",
    `<p style="${paragraph}">`,
    `${e(common.validity)}</p>`,
    '<p style="margin:0;font-size:13px;line-height:1.5;color:#57606a;">',
    e(common.ignore),
    `${e(common.share)}</p>`,
    "</div>",
    "</body>",
    "</html>",
    "",
  ].join("\n");
  return { locale, subject: phrases.subject, text, html, source: "built-in" };
}

/** The built-in templates: every purpose in English (`en`) and Korean (`ko`). */
export function builtinTemplates(): TemplateCatalog {
  const catalog = new Map<Purpose, Map<string, MessageTemplate>>();
  for (const purpose of purposes) {
    const byLocale = new Map<string, MessageTemplate>();
    for (const [locale, { common, purposes: perPurpose }] of Object.entries(builtinPhrases)) {
      byLocale.set(locale, builtinTemplate(locale, common, perPurpose[purpose]));
    }
    catalog.set(purpose, byLocale);
  }
  return catalog;
}

// ---------------------------------------------------------------------------
// Operator templates

const templateParts = { "subject.txt": "subject", txt: "text", html: "html" } as const;
type TemplatePart = (typeof templateParts)[keyof typeof templateParts];
const templateFileName = /^([^.]+)\.([^.]+)\.(subject\.txt|txt|html)$/;

/** One template file of a folder as read: its bytes, or why they could not be read. */
export type TemplateFileRead =
  | { readonly name: string; readonly bytes: Buffer }
  | { readonly name: string; readonly error: Error };

/**
 * A template folder as read, before any check: what `parseTemplateDir`
 * checks, and what a reload compares with the folder in use.
 */
export interface TemplateDirRead {
  readonly dir: string;
  /** The files that may be templates (`*.txt`, `*.html`, not hidden), by name. */
  readonly files: readonly TemplateFileRead[];
}

/**
 * Reads an operator's template folder (synchronously); see `parseTemplateDir`
 * for the file format. Throws an Error naming the folder when it cannot be
 * listed; a file that cannot be read is kept as its error, for the check.
 */
export function readTemplateDirSync(dir: string): TemplateDirRead {
  let names: string[];
  try {
    names = templateCandidates(readdirSync(dir, { withFileTypes: true }));
  } catch (error) {
    throw unreadableFolder(dir, error);
  }
  const files: TemplateFileRead[] = [];
  for (const name of names) {
    const file = join(dir, name);
    try {
      // A link to a folder is skipped like a folder; a broken one is a mistake.
      if (!statSync(file).isFile()) continue;
      files.push({ name, bytes: readFileSync(file) });
    } catch (error) {
      files.push({ name, error: unreadableFile(file, error) });
    }
  }
  return { dir, files };
}

/** `readTemplateDirSync`, without holding the event loop while the files are read (reloads). */
export async function readTemplateDir(dir: string): Promise<TemplateDirRead> {
  let names: string[];
  try {
    names = templateCandidates(await readdir(dir, { withFileTypes: true }));
  } catch (error) {
    throw unreadableFolder(dir, error);
  }
  const files = await Promise.all(
    names.map(async (name): Promise<TemplateFileRead | undefined> => {
      const file = join(dir, name);
      try {
        if (!(await stat(file)).isFile()) return undefined;
        return { name, bytes: await readFile(file) };
      } catch (error) {
        return { name, error: unreadableFile(file, error) };
      }
    }),
  );
  return { dir, files: files.filter((read) => read !== undefined) };
}

/**
 * The names in a folder listing that may be templates, sorted. Symbolic links
 * too: a Kubernetes ConfigMap or Secret volume holds nothing else
 * (`login.ja.txt -> ..data/login.ja.txt`); where one leads is looked at when
 * it is read. Hidden names (`..data`, an editor's `.login.ja.txt.swp`) and
 * other files (README.md...) are ignored.
 */
function templateCandidates(entries: readonly Dirent[]): string[] {
  return entries
    .filter((entry) => entry.isFile() || entry.isSymbolicLink())
    .map((entry) => entry.name)
    .filter((name) => !name.startsWith(".") && /\.(txt|html)$/.test(name))
    .sort();
}

function unreadableFolder(dir: string, error: unknown): Error {
  return new Error(`templates folder ${dir} cannot be read: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}

function unreadableFile(file: string, error: unknown): Error {
  return new Error(`${file}: cannot be read (${error instanceof Error ? error.message : String(error)})`, { cause: error });
}

/**
 * Reads an operator's template folder (synchronously) and checks it; see
 * `parseTemplateDir`. Throws an Error naming the offending file on any mistake.
 */
export function loadTemplateDir(dir: string): TemplateCatalog {
  return parseTemplateDir(readTemplateDirSync(dir));
}

/**
 * Checks a template folder as read and makes its catalog.
 *
 * Files are named `<purpose>.<locale>.subject.txt`, `<purpose>.<locale>.txt`
 * and `<purpose>.<locale>.html`, e.g. `login.ja.subject.txt`; purpose is one
 * of `login`, `signup`, `password_reset`, locale a BCP 47 tag. All three
 * files of a purpose and locale must be present. Files are UTF-8; the
 * subject is one line. Placeholders: `{{code}}` (required in every file),
 * `{{minutes}}` (validity, whole minutes) and `{{product}}`; values are
 * HTML-escaped in the .html file.
 *
 * Throws an Error naming the offending file on any mistake.
 */
export function parseTemplateDir(read: TemplateDirRead): TemplateCatalog {
  const { dir } = read;
  const found = new Map<string, { purpose: Purpose; locale: string; parts: Partial<Record<TemplatePart, string>> }>();
  for (const fileRead of read.files) {
    if ("error" in fileRead) throw fileRead.error;
    const { name, bytes } = fileRead;
    const file = join(dir, name);
    const match = templateFileName.exec(name);
    if (match === null) {
      throw new Error(
        `${file}: template files are named <purpose>.<locale>.subject.txt, <purpose>.<locale>.txt or <purpose>.<locale>.html`,
      );
    }
    const [, purposeName = "", tag = "", suffix = ""] = match;
    if (!(purposes as readonly string[]).includes(purposeName)) {
      throw new Error(`${file}: unknown purpose "${purposeName}"; the known ones are ${purposes.join(", ")}`);
    }
    let locale: string;
    try {
      locale = Intl.getCanonicalLocales(tag)[0] ?? tag;
    } catch {
      throw new Error(`${file}: "${tag}" is not a BCP 47 language tag such as en, ko or pt-BR`);
    }
    const part = templateParts[suffix as keyof typeof templateParts];
    let content = utf8Text(bytes, file);
    if (part === "subject") {
      content = content.trim();
      if (/[\r\n]/.test(content)) throw new Error(`${file}: a subject must be a single line`);
    }
    checkTemplateText(content, file);
    const key = `${purposeName}.${locale.toLowerCase()}`;
    const entry = found.get(key) ?? { purpose: purposeName as Purpose, locale, parts: {} };
    entry.parts[part] = content;
    found.set(key, entry);
  }

  const catalog = new Map<Purpose, Map<string, MessageTemplate>>();
  for (const { purpose, locale, parts } of found.values()) {
    const { subject, text, html } = parts;
    if (subject === undefined || text === undefined || html === undefined) {
      const missing = Object.entries(templateParts)
        .filter(([, part]) => parts[part] === undefined)
        .map(([suffix]) => join(dir, `${purpose}.${locale}.${suffix}`));
      throw new Error(`${missing.join(", ")}: missing; a template needs its .subject.txt, .txt and .html files`);
    }
    const byLocale = catalog.get(purpose) ?? new Map<string, MessageTemplate>();
    byLocale.set(locale.toLowerCase(), { locale, subject, text, html, source: dir });
    catalog.set(purpose, byLocale);
  }
  return catalog;
}

// ignoreBOM false (the default): a UTF-8 BOM is dropped, not kept as a character.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A template file's text, its BOM dropped; throws, naming the file, when the
 * bytes are not UTF-8. A file saved as EUC-KR, Windows-1252 or UTF-16 would
 * otherwise decode to U+FFFD (a question mark in a box) in place of every
 * character outside ASCII, and mail its readers rows of them.
 */
function utf8Text(bytes: Buffer, file: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new Error(`${file}: is not UTF-8 text; save it as UTF-8`);
  }
}

/** `overrides` replace or add to `base`, template by template. */
export function mergeCatalogs(base: TemplateCatalog, overrides: TemplateCatalog): TemplateCatalog {
  const merged = new Map<Purpose, Map<string, MessageTemplate>>();
  for (const purpose of purposes) {
    merged.set(purpose, new Map([...(base.get(purpose) ?? []), ...(overrides.get(purpose) ?? [])]));
  }
  return merged;
}
