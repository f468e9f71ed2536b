/**
 * Builds the whole service from a Config: storage, SMTP, delivery, the OTP
 * domain and the gRPC server. `main.ts` adds signals and process exit; tests
 * start an App in-process on port 0.
 *
 * What only some configurations use is imported when they use it: the
 * capture sink (development, no SMTP_URL), the DKIM start-up probe
 * (DKIM_*) and the bounce intake (BOUNCE_SMTP_ADDR) bring smtp-server,
 * mailparser and mailauth, tens of MB of heap and code a relay-only
 * production process would carry for nothing.
 */
import { systemClock, type Clock } from "./clock.js";
import { ConfigError, readTokenList, type Config } from "./config.js";
import { createSendBacklog } from "./delivery/backlog.js";
import type { CaptureSink } from "./delivery/capture-sink.js";
import { createDeliveryService } from "./delivery/delivery-service.js";
import { createRenderer, RendererSetupError, type Renderer } from "./delivery/render.js";
import { startTemplateReloader } from "./delivery/template-reloader.js";
import { readTemplateDir, type TemplateDirRead } from "./delivery/templates.js";
import { createSmtpTransport } from "./delivery/smtp-transport.js";
import type { BounceOutcome } from "./bounce/bounce-processor.js";
import type { BounceIntake } from "./bounce/intake-server.js";
import { createSuppressionList } from "./bounce/suppression.js";
import type { DeliveryRecord } from "./delivery/record.js";
import { createHealthState, type HealthState } from "./health.js";
import { anonymousDevCaller, createCallerIdentity } from "./auth/caller-identity.js";
import { certificateRefusalReasons, createCertificateRefusals } from "./auth/certificate-refusals.js";
import { startTokenFileReloader, type TokenFileReloader } from "./auth/token-file-reloader.js";
import { createPurposePolicy } from "./auth/purpose-policy.js";
import { createServerCredentials, type GrpcServerCredentials } from "./auth/server-credentials.js";
import { createLimiter, limitIds } from "./limits/limiter.js";
import type { SendLimiter } from "./limits/types.js";
import type { Logger } from "./logger.js";
import { listenFailure } from "./listen-error.js";
import { createHasher } from "./otp/code.js";
import { createOtpService, defaultKeepExpiredMs } from "./otp/otp-service.js";
import { previousSecretFromConfig, secretKeyId, type PreviousSecret } from "./otp/secret-rotation.js";
import { createGrpcServer } from "./rpc/server.js";
import { createMemoryStore } from "./store/memory-store.js";
import { createRedisStore, redisOperations } from "./store/redis-store.js";
import { startStorageProbe } from "./store/storage-probe.js";
import type { OtpStore } from "./store/types.js";
import { createBounceTelemetry } from "./telemetry/bounce-telemetry.js";
import { reportCertificateExpiry, reportClientCrlExpiry } from "./telemetry/certificate-expiry.js";
import { createDeliveryTelemetry } from "./telemetry/delivery-telemetry.js";
import { countUnroutedCalls, createGrpcMetricsInterceptor, zeroGrpcSeries } from "./telemetry/grpc-metrics.js";
import { createMetrics, type Metrics } from "./telemetry/metrics.js";
import { countRefusedCalls, instrumentOtpService } from "./telemetry/otp-metrics.js";
import { createProviderClassifier } from "./telemetry/provider-class.js";
import { serverTracingInterceptors } from "./telemetry/server-tracing.js";
import { activeSpanId, activeTraceId } from "./telemetry/tracing.js";
import { startCertificateReloader, type WatchedCertificate } from "./tls/certificate-reloader.js";

