/**
 * The one place that reads the environment. `loadConfig` parses and validates
 * every variable once and fails with a message naming the variable; nothing
 * else in the service reads `process.env`.
 *
 * Durations accept `500ms`, `30s`, `10m`, `2h`, `7d` (or plain milliseconds).
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

export type Environment = "production" | "development" | "test";

export interface Config {
  readonly env: Environment;
  /** `host:port` the gRPC server listens on. */
  readonly grpcAddr: string;
  readonly logLevel: string;
  /** undefined: the in-memory store (development only). */
  readonly redis: { readonly url: string; readonly prefix: string; readonly commandTimeoutMs: number } | undefined;
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
  };
  readonly mail: {
    readonly fromName: string;
    readonly fromAddress: string;
    readonly defaultLocale: string;
    readonly templatesDir: string | undefined;
  };
  readonly otp: {
    readonly secret: Buffer;
    /** True when no OTP_SECRET was given and a random one was made (dev only). */
    readonly secretGenerated: boolean;
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
}

/** A configuration problem; `message` names the variable and the rule. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

type Env = Readonly<Record<string, string | undefined>>;

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses `500ms`, `30s`, `10m`, `2h`, `7d` or plain milliseconds. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (match === null) return undefined;
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
        `${name}=${raw}: must be a duration such as 500ms, 30s, 10m, 2h or 7d, from ${formatMs(minMs)} to ${formatMs(maxMs)}`,
      );
    }
    return value;
  }
}

function formatMs(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** Parses `"Display Name" <addr@domain>`, `Display Name <addr@domain>` or a bare address. */
function parseMailFrom(raw: string): { name: string; address: string } {
  const angle = /^\s*(?:"?([^"<]*?)"?\s*)?<([^<>\s]+@[^<>\s]+)>\s*$/.exec(raw);
  const bare = /^\s*([^<>\s"]+@[^<>\s"]+)\s*$/.exec(raw);
  const name = angle?.[1]?.trim() ?? "";
  const address = angle?.[2] ?? bare?.[1];
  if (address === undefined || /[\r\n]/.test(raw) || !/^[^@]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$/.test(address)) {
    throw new ConfigError(
      `MAIL_FROM=${raw}: must be an address with an optional display name, such as "Acme" <no-reply@acme.example>`,
    );
  }
  return { name: name === "" ? "OtpEmail" : name, address };
}

function parseHostPort(name: string, raw: string): string {
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw);
  if (match === null || Number(match[2]) > 65535) {
    throw new ConfigError(`${name}=${raw}: must be host:port, such as 127.0.0.1:50051 or 0.0.0.0:50051`);
  }
  return raw;
}

/** Reads a PEM value given inline or as a file path. */
function readPem(name: string, raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (raw.includes("-----BEGIN")) return raw;
  try {
    return readFileSync(raw, "utf8");
  } catch (error) {
    throw new ConfigError(`${name}: cannot read ${raw}: ${(error as Error).message}`);
  }
}

