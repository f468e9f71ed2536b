/**
 * The one place that reads the environment. `loadConfig` parses and validates
 * every variable once and fails with a message naming the variable; nothing
 * else in the service reads `process.env`.
 *
 * Durations accept `500ms`, `30s`, `10m`, `2h`, `7d`, and `0`; any other
 * number needs its unit (see parseDuration).
 */
import { createPrivateKey, randomBytes, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { isAbsolute, resolve } from "node:path";
import { purposes } from "./delivery/record.js";
import { isSenderAddress } from "./delivery/message.js";
import { parseAddress } from "./otp/address.js";
import { hasMisreadUserinfo, parseSmtpUrl, redactUrl } from "./delivery/smtp-url.js";
import type { TokenCaller } from "./auth/caller-identity.js";
import type { LimitsConfig, LimitWindow } from "./limits/types.js";
import { checkCertificateSet, unreadableReason, type CertificatePart } from "./tls/certificate-set.js";
import { crlAheadLimitMs, type ClientCrls } from "./tls/client-crl.js";

export type Environment = "production" | "development" | "test";

/**
 * Redis Sentinel mode (REDIS_SENTINEL_MASTER): REDIS_URL lists the sentinels;
 * the data nodes' credentials, database and TLS come from its first URL.
 */
export interface RedisSentinelConfig {
  /** REDIS_SENTINEL_MASTER: the master set's name, as the sentinels monitor it (`mymaster`). */
  readonly master: string;
  /** REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD: what the sentinels themselves ask for (not the data nodes'). */
  readonly username: string | undefined;
  readonly password: string | undefined;
}

export interface Config {
  readonly env: Environment;
  /** `host:port` the gRPC server listens on. */
  readonly grpcAddr: string;
  /** GRPC_MAX_CONCURRENT_STREAMS: most calls in progress at once on one client connection (HTTP/2). */
  readonly grpcMaxConcurrentStreams: number;
  readonly logLevel: string;
  /** Who may call: bearer tokens, client certificates (with `tls.clientCa`), purposes per caller. */
  readonly auth: {
    /** One entry per accepted token (a caller may have several, for rotation): the token's SHA-256. */
    readonly tokens: readonly TokenCaller[];
    /**
     * AUTH_TOKENS given as a file path: the file and its text as read at
     * start-up (it is re-read every `tlsReloadIntervalMs` and on SIGHUP,
     * see auth/token-file-reloader.ts); undefined when the variable lists
     * the entries itself.
     */
    readonly tokensFile: { readonly path: string; readonly text: string } | undefined;
    /** Callers limited to some purposes; a caller not listed may use every purpose. */
    readonly purposes: ReadonlyMap<string, readonly string[]>;
    /** No caller configured (never in production): every call is the anonymous caller "dev". */
    readonly anonymous: boolean;
  };
  /**
   * TLS of the gRPC server; undefined: plaintext. `clientCa` turns on client
   * certificates (mTLS callers), `clientCrl` checks them against CRLs (the
   * text as given, and the CRLs as checked, see tls/client-crl.ts). `paths`:
   * the file each part was read from, undefined for a part given as PEM text
   * (files are re-read, see `tlsReloadIntervalMs`; PEM text never is).
   */
  readonly tls:
    | {
        readonly cert: string;
        readonly key: string;
        readonly clientCa: string | undefined;
        readonly clientCrl: { readonly pem: string; readonly checked: ClientCrls } | undefined;
        /** GRPC_SSL_CIPHER_SUITES (grpc-js's variable): an OpenSSL cipher list; undefined: Node's default. */
        readonly cipherSuites: string | undefined;
        readonly paths: {
          readonly cert: string | undefined;
          readonly key: string | undefined;
          readonly clientCa: string | undefined;
          readonly clientCrl: string | undefined;
        };
      }
    | undefined;
  /**
   * TLS_RELOAD_INTERVAL: how often certificate files (TLS_CERT, TLS_KEY,
   * TLS_CLIENT_CA, TLS_CLIENT_CRL, BOUNCE_TLS_CERT, BOUNCE_TLS_KEY given as
   * paths) and the AUTH_TOKENS file are read again, a renewed set then
   * served to new connections, a new token list judging the next call;
   * undefined (`off`): only on SIGHUP.
   */
  readonly tlsReloadIntervalMs: number | undefined;
  readonly limits: LimitsConfig;
  /**
   * undefined: the in-memory store (development only). `cluster`: url lists
   * seed nodes of a Redis Cluster. `sentinel`: url lists Redis Sentinels,
   * which name the master of the set `sentinel.master`.
   */
  readonly redis:
    | {
        readonly url: string;
        readonly prefix: string;
        readonly commandTimeoutMs: number;
        readonly cluster: boolean;
        readonly sentinel: RedisSentinelConfig | undefined;
        /** REDIS_TLS_CA: PEM text of a private CA that signs the server's certificate (rediss:// only). */
        readonly tlsCa: string | undefined;
      }
    | undefined;
  readonly smtp: {
    /** undefined: the embedded capture sink (development only). */
    readonly url: string | undefined;
    /** PEM text of a private CA that signs the relay's certificate. */
    readonly tlsCa: string | undefined;
    readonly maxConnections: number;
    readonly maxMessagesPerConnection: number;
    readonly connectionTimeoutMs: number;
    readonly greetingTimeoutMs: number;
    readonly socketTimeoutMs: number;
    readonly maxAttempts: number;
    readonly retryBaseDelayMs: number;
    readonly retryMaxDelayMs: number;
    /** How long SendOtp waits for the relay's verdict before answering. */
    readonly waitBudgetMs: number;
    /**
     * SMTP_MAX_BACKLOG: most messages that may wait for a pooled connection
     * before SendOtp refuses new ones (src/delivery/backlog.ts); undefined
     * when `off`.
     */
    readonly maxBacklog: number | undefined;
  };
  readonly mail: {
    readonly fromName: string;
    readonly fromAddress: string;
    readonly defaultLocale: string;
    readonly templatesDir: string | undefined;
    /**
     * TEMPLATES_RELOAD_INTERVAL: how often TEMPLATES_DIR is read again, a
     * changed set that passes the start-up checks then used for the next
     * mail; undefined (`off`): only on SIGHUP.
     */
    readonly templatesReloadIntervalMs: number | undefined;
  };
  readonly otp: {
    readonly secret: Buffer;
    /** True when no OTP_SECRET was given and a random one was made (dev only). */
    readonly secretGenerated: boolean;
    /**
     * OTP_SECRET_PREVIOUS: the secret OTP_SECRET replaced, still consulted for
     * a while after `rotatedAt` (see src/otp/secret-rotation.ts); undefined
     * when no rotation is going on.
     */
    readonly previousSecret: Buffer | undefined;
    /** OTP_SECRET_ROTATED_AT in ms since the epoch; set exactly when previousSecret is. */
    readonly rotatedAt: number | undefined;
    readonly length: number;
    readonly ttlDefaultMs: number;
    readonly ttlMinMs: number;
    readonly ttlMaxMs: number;
    readonly maxFailedAttempts: number;
  };
  readonly recordRetentionMs: number;
  readonly idempotencyTtlMs: number;
  /** Where the capture sink writes .eml files. */
  readonly outboxDir: string;
  readonly shutdownGraceMs: number;
  /** Prometheus metrics (see src/telemetry/metrics.ts). */
  readonly metrics: {
    /** METRICS_ADDR: `host:port` of the /metrics endpoint; undefined when `off`. */
    readonly addr: string | undefined;
    /** True when METRICS_ADDR was not set (outside production a taken default port falls back to a free one). */
    readonly addrIsDefault: boolean;
    /**
     * METRICS_PROVIDER_DOMAINS: recipient domain -> provider class rules
     * that override and extend the built-in ones (gmail.com -> gmail...).
     */
    readonly providerDomains: Readonly<Record<string, string>>;
  };
  /**
   * DKIM signing: set when DKIM_SELECTOR and DKIM_PRIVATE_KEY are given.
   * DKIM_DOMAIN (the d= domain) defaults to the From address's domain.
   */
  readonly dkim: { readonly domain: string; readonly selector: string; readonly privateKey: string } | undefined;
  readonly bounce: {
    /** BOUNCE_DOMAIN: domain of the envelope sender; undefined means the From address's domain. */
    readonly domain: string | undefined;
    /**
     * BOUNCE_SMTP_ADDR: where the bounce intake (the bounce domain's MX)
     * listens. Development: 127.0.0.1:2526 (a free port when taken);
     * production and test: off unless set; `off` disables it anywhere.
     */
    readonly smtpAddr: string | undefined;
    /** Whether BOUNCE_SMTP_ADDR is the development default (may fall back to a free port). */
    readonly smtpAddrIsDefault: boolean;
    /** BOUNCE_CONNECTIONS_PER_MINUTE: new intake connections per peer (IPv4 address or IPv6 /64) per minute. */
    readonly connectionsPerMinute: number;
    /**
     * BOUNCE_TLS_CERT, BOUNCE_TLS_KEY (PEM), BOUNCE_TLS_REQUIRED: the intake
     * offers STARTTLS with this certificate, and with `required` refuses MAIL
     * before it. undefined: no STARTTLS. `paths` as for `tls`.
     */
    readonly tls:
      | {
          readonly cert: string;
          readonly key: string;
          readonly required: boolean;
          readonly paths: { readonly cert: string | undefined; readonly key: string | undefined };
        }
      | undefined;
    /** SUPPRESSION_TTL: how long a "no such mailbox" bounce or an abuse/fraud complaint suppresses its recipient. */
    readonly suppressionTtlMs: number;
    /**
     * FEEDBACK_ADDRESS, lower-cased: the address registered with mailbox
     * providers' feedback loops, where the intake takes ARF reports besides
     * the VERP addresses. Default `fbl@<bounce domain>`; undefined: `off`.
     */
    readonly feedbackAddress: string | undefined;
  };
  /** The sender-domain doctor (`npm run doctor`, start-up checks). */
  readonly doctor: {
    /** RELAY_IP: the relay's public egress IP; undefined means resolve the SMTP host. */
    readonly relayIp: string | undefined;
    /** DNSBL_ZONES: zones the relay IP is looked up in; empty disables the check. */
    readonly dnsblZones: readonly string[];
    /** DNS_SERVERS: `ip` or `ip:port` entries; empty means the system's resolvers. */
    readonly dnsServers: readonly string[];
    /** DOCTOR_TIMEOUT: bound on each DNS lookup and each SMTP step. */
    readonly timeoutMs: number;
  };
}

/** A configuration problem; `message` names the variable and the rule. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

type Env = Readonly<Record<string, string | undefined>>;

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses `500ms`, `30s`, `10m`, `2h`, `7d`, or `0` (no unit needed). Any
 * other number without a unit is refused (undefined): `SHUTDOWN_GRACE=10` or
 * `SUPPRESSION_TTL=2592000` was meant in seconds, and read as milliseconds it
 * would start the service with a grace of 10 ms or a 43-minute suppression.
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (match === null) return undefined;
  if (match[2] === undefined && Number(match[1]) !== 0) return undefined;
  const value = Number(match[1]) * (durationUnits[match[2] ?? "ms"] ?? 1);
  return Number.isFinite(value) ? Math.round(value) : undefined;
}

class Reader {
  constructor(private readonly env: Env) {}

  string(name: string): string | undefined {
    const value = this.env[name];
    return value === undefined || value.trim() === "" ? undefined : value.trim();
  }

  int(name: string, fallback: number, min: number, max: number): number {
    const raw = this.string(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      throw new ConfigError(`${name}=${raw}: must be a whole number from ${min} to ${max}`);
    }
    return value;
  }

  duration(name: string, fallback: number, minMs: number, maxMs: number): number {
    const raw = this.string(name);
    if (raw === undefined) return fallback;
    const value = parseDuration(raw);
    if (value === undefined || value < minMs || value > maxMs) {
      throw new ConfigError(
        `${name}=${raw}: must be a duration such as 500ms, 30s, 10m, 2h or 7d, from ${formatMs(minMs)} to ${formatMs(maxMs)}${unitHint(raw)}`,
      );
    }
    return value;
  }

  /** `5/15m,20/1d` (at most 5 per 15 minutes and 20 per day) or `off`. */
  windows(name: string, fallback: string): readonly LimitWindow[] {
    const raw = this.string(name) ?? fallback;
    if (raw.toLowerCase() === "off") return [];
    return raw.split(",").map((part) => {
      const match = /^\s*(\d{1,7})\s*\/\s*(\S+)\s*$/.exec(part);
      const max = Number(match?.[1]);
      const windowMs = parseDuration(match?.[2] ?? "");
      if (match === null || max < 1 || max > 1_000_000 || windowMs === undefined || windowMs < 1000 || windowMs > 31 * 86_400_000) {
        throw new ConfigError(
          `${name}=${raw}: must be COUNT/WINDOW pairs separated by commas, such as 5/15m,20/1d (count 1-1000000, window 1s-31d), or off${unitHint(match?.[2] ?? "")}`,
        );
      }
      return { max, windowMs };
    });
  }

  boolean(name: string): boolean {
    const raw = this.string(name)?.toLowerCase();
    if (raw === undefined || raw === "false" || raw === "0") return false;
    if (raw === "true" || raw === "1") return true;
    throw new ConfigError(`${name}=${raw}: must be true or false`);
  }
}