export interface AppOptions {
  readonly config: Config;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly limiter?: SendLimiter;
  /** How often to re-check a relay that is down (default 15 s). */
  readonly relayProbeIntervalMs?: number;
  /** The Redis PING probe's timing (defaults: every 5 s, down after 3 failures in a row). */
  readonly storageProbe?: { readonly intervalMs?: number; readonly failuresBeforeDown?: number };
  /**
   * Called when a bounce changed what is known about a message, with the
   * record as GetDeliveryStatus now shows it and the trace id of its send
   * (for a span linked to that trace).
   */
  readonly onBounceApplied?: (record: DeliveryRecord, previousTraceId: string) => void;
  /** Told every processed bounce: applied, unmatched or not a DSN (for metrics). */
  readonly onBounceOutcome?: (outcome: BounceOutcome) => void;
  /** Where the app counts (a fresh registry with process metrics by default). */
  readonly metrics?: Metrics;
  /**
   * The instance's health (`createAppHealth`'s by default): given, so that
   * `main.ts` can serve /metrics and /readyz while the app starts.
   */
  readonly health?: HealthState;
  /**
   * How long changed certificate files that fail their checks get before
   * they are refused: a key written after its certificate (default 2 s).
   */
  readonly certificateSettleMs?: number;
  /**
   * How long a changed TEMPLATES_DIR must read the same before it is applied
   * or refused: a folder caught while copied file by file (default 2 s).
   */
  readonly templatesSettleMs?: number;
  /**
   * How long a changed AUTH_TOKENS file must read the same before it is
   * applied or refused: a file caught while written in place (default 2 s).
   */
  readonly authTokensSettleMs?: number;
  /**
   * Aborted when a stop is asked for while the app starts (SIGTERM during
   * start-up): the relay's first check, which a relay that never answers can
   * hold for its connection and greeting timeouts, is no longer waited for,
   * so the caller can stop the app at once.
   */
  readonly startupSignal?: AbortSignal;
}

export interface App {
  /** Where the gRPC server listens. */
  readonly address: { readonly host: string; readonly port: number };
  /** The capture sink's URL in development mode, else undefined. */
  readonly captureSinkUrl: string | undefined;
  /** Where the bounce intake listens (BOUNCE_SMTP_ADDR), or undefined when it is off. */
  readonly bounceIntake: { readonly host: string; readonly port: number } | undefined;
  /** The app's Prometheus metrics; `main.ts` serves them on METRICS_ADDR. */
  readonly metrics: Metrics;
  /** Whether the instance serves (what grpc.health.v1 reports); `main.ts` also serves it as /readyz. */
  readonly health: Pick<HealthState, "isServing" | "components">;
  /**
   * Reads the certificate files again now (`main.ts` calls it on SIGHUP):
   * a renewed set that passes the start-up checks is served to new
   * connections. Resolves when done; never rejects.
   */
  reloadCertificates(): Promise<void>;
  /**
   * Reads the AUTH_TOKENS file again now (`main.ts` calls it on SIGHUP): a
   * changed list that passes the start-up checks, and reads the same a
   * settle time later, judges the next call. Answers in the log whatever
   * comes of it. Resolves once a change, if any, is applied, refused or
   * waiting to settle; never rejects.
   */
  reloadAuthTokens(): Promise<void>;
  /**
   * Reads TEMPLATES_DIR again now (`main.ts` calls it on SIGHUP): a changed
   * set that passes the start-up checks is used for the next mail. Answers
   * in the log whatever comes of it. Resolves when done; never rejects.
   */
  reloadTemplates(): Promise<void>;
  /**
   * Graceful stop: health goes NOT_SERVING, the server stops accepting calls
   * and lets running ones finish, background sends get `graceMs` to finish,
   * then the pool, the store and the sink close.
   */
  stop(graceMs?: number): Promise<void>;
}

/**
 * The health of an instance that has not started yet: not serving until the
 * relay's first check has answered (start-up waits for it, but the gRPC port
 * and /readyz are open before) and, with `redis`, until Redis has first
 * connected; then storage as its store reports it.
 */
export function createAppHealth(options: { readonly redis?: boolean } = {}): HealthState {
  const health = createHealthState();
  // Up until a stop begins: otp_health_component_up{component="shutdown"} is there from the start, at 1.
  health.set("shutdown", true);
  health.set("relay", false, "the SMTP relay has not answered its first check yet");
  // Down from the start, not from when the store is made: a Redis that never connects (a wrong host, down at
  // deploy) must keep the instance out of rotation once the relay answers, and /readyz must say why.
  if (options.redis === true) health.set("storage", false, storageNotConnectedYet);
  return health;
}

/** Why storage is down before Redis ever connected. */
const storageNotConnectedYet = "storage has not connected yet";