/** Parses and validates the environment. Throws ConfigError naming the variable. */
export function loadConfig(env: Env): Config {
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

  const smtpUrl = read.string("SMTP_URL");
  if (smtpUrl !== undefined && !/^smtps?:\/\//.test(smtpUrl)) {
    throw new ConfigError("SMTP_URL: must be an smtp:// (STARTTLS) or smtps:// (TLS) URL, such as smtp://user:pass@smtp.example.com:587");
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

  const mailFrom = read.string("MAIL_FROM");
  if (production && mailFrom === undefined) {
    throw new ConfigError('MAIL_FROM: required when NODE_ENV=production, such as "Acme" <no-reply@acme.example>');
  }
  const from = parseMailFrom(mailFrom ?? '"OtpEmail" <no-reply@otp-email.localhost>');

  const defaultLocale = (read.string("DEFAULT_LOCALE") ?? "en").toLowerCase();
  if (!/^[a-z]{2,3}(-[a-z0-9]{2,8})*$/.test(defaultLocale)) {
    throw new ConfigError(`DEFAULT_LOCALE=${defaultLocale}: must be a BCP 47 language tag such as en or ko`);
  }

  const ttlMinMs = read.duration("OTP_TTL_MIN", 60_000, 10_000, 86_400_000);
  const ttlMaxMs = read.duration("OTP_TTL_MAX", 3_600_000, 10_000, 86_400_000);
  if (ttlMinMs > ttlMaxMs) throw new ConfigError("OTP_TTL_MIN: must not exceed OTP_TTL_MAX");
  const ttlDefaultMs = read.duration("OTP_TTL", 600_000, ttlMinMs, ttlMaxMs);

  const retentionMs = read.duration("RECORD_RETENTION", 7 * 86_400_000, 3_600_000, 365 * 86_400_000);
  if (retentionMs < ttlMaxMs) throw new ConfigError("RECORD_RETENTION: must be at least OTP_TTL_MAX");

  const retryBaseDelayMs = read.duration("SMTP_RETRY_BASE_DELAY", 1000, 1, 600_000);
  const retryMaxDelayMs = read.duration("SMTP_RETRY_MAX_DELAY", 30_000, 1, 3_600_000);
  if (retryBaseDelayMs > retryMaxDelayMs) {
    throw new ConfigError("SMTP_RETRY_BASE_DELAY: must not exceed SMTP_RETRY_MAX_DELAY");
  }

  return {
    env: nodeEnv,
    grpcAddr: parseHostPort("GRPC_ADDR", read.string("GRPC_ADDR") ?? "127.0.0.1:50051"),
    logLevel: validLogLevel(read.string("LOG_LEVEL") ?? "info"),
    redis:
      redisUrl === undefined
        ? undefined
        : {
            url: redisUrl,
            prefix: validPrefix(read.string("REDIS_PREFIX") ?? "otp:"),
            commandTimeoutMs: read.duration("REDIS_COMMAND_TIMEOUT", 1000, 10, 60_000),
          },
    smtp: {
      url: smtpUrl,
      tlsCa: readPem("SMTP_TLS_CA", read.string("SMTP_TLS_CA")),
      maxConnections: read.int("SMTP_POOL_SIZE", 5, 1, 100),
      maxMessagesPerConnection: read.int("SMTP_MAX_MESSAGES_PER_CONNECTION", 100, 1, 100_000),
      connectionTimeoutMs: read.duration("SMTP_CONNECTION_TIMEOUT", 10_000, 100, 300_000),
      greetingTimeoutMs: read.duration("SMTP_GREETING_TIMEOUT", 10_000, 100, 300_000),
      socketTimeoutMs: read.duration("SMTP_SOCKET_TIMEOUT", 30_000, 100, 600_000),
      maxAttempts: read.int("SMTP_MAX_ATTEMPTS", 4, 1, 20),
      retryBaseDelayMs,
      retryMaxDelayMs,
      waitBudgetMs: read.duration("SEND_WAIT_BUDGET", 3000, 0, 60_000),
    },
    mail: {
      fromName: from.name,
      fromAddress: from.address,
      defaultLocale,
      templatesDir: read.string("TEMPLATES_DIR"),
    },
    otp: {
      secret: secretText === undefined ? randomBytes(32) : Buffer.from(secretText, "utf8"),
      secretGenerated: secretText === undefined,
      length: read.int("OTP_LENGTH", 6, 4, 10),
      ttlDefaultMs,
      ttlMinMs,
      ttlMaxMs,
      maxFailedAttempts: read.int("OTP_MAX_FAILED_ATTEMPTS", 5, 1, 100),
    },
    recordRetentionMs: retentionMs,
    idempotencyTtlMs: read.duration("IDEMPOTENCY_TTL", 86_400_000, 60_000, 7 * 86_400_000),
    outboxDir: read.string("OUTBOX_DIR") ?? ".outbox",
    shutdownGraceMs: read.duration("SHUTDOWN_GRACE", 10_000, 0, 600_000),
  };
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