/** Said after a duration's rule when the value was a bare number: which unit it meant, only its writer knows. */
function unitHint(raw: string): string {
  const bare = raw.trim();
  // 0 needs no unit: when it is refused, its range is why, not a unit.
  return /^\d+(?:\.\d+)?$/.test(bare) && Number(bare) !== 0 ? ` (${bare} has no unit: write ${bare}s or ${bare}m, whichever was meant)` : "";
}

function formatMs(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** Longest MAIL_FROM display name, in characters. */
const maxDisplayName = 128;

/** Parses `"Display Name" <addr@domain>` or `Display Name <addr@domain>`; a bare address lacks the name. */
function parseMailFrom(raw: string): { name: string; address: string } {
  const angle = /^\s*(?:"?([^"<]*?)"?\s*)?<([^<>\s]+@[^<>\s]+)>\s*$/.exec(raw);
  const bare = /^\s*([^<>\s"]+@[^<>\s"]+)\s*$/.exec(raw);
  const name = angle?.[1]?.trim() ?? "";
  const address = angle?.[2] ?? bare?.[1];
  // The message builder's own rule: an address it would refuse at every send stops the start instead.
  if (address === undefined || /[\r\n]/.test(raw) || !isSenderAddress(address)) {
    throw new ConfigError(
      `MAIL_FROM=${raw}: must be an address with an optional display name, such as "Acme" <no-reply@acme.example>`,
    );
  }
  // The display name is also the product name of the emails ("482913 is your Acme sign-in code"):
  // without one, users would get mail from, and about, "OtpEmail", the name of this service.
  if (name === "") {
    throw new ConfigError(
      `MAIL_FROM=${raw}: needs a display name, the product name your users know, which the emails also use ` +
        `("482913 is your Acme sign-in code"): such as "Acme" <${address}>`,
    );
  }
  // Also the Subject's: a name past this (one word of a thousand letters cannot be folded) would make
  // header lines longer than the 998 characters RFC 5322 allows, which relays break or refuse.
  if ([...name].length > maxDisplayName) {
    throw new ConfigError(
      `MAIL_FROM: the display name is ${[...name].length} characters; at most ${maxDisplayName}, as it is also in every Subject`,
    );
  }
  return { name, address };
}

function parseHostPort(name: string, raw: string): string {
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw);
  if (match === null || Number(match[2]) > 65535) {
    throw new ConfigError(`${name}=${raw}: must be host:port, such as 127.0.0.1:50051 or 0.0.0.0:50051`);
  }
  return raw;
}

/**
 * Reads a PEM value given inline or as a file path. With `secret` (private
 * keys), the value is shown in a message only when it is plainly a path
 * (`/...`, `./...`): a key pasted without its PEM lines would otherwise be
 * echoed as a "file name".
 */
function readPem(name: string, raw: string | undefined, secret = false): string | undefined {
  if (raw === undefined) return undefined;
  if (raw.includes("-----BEGIN")) return raw;
  try {
    return readFileSync(raw, "utf8");
  } catch (error) {
    throw new ConfigError(
      `${name}: cannot read ${shownPath(raw, secret)}${relativeTo(raw, secret)}: ${unreadableReason(error)}; give PEM text or the path of a PEM file`,
    );
  }
}

/**
 * Where a relative path was looked for: the process's directory, which for
 * `npm start` is the package's root whatever directory it was typed in, and
 * `/app` in the image. Not said of a secret's value that is not plainly a
 * path (see readPem): it may be a pasted key, not a path at all.
 */
