/**
 * The service's Prometheus metrics: one registry per App (no module-level
 * singleton), the instruments the recorders write to (grpc-metrics.ts,
 * delivery-telemetry.ts, otp-metrics.ts), and the two exposition formats.
 *
 * Every label is bounded: a method or a state from a closed set, a provider
 * class (provider-class.ts), a limit id capped in number. A recipient, its
 * domain, a caller's free text or a code never becomes a label.
 *
 * The registry is an OpenMetrics one because prom-client only keeps
 * exemplars there; `render("text")` still gives the classic text format
 * (what promtool checks and what a scraper gets unless it asks otherwise).
 */
import { context, trace, TraceFlags, type SpanContext } from "@opentelemetry/api";
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  Registry,
  type MetricObjectWithValues,
  type MetricValue,
  type OpenMetricsContentType,
  type RegistryContentType,
} from "prom-client";
import { feedbackTypes } from "../bounce/arf.js";
import { intakeRejectionReasons } from "../bounce/intake-rejections.js";
import { deliveryStates, purposes } from "../delivery/record.js";
import type { HealthState } from "../health.js";
import type { ProviderClassifier } from "./provider-class.js";
import { traceExportResults, traceExportTally, type TraceExportResult } from "./tracing-lifecycle.js";

/** `text`: Prometheus text format 0.0.4. `openmetrics`: OpenMetrics 1.0, with exemplars. */
export type ExpositionFormat = "text" | "openmetrics";

export const contentTypes: Readonly<Record<ExpositionFormat, string>> = {
  text: Registry.PROMETHEUS_CONTENT_TYPE,
  openmetrics: Registry.OPENMETRICS_CONTENT_TYPE,
};

/** Outcomes of SendOtp, as `otp_sends_total{outcome}`. */
export const sendOutcomes = [
  "accepted",
  "pending",
  "suppressed",
  "relay_rejected",
  "relay_unavailable",
  "backlog_full",
  "abandoned",
  "unanswered",
  "rate_limited",
  "invalid",
  "denied",
  "replayed",
  "error",
] as const;
export type SendOutcome = (typeof sendOutcomes)[number];

/** Results of VerifyOtp, as `otp_verifications_total{result}`. */
export const verifyResults = [
  "verified",
  "invalid",
  "expired",
  "locked",
  "not_found",
  "rate_limited",
  "invalid_request",
  "denied",
  "error",
] as const;
export type VerifyResultLabel = (typeof verifyResults)[number];

/** `otp_smtp_attempts_total{result, reply_class}`: the combinations that can occur. */
export const attemptSeries = [
  { result: "ok", reply_class: "2xx" },
  { result: "transient", reply_class: "4xx" },
  { result: "transient", reply_class: "none" },
  { result: "permanent", reply_class: "5xx" },
  { result: "permanent", reply_class: "none" },
  // Given up at shutdown while the relay had the message: no reply, and not the relay's failure.
  { result: "abandoned", reply_class: "none" },
  // The relay had the whole message and gave no final reply (timeout, dropped connection): its answer unknown, not retried.
  { result: "unanswered", reply_class: "none" },
  // Given up because the code expired (or had under a minute left) before the relay took the message.
  { result: "expired", reply_class: "none" },
  // Ended by a bug of ours (EINTERNAL), logged as an error: no evidence about the relay.
  { result: "internal", reply_class: "none" },
] as const;

/**
 * Attempt results (`otp_smtp_attempts_total`) that say nothing of how fast the relay is, left out of
 * otp_smtp_attempt_duration_seconds: abandoned (the service stopped; its length is the shutdown's grace),
 * expired (the code's time ran out, mostly while the message still waited for a connection) and internal
 * (a bug of ours). Only these: any other result, a new one included, is an attempt the relay had.
 */
export const resultsWithoutRelayTime: ReadonlySet<string> = new Set(["abandoned", "expired", "internal"]);

/** A purpose label: one of the domain's purposes, or `unknown` for anything a caller typed. */
export function purposeLabel(purpose: string): string {
  return (purposes as readonly string[]).includes(purpose) ? purpose : "unknown";
}

/**
 * Seconds buckets of an RPC, from 100 µs to a minute. grpc-ecosystem's
 * (Prometheus' DefBuckets) start at 5 ms, where GetDeliveryStatus, VerifyOtp
 * and health checks, answered in a fraction of a millisecond, all fall into
 * the first bucket: their p50 and p90 read 2.5-5 ms whatever they are. A
 * SendOtp may wait up to SEND_WAIT_BUDGET (at most 60 s). 18 buckets: 7 more
 * series per method than DefBuckets, whose boundaries from 5 ms to 10 s
 * (2.5 s: OtpSendLatencyP99High) all stay.
 */
const grpcBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** One SMTP transaction: a pooled connection answers in ms, a cold TLS handshake in 100s of ms, a stalled relay in 10s of s. */
const attemptBuckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/**
 * The wait for a pooled connection: well under a millisecond when one is free, seconds to minutes in a
 * backlog behind a slow relay or too small a pool, up to the code's lifetime (EEXPIRED).
 */
const poolWaitBuckets = [0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
/** A whole send, backoff included: up to the code's lifetime. */
const sendBuckets = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export interface MetricsOptions {
  /** Maps recipient domains to provider classes for labels. */
  readonly providers: ProviderClassifier;
  /** Process and Node runtime metrics (default true; tests that count series may turn them off). */
  readonly processMetrics?: boolean;
  /** Distinct `limit` label values kept before the rest read `other` (default 64). */
  readonly maxLimitLabels?: number;
}

export interface Metrics {
  /** The registry, for tests and for `getMetricsAsJSON`. Render with `render`. */
  readonly registry: Registry<OpenMetricsContentType>;
  readonly providers: ProviderClassifier;

  /** grpc-ecosystem's server metrics (go-grpc-middleware/providers/prometheus names and labels). */
  readonly grpc: {
    readonly started: Counter<"grpc_type" | "grpc_service" | "grpc_method">;
    readonly handled: Counter<"grpc_type" | "grpc_service" | "grpc_method" | "grpc_code">;
    readonly handlingSeconds: Histogram<"grpc_type" | "grpc_service" | "grpc_method">;
    readonly msgReceived: Counter<"grpc_type" | "grpc_service" | "grpc_method">;
    readonly msgSent: Counter<"grpc_type" | "grpc_service" | "grpc_method">;
    /**
     * Runs `flush` whenever the four gRPC counters are read (a scrape,
     * `get()`): a recorder may tally counts itself and add them to the
     * counters only then (grpc-metrics.ts does, per method).
     */
    flushBeforeRead(flush: () => void): void;
  };
  readonly sends: Counter<"purpose" | "outcome">;
  readonly verifications: Counter<"purpose" | "result">;
  readonly rateLimitRejections: Counter<"rpc" | "limit">;
  readonly smtpAttempts: Counter<"result" | "reply_class">;
  readonly smtpAttemptSeconds: Histogram<"result">;
  readonly smtpPoolWaitSeconds: Histogram;
  readonly smtpSendSeconds: Histogram<"purpose" | "outcome">;
  readonly smtpAttemptsInFlight: Gauge;
  readonly smtpPoolConnectionsInUse: Gauge;
  readonly smtpPoolSize: Gauge;
  readonly smtpBacklog: Gauge;
  readonly deliveryTransitions: Counter<"state" | "provider">;
  readonly redisCommandErrors: Counter<"operation">;
  readonly redisFull: Gauge;
  readonly bounceReports: Counter<"kind" | "state">;
  readonly feedbackReports: Counter<"kind" | "feedback_type">;
  readonly spamComplaints: Counter<"feedback_type" | "provider">;
  readonly bounceIntakeRejections: Counter<"reason">;
  readonly tlsCertificateExpiry: Gauge<"certificate">;
  readonly tlsCertificateReloads: Counter<"certificate" | "result">;
  readonly tlsCertificateLastReloadSuccessful: Gauge<"certificate">;
  readonly tlsClientCrlNextUpdate: Gauge<"issuer">;
  readonly tlsClientCertificateRefusals: Counter<"reason">;
  readonly authTokensReloads: Counter<"result">;
  readonly authTokensLastReloadSuccessful: Gauge<"variable">;
  readonly authTokensUnlistedPurposeCallers: Gauge<"variable">;
  readonly templatesReloads: Counter<"result">;
  readonly templatesLastReloadSuccessful: Gauge;
  readonly healthComponentUp: Gauge<"component">;
  readonly traceExportSpans: Counter<"result">;

  /** Reports `health`'s components (storage, relay, shutdown) in otp_health_component_up at every scrape. */
  watchHealth(health: Pick<HealthState, "components">): void;
  /** Reports the send backlog's size in otp_smtp_backlog at every scrape (nothing per message). */
  watchBacklog(backlog: { size(): number }): void;
  /**
   * Reports `size` (SMTP_POOL_SIZE) in otp_smtp_pool_size, and at every scrape the sends on a pooled connection
   * as `transport` counts them (SmtpTransport.onConnection) in otp_smtp_pool_connections_in_use, at most `size`.
   */
  watchPool(transport: { onConnection(): number }, size: number): void;
  /** `limit` as a label: the first `maxLimitLabels` distinct values as given (sanitized), then `other`. */
  limitLabel(limit: string): string;
  /** Renders every metric in `format`. */
  render(format: ExpositionFormat): Promise<string>;
}

/** Creates a registry with every service metric (and, by default, process and runtime metrics). */
export function createMetrics(options: MetricsOptions): Metrics {
  const registry = newRegistry(Registry.OPENMETRICS_CONTENT_TYPE);
  const registers = [registry];
  const { providers } = options;

  const rpcLabels = ["grpc_type", "grpc_service", "grpc_method"] as const;
  const grpcFlushes = new Set<() => void>();
  const flushGrpc = (): void => {
    for (const flush of grpcFlushes) flush();
  };
  const grpc = {
    started: new Counter({
      name: "grpc_server_started_total",
      help: "Total number of RPCs started on the server.",
      labelNames: rpcLabels,
      registers,
      collect: flushGrpc,
    }),
    handled: new Counter({
      name: "grpc_server_handled_total",
      help: "Total number of RPCs completed on the server, regardless of success or failure.",
      labelNames: [...rpcLabels, "grpc_code"] as const,
      registers,
      collect: flushGrpc,
    }),
    handlingSeconds: new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
      labelNames: rpcLabels,
      buckets: grpcBuckets,
      enableExemplars: true,
      registers,
    }),
    msgReceived: new Counter({
      name: "grpc_server_msg_received_total",
      help: "Total number of RPC stream messages received on the server.",
      labelNames: rpcLabels,
      registers,
      collect: flushGrpc,
    }),
    msgSent: new Counter({
      name: "grpc_server_msg_sent_total",
      help: "Total number of gRPC stream messages sent by the server.",
      labelNames: rpcLabels,
      registers,
      collect: flushGrpc,
    }),
    flushBeforeRead(flush: () => void): void {
      grpcFlushes.add(flush);
    },
  };

  const sends = new Counter({
    name: "otp_sends_total",
    help:
      "SendOtp requests by purpose and outcome: accepted (the relay replied 2xx), pending (answered before the relay did: after the wait budget or before the caller's deadline; attempts go on), " +
      "suppressed (recipient hard-bounced recently), relay_rejected (5xx), relay_unavailable (unreachable, retries used up, credentials refused), " +
      "backlog_full (refused before anything was spent: the relay is not keeping up and SMTP_MAX_BACKLOG messages wait for a connection), " +
      "abandoned (a send given up at shutdown after its whole message went to the relay, its answer unknown), " +
      "unanswered (the relay had the whole message and gave no final reply: its answer unknown, not sent again), " +
      "rate_limited, invalid (bad request), denied (caller unauthenticated or not allowed the purpose), " +
      "replayed (a repeated idempotency_key answered with the first request's outcome: nothing sent, the first request counted under its own outcome), " +
      "error (anything else).",
    labelNames: ["purpose", "outcome"] as const,
    registers,
  });
  const verifications = new Counter({
    name: "otp_verifications_total",
    help:
      "VerifyOtp requests by purpose and result (verified, invalid, expired, locked, not_found, rate_limited, invalid_request, " +
      "denied: caller not allowed, error).",
    labelNames: ["purpose", "result"] as const,
    registers,
  });
  const rateLimitRejections = new Counter({
    name: "otp_rate_limit_rejections_total",
    help: "Requests refused by a rate limit, by RPC (send, verify) and limit id; a request refused by two limits counts once for each.",
    labelNames: ["rpc", "limit"] as const,
    registers,
  });
  const smtpAttempts = new Counter({
    name: "otp_smtp_attempts_total",
    help:
      "SMTP attempts (one transaction with the relay each) by result (ok, transient, permanent, abandoned: given up at shutdown " +
      "after the whole message went to the relay, its answer unknown; unanswered: the relay had the whole message and gave no final " +
      "reply (timeout, dropped connection), its answer unknown, not retried; expired: given up because the code expired, or had less than a " +
      "minute left, before the relay took the message, mostly while it waited for a connection behind a slow relay; " +
      "not a relay failure; internal: ended by a bug of the service, logged as an error, not a relay failure either) " +
      "and reply class (2xx, 4xx, 5xx, none: no reply).",
    labelNames: ["result", "reply_class"] as const,
    registers,
  });
  const smtpAttemptSeconds = new Histogram({
    name: "otp_smtp_attempt_duration_seconds",
    help:
      "The relay's time for one SMTP attempt: from a pooled connection taking the message (connecting, greeting, TLS and AUTH " +
      "first when the connection is new) to the relay's final reply or the connection failing, by result (as " +
      "otp_smtp_attempts_total). The wait for a connection before that is otp_smtp_pool_wait_seconds. Attempts that say " +
      "nothing of the relay's speed are not observed: abandoned (the service stopped), expired (the code ran out) and " +
      "internal (a bug of the service), nor an attempt that never got a connection.",
    labelNames: ["result"] as const,
    buckets: attemptBuckets,
    enableExemplars: true,
    registers,
  });
  const smtpPoolWaitSeconds = new Histogram({
    name: "otp_smtp_pool_wait_seconds",
    help:
      "Time an SMTP attempt waited for a pooled connection (all SMTP_POOL_SIZE busy: a backlog of the service's own), from " +
      "being handed to the transport to a connection taking it; an attempt that never got one (its code expired, its send " +
      "timed out) counts with how long it waited, one given up at shutdown does not.",
    buckets: poolWaitBuckets,
    enableExemplars: true,
    registers,
  });
  const smtpSendSeconds = new Histogram({
    name: "otp_smtp_send_duration_seconds",
    help:
      "Duration of a message's whole SMTP send, first attempt to final verdict with retries and backoff, by purpose and outcome " +
      "(accepted, failed: never accepted, a send the relay had whole and never answered included, abandoned: the service " +
      "stopped while the relay had the message, its answer unknown); " +
      "its count is every send's final verdict, also of those SendOtp answered pending.",
    labelNames: ["purpose", "outcome"] as const,
    buckets: sendBuckets,
    enableExemplars: true,
    registers,
  });
  const smtpAttemptsInFlight = new Gauge({
    name: "otp_smtp_attempts_in_flight",
    help: "SMTP attempts in progress, including those waiting for a free pooled connection.",
    registers,
  });
  let pool: { readonly source: { onConnection(): number }; readonly size: number } | undefined;
  const smtpPoolConnectionsInUse = new Gauge({
    name: "otp_smtp_pool_connections_in_use",
    help:
      "Pooled SMTP connections carrying a message, read at each scrape: from when a connection takes a send off the pool's " +
      "queue (connecting to the relay included) until the send ends, whatever the outcome; at most otp_smtp_pool_size.",
    registers,
    collect() {
      // A send only nodemailer's own builder can make counts from when it is handed over, queued out of sight: bounded.
      this.set(pool === undefined ? 0 : Math.max(0, Math.min(pool.source.onConnection(), pool.size)));
    },
  });
  const smtpPoolSize = new Gauge({
    name: "otp_smtp_pool_size",
    help: "Most SMTP connections the pool opens (SMTP_POOL_SIZE).",
    registers,
  });
  let backlog: { size(): number } | undefined;
  const smtpBacklog = new Gauge({
    name: "otp_smtp_backlog",
    help:
      "Messages taken on that wait for a pooled SMTP connection: sends the pool had its turn at and gave no connection, retries " +
      "included (counted as the pool takes them, so also while it has connections free but is not opening one), and sends on " +
      "their way to the pool (about to be handed over, being DKIM-signed, or not yet looked at by the pool) beyond the " +
      "connections free for them; at SMTP_MAX_BACKLOG new sends are refused (otp_sends_total{outcome=\"backlog_full\"}).",
    registers,
    collect() {
      if (backlog !== undefined) this.set(backlog.size());
    },
  });
  const deliveryTransitions = new Counter({
    name: "otp_delivery_state_transitions_total",
    help: "Delivery records entering a state (QUEUED, SENDING, RETRYING, ACCEPTED, FAILED...), by the recipient's mailbox provider class.",
    labelNames: ["state", "provider"] as const,
    registers,
  });
  const redisCommandErrors = new Counter({
    name: "otp_redis_command_errors_total",
    help: "Storage operations that failed against Redis (connection lost, timeout, error reply), by operation.",
    labelNames: ["operation"] as const,
    registers,
  });
  const redisFull = new Gauge({
    name: "otp_redis_full",
    help:
      "1 while Redis refuses writes for lack of memory (used memory over maxmemory, policy noeviction: SendOtp and " +
      "VerifyOtp answer UNAVAILABLE), from its first such refusal until a write goes through again (a call's, or the " +
      "health probe's check every 5 s); else 0.",
    registers,
  });
  const bounceReports = new Counter({
    name: "otp_bounce_reports_total",
    help:
      "Messages read by the bounce intake, by kind (applied: a DSN recorded on its message; duplicate: a copy of a DSN " +
      "already recorded, which changed nothing; unmatched: no record for it; not_dsn: not a delivery report) and, when " +
      "applied, the record's state after it (DELIVERED, DELAYED, BOUNCED).",
    labelNames: ["kind", "state"] as const,
    registers,
  });
  const feedbackReports = new Counter({
    name: "otp_feedback_reports_total",
    help:
      "Feedback reports (RFC 5965 ARF: spam complaints from mailbox providers' feedback loops) read by the bounce intake, by " +
      "kind (applied: tied to a message and recorded; duplicate: a copy of a report already recorded, which changed " +
      "nothing; unmatched: names no message, an unknown one, or two; not_arf: not a usable feedback report) and " +
      "feedback_type (abuse, fraud, virus, other, not-spam; none for not_arf).",
    labelNames: ["kind", "feedback_type"] as const,
    registers,
  });
  const spamComplaints = new Counter({
    name: "otp_spam_complaints_total",
    help:
      "Spam complaints applied to a message (feedback reports of type abuse, fraud, virus or other; not-spam is not one; a " +
      "resent copy of one is not counted again), by " +
      "feedback_type and the recipient's provider class. abuse and fraud suppress the recipient. Over accepted sends " +
      "(otp_delivery_state_transitions_total{state=\"ACCEPTED\"}) this is the complaint rate mailbox providers judge senders by.",
    labelNames: ["feedback_type", "provider"] as const,
    registers,
  });
  const bounceIntakeRejections = new Counter({
    name: "otp_bounce_intake_rejections_total",
    help:
      "What the bounce intake refused, by reason: rate_limited (a peer over BOUNCE_CONNECTIONS_PER_MINUTE, 421), too_many_clients " +
      "(over the simultaneous connections, 421), tls_required (MAIL before STARTTLS with BOUNCE_TLS_REQUIRED, 530), bad_recipient " +
      "(not one of our VERP addresses, 550), too_many_recipients (452), too_large (552), unreadable (the message broke off, 451), " +
      "record_failed (storage could not record it, 451: the sender retries), error (451).",
    labelNames: ["reason"] as const,
    registers,
  });
  const tlsCertificateExpiry = new Gauge({
    name: "otp_tls_certificate_expiry_timestamp_seconds",
    help:
      "When the certificate a listener presents expires (its notAfter, Unix seconds), by certificate (grpc: TLS_CERT; " +
      "bounce_intake: BOUNCE_TLS_CERT); it follows a reloaded certificate (certificate files are re-read every TLS_RELOAD_INTERVAL and on " +
      "SIGHUP). No series without the certificate.",
    labelNames: ["certificate"] as const,
    registers,
  });
  const tlsCertificateReloads = new Counter({
    name: "otp_tls_certificate_reloads_total",
    help:
      "Changes of a listener's certificate files (grpc: TLS_CERT, TLS_KEY, TLS_CLIENT_CA, TLS_CLIENT_CRL; bounce_intake: BOUNCE_TLS_CERT, BOUNCE_TLS_KEY) by " +
      "result: applied (new connections get them), refused (they failed the start-up checks; the certificate in use stays). A change is " +
      "counted once, however often the same files are read. Series only for certificates given as files.",
    labelNames: ["certificate", "result"] as const,
    registers,
  });
  const tlsClientCrlNextUpdate = new Gauge({
    name: "otp_tls_client_crl_next_update_timestamp_seconds",
    help:
      "When the newest CRL (TLS_CLIENT_CRL) of a client CA expires (its nextUpdate, Unix seconds), by issuer (the CA's subject): from then " +
      "on TLS refuses every client certificate of that CA until a current CRL is read. It follows reloaded CRLs. No series without " +
      "TLS_CLIENT_CRL, nor for a CRL without nextUpdate.",
    labelNames: ["issuer"] as const,
    registers,
  });
  const tlsClientCertificateRefusals = new Counter({
    name: "otp_tls_client_certificate_refusals_total",
    help:
      "gRPC connections whose client certificate did not verify, so that it counts as none (token callers on them still are callers), by " +
      "reason: revoked (TLS_CLIENT_CRL), expired, not_yet_valid, untrusted (not signed by a CA of TLS_CLIENT_CA), crl_expired (its CA's " +
      "CRL has expired: every certificate of that CA is refused), crl_not_yet_valid (its CA's CRL starts later than this host's clock " +
      "says: clock skew), other (the log names OpenSSL's error). Series only with TLS_CLIENT_CA.",
    labelNames: ["reason"] as const,
    registers,
  });
  const tlsCertificateLastReloadSuccessful = new Gauge({
    name: "otp_tls_certificate_last_reload_successful",
    help:
      "0 while a listener's certificate files hold a change that was refused (the service serves the previous certificate, and would not " +
      "start with these files), 1 otherwise. Series only for certificates given as files.",
    labelNames: ["certificate"] as const,
    registers,
  });
  const authTokensReloads = new Counter({
    name: "otp_auth_tokens_reloads_total",
    help:
      "Changes of the AUTH_TOKENS file by result: applied (the next call is judged by the new list), refused (it failed the start-up " +
      "checks; the list in use stays). A change is counted once, however often the same file is read. No series when AUTH_TOKENS " +
      "lists the entries itself.",
    labelNames: ["result"] as const,
    registers,
  });
  const authTokensLastReloadSuccessful = new Gauge({
    name: "otp_auth_tokens_last_reload_successful",
    help:
      "0 while the AUTH_TOKENS file holds a change that was refused (calls are judged by the previous list, and the service would not " +
      "start with this file), 1 otherwise (also after a file that dropped a caller CALLER_PURPOSES names: it was applied; its log " +
      "line warns that a restart stops on it, and otp_auth_tokens_unlisted_purpose_callers counts such callers). No series when " +
      "AUTH_TOKENS lists the entries itself.",
    // A label, though it has one value: an unlabelled gauge is exported at 0 from the start, which would read as
    // "refused" (and fire OtpAuthTokensReloadRefused) on every instance without a token file.
    labelNames: ["variable"] as const,
    registers,
  });
  const authTokensUnlistedPurposeCallers = new Gauge({
    name: "otp_auth_tokens_unlisted_purpose_callers",
    help:
      "How many callers CALLER_PURPOSES names that the AUTH_TOKENS file in use no longer lists (it was applied: their calls are " +
      "refused), else 0. While above 0 a restart stops at start-up (exit 78) until CALLER_PURPOSES stops naming them; the log line " +
      "of the reload names them. No series when AUTH_TOKENS lists the entries itself.",
    // Labelled as otp_auth_tokens_last_reload_successful is, so that it has no series without a token file. No caller
    // name: names are not a closed set, and the log has them.
    labelNames: ["variable"] as const,
    registers,
  });
  const templatesReloads = new Counter({
    name: "otp_templates_reloads_total",
    help:
      "Changes of TEMPLATES_DIR (re-read every TEMPLATES_RELOAD_INTERVAL and on SIGHUP) by result: applied (the next mail uses " +
      "them), refused (they failed the start-up checks; the templates in use stay). A change is counted once, however often the " +
      "same files are read. Series only with TEMPLATES_DIR.",
    labelNames: ["result"] as const,
    registers,
  });
  const templatesLastReloadSuccessful = new Gauge({
    name: "otp_templates_last_reload_successful",
    help:
      "0 while TEMPLATES_DIR holds a change that was refused (mail goes out with the previous templates, and the service would not " +
      "start with these files), 1 otherwise (without TEMPLATES_DIR too).",
    registers,
  });
  // 1 from the start: a gauge without labels has its one series from its creation, and 0 would say "refused".
  templatesLastReloadSuccessful.set(1);
  let health: Pick<HealthState, "components"> | undefined;
  const healthComponentUp = new Gauge({
    name: "otp_health_component_up",
    help:
      "1 when a component the health check watches is up (storage: Redis connected and answering PING, down after 3 PINGs " +
      "in a row failed, 5 s apart, each bounded by REDIS_COMMAND_TIMEOUT; relay: the SMTP relay usable; " +
      "shutdown: not stopping), 0 when not; the instance reports SERVING only when all are 1.",
    labelNames: ["component"] as const,
    registers,
    collect() {
      if (health === undefined) return;
      for (const [component, state] of health.components()) this.set({ component }, state.up ? 1 : 0);
    },
  });
  // The process's trace exporters count in tracing-lifecycle.ts; each scrape adds what came since the last.
  const traceExportSeen: Record<TraceExportResult, number> = { exported: 0, failed: 0, dropped: 0 };
  const traceExportSpans = new Counter({
    name: "otp_trace_export_spans_total",
    help:
      "Finished spans by what became of them: exported (the collector took them), failed (the export failed after its " +
      "retries: the spans are lost), dropped (never sent: the export queue, OTEL_BSP_MAX_QUEUE_SIZE, was full). " +
      "All 0 while nothing is exported.",
    labelNames: ["result"] as const,
    registers,
    collect() {
      const tally = traceExportTally();
      for (const result of traceExportResults) {
        const delta = tally[result] - traceExportSeen[result];
        if (delta > 0) this.inc({ result }, delta);
        traceExportSeen[result] = tally[result];
      }
    },
  });

  // Every series that can exist is there from the start, at 0, so rate()
  // and ratios work before the first event and a dashboard never shows "no data".
  for (const purpose of [...purposes, "unknown"]) {
    for (const outcome of sendOutcomes) sends.labels(purpose, outcome).inc(0);
    for (const result of verifyResults) verifications.labels(purpose, result).inc(0);
  }
  for (const series of attemptSeries) smtpAttempts.labels(series).inc(0);
  for (const result of traceExportResults) traceExportSpans.labels(result).inc(0);
  for (const { result } of attemptSeries) if (!resultsWithoutRelayTime.has(result)) smtpAttemptSeconds.zero({ result });
  for (const purpose of purposes) for (const outcome of ["accepted", "failed", "abandoned"]) smtpSendSeconds.zero({ purpose, outcome });
  for (const state of ["DELIVERED", "DELAYED", "BOUNCED"]) bounceReports.labels("applied", state).inc(0);
  for (const kind of ["duplicate", "unmatched", "not_dsn"]) bounceReports.labels(kind, "none").inc(0);
  for (const reason of intakeRejectionReasons) bounceIntakeRejections.labels(reason).inc(0);
  for (const type of feedbackTypes) {
    for (const kind of ["applied", "duplicate", "unmatched"]) feedbackReports.labels(kind, type).inc(0);
    if (type !== "not-spam") for (const provider of providers.classes) spamComplaints.labels(type, provider).inc(0);
  }
  feedbackReports.labels("not_arf", "none").inc(0);
  for (const state of deliveryStates) {
    for (const provider of providers.classes) deliveryTransitions.labels(state, provider).inc(0);
  }

  if (options.processMetrics ?? true) {
    collectDefaultMetrics({ register: registry });
    // prom-client's nodejs_active_{handles,requests,resources}_total are
    // gauges named like counters, which `promtool check metrics` rejects;
    // they are the sums of nodejs_active_{handles,requests,resources}
    // (by type), which stay: sum(nodejs_active_handles) is the same number.
    for (const metric of registry.getMetricsAsArray()) {
      // prom-client types `type` as an enum; at run time it is the string "gauge".
      const { name, type } = metric as unknown as { name: string; type: string };
      if (type === "gauge" && name.endsWith("_total")) registry.removeSingleMetric(name);
    }
  }

  const maxLimitLabels = options.maxLimitLabels ?? 64;
  const limitLabels = new Set<string>();

  return {
    registry,
    providers,
    grpc,
    sends,
    verifications,
    rateLimitRejections,
    smtpAttempts,
    smtpAttemptSeconds,
    smtpPoolWaitSeconds,
    smtpSendSeconds,
    smtpAttemptsInFlight,
    smtpPoolConnectionsInUse,
    smtpPoolSize,
    smtpBacklog,
    deliveryTransitions,
    redisCommandErrors,
    redisFull,
    bounceReports,
    feedbackReports,
    spamComplaints,
    bounceIntakeRejections,
    tlsCertificateExpiry,
    tlsCertificateReloads,
    tlsCertificateLastReloadSuccessful,
    tlsClientCrlNextUpdate,
    tlsClientCertificateRefusals,
    authTokensReloads,
    authTokensLastReloadSuccessful,
    authTokensUnlistedPurposeCallers,
    templatesReloads,
    templatesLastReloadSuccessful,
    healthComponentUp,
    traceExportSpans,
    watchHealth(source) {
      health = source;
    },
    watchBacklog(source) {
      backlog = source;
    },
    watchPool(source, size) {
      pool = { source, size };
      smtpPoolSize.set(size);
    },
    limitLabel(limit: string): string {
      const label = limit.toLowerCase().replace(/[^a-z0-9_:.-]/g, "_").slice(0, 64) || "unknown";
      if (limitLabels.has(label)) return label;
      if (limitLabels.size >= maxLimitLabels) return "other";
      limitLabels.add(label);
      return label;
    },
    render: (format) => render(registry, format),
  };
}

