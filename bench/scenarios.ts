/**
 * What each scenario is: a set of environment variables for the service
 * process, and the load bounds of each run. Features that other work is still
 * building (tracing and metrics, DKIM, limits, caller auth) are probed here at
 * run time, from the compiled tree, so a scenario whose feature is missing is
 * reported "n/a" instead of being faked.
 */
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { loadConfig } from "../src/config.js";
import type { LoadBounds } from "./protocol.js";
import { readStartCommand, repoRoot } from "./processes.js";

export type Env = Readonly<Record<string, string>>;

/** One caller for every bench call; its token travels as `authorization: Bearer`. */
export interface BenchCaller {
  readonly name: string;
  readonly token: string;
}

export function newBenchCaller(): BenchCaller {
  return { name: "bench", token: randomBytes(24).toString("base64url") };
}

export interface BaseEnvOptions {
  readonly redisUrl: string;
  readonly smtpUrl: string;
  /** The sink's certificate when it offers STARTTLS (PEM). */
  readonly smtpTlsCa: string | undefined;
  readonly poolSize: number;
  readonly caller: BenchCaller;
  readonly metricsPort: number;
  /** A loopback port where nothing answers DNS: the start-up domain checks stay on this machine. */
  readonly deadDnsPort: number;
}

/**
 * The service as deployed: production mode, Redis, the relay (our sink),
 * info-level JSON logs. Limits stay on but are set far above what the bench
 * sends, so none rejects; variables the service does not know yet are
 * ignored by its config.
 */
export function baseEnv(options: BaseEnvOptions): Env {
  return {
    NODE_ENV: "production",
    REDIS_URL: options.redisUrl,
    SMTP_URL: options.smtpUrl,
    ...(options.smtpTlsCa === undefined ? {} : { SMTP_TLS_CA: options.smtpTlsCa }),
    SMTP_POOL_SIZE: String(options.poolSize),
    OTP_SECRET: randomBytes(36).toString("base64"),
    MAIL_FROM: '"Bench" <no-reply@bench.example>',
    LOG_LEVEL: "info",
    SHUTDOWN_GRACE: "5s",
    // Callers (issue 3): one caller with a token.
    AUTH_TOKENS: `${options.caller.name}:${createHash("sha256").update(options.caller.token).digest("hex")}`,
    // Limits (issue 3): the default shapes, with counts no run reaches.
    LIMIT_RECIPIENT: "1000000/15m,1000000/1d",
    LIMIT_END_USER_IP: "1000000/10m,1000000/1d",
    LIMIT_CALLER: "1000000/1m",
    LIMIT_GLOBAL: "1000000/1m,1000000/1d",
    LIMIT_VERIFY_FAILURES: "1000000/1d",
    // Observability (issue 4): a free port rather than the default 9464.
    METRICS_ADDR: `127.0.0.1:${options.metricsPort}`,
    // The sender-domain checks (issue 5) must not leave loopback: no DNSBL,
    // and a resolver on loopback where nothing answers.
    DNSBL_ZONES: "none",
    DNS_SERVERS: `127.0.0.1:${options.deadDnsPort}`,
    DOCTOR_TIMEOUT: "1s",
  };
}

/** Tracing exported to the bench's OTLP receiver (the metrics endpoint is scraped by the bench). */
export function tracingEnv(receiverUrl: string): Env {
  return {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiverUrl,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
    OTEL_TRACES_SAMPLER: "always_on",
    OTEL_SERVICE_NAME: "otp-email-bench",
  };
}

/** DKIM signing with a fresh RSA 2048 key at the From domain. */
export function dkimEnv(): Env {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return {
    DKIM_DOMAIN: "bench.example",
    DKIM_SELECTOR: "bench2048",
    DKIM_PRIVATE_KEY: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

// ---------------------------------------------------------------------------
// Feature probes

export type Probe = { readonly built: true; readonly note: string } | { readonly built: false; readonly reason: string };

/** The service's config for `env`, as JSON, or the ConfigError's message. */
function configJson(env: Env): { json: string } | { error: string } {
  try {
    return { json: JSON.stringify(loadConfig(env)) };
  } catch (error) {
    return { error: error instanceof Error ? error.message : String(error) };
  }
}

/** Fails when the base environment does not satisfy the config (a variable the bench must learn about). */
export function checkBaseEnv(env: Env): void {
  const result = configJson(env);
  if ("error" in result) {
    throw new Error(`the service's config refuses the bench environment: ${result.error} (update bench/scenarios.ts baseEnv)`);
  }
}

/** Which of the other issues' parts are in the tree (and so in the bench's service). */
export function probeFeatures(env: Env): { limits: boolean; callerAuth: boolean } {
  const result = configJson(env);
  if ("error" in result) return { limits: false, callerAuth: false };
  const config = JSON.parse(result.json) as Record<string, unknown>;
  return { limits: "limits" in config, callerAuth: "auth" in config };
}

/** Tracing and metrics: the compiled telemetry module exists (and `npm start` loads it with --import). */
export function probeTelemetry(): Probe {
  const dir = join(repoRoot, "dist", "src", "telemetry");
  const files = existsSync(dir) ? readdirSync(dir).filter((name) => name.endsWith(".js")) : [];
  if (files.length === 0) return { built: false, reason: "no dist/src/telemetry/*.js" };
  const start = readStartCommand();
  const imports = start.nodeArgs.filter((arg, index, all) => arg.startsWith("--import") || all[index - 1] === "--import");
  return {
    built: true,
    note:
      imports.length > 0
        ? `npm start loads ${imports.filter((arg) => arg !== "--import").join(" ")}`
        : "npm start has no --import yet: only what the service itself starts",
  };
}

/** DKIM: the config keeps the DKIM variables (whether messages are really signed is checked at the sink). */
export function probeDkim(base: Env, dkim: Env): Probe {
  const result = configJson({ ...base, ...dkim });
  if ("error" in result) return { built: false, reason: `config refuses DKIM_*: ${result.error}` };
  return result.json.includes(dkim["DKIM_SELECTOR"] ?? "\0")
    ? { built: true, note: "config accepts DKIM_*" }
    : { built: false, reason: "config ignores DKIM_*" };
}

// ---------------------------------------------------------------------------
// Load bounds

export type ProfileName = "full" | "smoke";

/** Bounds of one measured run at `concurrency`. */
export function runBounds(profile: ProfileName, concurrency: number): LoadBounds {
  if (profile === "smoke") return { concurrency, warmup: 5, count: 40, maxMs: 30_000 };
  // At least 1 s of warm-up (every scenario has a fresh load generator), then
  // up to 5 s measured; the count bound rarely binds.
  return concurrency === 1
    ? { concurrency, warmup: 300, warmupMinMs: 1000, count: 6000, maxMs: 6000 }
    : { concurrency, warmup: 1000, warmupMinMs: 1000, count: 60_000, maxMs: 6000 };
}