function relativeTo(raw: string, secret: boolean): string {
  if (isAbsolute(raw) || (secret && !/^\.{0,2}\//.test(raw))) return "";
  return ` (a relative path, looked for as ${resolve(raw)})`;
}

/** A file name as a message may show it: a secret's value only when it is plainly a path (see readPem). */
function shownPath(raw: string, secret: boolean): string {
  return secret && !/^\.{0,2}\//.test(raw) ? "the file it names" : raw;
}

/** A part of a listener's certificate set (see tls/certificate-set.ts), with the file it came from, if any. */
function readCertificatePart(variable: string, raw: string, secret: boolean): CertificatePart & { readonly path: string | undefined } {
  const pem = readPem(variable, raw, secret) ?? "";
  const path = pem === raw ? undefined : raw;
  return { variable, pem, path, origin: path === undefined ? "the value" : shownPath(path, secret) };
}

/**
 * A listener's certificate, key and (gRPC with mTLS) client CA and CRL,
 * given as PEM text or file paths, checked at `now` as a reload checks them
 * (a failure stops the start, exit 78); the key's content never appears in
 * a message.
 */
function readCertificateSet(now: number, cert: [string, string], key: [string, string], ca?: [string, string], crl?: [string, string]) {
  const parts = {
    cert: readCertificatePart(cert[0], cert[1], false),
    key: readCertificatePart(key[0], key[1], true),
    ca: ca === undefined ? undefined : readCertificatePart(ca[0], ca[1], false),
    crl: crl === undefined ? undefined : readCertificatePart(crl[0], crl[1], false),
  };
  // A CRL a few minutes early starts the service (its CA's certificates refused until then); more stops it.
  const checked = checkCertificateSet(parts, now, { aheadLimitMs: crlAheadLimitMs });
  if (!checked.ok) throw new ConfigError(`${checked.variable}: ${checked.reason}`);
  return { ...parts, checked };
}

/** Caller names: printable ASCII without commas (a SPIFFE id like spiffe://acme/billing is fine). */
const callerNamePattern = /^[\x21-\x2B\x2D-\x7E]{1,256}$/;

/** Splits `a:x,b:y` entries at each one's last colon (caller names may hold colons). */
function callerEntries(name: string, raw: string | undefined, rule: string): { caller: string; value: string }[] {
  if (raw === undefined) return [];
  return raw
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "")
    .map((entry, index) => {
      const colon = entry.lastIndexOf(":");
      const caller = entry.slice(0, colon);
      if (colon < 1 || !callerNamePattern.test(caller)) {
        throw new ConfigError(`${name}: entry ${index + 1} must be ${rule}`);
      }
      return { caller, value: entry.slice(colon + 1).trim() };
    });
}

/** SHA-256 of the empty string. */
const emptyTokenSha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const tokenRule = "CALLER:SHA256 with the token's SHA-256 in 64 hex digits (printf %s \"$TOKEN\" | sha256sum)";

/**
 * AUTH_TOKENS is a file path when it starts with `/`, `./` or `../`, as a
 * Kubernetes Secret mounted as a file would be; anything else is the entries
 * themselves. A caller name cannot start so usefully: the shape of a path
 * decides, not whether such a file happens to exist.
 */
function isTokensPath(raw: string): boolean {
  return /^\.{0,2}\//.test(raw);
}

/** What the whole list of token callers is checked against, at start-up and at each reload of a token file. */
export interface TokenListRules {
  /** NODE_ENV=production: some caller must be configured. */
  readonly production: boolean;
  /** TLS_CLIENT_CA is set: callers may also come with client certificates. */
  readonly clientCertificates: boolean;
  /** The callers CALLER_PURPOSES names: each must be a token caller unless client certificates may name it. */
  readonly purposeCallers: readonly string[];
}

/** A token list that passed its checks, and the callers of CALLER_PURPOSES that only a token can make and it lacks. */
export interface TokenList {
  readonly tokens: TokenCaller[];
  /**
   * Empty with TLS_CLIENT_CA (a certificate may name them). At start-up a typo, which stops it; at a reload of a
   * token file a revocation, which must never be refused (see auth/token-file-reloader.ts).
   */
  readonly unlistedPurposeCallers: readonly string[];
}

/**
 * The token callers of AUTH_TOKENS entries (`file` undefined) or of a token
 * file's text, with every check of start-up: a caller CALLER_PURPOSES names
 * that the list lacks is a ConfigError too (see `readTokenList`).
 */
export function parseTokenCallers(text: string, file: string | undefined, rules: TokenListRules): TokenCaller[] {
  const { tokens, unlistedPurposeCallers } = readTokenList(text, file, rules);
  const [missing] = unlistedPurposeCallers;
  if (missing !== undefined) throw new ConfigError(`CALLER_PURPOSES: ${missing} is not a caller of AUTH_TOKENS`);
  return tokens;
}

/**
 * The token callers of AUTH_TOKENS entries (`file` undefined) or of a token
 * file's text (one entry per line or comma-separated, `#` comments, blank
 * lines), checked as a whole against `rules`. Throws ConfigError naming
 * AUTH_TOKENS and the entry (or the file's line), never a hash; the callers
 * of CALLER_PURPOSES it lacks are returned, the caller decides.
 */
export function readTokenList(text: string, file: string | undefined, rules: TokenListRules): TokenList {
  const entries: { caller: string; value: string; where: string }[] = [];
  if (file === undefined) {
    for (const [index, entry] of callerEntries("AUTH_TOKENS", text, tokenRule).entries()) entries.push({ ...entry, where: `entry ${index + 1}` });
  } else {
    for (const [index, line] of text.split(/\r?\n/).entries()) {
      // A `#` that starts the line or follows a blank starts a comment (a caller name may hold `#` itself).
      const content = line.replace(/(^|\s)#.*$/, "");
      const where = `${file} line ${index + 1}`;
      try {
        for (const entry of callerEntries("AUTH_TOKENS", content, tokenRule)) entries.push({ ...entry, where });
      } catch {
        throw new ConfigError(`AUTH_TOKENS: ${where} must be ${tokenRule}`);
      }
    }
  }
  const seen = new Map<string, string>();
  const tokens = entries.map(({ caller, value, where }) => {
    if (!/^[0-9a-fA-F]{64}$/.test(value)) throw new ConfigError(`AUTH_TOKENS: ${where} must be ${tokenRule}`);
    // What `printf %s "$TOKEN" | sha256sum` prints when $TOKEN was never set: a caller no request can be
    // (an empty bearer token is malformed), which would still count as "a caller is configured".
    if (value.toLowerCase() === emptyTokenSha256) {
      throw new ConfigError(
        `AUTH_TOKENS: ${where} (${caller}) is the SHA-256 of an empty token, which no caller can send: ` +
          `was $TOKEN unset when it was hashed? Make one (TOKEN=$(openssl rand -base64 32)) and hash that`,
      );
    }
    const key = value.toLowerCase();
    const first = seen.get(key);
    if (first !== undefined) {
      throw new ConfigError(`AUTH_TOKENS: the same token hash is listed twice${file === undefined ? "" : ` (${first} and ${where})`}`);
    }
    seen.set(key, where);
    return { caller, sha256: Buffer.from(value, "hex") };
  });
  if (rules.production && tokens.length === 0 && !rules.clientCertificates) {
    throw new ConfigError(
      `AUTH_TOKENS: required when NODE_ENV=production (or TLS_CLIENT_CA for callers with client certificates): ${file === undefined ? "no caller is configured" : `${file} lists no token`}`,
    );
  }
  const unlistedPurposeCallers = rules.clientCertificates
    ? []
    : rules.purposeCallers.filter((caller) => !tokens.some((t) => t.caller === caller));
  return { tokens, unlistedPurposeCallers };
}

/** A token file as read at start-up; undefined when AUTH_TOKENS lists entries (or is not set). */
function readTokensFile(raw: string | undefined): { path: string; text: string } | undefined {
  if (raw === undefined || !isTokensPath(raw)) return undefined;
  try {
    return { path: raw, text: readFileSync(raw, "utf8") };
  } catch (error) {
    throw new ConfigError(
      `AUTH_TOKENS: cannot read ${raw}${relativeTo(raw, false)}: ${unreadableReason(error)}; a value starting with / or ./ is the path of a file of CALLER:SHA256 entries`,
    );
  }
}

/** AUTH_TOKENS, CALLER_PURPOSES, TLS_*: who may call, and how the server proves who it is. */
function readCallers(read: Reader, production: boolean, now: number): Pick<Config, "auth" | "tls"> {
  const tokensRaw = read.string("AUTH_TOKENS");
  const tokensFile = readTokensFile(tokensRaw);

  const certRaw = read.string("TLS_CERT");
  const keyRaw = read.string("TLS_KEY");
  const caRaw = read.string("TLS_CLIENT_CA");
  const crlRaw = read.string("TLS_CLIENT_CRL");
  if ((certRaw === undefined) !== (keyRaw === undefined)) {
    throw new ConfigError(`${certRaw === undefined ? "TLS_CERT" : "TLS_KEY"}: required with ${certRaw === undefined ? "TLS_KEY" : "TLS_CERT"} (PEM text or a file path)`);
  }
  if (caRaw !== undefined && certRaw === undefined) {
    throw new ConfigError("TLS_CLIENT_CA: client certificates need TLS: also set TLS_CERT and TLS_KEY");
  }
  if (crlRaw !== undefined && caRaw === undefined) {
    throw new ConfigError("TLS_CLIENT_CRL: revokes client certificates, which need TLS_CLIENT_CA (the CA that signs them and the CRL)");
  }
  let tls: Config["tls"];
  if (certRaw !== undefined && keyRaw !== undefined) {
    const { cert, key, ca, crl, checked } = readCertificateSet(
      now,
      ["TLS_CERT", certRaw],
      ["TLS_KEY", keyRaw],
      caRaw === undefined ? undefined : ["TLS_CLIENT_CA", caRaw],
      crlRaw === undefined ? undefined : ["TLS_CLIENT_CRL", crlRaw],
    );
    tls = {
      cert: cert.pem,
      key: key.pem,
      clientCa: ca?.pem,
      clientCrl: crl === undefined || checked.set.crl === undefined ? undefined : { pem: crl.pem, checked: checked.set.crl },
      cipherSuites: read.string("GRPC_SSL_CIPHER_SUITES"),
      paths: { cert: cert.path, key: key.path, clientCa: ca?.path, clientCrl: crl?.path },
    };
  }
  const purposeRule = `CALLER:PURPOSE|PURPOSE with purposes among ${purposes.join(", ")}`;
  const restricted = new Map<string, readonly string[]>();
  for (const { caller, value } of callerEntries("CALLER_PURPOSES", read.string("CALLER_PURPOSES"), purposeRule)) {
    const list = value.split("|").map((p) => p.trim().toLowerCase());
    if (list.some((p) => !(purposes as readonly string[]).includes(p)) || restricted.has(caller)) {
      throw new ConfigError(`CALLER_PURPOSES: ${caller}: must be ${purposeRule}, one entry per caller`);
    }
    restricted.set(caller, list);
  }
  const tokens = parseTokenCallers(tokensFile?.text ?? tokensRaw ?? "", tokensFile?.path, {
    production,
    clientCertificates: tls?.clientCa !== undefined,
    purposeCallers: [...restricted.keys()],
  });
  return {
    auth: {
      tokens,
      tokensFile,
      purposes: restricted,
      // A token file turns authentication on even while it lists no token: emptying it must not open the door.
      anonymous: tokens.length === 0 && tls?.clientCa === undefined && tokensFile === undefined,
    },
    tls,
  };
}

/** A PEM certificate (or bundle) given inline or as a file path, checked to parse. */
function certificate(name: string, raw: string): string {
  const pem = readPem(name, raw) ?? "";
  try {
    new X509Certificate(pem);
  } catch (error) {
    throw new ConfigError(`${name}: not a usable PEM certificate (${(error as Error).message})`);
  }
  return pem;
}

function optionalCertificate(name: string, raw: string | undefined): string | undefined {
  return raw === undefined ? undefined : certificate(name, raw);
}

/** One REDIS_URL (or cluster seed): a host, a port in range, a numeric database; the password never shown. */
function checkRedisUrl(raw: string): void {
  const rule = "must be redis://[:password@]host:port[/db] or rediss://..., such as redis://127.0.0.1:6379";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`REDIS_URL=${redactUrl(raw)}: not a valid URL; ${rule}`);
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    throw new ConfigError(`REDIS_URL=${redactUrl(raw)}: ${rule}`);
  }
  if (hasMisreadUserinfo(raw, url)) {
    throw new ConfigError(
      `REDIS_URL=${redactUrl(raw)}: the password is not read as one: percent-encode / ? # @ in it (%2F %3F %23 %40); ${rule}`,
    );
  }
  if (url.hostname === "") throw new ConfigError(`REDIS_URL=${redactUrl(raw)}: names no host; ${rule}`);
  if (!/^(\/\d{0,5})?$/.test(url.pathname)) {
    throw new ConfigError(`REDIS_URL=${redactUrl(raw)}: the path must be a database number such as /0; ${rule}`);
  }
}