/**
 * The exemplar for a latency observation: the trace id of `spanContext` (by
 * default the active span's), when the trace is sampled (an unsampled one
 * leads nowhere in Jaeger).
 */
export function traceExemplar(spanContext = trace.getSpanContext(context.active())): Record<string, string> | undefined {
  // The flag first: it is a number on the context, while validating reads both ids (a regex each).
  if (spanContext === undefined || (spanContext.traceFlags & TraceFlags.SAMPLED) === 0) return undefined;
  if (!trace.isSpanContextValid(spanContext)) return undefined;
  return { trace_id: spanContext.traceId };
}

/** Observes `value` with the trace (of `spanContext`, else the active one) as exemplar when there is one. */
export function observeWithTrace<T extends string>(
  histogram: Histogram<T>,
  labels: Partial<Record<T, string | number>>,
  value: number,
  spanContext?: SpanContext,
): void {
  const exemplarLabels = traceExemplar(spanContext);
  histogram.observe(
    exemplarLabels === undefined ? { labels, value } : { labels, value, exemplarLabels: exemplarLabels as Partial<Record<T, string>> },
  );
}

// ---------------------------------------------------------------------------
// Exposition

type MetricData = MetricObjectWithValues<MetricValue<string>>;

/** What prom-client's Registry#getMetricsAsString reads (a JS method its typings leave out). */
interface MetricSource {
  get(): Promise<MetricData>;
}
interface MetricFormatter {
  getMetricsAsString(metric: MetricSource): Promise<string>;
}

