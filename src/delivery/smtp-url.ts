/**
 * The relay URL (`smtp://user:pass@host:587`, `smtps://...`, `?starttls=off`),
 * parsed and checked without loading nodemailer: the transport connects with
 * it, and config.ts checks SMTP_URL with it at start-up.
 */
import { isIP } from "node:net";

/** Where and how to reach the relay, parsed from the URL. */
export interface RelayEndpoint {
  readonly host: string;
  readonly port: number;
  /** Implicit TLS (`smtps://`). */
  readonly secure: boolean;
  /** STARTTLS is mandatory (plain `smtp://` without `starttls=off`). */
  readonly requireTls: boolean;
  readonly auth: { readonly user: string; readonly pass: string } | undefined;
  /** `host:port` (`[v6]:port`), for records and explanations. */
  readonly relay: string;
}

/**
 * Parses and validates the relay URL (see SmtpTransportOptions.url in
 * smtp-transport.ts). Throws an Error naming the problem, never the password.
 */
export function parseSmtpUrl(raw: string): RelayEndpoint {
  const shown = redactUrl(raw);
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    const port = badPortText(raw);
    if (port !== undefined) throw new Error(`SMTP URL port must be a number from 1 to 65535, not "${port}": ${shown}`);
    const hint = shown.includes("@") ? " (percent-encode / ? # @ in the user and password: %2F %3F %23 %40)" : "";
    throw new Error(`SMTP URL is not a valid URL${hint}: ${shown}; ${urlForms}`);
  }
  if (hasMisreadUserinfo(raw, url)) {
    throw new Error(
      `SMTP URL: the user or password is not read as such: percent-encode / ? # @ in them (%2F %3F %23 %40): ${shown}`,
    );
  }
  if (url.protocol !== "smtp:" && url.protocol !== "smtps:") {
    throw new Error(
      `SMTP URL must start with smtp:// (STARTTLS) or smtps:// (implicit TLS), not ${url.protocol}//: ${shown}`,
    );
  }
  const secure = url.protocol === "smtps:";
  // URL keeps the brackets of an IPv6 literal in `hostname`.
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  if (host === "") throw new Error(`SMTP URL has no host: ${shown}`);
  const port = url.port === "" ? (secure ? 465 : 587) : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new Error(`SMTP URL port must be a number from 1 to 65535, not "${url.port}": ${shown}`);
  }
  if (url.pathname !== "" && url.pathname !== "/") {
    throw new Error(`SMTP URL must not have a path (${url.pathname}): ${shown}`);
  }
  if (url.hash !== "") throw new Error(`SMTP URL must not have a #fragment: ${shown}`);

  let requireTls = !secure;
  for (const [key, value] of url.searchParams) {
    if (key !== "starttls") {
      throw new Error(`SMTP URL has an unknown parameter "${key}" (only starttls=off is known): ${shown}`);
    }
    if (secure) throw new Error(`SMTP URL: starttls applies to smtp:// only, smtps:// is always TLS: ${shown}`);
    if (value === "off") requireTls = false;
    else if (value !== "required") {
      throw new Error(`SMTP URL: starttls must be "off" or "required", not "${value}": ${shown}`);
    }
  }

  let auth: RelayEndpoint["auth"];
  if (url.username !== "" || url.password !== "") {
    let user: string;
    let pass: string;
    try {
      user = decodeURIComponent(url.username);
      pass = decodeURIComponent(url.password);
    } catch {
      throw new Error(`SMTP URL user or password has a malformed %-escape: ${shown}`);
    }
    if (user === "") throw new Error(`SMTP URL has a password but no user: ${shown}`);
    auth = { user, pass };
  }

  const relay = `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  return { host, port, secure, requireTls, auth, relay };
}

/** What a relay URL looks like, for the error that finds none. */
const urlForms = "such as smtp://user:pass@smtp.example.com:587 (STARTTLS) or smtps://user:pass@smtp.example.com:465 (TLS)";

/**
 * The port as written in a URL the parser refused, when that port is what is
 * wrong (`:58x7`, `:99999`); else undefined. Read after the last `@`, so
 * never from the password.
 */
function badPortText(raw: string): string | undefined {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(raw)?.[0];
  if (scheme === undefined) return undefined;
  const rest = raw.slice(scheme.length);
  const hostPort = rest.slice(rest.lastIndexOf("@") + 1).split(/[/?#]/)[0] ?? "";
  const port = /^(?:\[[^\]]*\]|[^:[\]]*):(.*)$/.exec(hostPort)?.[1];
  if (port === undefined || port === "") return undefined;
  return /^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65_535 ? undefined : port;
}

/**
 * The URL as it may appear in an error or log: the password replaced.
 *
 * Everything up to the last `@` is the user information, however the URL
 * parser would read it: a password with an unencoded `#`, `/`, `?` or `@`
 * (common in generated ones) makes the URL malformed, and that is exactly
 * when its text goes into an error message. The user is shown only when it
 * is plainly one (no `/`, `?` or `#` in it), and not with `hideUser` (where a
 * key may stand in the user's place, as in a collector's URL).
 */
export function redactUrl(raw: string, options: { readonly hideUser?: boolean } = {}): string {
  // Without a scheme (a value that is not a URL at all) the user information starts the text.
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(raw)?.[0] ?? "";
  const at = raw.lastIndexOf("@");
  if (at < 0 || at < scheme.length) return raw;
  const userinfo = raw.slice(scheme.length, at);
  const colon = userinfo.indexOf(":");
  const user = colon === -1 ? userinfo : userinfo.slice(0, colon);
  const shownUser = options.hideUser === true || /[/?#]/.test(user) ? "***" : colon === -1 ? user : `${user}:***`;
  return `${scheme}${shownUser}${raw.slice(at)}`;
}

/**
 * True when the URL's text has user information (something before an `@`
 * after the scheme) that the URL parser did not read as a user or password:
 * an unencoded `/`, `?` or `#` in the password moved it into the path, query
 * or fragment, where error messages would echo it.
 */
export function hasMisreadUserinfo(raw: string, url: URL): boolean {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(raw)?.[0];
  if (scheme === undefined) return false;
  const at = raw.lastIndexOf("@");
  return at > scheme.length && url.username === "" && url.password === "";
}