export async function startApp(options: AppOptions): Promise<App> {
  const { config, logger } = options;
  const clock = options.clock ?? systemClock;
  const health = options.health ?? createAppHealth({ redis: config.redis !== undefined });
  const metrics = options.metrics ?? createMetrics({ providers: createProviderClassifier(config.metrics.providerDomains) });
  metrics.watchHealth(health);
  const bounceTelemetry = createBounceTelemetry({ metrics });
  const closers: (() => Promise<void>)[] = [];

  try {
    // Every operation's failure count is there from the start, at 0, so the first failure of each is an increase.
    if (config.redis) for (const operation of redisOperations) metrics.redisCommandErrors.inc({ operation }, 0);
    const store: OtpStore = config.redis
      ? createRedisStore({
          url: config.redis.url,
          prefix: config.redis.prefix,
          logger,
          commandTimeoutMs: config.redis.commandTimeoutMs,
          cluster: config.redis.cluster,
          sentinel: config.redis.sentinel,
          tlsCa: config.redis.tlsCa,
          onCommandError: (operation) => metrics.redisCommandErrors.inc({ operation }),
          onFullChange: (full) => metrics.redisFull.set(full ? 1 : 0),
        })
      : createMemoryStore({ clock });
    closers.push(() => store.close());
    const limits = createLimiter({ store, limits: config.limits, secret: config.otp.secret, logger });
    if (config.redis) {
      // Connected is not enough: a Redis that holds the connection but stops answering must read down too.
      const probe = startStorageProbe({
        store,
        ...options.storageProbe,
        report: (up, reason) => {
          // Connection losses and returns are logged by the store; a PING streak is the probe's to tell.
          const before = health.components().get("storage");
          if (before?.up === true && !up && store.isReady()) logger.warn({ reason }, "storage is down: health NOT_SERVING");
          if (before?.up === false && up && before.reason.startsWith("storage does not answer")) logger.info("storage answers again");
          // Never connected yet says more than "unreachable": the host or port may be wrong.
          if (!up && before?.reason.startsWith(storageNotConnectedYet) === true) {
            const why = store.unreadyReason?.();
            health.set("storage", false, why === undefined ? storageNotConnectedYet : `${storageNotConnectedYet}: ${why}`);
          } else health.set("storage", up, reason);
        },
      });
      // Pushed after the store's closer, so run before it: no PING of a closing store.
      closers.push(() => Promise.resolve(probe.stop()));
    } else {
      health.set("storage", store.isReady(), store.isReady() ? undefined : "storage is not connected yet");
      store.onReadyChange((ready) => health.set("storage", ready, ready ? undefined : "storage is unreachable"));
    }

    let sink: CaptureSink | undefined;
    if (config.smtp.url === undefined) {
      const { startCaptureSink } = await import("./delivery/capture-sink.js");
      sink = await startCaptureSink({ outboxDir: config.outboxDir, logger, showCodes: config.env === "development" });
      closers.push(() => (sink as CaptureSink).close());
    }
    // Fails start-up on a key that cannot sign or a d= that does not align with From.
    const dkim =
      config.dkim === undefined
        ? undefined
        : await (await import("./delivery/dkim.js")).prepareDkim(config.dkim, config.mail.fromAddress);
    const transport = createSmtpTransport({
      dkim,
      url: config.smtp.url ?? (sink as CaptureSink).url,
      tlsCa: config.smtp.tlsCa,
      maxConnections: config.smtp.maxConnections,
      maxMessages: config.smtp.maxMessagesPerConnection,
      connectionTimeoutMs: config.smtp.connectionTimeoutMs,
      greetingTimeoutMs: config.smtp.greetingTimeoutMs,
      socketTimeoutMs: config.smtp.socketTimeoutMs,
      logger,
    });
    // Closed after the delivery service drained: a send still running then was given up on
    // (recorded FAILED), and a relay that never answers it must not hold up the exit.
    closers.push(() => transport.close({ abandonInFlight: true }));

    // Once its first check (or a send) has answered, the relay is "up" until proven otherwise: a failed probe
    // says so, as do auth refused and `relayDownAfterFailedSends` sends in a row that found no relay (each
    // earlier one asks the probe).
    let sendsFailedInARow = 0;
    const relayProbe = createRelayProbe(options.relayProbeIntervalMs ?? 15_000, async () => {
      try {
        await transport.verify();
        health.set("relay", true);
        return true;
      } catch (error) {
        health.set("relay", false, "the SMTP relay is unusable");
        logger.warn({ err: error, relay: transport.relay }, "SMTP relay check failed");
        return false;
      }
    });
    closers.push(() => Promise.resolve(relayProbe.stop()));

    const deliveryObserver = createDeliveryTelemetry({ metrics });
    const delivery = createDeliveryService({
      store,
      transport,
      clock,
      logger,
      maxAttempts: config.smtp.maxAttempts,
      retryBaseDelayMs: config.smtp.retryBaseDelayMs,
      retryMaxDelayMs: config.smtp.retryMaxDelayMs,
      waitBudgetMs: config.smtp.waitBudgetMs,
      recordTtlMs: config.recordRetentionMs,
      observer: deliveryObserver,
      onRelayHealth: (event) => {
        if (event === "ok") {
          sendsFailedInARow = 0;
          health.set("relay", true);
        } else if (event === "auth_failed") {
          health.set("relay", false, "the SMTP relay rejected our credentials");
          relayProbe.schedule();
        } else if (++sendsFailedInARow >= relayDownAfterFailedSends) {
          health.set("relay", false, "the SMTP relay is unreachable");
          relayProbe.schedule();
        } else {
          // One send that found no relay (a timeout, a dropped connection) may be that message's or that
          // connection's bad luck: ask the relay now, and let the answer decide, rather than take the
          // instance out of rotation for it. A relay that is gone fails the check within its timeouts.
          relayProbe.checkNow();
        }
      },
    });

    const backlog = createSendBacklog({
      limit: config.smtp.maxBacklog,
      connections: config.smtp.maxConnections,
      transport,
      logger,
    });
    metrics.watchBacklog(backlog);
    metrics.watchPool(transport, config.smtp.maxConnections);

    const bounceDomain = config.bounce.domain ?? config.mail.fromAddress.slice(config.mail.fromAddress.lastIndexOf("@") + 1);
    const previousSecret = previousSecretFromConfig(config, defaultKeepExpiredMs);
    logSecrets(config, previousSecret, clock, logger);
    const suppression = createSuppressionList({
      store,
      secret: config.otp.secret,
      ttlMs: config.bounce.suppressionTtlMs,
      clock,
      previous: previousSecret && { secret: previousSecret.secret, until: previousSecret.suppressionUntil },
    });
    const templates = await startTemplates(config, logger, metrics, options.templatesSettleMs);
    closers.push(() => Promise.resolve(templates.stop()));
    const hasher = createHasher(config.otp.secret);
    const previousHasher = previousSecret && createHasher(previousSecret.secret);
    const otp = createOtpService({
      observer: deliveryObserver,
      suppression,
      bounceDomain,
      store,
      delivery,
      backlog,
      renderer: templates.renderer,
      limiter: options.limiter ?? limits,
      verifyLimiter: limits,
      purposes: createPurposePolicy(config.auth.purposes),
      hasher,
      clock,
      logger,
      from: { name: config.mail.fromName, address: config.mail.fromAddress },
      codeLength: config.otp.length,
      ttl: { defaultMs: config.otp.ttlDefaultMs, minMs: config.otp.ttlMinMs, maxMs: config.otp.ttlMaxMs },
      maxFailedAttempts: config.otp.maxFailedAttempts,
      recordRetentionMs: config.recordRetentionMs,
      idempotencyTtlMs: config.idempotencyTtlMs,
      previousSecret: previousSecret && {
        hasher: previousHasher ?? createHasher(previousSecret.secret),
        // The old set's own failure cap, as the instances with the old secret counted it.
        verifyLimiter: createLimiter({ store, limits: config.limits, secret: previousSecret.secret, logger }),
        codesUntil: previousSecret.codesUntil,
      },
    });

    const tokenFile = startTokenFile(config, metrics, logger, options.authTokensSettleMs);
    if (tokenFile !== undefined) closers.push(() => Promise.resolve(tokenFile.stop()));
    const grpcCredentials = createServerCredentials(config.tls && { ...config.tls, clientCrl: config.tls.clientCrl?.checked });
    // Why a client certificate counted as none, for the call's message, the log and the counter.
    const certificateRefusals =
      config.tls?.clientCa === undefined
        ? undefined
        : createCertificateRefusals({ logger, clock, onRefused: (reason) => metrics.tlsClientCertificateRefusals.inc({ reason }) });
    if (certificateRefusals !== undefined) for (const reason of certificateRefusalReasons) metrics.tlsClientCertificateRefusals.inc({ reason }, 0);
    const server = createGrpcServer({
      otp: instrumentOtpService(otp, metrics),
      onRefused: countRefusedCalls(metrics),
      onUnrouted: countUnroutedCalls(metrics),
      maxConcurrentStreams: config.grpcMaxConcurrentStreams,
      traceIdOf: activeTraceId,
      spanIdOf: activeSpanId,
      // Metrics first, so that calls refused by later interceptors are counted too; the server span (or the
      // caller's trace context) last, nearest the handler.
      interceptors: [createGrpcMetricsInterceptor(metrics), ...serverTracingInterceptors()],
      health,
      logger,
      identify: createCallerIdentity({
        tokens: tokenFile === undefined ? config.auth.tokens : () => tokenFile.tokens(),
        clientCertificates: config.tls?.clientCa !== undefined,
        anonymousCaller: config.auth.anonymous ? anonymousDevCaller : undefined,
        certificateRefusalOf: certificateRefusals && ((call) => certificateRefusals.refusalOf(call.getPeer())),
      }),
      credentials: grpcCredentials.credentials,
      onSecureConnection: certificateRefusals && ((socket) => certificateRefusals.watch(socket)),
    });
    // Every series that can exist is there from the start, at 0: each method's, and each limit's refusals.
    zeroGrpcSeries(metrics, server.methods);
    const quotaIds = limitIds(config.limits);
    for (const [rpc, ids] of [["send", quotaIds.send], ["verify", quotaIds.verify]] as const) {
      for (const id of ids) metrics.rateLimitRejections.inc({ rpc, limit: metrics.limitLabel(id) }, 0);
    }
    logAuthentication(config, logger);
    if (config.tls !== undefined) {
      reportCertificateExpiry("grpc", config.tls.cert, { metrics, logger, clock, reloadable: config.tls.paths.cert !== undefined });
      if (config.tls.clientCrl !== undefined) {
        reportClientCrlExpiry(config.tls.clientCrl.checked, { metrics, logger, clock, reloadable: config.tls.paths.clientCrl !== undefined });
      }
    }
    let intake: BounceIntake | undefined;
    if (config.bounce.smtpAddr !== undefined) {
      const [{ startBounceIntake }, { createBounceProcessor }, { createFeedbackProcessor }, { createReportRedactor }] = await Promise.all([
        import("./bounce/intake-server.js"),
        import("./bounce/bounce-processor.js"),
        import("./bounce/feedback-processor.js"),
        import("./bounce/report-redaction.js"),
      ]);
      // A report may quote a message's code (its Subject): recognised under the secret its record was made with.
      const redactor = createReportRedactor(previousHasher === undefined ? [hasher] : [hasher, previousHasher]);
      const separator = config.bounce.smtpAddr.lastIndexOf(":");
      const intakeAddr = config.bounce.smtpAddr;
      intake = await startBounceIntake({
        host: config.bounce.smtpAddr.slice(0, separator).replace(/^\[|\]$/g, ""),
        port: Number(config.bounce.smtpAddr.slice(separator + 1)),
        fallbackToFreePort: config.bounce.smtpAddrIsDefault,
        bounceDomain,
        connectionsPerMinute: config.bounce.connectionsPerMinute,
        tls: config.bounce.tls,
        logger,
        onRejection: (reason) => bounceTelemetry.rejected(reason),
        feedback: {
          address: config.bounce.feedbackAddress,
          processor: createFeedbackProcessor({
            store,
            suppression,
            clock,
            logger,
            reportTtlMs: config.recordRetentionMs,
            redactor,
            bounceDomain,
            messageIdDomain: config.mail.fromAddress.slice(config.mail.fromAddress.lastIndexOf("@") + 1).toLowerCase(),
            onApplied: (record, sendTraceId, previousState) => {
              bounceTelemetry.applied(record, sendTraceId, previousState);
              options.onBounceApplied?.(record, sendTraceId);
            },
            onOutcome: (outcome) => bounceTelemetry.feedback(outcome),
          }),
        },
        processor: createBounceProcessor({
          store,
          suppression,
          clock,
          logger,
          reportTtlMs: config.recordRetentionMs,
          redactor,
          previousSecret,
          onBounceApplied: (record, sendTraceId, previousState) => {
            bounceTelemetry.applied(record, sendTraceId, previousState);
            options.onBounceApplied?.(record, sendTraceId);
          },
          onOutcome: (outcome) => {
            bounceTelemetry.outcome(outcome);
            options.onBounceOutcome?.(outcome);
          },
        }),
      }).catch((error: unknown) => {
        throw listenFailure("BOUNCE_SMTP_ADDR", intakeAddr, error);
      });
      const running = intake;
      closers.push(() => running.close());
      if (config.bounce.tls !== undefined) {
        const reloadable = config.bounce.tls.paths.cert !== undefined;
        reportCertificateExpiry("bounce_intake", config.bounce.tls.cert, { metrics, logger, clock, reloadable });
      }
    }
    const address = await server.listen(config.grpcAddr).catch((error: unknown) => {
      throw listenFailure("GRPC_ADDR", config.grpcAddr, error);
    });
    // Calls are taken from here on; the relay's first check sets its health.
    await untilAborted(relayProbe.runNow(), options.startupSignal);
    const certificates = startCertificateReloader({
      certificates: watchedCertificates(config, grpcCredentials.update, intake),
      intervalMs: config.tlsReloadIntervalMs,
      settleMs: options.certificateSettleMs,
      metrics,
      logger,
      clock,
    });
    closers.push(() => Promise.resolve(certificates.stop()));

    let stopping: Promise<void> | undefined;
    const stop = (graceMs = config.shutdownGraceMs): Promise<void> => {
      stopping ??= (async () => {
        health.set("shutdown", false, "shutting down");
        const deadline = Date.now() + graceMs;
        // Messages waiting to retry fail now, not after the calls in flight
        // are waited for: a caller waiting on one hears UNAVAILABLE ("the
        // sender stopped"), never RETRYING for a retry that will not come.
        delivery.stopRetries();
        await server.shutdown(graceMs);
        await delivery.drain(Math.max(0, deadline - Date.now()));
        await closeAll(closers, logger);
      })();
      return stopping;
    };
    return {
      address,
      captureSinkUrl: sink?.url,
      bounceIntake: intake?.address,
      metrics,
      health,
      reloadCertificates: () => certificates.reload(),
      reloadAuthTokens: () => reloadAuthTokens(config, tokenFile, logger),
      reloadTemplates: () => templates.reload(),
      stop,
    };
  } catch (error) {
    await closeAll(closers, logger);
    throw error;
  }
}