/** A registry of the given content type (prom-client's typings omit the constructor's parameter). */
function newRegistry<T extends RegistryContentType>(contentType: T): Registry<T> {
  return new (Registry as unknown as new (contentType: T) => Registry<T>)(contentType);
}

/** Empty registries used only for their formatting, one per format. */
const formatters: Readonly<Record<ExpositionFormat, MetricFormatter>> = {
  text: newRegistry(Registry.PROMETHEUS_CONTENT_TYPE) as unknown as MetricFormatter,
  openmetrics: newRegistry(Registry.OPENMETRICS_CONTENT_TYPE) as unknown as MetricFormatter,
};

/**
 * Renders `registry` in either format. prom-client's own `metrics()` renders
 * one format per registry and, in OpenMetrics mode, renames counters in place
 * (`x_total` -> `x`), which would break every later text scrape; formatting
 * each metric through a formatter registry of the asked format, with the
 * counter's family name passed as OpenMetrics wants it, leaves the metrics as
 * they are.
 */
async function render(registry: Registry<OpenMetricsContentType>, format: ExpositionFormat): Promise<string> {
  const formatter = formatters[format];
  const parts = await Promise.all(
    registry.getMetricsAsArray().map((metric) => {
      const source = metric as unknown as { getForPromString?: () => Promise<MetricData>; get(): Promise<MetricData> };
      return formatter.getMetricsAsString({
        async get() {
          const data = await (source.getForPromString?.() ?? source.get());
          // OpenMetrics names a counter family without `_total`; its samples get it back.
          const counter = String(data.type) === "counter";
          return format === "openmetrics" && counter ? { ...data, name: data.name.replace(/_total$/, "") } : data;
        },
      });
    }),
  );
  return format === "openmetrics" ? `${parts.join("\n")}\n# EOF\n` : `${parts.join("\n\n")}\n`;
}

/**
 * The format a scraper asks for in its Accept header: OpenMetrics when it
 * names `application/openmetrics-text` with at least the weight it gives
 * `text/plain`, else text.
 */
export function negotiateFormat(accept: string | undefined): ExpositionFormat {
  if (accept === undefined || accept === "") return "text";
  let openMetrics = 0;
  let text = 0;
  for (const range of accept.split(",")) {
    const [type = "", ...params] = range.split(";").map((part) => part.trim().toLowerCase());
    const qParam = params.find((param) => param.startsWith("q="));
    const q = qParam === undefined ? 1 : Number(qParam.slice(2));
    if (!Number.isFinite(q)) continue;
    if (type === "application/openmetrics-text") openMetrics = Math.max(openMetrics, q);
    else if (type === "text/plain" || type === "text/*" || type === "*/*") text = Math.max(text, q);
  }
  return openMetrics > 0 && openMetrics >= text ? "openmetrics" : "text";
}