/**
 * REDIS_SENTINEL_MASTER and the sentinels' credentials: sentinel mode, or
 * undefined. Every setting that would be ignored is refused instead.
 */
function readRedisSentinel(read: Reader, redisUrl: string | undefined, cluster: boolean): RedisSentinelConfig | undefined {
  const master = read.string("REDIS_SENTINEL_MASTER");
  const username = read.string("REDIS_SENTINEL_USERNAME");
  const password = read.string("REDIS_SENTINEL_PASSWORD");
  if (master === undefined) {
    for (const [name, value] of [["REDIS_SENTINEL_PASSWORD", password], ["REDIS_SENTINEL_USERNAME", username]] as const) {
      if (value !== undefined) throw new ConfigError(`${name}: only used with Redis Sentinel: set REDIS_SENTINEL_MASTER too, or unset ${name}`);
    }
    return undefined;
  }
  if (!/^[\x21-\x7e]{1,128}$/.test(master)) {
    throw new ConfigError(
      "REDIS_SENTINEL_MASTER: must be the master set's name as the sentinels monitor it (`sentinel monitor <name> ...`), " +
        "such as mymaster: 1-128 printable characters, no spaces",
    );
  }
  if (cluster) {
    throw new ConfigError(
      "REDIS_SENTINEL_MASTER: Redis Sentinel and Redis Cluster exclude each other (a Cluster fails over by itself): unset REDIS_CLUSTER or REDIS_SENTINEL_MASTER",
    );
  }
  if (redisUrl === undefined) {
    throw new ConfigError(
      "REDIS_SENTINEL_MASTER: set REDIS_URL to the sentinels too, such as redis://:password@sentinel-0:26379,redis://sentinel-1:26379 " +
        "(the password is the data nodes'; the sentinels' is REDIS_SENTINEL_PASSWORD)",
    );
  }
  if (username !== undefined && password === undefined) {
    throw new ConfigError("REDIS_SENTINEL_USERNAME: needs REDIS_SENTINEL_PASSWORD (a sentinel ACL user logs in with both)");
  }
  return { master, username, password };
}

/**
 * The sentinels' URLs, each already a valid REDIS_URL: all with TLS or all
 * without (the data nodes are reached as the sentinels are), and the data
 * nodes' user, password and database given once: on the first URL, or the
 * same on every one. A different one on another URL would be ignored.
 */
function checkSentinelUrls(redisUrl: string): void {
  const urls = redisUrl.split(",").map((raw) => new URL(raw.trim()));
  const [first, ...others] = urls;
  if (first === undefined) return;
  if (others.some((url) => url.protocol !== first.protocol)) {
    throw new ConfigError(
      "REDIS_URL: mixes redis:// and rediss:// sentinels: with Redis Sentinel the sentinels and the data nodes are all reached over TLS (rediss://) or all without (redis://)",
    );
  }
  const same = (url: URL): boolean =>
    (url.username === "" && url.password === "" && (url.pathname === "" || url.pathname === "/")) ||
    (url.username === first.username && url.password === first.password && url.pathname === first.pathname);
  if (!others.every(same)) {
    throw new ConfigError(
      "REDIS_URL: with Redis Sentinel the data nodes' user, password and database are the first URL's: give them there only " +
        "(another URL's differ and would be ignored; the sentinels' own password is REDIS_SENTINEL_PASSWORD)",
    );
  }
}

/**
 * REDIS_TLS_CA: a certificate (or bundle) that must parse, and is only
 * accepted with rediss:// URLs: with redis:// it would silently do nothing.
 */
function readRedisTlsCa(raw: string | undefined, redisUrl: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (redisUrl === undefined) throw new ConfigError("REDIS_TLS_CA: set REDIS_URL to a rediss:// URL too, or unset REDIS_TLS_CA");
  if (redisUrl.split(",").some((seed) => !seed.trim().startsWith("rediss://"))) {
    throw new ConfigError("REDIS_TLS_CA: only applies to TLS connections, but REDIS_URL is redis://: use rediss://host:port or unset REDIS_TLS_CA");
  }
  return certificate("REDIS_TLS_CA", raw);
}

/** LIMIT_*: every rate limit, with its default. */
function readLimits(read: Reader): LimitsConfig {
  return {
    recipient: read.windows("LIMIT_RECIPIENT", "5/15m,20/1d"),
    // `off`, as the other LIMIT_* variables take it, is 0.
    resendCooldownMs: read.string("LIMIT_RESEND_COOLDOWN")?.toLowerCase() === "off" ? 0 : read.duration("LIMIT_RESEND_COOLDOWN", 30_000, 0, 3_600_000),
    endUserIp: read.windows("LIMIT_END_USER_IP", "30/10m,300/1d"),
    caller: read.windows("LIMIT_CALLER", "300/1m"),
    global: read.windows("LIMIT_GLOBAL", "1000/1m,50000/1d"),
    verifyFailures: read.windows("LIMIT_VERIFY_FAILURES", "10/1d"),
  };
}

/** The process's own environment, parsed: the only `process.env` read of the service. */
export function loadConfigFromProcess(): Config {
  return loadConfig(process.env);
}

