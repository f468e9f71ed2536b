/**
 * Recipient domain -> mailbox provider class, the only form in which a
 * recipient reaches a metric label. The set of classes is closed (the
 * built-in ones, plus those an operator names in METRICS_PROVIDER_DOMAINS):
 * whatever domain a caller types, the label takes one of a few values.
 */

/** The built-in classes; `other` is every domain no rule names. */
export const builtinProviderClasses = ["gmail", "microsoft", "yahoo", "apple", "naver", "kakao", "proton", "other"] as const;

/** The class of a domain no rule names. */
export const otherProvider = "other";

/**
 * Built-in domain rules, aliases included. A rule matches the domain itself
 * and its subdomains (`mail.naver.com`), never a look-alike (`notgmail.com`).
 */
export const defaultProviderDomains: Readonly<Record<string, string>> = {
  "gmail.com": "gmail",
  "googlemail.com": "gmail",
  "outlook.com": "microsoft",
  "hotmail.com": "microsoft",
  "live.com": "microsoft",
  "msn.com": "microsoft",
  "passport.com": "microsoft",
  "hotmail.co.uk": "microsoft",
  "hotmail.fr": "microsoft",
  "outlook.jp": "microsoft",
  "live.co.uk": "microsoft",
  "yahoo.com": "yahoo",
  "yahoo.co.jp": "yahoo",
  "yahoo.co.uk": "yahoo",
  "yahoo.fr": "yahoo",
  "ymail.com": "yahoo",
  "rocketmail.com": "yahoo",
  "aol.com": "yahoo",
  "icloud.com": "apple",
  "me.com": "apple",
  "mac.com": "apple",
  "naver.com": "naver",
  "kakao.com": "kakao",
  "daum.net": "kakao",
  "hanmail.net": "kakao",
  "proton.me": "proton",
  "protonmail.com": "proton",
  "protonmail.ch": "proton",
  "pm.me": "proton",
};

/** Maps a recipient domain to its provider class. */
export interface ProviderClassifier {
  /** The class of `domain` (any case, trailing dot allowed); `other` when no rule names it. */
  classify(domain: string): string;
  /** Every class it can return, `other` last. */
  readonly classes: readonly string[];
}

/**
 * Builds a classifier from the built-in rules, overridden and extended by
 * `overrides` (domain -> class, from METRICS_PROVIDER_DOMAINS).
 */
export function createProviderClassifier(overrides: Readonly<Record<string, string>> = {}): ProviderClassifier {
  const rules = new Map<string, string>();
  for (const [domain, providerClass] of Object.entries({ ...defaultProviderDomains, ...overrides })) {
    rules.set(domain.toLowerCase().replace(/\.$/, ""), providerClass);
  }
  const classes = [...new Set([...builtinProviderClasses.filter((c) => c !== otherProvider), ...rules.values()])].filter(
    (c) => c !== otherProvider,
  );
  return {
    classes: [...classes, otherProvider],
    classify(domain: string): string {
      let candidate = domain.toLowerCase().replace(/\.$/, "");
      // The domain, then each parent: mail.naver.com, naver.com (never the bare TLD).
      for (;;) {
        const found = rules.get(candidate);
        if (found !== undefined) return found;
        const dot = candidate.indexOf(".");
        if (dot === -1 || candidate.indexOf(".", dot + 1) === -1) return otherProvider;
        candidate = candidate.slice(dot + 1);
      }
    },
  };
}