/**
 * The mail templates: the built-in ones and TEMPLATES_DIR's, checked here,
 * and TEMPLATES_DIR re-read every TEMPLATES_RELOAD_INTERVAL and on SIGHUP
 * (`reload`), a changed set checked the same way. A folder it cannot use,
 * or a DEFAULT_LOCALE without a template for every purpose, is a
 * configuration error (exit 78) naming the variable; a locale with templates
 * for some purposes only is logged as a warning.
 */
async function startTemplates(
  config: Config,
  logger: Logger,
  metrics: Metrics,
  settleMs: number | undefined,
): Promise<{ renderer: Renderer; reload(): Promise<void>; stop(): void }> {
  const dir = config.mail.templatesDir;
  if (dir === undefined) {
    const renderer = checkedRenderer(config, undefined);
    warnIncompleteLocales(renderer, config, logger);
    return {
      renderer,
      reload() {
        // A SIGHUP answers for every part it could re-read, this one too.
        logger.info({ component: "templates" }, "no template folder to read again: TEMPLATES_DIR is not set (the built-in templates are in use)");
        return Promise.resolve();
      },
      stop: () => undefined,
    };
  }
  let read: TemplateDirRead;
  try {
    read = await readTemplateDir(dir);
  } catch (error) {
    throw templatesDirError(error instanceof Error ? error.message : String(error));
  }
  const renderer = checkedRenderer(config, read);
  warnIncompleteLocales(renderer, config, logger);
  return startTemplateReloader({
    dir,
    initial: { read, renderer },
    build: (changed) => checkedRenderer(config, changed),
    onApplied: (applied) => warnIncompleteLocales(applied, config, logger),
    intervalMs: config.mail.templatesReloadIntervalMs,
    settleMs,
    metrics,
    logger,
  });
}