/** Parses and validates the environment. Throws ConfigError naming the variable. */
export function loadConfig(env: Env, now: number = Date.now()): Config {
  const read = new Reader(env);
  const nodeEnv = read.string("NODE_ENV") ?? "development";
  if (nodeEnv !== "production" && nodeEnv !== "development" && nodeEnv !== "test") {
    throw new ConfigError(`NODE_ENV=${nodeEnv}: must be production, development or test`);
  }
  const production = nodeEnv === "production";

  const redisUrl = read.string("REDIS_URL");
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new ConfigError("REDIS_URL: must be a redis:// or rediss:// URL, such as redis://127.0.0.1:6379");
  }
  if (production && redisUrl === undefined) {
    throw new ConfigError("REDIS_URL: required when NODE_ENV=production (the in-memory store is for development only)");
  }
  const redisCluster = read.boolean("REDIS_CLUSTER");
  const redisSentinel = readRedisSentinel(read, redisUrl, redisCluster);
  if (redisUrl?.includes(",") === true && !redisCluster && redisSentinel === undefined) {
    throw new ConfigError(
      "REDIS_URL: several URLs are only for a Redis Cluster's seed nodes (set REDIS_CLUSTER=true) or Redis Sentinels (set REDIS_SENTINEL_MASTER)",
    );
  }
  if (redisUrl !== undefined) for (const seed of redisUrl.split(",")) checkRedisUrl(seed.trim());
  if (redisUrl !== undefined && redisSentinel !== undefined) checkSentinelUrls(redisUrl);
  const redisTlsCa = readRedisTlsCa(read.string("REDIS_TLS_CA"), redisUrl);
  // Checked whether or not REDIS_URL is set: a typo must stop the start, not wait for the day Redis is configured.
  const redisPrefix = validPrefix(read.string("REDIS_PREFIX") ?? "otp:");
  const redisCommandTimeoutMs = read.duration("REDIS_COMMAND_TIMEOUT", 1000, 10, 60_000);

  const smtpUrl = read.string("SMTP_URL");
  if (smtpUrl !== undefined && !/^smtps?:\/\//.test(smtpUrl)) {
    throw new ConfigError("SMTP_URL: must be an smtp:// (STARTTLS) or smtps:// (TLS) URL, such as smtp://user:pass@smtp.example.com:587");
  }
  if (smtpUrl !== undefined) {
    try {
      parseSmtpUrl(smtpUrl);
    } catch (error) {
      throw new ConfigError(`SMTP_URL: ${(error as Error).message.replace(/^SMTP URL:? (is )?/, "")}`);
    }
  }
  if (production && smtpUrl === undefined) {
    throw new ConfigError("SMTP_URL: required when NODE_ENV=production (the capture sink is for development only)");
  }

  const secretText = read.string("OTP_SECRET");
  if (production && secretText === undefined) {
    throw new ConfigError("OTP_SECRET: required when NODE_ENV=production (at least 32 characters, e.g. `openssl rand -base64 48`)");
  }
  if (secretText !== undefined && secretText.length < 32) {
    throw new ConfigError("OTP_SECRET: must be at least 32 characters (e.g. `openssl rand -base64 48`)");
  }

  const rotation = readSecretRotation(read, secretText, now);

  const mailFrom = read.string("MAIL_FROM");
  if (production && mailFrom === undefined) {
    throw new ConfigError('MAIL_FROM: required when NODE_ENV=production, such as "Acme" <no-reply@acme.example>');
  }
  const from = parseMailFrom(mailFrom ?? '"OtpEmail" <no-reply@otp-email.localhost>');
  const bounceDomain = optionalDomain("BOUNCE_DOMAIN", read.string("BOUNCE_DOMAIN"));
  const callers = readCallers(read, production, now);

  const defaultLocale = (read.string("DEFAULT_LOCALE") ?? "en").toLowerCase();
  if (!/^[a-z]{2,3}(-[a-z0-9]{2,8})*$/.test(defaultLocale)) {
    throw new ConfigError(`DEFAULT_LOCALE=${defaultLocale}: must be a BCP 47 language tag such as en or ko`);
  }

  // At least a minute: the email states the validity in whole minutes, rounded down, and "1 min" would
  // promise a 30 s code twice the time it has.
  const ttlMinMs = read.duration("OTP_TTL_MIN", 60_000, 60_000, 86_400_000);
  const ttlMaxMs = read.duration("OTP_TTL_MAX", 3_600_000, 60_000, 86_400_000);
  if (ttlMinMs > ttlMaxMs) throw new ConfigError("OTP_TTL_MIN: must not exceed OTP_TTL_MAX");
  // Unset, the default 10m is brought into OTP_TTL_MIN..OTP_TTL_MAX: a code sent without a ttl must
  // not outlive the OTP_TTL_MAX the operator set (nor fall short of OTP_TTL_MIN).
  const ttlDefaultMs = read.duration("OTP_TTL", Math.min(Math.max(600_000, ttlMinMs), ttlMaxMs), ttlMinMs, ttlMaxMs);

  const retentionMs = read.duration("RECORD_RETENTION", 7 * 86_400_000, 3_600_000, 365 * 86_400_000);
  if (retentionMs < ttlMaxMs) throw new ConfigError("RECORD_RETENTION: must be at least OTP_TTL_MAX");
  // A repeated idempotency_key answers from the first call's record: a key
  // outliving its record would answer "still in progress" until it expired.
  const idempotencyTtlMs = read.duration("IDEMPOTENCY_TTL", 86_400_000, 60_000, 7 * 86_400_000);
  if (retentionMs < idempotencyTtlMs) {
    throw new ConfigError("RECORD_RETENTION: must be at least IDEMPOTENCY_TTL (a repeated key is answered from the first call's record)");
  }

  const smtpPoolSize = read.int("SMTP_POOL_SIZE", 5, 1, 100);
  const retryBaseDelayMs = read.duration("SMTP_RETRY_BASE_DELAY", 1000, 1, 600_000);
  const retryMaxDelayMs = read.duration("SMTP_RETRY_MAX_DELAY", 30_000, 1, 3_600_000);
  if (retryBaseDelayMs > retryMaxDelayMs) {
    throw new ConfigError("SMTP_RETRY_BASE_DELAY: must not exceed SMTP_RETRY_MAX_DELAY");
  }

  return {
    env: nodeEnv,
    grpcAddr: parseHostPort("GRPC_ADDR", read.string("GRPC_ADDR") ?? "127.0.0.1:50051"),
    // The default is rpc/server.ts's defaultMaxConcurrentStreams (RFC 9113's advised least), not imported
    // here: config is read by the CLIs too, which load no gRPC server.
    grpcMaxConcurrentStreams: read.int("GRPC_MAX_CONCURRENT_STREAMS", 100, 1, 1_000_000),
    logLevel: validLogLevel(read.string("LOG_LEVEL") ?? "info"),
    ...callers,
    tlsReloadIntervalMs: readReloadInterval(read, "TLS_RELOAD_INTERVAL"),
    limits: readLimits(read),
    redis:
      redisUrl === undefined
        ? undefined
        : {
            url: redisUrl,
            prefix: redisPrefix,
            commandTimeoutMs: redisCommandTimeoutMs,
            cluster: redisCluster,
            sentinel: redisSentinel,
            tlsCa: redisTlsCa,
          },
    smtp: {
      url: smtpUrl,
      tlsCa: optionalCertificate("SMTP_TLS_CA", read.string("SMTP_TLS_CA")),
      maxConnections: smtpPoolSize,
      maxMessagesPerConnection: read.int("SMTP_MAX_MESSAGES_PER_CONNECTION", 100, 1, 100_000),
      connectionTimeoutMs: read.duration("SMTP_CONNECTION_TIMEOUT", 10_000, 100, 300_000),
      greetingTimeoutMs: read.duration("SMTP_GREETING_TIMEOUT", 10_000, 100, 300_000),
      socketTimeoutMs: read.duration("SMTP_SOCKET_TIMEOUT", 30_000, 100, 600_000),
      maxAttempts: read.int("SMTP_MAX_ATTEMPTS", 4, 1, 20),
      retryBaseDelayMs,
      retryMaxDelayMs,
      waitBudgetMs: read.duration("SEND_WAIT_BUDGET", 3000, 0, 60_000),
      maxBacklog: readMaxBacklog(read.string("SMTP_MAX_BACKLOG"), smtpPoolSize),
    },
    mail: {
      fromName: from.name,
      fromAddress: from.address,
      defaultLocale,
      templatesDir: read.string("TEMPLATES_DIR"),
      templatesReloadIntervalMs: readReloadInterval(read, "TEMPLATES_RELOAD_INTERVAL"),
    },
    otp: {
      secret: secretText === undefined ? randomBytes(32) : Buffer.from(secretText, "utf8"),
      secretGenerated: secretText === undefined,
      ...rotation,
      length: read.int("OTP_LENGTH", 6, 4, 10),
      ttlDefaultMs,
      ttlMinMs,
      ttlMaxMs,
      maxFailedAttempts: read.int("OTP_MAX_FAILED_ATTEMPTS", 5, 1, 100),
    },
    recordRetentionMs: retentionMs,
    idempotencyTtlMs,
    outboxDir: read.string("OUTBOX_DIR") ?? ".outbox",
    shutdownGraceMs: read.duration("SHUTDOWN_GRACE", 10_000, 0, 600_000),
    metrics: readMetrics(read),
    dkim: readDkim(read, from.address),
    bounce: {
      domain: bounceDomain,
      feedbackAddress: readFeedbackAddress(read.string("FEEDBACK_ADDRESS"), bounceDomain ?? from.address.slice(from.address.lastIndexOf("@") + 1)),
      ...readBounceSmtpAddr(read.string("BOUNCE_SMTP_ADDR"), nodeEnv),
      connectionsPerMinute: read.int("BOUNCE_CONNECTIONS_PER_MINUTE", 60, 1, 100_000),
      tls: readBounceTls(read, now),
      suppressionTtlMs: read.duration("SUPPRESSION_TTL", 30 * 86_400_000, 60_000, 365 * 86_400_000),
    },
    doctor: {
      relayIp: readRelayIp(read.string("RELAY_IP")),
      dnsblZones: readDnsblZones(read.string("DNSBL_ZONES")),
      dnsServers: readDnsServers(read.string("DNS_SERVERS")),
      timeoutMs: read.duration("DOCTOR_TIMEOUT", 5000, 100, 60_000),
    },
  };
}

