/**
 * Renders an OTP email (subject, text, HTML) for a purpose and a locale,
 * from the built-in templates and the operator's template folder.
 */
import { purposes, type Purpose } from "./record.js";
import {
  builtinTemplates,
  escapeHtml,
  fillTemplate,
  loadTemplateDir,
  mergeCatalogs,
  type MessageTemplate,
  type PlaceholderValues,
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

/** Creates a renderer; throws when the template folder or the default locale is unusable. */
export function createRenderer(options: RendererOptions): Renderer {
  const productName = options.productName.trim();
  if (productName === "" || /[\p{Cc}\p{Zl}\p{Zp}]/u.test(productName)) {
    throw new Error("renderer: productName must be a non-empty single line");
  }
  const catalog: TemplateCatalog =
    options.templatesDir === undefined ? builtinTemplates() : mergeCatalogs(builtinTemplates(), loadTemplateDir(options.templatesDir));
  const defaultKey = normalize(options.defaultLocale);
  for (const purpose of purposes) {
    if (lookup(catalog, purpose, defaultKey) === undefined) {
      throw new Error(`renderer: no ${purpose} template for the default locale "${options.defaultLocale}"`);
    }
  }

  return {
    render(request: RenderRequest): RenderedMessage {
      const template =
        lookup(catalog, request.purpose, normalize(request.locale)) ?? lookup(catalog, request.purpose, defaultKey);
      if (template === undefined) throw new Error(`renderer: no template for purpose "${request.purpose}"`);
      const values: PlaceholderValues = {
        code: request.code,
        // Rounded down: an email must never promise more time than the code has.
        minutes: String(Math.max(1, Math.floor(request.ttlMs / 60_000))),
        product: productName,
      };
      return {
        subject: fillTemplate(template.subject, values).replace(/\s+/g, " ").trim(),
        text: fillTemplate(template.text, values),
        html: fillTemplate(template.html, values, escapeHtml),
        locale: template.locale,
      };
    },
  };
}

function normalize(tag: string): string {
  return tag.trim().replaceAll("_", "-").toLowerCase();
}

/** Exact tag, then language subtag. */
function lookup(catalog: TemplateCatalog, purpose: Purpose, key: string): MessageTemplate | undefined {
  const byLocale = catalog.get(purpose);
  if (byLocale === undefined || key === "") return undefined;
  return byLocale.get(key) ?? byLocale.get(key.split("-")[0] ?? "");
}