/** A renderer of these templates, checked as at start-up; throws a ConfigError naming the variable to fix. */
function checkedRenderer(config: Config, templatesDir: TemplateDirRead | undefined): Renderer {
  const { defaultLocale, fromName } = config.mail;
  try {
    return createRenderer({ defaultLocale, productName: fromName, templatesDir });
  } catch (error) {
    if (!(error instanceof RendererSetupError)) throw error;
    const reason = error.message.replace(/^renderer: /, "");
    switch (error.option) {
      case "defaultLocale":
        throw new ConfigError(
          `DEFAULT_LOCALE=${defaultLocale}: ${reason}; use a locale with templates for every purpose ` +
            `(built in: en, ko), or add ${defaultLocale} templates in TEMPLATES_DIR`,
        );
      case "productName":
        throw new ConfigError(`MAIL_FROM: the display name must be a non-empty single line (${reason})`);
      case "templatesDir":
        throw templatesDirError(reason);
    }
  }
}

function templatesDirError(reason: string): ConfigError {
  return new ConfigError(`TEMPLATES_DIR: ${reason}; fix the folder, or unset TEMPLATES_DIR for the built-in templates`);
}

/** Allowed (a locale may be translated a purpose at a time), but an operator who meant every purpose should hear it. */
function warnIncompleteLocales(renderer: Renderer, config: Config, logger: Logger): void {
  const { defaultLocale } = config.mail;
  for (const [locale, missing] of renderer.incompleteLocales) {
    logger.warn(
      { locale, missing_purposes: missing, default_locale: defaultLocale },
      `TEMPLATES_DIR: no ${missing.join(", ")} template for locale ${locale}: such mail in ${locale} goes out in ${defaultLocale}`,
    );
  }
}