/**
 * Messages per pooled connection that SMTP_MAX_BACKLOG allows by default. A
 * connection to a healthy relay carries a message in 10 to 100 ms, so 200
 * waiting per connection clear in 2 to 20 s: a burst (the whole default
 * LIMIT_GLOBAL minute, 1000 sends, arriving at once on the default 5
 * connections) fits, and the last of it still goes out well within a code's
 * lifetime (OTP_TTL, 10 m). Only a relay that stops keeping up fills it: one
 * that holds each message for SMTP_SOCKET_TIMEOUT (30 s) would take 100
 * minutes to clear it, past every code's expiry (OTP_TTL_MAX, 1 h), so
 * taking on more there only makes callers wait the whole SEND_WAIT_BUDGET
 * for codes that expire unsent.
 */
const backlogPerConnection = 200;

/** SMTP_MAX_BACKLOG: a whole number, `off`, or unset (backlogPerConnection × SMTP_POOL_SIZE). */
function readMaxBacklog(raw: string | undefined, poolSize: number): number | undefined {
  if (raw === undefined) return backlogPerConnection * poolSize;
  if (raw.toLowerCase() === "off") return undefined;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < 1 || value > 1_000_000) {
    throw new ConfigError(`SMTP_MAX_BACKLOG=${raw}: must be a whole number from 1 to 1000000, or off (no bound)`);
  }
  return value;
}

/** How far OTP_SECRET_ROTATED_AT may lie ahead of this host's clock (another host's clock may run ahead). */
const rotationSkewMs = 5 * 60_000;

/**
 * OTP_SECRET_PREVIOUS and OTP_SECRET_ROTATED_AT: both or neither, and only
 * with OTP_SECRET. Errors never quote a secret.
 */
