/**
 * Recipient addresses: RFC 5321 syntax and length rules, normalisation, and
 * masking for logs and records.
 */
import { domainToASCII, domainToUnicode } from "node:url";

/** Control, format (bidi overrides, zero-width) and line/paragraph separator characters. */
const unsafeCharacters = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\uFFFD]/u;

/** True when `text` holds CR, LF, another control character or an invisible format character. */
export function hasUnsafeCharacters(text: string): boolean {
  return unsafeCharacters.test(text);
}

// RFC 5322 atext; a dot-atom local part. Quoted local parts are refused: no
// mail provider issues them and they are a classic header-injection vector.
const dotAtom = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
const label = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

export interface ParsedAddress {
  /** The address to send to: local part as given, domain in ASCII (punycode), lower-cased. */
  readonly address: string;
  /** Lower-cased form used to key codes and limits (`John@x` and `john@x` are one person). */
  readonly key: string;
  readonly domain: string;
}

/** Returns the parsed address, or a sentence saying which rule it breaks. */
export function parseAddress(raw: string): ParsedAddress | string {
  if (raw.length === 0) return "required";
  if (raw.length > 254) return "must be at most 254 characters (RFC 5321)";
  if (hasUnsafeCharacters(raw)) return "must not contain CR, LF or other control characters";
  // A ',' or ';' after an '@' cannot be part of a domain: it separates a list
  // (`a@x.com, b@y.com` as copied from a mail client), spaces or not.
  if (/@.*[,;]/.test(raw)) return "must be one address per request, not a list separated by ',' or ';'";
  if (/\s/.test(raw)) return "must not contain spaces; send only the address, without a display name";
  if (/[<>]/.test(raw)) return "must not contain angle brackets; send only the address (local@domain), without < >";
  const at = raw.lastIndexOf("@");
  if (at <= 0 || at === raw.length - 1) return "must be an address of the form local@domain";
  const local = raw.slice(0, at);
  const domainInput = raw.slice(at + 1);
  if (local.includes('"')) return "must be a plain address (no quoted local part)";
  if (local.includes("@")) return "must contain exactly one '@' (one address, of the form local@domain)";
  if (local.length > 64) return "local part must be at most 64 characters (RFC 5321)";
  if (!dotAtom.test(local)) {
    return /[^ -~]/.test(local)
      ? "non-ASCII local parts (SMTPUTF8) are not supported"
      : "local part has a character or dot placement RFC 5321 does not allow";
  }
  if (domainInput.startsWith("[")) return "address literals ([1.2.3.4]) are not accepted; use a domain name";
  const domain = checkedDomain(domainInput.toLowerCase());
  if (domain === undefined) return "domain is not a valid host name";
  const address = `${local}@${domain}`;
  if (address.length > 254) return "must be at most 254 characters (RFC 5321)";
  return { address, key: address.toLowerCase(), domain };
}

// Most mail goes to a few domains (gmail.com, naver.com...): each one is
// converted (domainToASCII) and checked once, not per request. Bounded, as
// the domains come from callers.
const checkedDomains = new Map<string, string | undefined>();
const maxCheckedDomains = 1000;

/**
 * ASCII a host name may not hold. domainToASCII is a URL host parser: it
 * percent-decodes (`gm%61il.com` is gmail.com) and stops at `/`, `?`, `#`
 * or `\` (`ana@attacker.example/gmail.com` would go to attacker.example),
 * so such input must never reach it. Non-ASCII is left to IDNA.
 */
const notHostAscii = /[^A-Za-z0-9.\-\u0080-\uFFFF]/;

/** The lower-cased domain in ASCII (punycode), or undefined when it is not a valid host name. */
function checkedDomain(lowerCased: string): string | undefined {
  if (checkedDomains.has(lowerCased)) return checkedDomains.get(lowerCased);
  const domain = notHostAscii.test(lowerCased) ? "" : domainToASCII(lowerCased);
  const labels = domain.split(".");
  const valid =
    domain !== "" &&
    domain.length <= 253 &&
    labels.length >= 2 &&
    labels.every((part) => label.test(part) && !undecodable(part)) &&
    !/^\d+$/.test(labels.at(-1) ?? "");
  if (checkedDomains.size >= maxCheckedDomains) checkedDomains.clear();
  checkedDomains.set(lowerCased, valid ? domain : undefined);
  return valid ? domain : undefined;
}

/**
 * An `xn--` label that is not the punycode of any valid IDN label (`xn--a`,
 * `xn--abc`): domainToASCII passes ASCII labels through unchecked, and no
 * such domain can exist, so the mail could only bounce.
 */
function undecodable(asciiLabel: string): boolean {
  return asciiLabel.startsWith("xn--") && domainToUnicode(asciiLabel).startsWith("xn--");
}

/** `john.doe@gmail.com` -> `j***@gmail.com`. Safe for logs, records and explanations. */
export function maskAddress(address: string): string {
  const at = address.lastIndexOf("@");
  if (at <= 0) return "***";
  return `${address.slice(0, 1)}***${address.slice(at)}`;
}

// An address inside free text: a run of local-part characters (RFC 5322
// atext, dots, and what SMTPUTF8 allows; an apostrophe too: o'brien@ is a
// real address), `@`, and a domain of ASCII or Unicode labels (RFC 6533
// reports carry UTF-8 domains) or an address literal.
const addressInText = /([^\s<>()[\]",;:@]+)@([\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)+|\[[^\]\s]+\])/gu;
/** The characters a local part is made of: a bare local part is masked only as a whole token. */
const localPartCharacter = "[\\p{L}\\p{N}.!#$%&'*+/=?^_`{|}~-]";

/**
 * Masks every address in a text (`j***@example.com`), and the local part of
 * `recipient` where it stands alone in any case (`unknown user: "Jane.Doe"`).
 * Relays and DSNs echo the recipient in their words, which end up in
 * records, logs, spans and API answers.
 */
export function maskAddressesIn(text: string, recipient = ""): string {
  let masked = !text.includes("@")
    ? text
    : text.replace(addressInText, (_all, local: string, domain: string) => {
        // A quote before the address (`'jane@x'`) is not part of what is masked.
        const lead = /^'*/.exec(local)?.[0] ?? "";
        return `${lead}${local.slice(lead.length, lead.length + 1)}***@${domain}`;
      });
  const local = recipient.slice(0, Math.max(0, recipient.lastIndexOf("@")));
  // Most replies (`250 2.0.0 Ok: queued as 4F2A`) name nothing: no pattern is built for them.
  if (local.length >= 2 && masked.toLowerCase().includes(local.toLowerCase())) {
    const escaped = local.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    const alone = new RegExp(`(?<!${localPartCharacter})${escaped}(?!${localPartCharacter}|@)`, "giu");
    masked = masked.replace(alone, (found: string) => `${found.slice(0, 1)}***`);
  }
  return masked;
}