/** The listeners' certificate sets as configured, each with the way to serve a renewed one. */
function watchedCertificates(
  config: Config,
  updateGrpc: GrpcServerCredentials["update"],
  intake: BounceIntake | undefined,
): WatchedCertificate[] {
  const watched: WatchedCertificate[] = [];
  if (config.tls !== undefined && updateGrpc !== undefined) {
    const { tls } = config;
    watched.push({
      role: "grpc",
      cert: { variable: "TLS_CERT", path: tls.paths.cert, pem: tls.cert },
      key: { variable: "TLS_KEY", path: tls.paths.key, pem: tls.key },
      ca: tls.clientCa === undefined ? undefined : { variable: "TLS_CLIENT_CA", path: tls.paths.clientCa, pem: tls.clientCa },
      crl: tls.clientCrl === undefined ? undefined : { variable: "TLS_CLIENT_CRL", path: tls.paths.clientCrl, pem: tls.clientCrl.pem },
      crls: tls.clientCrl?.checked,
      apply: (set) => updateGrpc({ cert: set.cert, key: set.key, clientCa: set.ca, clientCrl: set.crl }),
    });
  }
  if (config.bounce.tls !== undefined && intake !== undefined) {
    const { tls } = config.bounce;
    watched.push({
      role: "bounce_intake",
      cert: { variable: "BOUNCE_TLS_CERT", path: tls.paths.cert, pem: tls.cert },
      key: { variable: "BOUNCE_TLS_KEY", path: tls.paths.key, pem: tls.key },
      apply: (set) => intake.updateCertificate(set),
    });
  }
  return watched;
}