function readSecretRotation(
  read: Reader,
  secretText: string | undefined,
  now: number,
): { previousSecret: Buffer | undefined; rotatedAt: number | undefined } {
  const previousText = read.string("OTP_SECRET_PREVIOUS");
  const rotatedAtText = read.string("OTP_SECRET_ROTATED_AT");
  if (previousText === undefined) {
    if (rotatedAtText !== undefined) throw new ConfigError("OTP_SECRET_ROTATED_AT: set only with OTP_SECRET_PREVIOUS (the secret it replaced); unset it");
    return { previousSecret: undefined, rotatedAt: undefined };
  }
  if (secretText === undefined) {
    throw new ConfigError("OTP_SECRET_PREVIOUS: set only with OTP_SECRET (the new secret); set OTP_SECRET or unset OTP_SECRET_PREVIOUS");
  }
  if (previousText.length < 32) throw new ConfigError("OTP_SECRET_PREVIOUS: must be at least 32 characters (the OTP_SECRET it replaced)");
  if (previousText === secretText) {
    throw new ConfigError("OTP_SECRET_PREVIOUS: must differ from OTP_SECRET (set OTP_SECRET to the new secret, OTP_SECRET_PREVIOUS to the old one)");
  }
  if (rotatedAtText === undefined) {
    throw new ConfigError("OTP_SECRET_ROTATED_AT: required when OTP_SECRET_PREVIOUS is set: when OTP_SECRET changed, such as 2026-11-27T10:00:00Z");
  }
  // A date alone would be read as UTC midnight: ask for the time the rotation really happened.
  // Date.parse rolls a day or hour that does not exist over (2026-02-30 is March 2nd, 24:00 the next day):
  // the wall-clock fields as written must be a real time.
  const fields = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(:(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/i.exec(rotatedAtText);
  const written = fields === null ? undefined : new Date(Date.UTC(+(fields[1] ?? 0), +(fields[2] ?? 0) - 1, +(fields[3] ?? 0), +(fields[4] ?? 0), +(fields[5] ?? 0), +(fields[7] ?? 0)));
  const real =
    fields !== null &&
    written !== undefined &&
    written.getUTCFullYear() === +(fields[1] ?? 0) &&
    written.getUTCMonth() === +(fields[2] ?? 0) - 1 &&
    written.getUTCDate() === +(fields[3] ?? 0) &&
    written.getUTCHours() === +(fields[4] ?? 0) &&
    written.getUTCMinutes() === +(fields[5] ?? 0) &&
    written.getUTCSeconds() === +(fields[7] ?? 0);
  const rotatedAt = real ? Date.parse(rotatedAtText) : Number.NaN;
  if (Number.isNaN(rotatedAt)) {
    throw new ConfigError(`OTP_SECRET_ROTATED_AT=${rotatedAtText}: must be an ISO-8601 time with a zone, such as 2026-11-27T10:00:00Z`);
  }
  if (rotatedAt > now + rotationSkewMs) {
    throw new ConfigError(
      `OTP_SECRET_ROTATED_AT=${rotatedAtText}: is in the future; set it to when the new OTP_SECRET was deployed (at most ${formatMs(rotationSkewMs)} ahead, for clock skew)`,
    );
  }
  return { previousSecret: Buffer.from(previousText, "utf8"), rotatedAt };
}

const domainPattern = /^(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$/;

function optionalDomain(name: string, raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  const domain = raw.toLowerCase().replace(/\.$/, "");
  if (!domainPattern.test(domain)) throw new ConfigError(`${name}=${raw}: must be a domain name, such as acme.example`);
  return domain;
}

/** DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY: all or none; the key must be able to sign. */
function readDkim(read: Reader, fromAddress: string): Config["dkim"] {
  const selector = read.string("DKIM_SELECTOR");
  const keyRaw = read.string("DKIM_PRIVATE_KEY");
  const domain = optionalDomain("DKIM_DOMAIN", read.string("DKIM_DOMAIN"));
  if (selector === undefined && keyRaw === undefined) {
    if (domain !== undefined) throw new ConfigError("DKIM_DOMAIN: also set DKIM_SELECTOR and DKIM_PRIVATE_KEY, or unset it");
    return undefined;
  }
  if (selector === undefined) throw new ConfigError("DKIM_SELECTOR: required when DKIM_PRIVATE_KEY is set, such as s2025");
  if (keyRaw === undefined) throw new ConfigError("DKIM_PRIVATE_KEY: required when DKIM_SELECTOR is set (PEM text or a file path)");
  if (!/^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*$/.test(selector)) {
    throw new ConfigError(`DKIM_SELECTOR=${selector}: must be DNS labels (letters, digits, '-', '_', '.'), such as s2025`);
  }
  // Inline PEM in an env file often arrives with literal "\n" escapes.
  const privateKey = (readPem("DKIM_PRIVATE_KEY", keyRaw, true) ?? "").replace(/\\n/g, "\n");
  let key;
  try {
    key = createPrivateKey(privateKey);
  } catch (error) {
    throw new ConfigError(`DKIM_PRIVATE_KEY: not a usable PEM private key (${(error as Error).message})`);
  }
  // Both signers (ours, src/delivery/dkim-sign.ts, and nodemailer's) sign rsa-sha256 only: an Ed25519 or EC
  // key cannot sign, and nodemailer would send its mail unsigned without a word. Refused here, as configuration.
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (key.asymmetricKeyType !== "rsa" || bits < 1024) {
    throw new ConfigError(
      `DKIM_PRIVATE_KEY: must be an RSA key of at least 1024 bits (2048 recommended: openssl genrsa -out dkim.pem 2048), ` +
        `not ${key.asymmetricKeyType ?? "an unknown key type"}${bits > 0 ? ` of ${bits} bits` : ""}; the service signs rsa-sha256 only`,
    );
  }
  return { domain: domain ?? fromAddress.slice(fromAddress.lastIndexOf("@") + 1).toLowerCase(), selector, privateKey };
}

/**
 * FEEDBACK_ADDRESS: a plain address (any domain whose MX reaches the
 * intake), `off`, or unset: `fbl@<bounce domain>`. Not a VERP address: those
 * name one message each. The value is not echoed: it is an address.
 */
function readFeedbackAddress(raw: string | undefined, bounceDomain: string): string | undefined {
  if (raw === undefined) return `fbl@${bounceDomain.toLowerCase()}`;
  if (raw.toLowerCase() === "off") return undefined;
  const example = "give one plain address, such as fbl@bounces.acme.example, or off";
  const parsed = parseAddress(raw);
  if (typeof parsed === "string") throw new ConfigError(`FEEDBACK_ADDRESS: ${parsed}; ${example}`);
  if (/^bounce\+/i.test(parsed.key) && parsed.domain === bounceDomain.toLowerCase()) {
    throw new ConfigError(`FEEDBACK_ADDRESS: must not be a VERP address (bounce+<id>@BOUNCE_DOMAIN names one message); ${example}`);
  }
  return parsed.key;
}

/** BOUNCE_SMTP_ADDR: `host:port` (port 0: any free port), `off`, or unset (on in development only). */
function readBounceSmtpAddr(
  raw: string | undefined,
  nodeEnv: Environment,
): { smtpAddr: string | undefined; smtpAddrIsDefault: boolean } {
  if (raw === undefined) {
    return nodeEnv === "development"
      ? { smtpAddr: "127.0.0.1:2526", smtpAddrIsDefault: true }
      : { smtpAddr: undefined, smtpAddrIsDefault: false };
  }
  if (raw.toLowerCase() === "off") return { smtpAddr: undefined, smtpAddrIsDefault: false };
  return { smtpAddr: parseHostPort("BOUNCE_SMTP_ADDR", raw), smtpAddrIsDefault: false };
}

/**
 * BOUNCE_TLS_CERT / BOUNCE_TLS_KEY (PEM text or file paths; both or neither)
 * and BOUNCE_TLS_REQUIRED. Checked here, so that a wrong file stops the start
 * instead of failing every relay's STARTTLS later; the key's value and
 * content never appear in a message.
 */
function readBounceTls(read: Reader, now: number): Config["bounce"]["tls"] {
  const certRaw = read.string("BOUNCE_TLS_CERT");
  const keyRaw = read.string("BOUNCE_TLS_KEY");
  const required = read.boolean("BOUNCE_TLS_REQUIRED");
  if (certRaw === undefined && keyRaw === undefined) {
    if (required) throw new ConfigError("BOUNCE_TLS_REQUIRED: needs BOUNCE_TLS_CERT and BOUNCE_TLS_KEY (the intake's certificate and key)");
    return undefined;
  }
  if (certRaw === undefined || keyRaw === undefined) {
    const [missing, given] = certRaw === undefined ? ["BOUNCE_TLS_CERT", "BOUNCE_TLS_KEY"] : ["BOUNCE_TLS_KEY", "BOUNCE_TLS_CERT"];
    throw new ConfigError(`${missing}: required with ${given} (PEM text or a file path)`);
  }
  const { cert, key } = readCertificateSet(now, ["BOUNCE_TLS_CERT", certRaw], ["BOUNCE_TLS_KEY", keyRaw]);
  return { cert: cert.pem, key: key.pem, required, paths: { cert: cert.path, key: key.path } };
}

/** TLS_RELOAD_INTERVAL, TEMPLATES_RELOAD_INTERVAL: a duration from 1s to 1d (default 1m), or `off`. */
function readReloadInterval(read: Reader, name: "TLS_RELOAD_INTERVAL" | "TEMPLATES_RELOAD_INTERVAL"): number | undefined {
  const raw = read.string(name);
  if (raw === undefined) return 60_000;
  if (raw.toLowerCase() === "off") return undefined;
  const value = parseDuration(raw);
  if (value === undefined || value < 1000 || value > 86_400_000) {
    throw new ConfigError(`${name}=${raw}: must be a duration such as 30s, 5m or 1h, from 1s to 1d, or off${unitHint(raw)}`);
  }
  return value;
}

function readRelayIp(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (isIP(raw) === 0) throw new ConfigError(`RELAY_IP=${raw}: must be an IPv4 or IPv6 address, such as 203.0.113.25`);
  return raw;
}

function readDnsblZones(raw: string | undefined): readonly string[] {
  if (raw === undefined) return ["zen.spamhaus.org", "bl.spamcop.net"];
  if (raw.toLowerCase() === "none") return [];
  return raw
    .split(",")
    .map((zone) => zone.trim())
    .filter((zone) => zone !== "")
    .map((zone) => optionalDomain("DNSBL_ZONES", zone) as string);
}

function readDnsServers(raw: string | undefined): readonly string[] {
  if (raw === undefined) return [];
  return raw
    .split(",")
    .map((server) => server.trim())
    .filter((server) => server !== "")
    .map((server) => {
      const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+))(?::(\d{1,5}))?$|^([0-9a-fA-F:]+)$/.exec(server);
      const host = match?.[1] ?? match?.[2] ?? match?.[4];
      if (host === undefined || isIP(host) === 0 || Number(match?.[3] ?? 53) > 65_535) {
        throw new ConfigError(`DNS_SERVERS=${raw}: must be IP addresses with optional ports, such as 127.0.0.1:5353,[::1]:53`);
      }
      return server;
    });
}

function validLogLevel(level: string): string {
  if (!["fatal", "error", "warn", "info", "debug", "trace", "silent"].includes(level)) {
    throw new ConfigError(`LOG_LEVEL=${level}: must be one of fatal, error, warn, info, debug, trace, silent`);
  }
  return level;
}

function validPrefix(prefix: string): string {
  if (!/^[A-Za-z0-9:_.-]{1,64}$/.test(prefix)) {
    throw new ConfigError(`REDIS_PREFIX=${prefix}: must be 1-64 characters of letters, digits, ':', '_', '.', '-'`);
  }
  return prefix;
}

/** METRICS_ADDR (`off` disables the endpoint) and METRICS_PROVIDER_DOMAINS. */
function readMetrics(read: Reader): Config["metrics"] {
  const addr = read.string("METRICS_ADDR") ?? "127.0.0.1:9464";
  return {
    addr: addr.toLowerCase() === "off" ? undefined : parseHostPort("METRICS_ADDR", addr),
    addrIsDefault: read.string("METRICS_ADDR") === undefined,
    providerDomains: readProviderDomains(read.string("METRICS_PROVIDER_DOMAINS")),
  };
}

/** At most this many classes of one's own: every one is a possible label value. */
const maxProviderClasses = 16;

/** `corp=acme.example,acme.test;gmail=gmail.example` -> { "acme.example": "corp", ... }. */
function readProviderDomains(raw: string | undefined): Readonly<Record<string, string>> {
  if (raw === undefined) return {};
  const rules: Record<string, string> = {};
  const classes = new Set<string>();
  const usage = "must be class=domain,domain;class=domain... such as corp=acme.example,acme.test;gmail=gmail.example";
  for (const group of raw.split(";").map((part) => part.trim()).filter((part) => part !== "")) {
    const equals = group.indexOf("=");
    const providerClass = equals === -1 ? "" : group.slice(0, equals).trim();
    if (!/^[a-z][a-z0-9_]{0,31}$/.test(providerClass)) {
      throw new ConfigError(`METRICS_PROVIDER_DOMAINS: "${group}" ${usage} (class: lower-case letters, digits, _)`);
    }
    classes.add(providerClass);
    const domains = group.slice(equals + 1).split(",").map((domain) => domain.trim().toLowerCase().replace(/\.$/, ""));
    for (const domain of domains) {
      if (!/^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/.test(domain)) {
        throw new ConfigError(`METRICS_PROVIDER_DOMAINS: "${domain}" is not a domain name; ${usage}`);
      }
      rules[domain] = providerClass;
    }
  }
  if (classes.size > maxProviderClasses) {
    throw new ConfigError(`METRICS_PROVIDER_DOMAINS: at most ${maxProviderClasses} classes (each is a label value)`);
  }
  return rules;
}

/**
 * Trace export, from the standard OpenTelemetry variables. Read by the
 * telemetry bootstrap (`node --import`), before the service's config; the
 * OTLP exporters read their own endpoint, headers, timeout and compression
 * variables (OTEL_EXPORTER_OTLP_*) as the specification says.
 */
export interface TracingConfig {
  /** OTEL_SDK_DISABLED=true: no SDK and no instrumentation at all. */
  readonly disabled: boolean;
  /**
   * OTEL_TRACES_EXPORTER (`otlp`, `console`, `none`, comma-separated). When
   * unset: `otlp` if OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
   * OTEL_EXPORTER_OTLP_ENDPOINT is set, else nothing is exported.
   */
  readonly exporters: readonly ("otlp" | "console")[];
  /** OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf. */
  readonly protocol: "http/protobuf" | "http/json" | "grpc";
  /**
   * The service name: OTEL_SERVICE_NAME, else a `service.name` in
   * OTEL_RESOURCE_ATTRIBUTES, else `otp-email`.
   */
  readonly serviceName: string;
  /**
   * OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (the ratio of the
   * traceidratio samplers, 0 to 1, default 1); default parentbased_always_on.
   */
  readonly sampler: { readonly name: TraceSamplerName; readonly ratio: number };
  /** OTEL_PROPAGATORS, in order; empty for `none`; default tracecontext, baggage. */
  readonly propagators: readonly TracePropagatorName[];
  /** OTEL_NODE_RESOURCE_DETECTORS (`all`, the default, or `none` or a list). */
  readonly resourceDetectors: readonly ResourceDetectorName[];
  /** OTEL_LOG_LEVEL: what the SDK says about itself that reaches the service's log; default warn. */
  readonly sdkLogLevel: SdkLogLevel;
  /**
   * TRACE_REDIS_COMMANDS=true: a span per Redis command (the ioredis
   * instrumentation). Off by default: with auto-pipelining a command's span
   * says little, and they were most of a SendOtp trace's spans and bytes.
   */
  readonly redisCommandSpans: boolean;
  /** OTEL_BSP_*: the batch span processor's queue, batch size, delay and export timeout (SDK defaults when unset). */
  readonly batch: {
    readonly maxQueueSize: number | undefined;
    readonly maxExportBatchSize: number | undefined;
    readonly scheduledDelayMillis: number | undefined;
    readonly exportTimeoutMillis: number | undefined;
  };
}

export const traceSamplerNames = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio",
] as const;
export type TraceSamplerName = (typeof traceSamplerNames)[number];
export const tracePropagatorNames = ["tracecontext", "baggage", "b3", "b3multi"] as const;
export type TracePropagatorName = (typeof tracePropagatorNames)[number];
export const sdkLogLevelNames = ["none", "error", "warn", "info", "debug", "verbose", "all"] as const;
export type SdkLogLevel = (typeof sdkLogLevelNames)[number];

