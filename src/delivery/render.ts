/**
 * Renders an OTP email (subject, text, HTML) for a purpose and a locale,
 * from the built-in templates and the operator's template folder.
 */
import { purposes, type Purpose } from "./record.js";
import {
  builtinTemplates,
  compileTemplate,
  escapeHtml,
  loadTemplateDir,
  mergeCatalogs,
  parseTemplateDir,
  type CompiledText,
  type MessageTemplate,
  type TemplateCatalog,
  type TemplateDirRead,
} from "./templates.js";

export interface RendererOptions {
  /** Locale used when the requested one has no template (`en`). Must have templates for every purpose. */
  readonly defaultLocale: string;
  /** The `{{product}}` of the templates: the product's name as users know it. */
  readonly productName: string;
  /**
   * Operator folder of templates that override or add to the built-in ones:
   * its path, read once here, or the folder as already read (`readTemplateDir`:
   * a reload checks exactly what it compared with the set in use); see
   * `parseTemplateDir` in templates.ts for the file format.
   */
  readonly templatesDir?: string | TemplateDirRead | undefined;
}

/**
 * The unit the templates state a code's validity in (`{{minutes}}`): a
 * message with less than this left cannot honestly say how long it has.
 */
export const validityUnitMs = 60_000;

export interface RenderRequest {
  readonly purpose: Purpose;
  /** BCP 47 tag as requested (`ko-KR`); may be empty. */
  readonly locale: string;
  readonly code: string;
  /** How long the code is valid from now; shown in whole minutes, rounded down. */
  readonly ttlMs: number;
}

export interface RenderedMessage {
  readonly subject: string;
  readonly text: string;
  readonly html: string;
  /** The locale actually used (`ko` for a `ko-KR` request). */
  readonly locale: string;
}

export interface Renderer {
  /**
   * Locale resolution (see `localeKeys`): the tag in its canonical form
   * (case-insensitive; `iw` is `he`), then ever shorter (`zh-Hant-TW` ->
   * `zh-Hant`), then by its likely script (`zh-TW` -> `zh-Hant`), then its
   * language alone (`ko-KR` -> `ko`), then the default locale.
   */
  render(request: RenderRequest): RenderedMessage;
  /**
   * The template locales (catalog keys: `fr`, `zh-hant`) that lack some
   * purposes, each with those purposes: a request in such a locale for one of
   * them gets the default locale's mail.
   */
  readonly incompleteLocales: ReadonlyMap<string, readonly Purpose[]>;
}

/** Which of the renderer's options a RendererSetupError is about. */
export type RendererOption = "productName" | "templatesDir" | "defaultLocale";

/** A renderer cannot be made from these options; `option` says which one to fix. */
export class RendererSetupError extends Error {
  constructor(
    readonly option: RendererOption,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "RendererSetupError";
  }
}

/** Creates a renderer; throws a RendererSetupError when the template folder or the default locale is unusable. */
export function createRenderer(options: RendererOptions): Renderer {
  const productName = options.productName.trim();
  if (productName === "" || /[\p{Cc}\p{Zl}\p{Zp}]/u.test(productName)) {
    throw new RendererSetupError("productName", "renderer: productName must be a non-empty single line");
  }
  const catalog: TemplateCatalog =
    options.templatesDir === undefined ? builtinTemplates() : mergeCatalogs(builtinTemplates(), operatorTemplates(options.templatesDir));
  // Every template is split at its placeholders once, {{product}} filled in:
  // a send then only joins the pieces around its code and minutes.
  const compiled = new Map<Purpose, Map<string, CompiledMessage>>();
  for (const [purpose, byLocale] of catalog) {
    const compiledByLocale = new Map<string, CompiledMessage>();
    for (const [key, template] of byLocale) compiledByLocale.set(key, compileMessage(template, productName));
    compiled.set(purpose, withLikelyScripts(compiledByLocale));
  }
  const keysOf = cachedLocaleKeys();
  const defaults = new Map<Purpose, CompiledMessage>();
  for (const purpose of purposes) {
    const message = lookup(compiled, purpose, keysOf(options.defaultLocale));
    if (message === undefined) {
      throw new RendererSetupError("defaultLocale", `renderer: no ${purpose} template for the default locale "${options.defaultLocale}"`);
    }
    defaults.set(purpose, message);
  }
  const incompleteLocales = new Map<string, readonly Purpose[]>();
  for (const key of new Set([...catalog.values()].flatMap((byLocale) => [...byLocale.keys()]))) {
    const missing = purposes.filter((purpose) => lookup(compiled, purpose, keysOf(key)) === undefined);
    if (missing.length > 0) incompleteLocales.set(key, missing);
  }

  return {
    incompleteLocales,
    render(request: RenderRequest): RenderedMessage {
      const message = lookup(compiled, request.purpose, keysOf(request.locale)) ?? defaults.get(request.purpose);
      if (message === undefined) throw new Error(`renderer: no template for purpose "${request.purpose}"`);
      const { code } = request;
      // Rounded down: an email must never promise more time than the code has.
      const minutes = String(Math.max(1, Math.floor(request.ttlMs / validityUnitMs)));
      const subject = message.subject.fill(code, minutes);
      const htmlCode = escapeHtml(code);
      return {
        subject: /\s\s|[^\S ]|^ | $/.test(subject) ? subject.replace(/\s+/g, " ").trim() : subject,
        text: message.text.fill(code, minutes),
        // Minutes are digits: nothing to escape.
        html: message.html.fill(htmlCode, minutes),
        locale: message.locale,
      };
    },
  };
}