/**
 * Says at start-up which secrets are in use, by key id (never the secret),
 * and until when the previous one is consulted: instances that disagree on
 * OTP_SECRET show different ids, and the operator learns when
 * OTP_SECRET_PREVIOUS may be removed.
 */
function logSecrets(config: Config, previous: PreviousSecret | undefined, clock: Clock, logger: Logger): void {
  const current = { otp_secret_key_id: secretKeyId(config.otp.secret), otp_secret_generated: config.otp.secretGenerated };
  if (previous === undefined) {
    logger.info(current, "OTP secret in use");
    return;
  }
  // The later of the two uses; codes last a day at most, suppressions much longer.
  const untilMs = Math.max(previous.suppressionUntil, previous.codesUntil);
  const until = new Date(untilMs).toISOString();
  const fields = {
    ...current,
    otp_secret_previous_key_id: previous.keyId,
    otp_secret_rotated_at: new Date(previous.rotatedAt).toISOString(),
    codes_consulted_until: new Date(previous.codesUntil).toISOString(),
    suppression_list_consulted_until: new Date(previous.suppressionUntil).toISOString(),
  };
  if (clock.now() >= untilMs) {
    logger.warn(
      fields,
      `OTP_SECRET_PREVIOUS is no longer consulted (since ${until}): remove it and OTP_SECRET_ROTATED_AT; ` +
        `if you have just rotated OTP_SECRET, OTP_SECRET_ROTATED_AT is an earlier rotation's: set it to when this one was deployed`,
    );
  } else {
    logger.info(fields, `OTP secret rotation: the previous secret is still consulted; remove OTP_SECRET_PREVIOUS after ${until}`);
  }
}