/** The scheme of a URL (`http:`), or "" when it is not one. */
function urlProtocol(value: string): string {
  try {
    return new URL(value).protocol;
  } catch {
    return "";
  }
}

export const resourceDetectorNames = ["serviceinstance", "process", "host", "os", "env"] as const;
export type ResourceDetectorName = (typeof resourceDetectorNames)[number];

/** A comma-separated list of names from `allowed`, with `all` (when given) and `none`; duplicates once. */
function nameList<T extends string>(variable: string, value: string, allowed: readonly T[], all: readonly T[] | undefined): T[] {
  const names = value
    .split(",")
    .map((part) => part.trim().toLowerCase())
    .filter((part) => part !== "");
  const wanted = `${[...allowed, ...(all === undefined ? [] : ["all"]), "none"].join(", ")} (comma-separated)`;
  if (names.includes("none")) {
    if (names.length > 1) throw new ConfigError(`${variable}=${value}: none cannot be combined with other names`);
    return [];
  }
  if (all !== undefined && names.includes("all")) return [...all];
  const chosen = new Set<T>();
  for (const name of names) {
    if (!(allowed as readonly string[]).includes(name)) throw new ConfigError(`${variable}=${value}: "${name}" is not one of ${wanted}`);
    chosen.add(name as T);
  }
  if (chosen.size === 0) throw new ConfigError(`${variable}=${value}: name one of ${wanted}`);
  return [...chosen];
}

/**
 * OTEL_RESOURCE_ATTRIBUTES as the SDK's env detector reads it: `key=value`
 * pairs separated by commas, `,` and `=` percent-encoded, keys and values
 * trimmed, percent-decoded and at most 255 characters. Where the SDK would
 * drop the whole variable without a word (its log at debug), this refuses
 * it, naming the entry: a typo here would otherwise lose every attribute.
 */
function resourceAttributes(value: string | undefined): Record<string, string> {
  const parsed: Record<string, string> = {};
  if (value === undefined) return parsed;
  for (const entry of value.split(",")) {
    if (entry.trim() === "") continue;
    const refuse = (why: string): never => {
      throw new ConfigError(
        `OTEL_RESOURCE_ATTRIBUTES=${value}: "${entry.trim()}" ${why}; the variable is key=value pairs separated by commas, with "," and "=" percent-encoded (%2C, %3D)`,
      );
    };
    const parts = entry.split("=");
    if (parts.length !== 2) refuse(parts.length === 1 ? "has no =" : "has more than one =");
    const [key, text] = parts.map((part) => part.trim()) as [string, string];
    if (key === "") refuse("has an empty key");
    let decodedKey = "";
    let decoded = "";
    try {
      decodedKey = decodeURIComponent(key);
      decoded = decodeURIComponent(text);
    } catch {
      refuse("is not valid percent-encoding");
    }
    if (decodedKey.length > 255 || decoded.length > 255) refuse("is longer than 255 characters (key or value)");
    parsed[decodedKey] = decoded;
  }
  return parsed;
}

/** Parses the OTEL_* variables the bootstrap decides on. Throws ConfigError naming the variable. */
export function loadTracingConfig(env: Env): TracingConfig {
  const read = new Reader(env);
  const disabled = (read.string("OTEL_SDK_DISABLED") ?? "false").toLowerCase() === "true";
  const endpoint = read.string("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") ?? read.string("OTEL_EXPORTER_OTLP_ENDPOINT");
  const named = read.string("OTEL_TRACES_EXPORTER");
  const exporters = new Set<"otlp" | "console">();
  for (const name of (named ?? (endpoint === undefined ? "none" : "otlp")).split(",").map((part) => part.trim())) {
    if (name === "otlp" || name === "console") exporters.add(name);
    else if (name !== "none" && name !== "") {
      throw new ConfigError(`OTEL_TRACES_EXPORTER=${named ?? ""}: must be otlp, console or none (comma-separated)`);
    }
  }
  const protocolVariable =
    read.string("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") === undefined ? "OTEL_EXPORTER_OTLP_PROTOCOL" : "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
  const protocol = read.string(protocolVariable) ?? "http/protobuf";
  if (protocol !== "http/protobuf" && protocol !== "http/json" && protocol !== "grpc") {
    throw new ConfigError(`${protocolVariable}=${protocol}: must be http/protobuf, http/json or grpc`);
  }
  const optionalInt = (name: string, max: number): number | undefined =>
    read.string(name) === undefined ? undefined : read.int(name, 0, 1, max);
  const samplerName = (read.string("OTEL_TRACES_SAMPLER") ?? "parentbased_always_on").trim().toLowerCase();
  if (!(traceSamplerNames as readonly string[]).includes(samplerName)) {
    throw new ConfigError(`OTEL_TRACES_SAMPLER=${samplerName}: must be one of ${traceSamplerNames.join(", ")}`);
  }
  const ratioText = read.string("OTEL_TRACES_SAMPLER_ARG");
  const ratio = ratioText === undefined ? 1 : Number(ratioText);
  if (samplerName.endsWith("traceidratio") && (!Number.isFinite(ratio) || ratio < 0 || ratio > 1)) {
    throw new ConfigError(`OTEL_TRACES_SAMPLER_ARG=${ratioText ?? ""}: the share of traces to sample, a number from 0 to 1 (0.1 is 10 %)`);
  }
  const sdkLogLevel = (read.string("OTEL_LOG_LEVEL") ?? "warn").toLowerCase();
  if (!(sdkLogLevelNames as readonly string[]).includes(sdkLogLevel)) {
    throw new ConfigError(`OTEL_LOG_LEVEL=${sdkLogLevel}: must be one of ${sdkLogLevelNames.join(", ")}`);
  }
  for (const variable of ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]) {
    const value = read.string(variable);
    if (value !== undefined && !/^https?:$/.test(urlProtocol(value))) {
      throw new ConfigError(
        `${variable}=${redactUrl(value, { hideUser: true })}: must be an http:// or https:// URL (the collector: http://otel-collector:4318 for http/protobuf, :4317 for grpc)`,
      );
    }
  }
  const propagators = read.string("OTEL_PROPAGATORS");
  const detectors = read.string("OTEL_NODE_RESOURCE_DETECTORS");
  const resourceService = resourceAttributes(read.string("OTEL_RESOURCE_ATTRIBUTES"))["service.name"];
  return {
    disabled,
    exporters: [...exporters],
    protocol,
    serviceName: read.string("OTEL_SERVICE_NAME") ?? (resourceService || "otp-email"),
    sampler: { name: samplerName as TraceSamplerName, ratio: samplerName.endsWith("traceidratio") ? ratio : 1 },
    propagators:
      propagators === undefined ? ["tracecontext", "baggage"] : nameList("OTEL_PROPAGATORS", propagators, tracePropagatorNames, undefined),
    resourceDetectors:
      detectors === undefined
        ? [...resourceDetectorNames]
        : nameList("OTEL_NODE_RESOURCE_DETECTORS", detectors, resourceDetectorNames, resourceDetectorNames),
    sdkLogLevel: sdkLogLevel as SdkLogLevel,
    redisCommandSpans: read.boolean("TRACE_REDIS_COMMANDS"),
    batch: {
      maxQueueSize: optionalInt("OTEL_BSP_MAX_QUEUE_SIZE", 1_000_000),
      maxExportBatchSize: optionalInt("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1_000_000),
      scheduledDelayMillis: optionalInt("OTEL_BSP_SCHEDULE_DELAY", 3_600_000),
      exportTimeoutMillis: optionalInt("OTEL_BSP_EXPORT_TIMEOUT", 3_600_000),
    },
  };
}
