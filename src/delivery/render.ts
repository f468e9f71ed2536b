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
  type CompiledText,
  type MessageTemplate,
  type TemplateCatalog,
} from "./templates.js";

export interface RendererOptions {
  /** Locale used when the requested one has no template (`en`). Must have templates for every purpose. */
  readonly defaultLocale: string;
  /** The `{{product}}` of the templates: the product's name as users know it. */
  readonly productName: string;
  /**
   * Operator folder of templates that override or add to the built-in ones,
   * read once here; see `loadTemplateDir` in templates.ts for the file format.
   */
  readonly templatesDir?: string | undefined;
}

export interface RenderRequest {
  readonly purpose: Purpose;
  /** BCP 47 tag as requested (`ko-KR`); may be empty. */
  readonly locale: string;
  readonly code: string;
  /** How long the code is valid; shown in whole minutes. */
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
   * Locale resolution: the exact tag (case-insensitive), then its language
   * subtag (`ko-KR` -> `ko`), then the default locale.
   */
  render(request: RenderRequest): RenderedMessage;
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
    compiled.set(purpose, compiledByLocale);
  }
  const defaultKey = normalize(options.defaultLocale);
  for (const purpose of purposes) {
    if (lookup(compiled, purpose, defaultKey) === undefined) {
      throw new RendererSetupError("defaultLocale", `renderer: no ${purpose} template for the default locale "${options.defaultLocale}"`);
    }
  }

  return {
    render(request: RenderRequest): RenderedMessage {
      const message =
        lookup(compiled, request.purpose, normalize(request.locale)) ?? lookup(compiled, request.purpose, defaultKey);
      if (message === undefined) throw new Error(`renderer: no template for purpose "${request.purpose}"`);
      const { code } = request;
      // Rounded down: an email must never promise more time than the code has.
      const minutes = String(Math.max(1, Math.floor(request.ttlMs / 60_000)));
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

function normalize(tag: string): string {
  return tag.trim().replaceAll("_", "-").toLowerCase();
}

/** Exact tag, then language subtag. */
function lookup<T>(catalog: ReadonlyMap<Purpose, ReadonlyMap<string, T>>, purpose: Purpose, key: string): T | undefined {
  const byLocale = catalog.get(purpose);
  if (byLocale === undefined || key === "") return undefined;
  return byLocale.get(key) ?? byLocale.get(key.split("-")[0] ?? "");
}

/** TEMPLATES_DIR's templates; what is wrong with the folder or a file, as a RendererSetupError. */
function operatorTemplates(dir: string): TemplateCatalog {
  try {
    return loadTemplateDir(dir);
  } catch (error) {
    throw new RendererSetupError("templatesDir", error instanceof Error ? error.message : String(error), { cause: error });
  }
}