/** AUTH_TOKENS given as a file: watched, each new version checked as at start-up. */
function startTokenFile(config: Config, metrics: Metrics, logger: Logger, settleMs: number | undefined): TokenFileReloader | undefined {
  const file = config.auth.tokensFile;
  if (file === undefined) return undefined;
  const rules = {
    production: config.env === "production",
    clientCertificates: config.tls?.clientCa !== undefined,
    purposeCallers: [...config.auth.purposes.keys()],
  };
  return startTokenFileReloader({
    path: file.path,
    text: file.text,
    tokens: config.auth.tokens,
    // Not parseTokenCallers: a file dropping a caller CALLER_PURPOSES names is a revocation, applied with a warning.
    parse: (text) => readTokenList(text, file.path, rules),
    intervalMs: config.tlsReloadIntervalMs,
    settleMs,
    metrics,
    logger,
  });
}

/** A reload request (SIGHUP) for the token callers: the file read again, or a word on why there is none. */
function reloadAuthTokens(config: Config, tokenFile: TokenFileReloader | undefined, logger: Logger): Promise<void> {
  if (tokenFile !== undefined) return tokenFile.reload();
  if (config.auth.tokens.length > 0) {
    logger.info({ component: "auth_tokens" }, "AUTH_TOKENS lists its entries itself, never re-read: changing them takes a restart (give a file path instead)");
  }
  return Promise.resolve();
}

/** Says at start-up who may call, and warns when nobody needs to prove it. */
function logAuthentication(config: Config, logger: Logger): void {
  if (config.auth.anonymous) {
    logger.warn(
      { caller: anonymousDevCaller },
      `authentication is off: no caller is configured (AUTH_TOKENS, TLS_CLIENT_CA), so every call is the anonymous caller "${anonymousDevCaller}" (development only)`,
    );
    return;
  }
  const tokenCallers = [...new Set(config.auth.tokens.map((t) => t.caller))];
  logger.info(
    {
      token_callers: tokenCallers,
      client_certificates: config.tls?.clientCa !== undefined,
      // Whether a revoked client certificate is refused (TLS_CLIENT_CRL): without CRLs, only its expiry ends it.
      client_certificate_crl: config.tls?.clientCrl !== undefined,
      tls: config.tls !== undefined,
    },
    "callers must authenticate",
  );
  if (config.auth.tokensFile !== undefined && config.auth.tokens.length === 0 && config.tls?.clientCa === undefined) {
    logger.warn(
      { file: config.auth.tokensFile.path },
      "the AUTH_TOKENS file lists no token: every call is refused (UNAUTHENTICATED) until one is added",
    );
  }
  if (config.tls === undefined && config.env === "production") {
    logger.warn("bearer tokens travel in plaintext: set TLS_CERT and TLS_KEY unless a proxy or mesh terminates TLS");
  }
}

async function closeAll(closers: (() => Promise<void>)[], logger: Logger): Promise<void> {
  for (const close of closers.reverse()) {
    try {
      await close();
    } catch (error) {
      logger.warn({ err: error }, "error while closing");
    }
  }
  closers.length = 0;
}

/** `work`, or less: resolves as soon as `signal` aborts (`work` goes on; its result is not waited for). */
function untilAborted(work: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return work;
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Sends in a row that found no relay (no connection, a timeout) before health says the relay is down without a check. */
const relayDownAfterFailedSends = 3;

/** Re-checks a relay that is down, every `intervalMs`, until it is up. */
function createRelayProbe(intervalMs: number, check: () => Promise<boolean>) {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let running: Promise<void> | undefined;
  const schedule = (): void => {
    if (timer !== undefined || stopped) return;
    timer = setTimeout(() => void runNow(), intervalMs);
    timer.unref();
  };
  const runNow = async (): Promise<void> => {
    timer = undefined;
    if (!stopped && !(await check())) schedule();
  };
  return {
    runNow,
    schedule,
    /** Checks now, unless a check is already running or waiting on its timer. */
    checkNow(): void {
      if (running !== undefined || timer !== undefined || stopped) return;
      running = runNow().finally(() => {
        running = undefined;
      });
    },
    stop(): void {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
    },
  };
}