/** A template ready to fill: {{product}} in place, {{code}} and {{minutes}} left to each send. */
interface CompiledMessage {
  readonly locale: string;
  readonly subject: CompiledText;
  readonly text: CompiledText;
  readonly html: CompiledText;
}

function compileMessage(template: MessageTemplate, productName: string): CompiledMessage {
  return {
    locale: template.locale,
    subject: compileTemplate(template.subject, productName),
    text: compileTemplate(template.text, productName),
    html: compileTemplate(template.html, escapeHtml(productName)),
  };
}

/** The first of `keys` that has a template for the purpose. */
function lookup<T>(catalog: ReadonlyMap<Purpose, ReadonlyMap<string, T>>, purpose: Purpose, keys: readonly string[]): T | undefined {
  const byLocale = catalog.get(purpose);
  if (byLocale === undefined) return undefined;
  for (const key of keys) {
    const found = byLocale.get(key);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * A tag in the form the catalog is keyed by: canonical (as the names of
 * TEMPLATES_DIR's files are read: `iw` is `he`, `tl` is `fil`), lower-cased;
 * as written, lower-cased, when it is not a well-formed tag.
 */
function canonicalKey(tag: string): string {
  const cleaned = tag.trim().replaceAll("_", "-");
  try {
    return (Intl.getCanonicalLocales(cleaned)[0] ?? cleaned).toLowerCase();
  } catch {
    return cleaned.toLowerCase();
  }
}

/** `language-script-region` and `language-script` of a tag's likely subtags (`zh-TW` -> `zh-hant-tw`, `zh-hant`). */
function likelyKeys(key: string): string[] {
  let likely: Intl.Locale;
  try {
    likely = new Intl.Locale(key).maximize();
  } catch {
    return [];
  }
  // `und` (undetermined) would be made English: it says nothing about the reader.
  if (likely.language === "und" || key.split("-")[0] === "und" || likely.script === undefined) return [];
  const script = `${likely.language}-${likely.script}`.toLowerCase();
  return likely.region === undefined ? [script] : [`${script}-${likely.region.toLowerCase()}`, script];
}

/**
 * The catalog keys a requested tag is looked up under, most specific first:
 * the canonical tag, then ever shorter (RFC 4647 lookup: `zh-hant-tw`,
 * `zh-hant`; a singleton is dropped with its extension), then the tag's
 * likely script with and without its region (`zh-tw` is written in
 * `zh-hant`, as is `zh-hk`), then the language alone. Empty for an empty tag.
 */
function localeKeys(tag: string): string[] {
  const key = canonicalKey(tag);
  if (key === "") return [];
  const subtags = key.split("-");
  const keys: string[] = [];
  for (let length = subtags.length; length > 1; length--) {
    if (subtags[length - 1]?.length === 1) continue;
    keys.push(subtags.slice(0, length).join("-"));
  }
  for (const likely of likelyKeys(key)) if (!keys.includes(likely)) keys.push(likely);
  keys.push(subtags[0] ?? key);
  return keys;
}

/**
 * Tags come from callers: each one's keys are worked out once, up to a bound
 * (a caller sending ever new tags only empties the cache).
 */
function cachedLocaleKeys(): (tag: string) => readonly string[] {
  const cache = new Map<string, readonly string[]>();
  return (tag) => {
    let keys = cache.get(tag);
    if (keys === undefined) {
      keys = localeKeys(tag);
      if (cache.size >= 1000) cache.clear();
      cache.set(tag, keys);
    }
    return keys;
  };
}

/**
 * The templates of one purpose, each also under its likely
 * `language-script-region` and `language-script` where no template has that
 * tag: `zh-TW`'s template then answers `zh-Hant-TW` (and `zh-Hant` when there
 * is no `zh-Hant` template). Where several templates share one, the full form
 * goes to the most specific tag (`zh-CN` before `zh`), the script alone to the
 * least (`zh` before `zh-SG`).
 */
function withLikelyScripts<T>(byLocale: ReadonlyMap<string, T>): Map<string, T> {
  const result = new Map(byLocale);
  const alias = (key: string | undefined, template: T | undefined): void => {
    if (key !== undefined && template !== undefined && !result.has(key)) result.set(key, template);
  };
  const leastSpecificFirst = [...byLocale.keys()].sort((a, b) => a.split("-").length - b.split("-").length || (a < b ? -1 : 1));
  for (const key of [...leastSpecificFirst].reverse()) {
    const likely = likelyKeys(key);
    if (likely.length === 2) alias(likely[0], byLocale.get(key));
  }
  for (const key of leastSpecificFirst) alias(likelyKeys(key).at(-1), byLocale.get(key));
  return result;
}

/** TEMPLATES_DIR's templates; what is wrong with the folder or a file, as a RendererSetupError. */
function operatorTemplates(dir: string | TemplateDirRead): TemplateCatalog {
  try {
    return typeof dir === "string" ? loadTemplateDir(dir) : parseTemplateDir(dir);
  } catch (error) {
    throw new RendererSetupError("templatesDir", error instanceof Error ? error.message : String(error), { cause: error });
  }
}
