/**
 * The service's entry point: config -> app -> signals (SIGTERM and SIGINT
 * stop it, SIGHUP re-reads the certificate files, the AUTH_TOKENS file and
 * TEMPLATES_DIR). Wiring only.
 */
// First: holds a SIGHUP that comes while the other modules load (its default would end the process).
import { releaseEarlyHangup } from "./early-hangup.js";
import { format } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { createAppHealth, startApp, type App } from "./app.js";
import { ConfigError, loadConfigFromProcess, type Config } from "./config.js";
import { logDoctorReport } from "./doctor/report.js";
import { runStartupDoctor } from "./doctor/startup-check.js";
import { hostPort } from "./host-port.js";
import { listenFailure } from "./listen-error.js";
import { createLogger, type Logger } from "./logger.js";
import { createMetrics } from "./telemetry/metrics.js";
import { startMetricsServer, type MetricsServer } from "./telemetry/metrics-server.js";
import { createProviderClassifier } from "./telemetry/provider-class.js";
import { attachSdkDiagnostics } from "./telemetry/sdk-diagnostics.js";
import { shutdownTracing } from "./telemetry/tracing-lifecycle.js";
import { dialTarget, tryCommands, tryCommandsText } from "./try-commands.js";

function devBanner(config: Config, logger: Logger, port: number, host: string, sinkUrl: string | undefined): void {
  const tryIt = tryCommands({
    target: dialTarget(host, port),
    tls: config.tls !== undefined,
    clientCertificates: config.tls?.clientCa !== undefined,
    tokens: config.auth.tokens.length > 0,
  });
  logger.warn(
    {
      mode: config.env,
      store: config.redis ? "redis" : "memory (development only; codes vanish on restart)",
      smtp: sinkUrl ? `capture sink ${sinkUrl}, mails written to ${config.outboxDir}/` : "relay from SMTP_URL",
      otp_secret: config.otp.secretGenerated ? "random for this process (set OTP_SECRET to keep codes across restarts)" : "from OTP_SECRET",
      try_grpcurl: tryIt.grpcurl,
      try_buf_curl: tryIt.bufCurl,
    },
    "DEVELOPMENT MODE: not for production (NODE_ENV=production requires REDIS_URL, SMTP_URL, OTP_SECRET, MAIL_FROM and callers: AUTH_TOKENS or TLS_CLIENT_CA)",
  );
  // Also as plain lines: copied from the JSON line above, each `"` of a command would read `\"`, which no shell undoes.
  process.stderr.write(tryCommandsText(tryIt));
}

/**
 * How soon after the signal that began a stop the same signal again is taken
 * as its copy (npm passing a terminal's Ctrl-C on), not as a second
 * signal: npm forwards within milliseconds; a person pressing Ctrl-C again
 * takes longer. One copy at most: any signal after it exits at once.
 */
const sameStopWithinMs = 300;

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfigFromProcess();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`otp-email: configuration error: ${error.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw error;
  }
  const logger = createLogger({ level: config.logLevel });
  // What the tracing SDK (started by the bootstrap) has to say about itself goes to this log from now on.
  attachSdkDiagnostics(logger);
  // So does what grpc-js says (by default "E <text>" on stderr: a taken GRPC_ADDR's "No address added out of
  // total 1 resolved", just before the line that names the variable and what to do).
  // grpc-js filters by GRPC_VERBOSITY itself (errors only by default): its info and debug lines, GRPC_TRACE's
  // included, come only when an operator asked for them, so they are written at info, seen at the default LOG_LEVEL.
  grpc.setLogger({
    error: (...args: unknown[]) => logger.warn({ component: "grpc-js" }, format(...args)),
    info: (...args: unknown[]) => logger.info({ component: "grpc-js" }, format(...args)),
    debug: (...args: unknown[]) => logger.info({ component: "grpc-js", grpc_severity: "debug" }, format(...args)),
  });

  // The signals are handled from the start: the gRPC port takes calls before
  // start-up ends (the relay's first check may wait out its timeouts), and a
  // SIGTERM then must still let those calls' sends finish, not kill them.
  const starting = new AbortController();
  // Set once, when start-up ends; the signal handlers below read it before then.
  // eslint-disable-next-line prefer-const
  let app: App | undefined;
  // The metrics port, once open (before start-up): closed last on the way out.
  const opened: { metricsServer?: MetricsServer } = {};
  let signalled = false;
  /** The signal that began the stop, when it came (performance.now()), and whether its copy came too. */
  let firstSignal: { readonly signal: NodeJS.Signals; readonly at: number; copied: boolean } | undefined;
  const stopAndExit = (running: App): void => {
    running
      .stop()
      // Scrapes go on while in-flight sends finish; buffered spans are exported last.
      .then(() => Promise.all([opened.metricsServer?.close(), shutdownTracing()]))
      .then(
        () => {
          logger.info("stopped");
          process.exit(0);
        },
        (error: unknown) => {
          logger.error({ err: error }, "shutdown failed");
          process.exit(1);
        },
      );
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (firstSignal !== undefined) {
      // One Ctrl-C on `npm start` comes twice: the terminal signals its whole foreground process group, npm
      // included, and npm passes the signal on to its child, this very process when npm's shell execs the
      // command (bash does). The same signal again at once is that one Ctrl-C, not a second: keep draining.
      if (!firstSignal.copied && signal === firstSignal.signal && performance.now() - firstSignal.at < sameStopWithinMs) {
        firstSignal.copied = true;
        logger.info({ signal }, `${signal} again at once: taken as the same stop (npm passes a Ctrl-C on too); still shutting down`);
        return;
      }
      logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    firstSignal = { signal, at: performance.now(), copied: false };
    signalled = true;
    if (app === undefined) {
      logger.info(
        { signal, grace_ms: config.shutdownGraceMs },
        "shutting down during start-up: stopping as soon as it is safe (a second signal, or Ctrl-C again, exits at once)",
      );
      starting.abort();
      return;
    }
    logger.info(
      { signal, grace_ms: config.shutdownGraceMs },
      "shutting down: finishing in-flight sends (a second signal, or Ctrl-C again, exits at once)",
    );
    stopAndExit(app);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  // SIGHUP (whose default would end the process): read the certificate files, the AUTH_TOKENS file and TEMPLATES_DIR again now (each
  // answers in the log for itself). During start-up the files may already have been read, so the reading waits
  // until start-up ends rather than being dropped.
  let reloadAfterStart = false;
  process.on("SIGHUP", () => {
    if (signalled) return;
    if (app === undefined) {
      if (!reloadAfterStart) logger.info({ signal: "SIGHUP" }, "SIGHUP during start-up: reading the certificate files, the AUTH_TOKENS file and TEMPLATES_DIR again once started");
      reloadAfterStart = true;
      return;
    }
    logger.info({ signal: "SIGHUP" }, "SIGHUP: reading the certificate files, the AUTH_TOKENS file and TEMPLATES_DIR again");
    void app.reloadCertificates();
    void app.reloadAuthTokens();
    void app.reloadTemplates();
  });
  if (releaseEarlyHangup()) {
    logger.info({ signal: "SIGHUP" }, "SIGHUP during start-up: reading the certificate files, the AUTH_TOKENS file and TEMPLATES_DIR again once started");
    reloadAfterStart = true;
  }

  // /metrics and /readyz open first: start-up waits for the relay's first check, which a slow or silent relay
  // holds for its connection and greeting timeouts, and Prometheus must see the service saying so (relay down,
  // NOT_SERVING), not a target that is down.
  const metrics = createMetrics({ providers: createProviderClassifier(config.metrics.providerDomains) });
  const health = createAppHealth({ redis: config.redis !== undefined });
  opened.metricsServer =
    config.metrics.addr === undefined
      ? undefined
      : await startMetricsServer({
          address: config.metrics.addr,
          metrics,
          health,
          logger,
          fallbackToFreePort: config.metrics.addrIsDefault && config.env !== "production",
        }).catch((error: unknown) => {
          throw listenFailure("METRICS_ADDR", config.metrics.addr ?? "", error);
        });
  const started = await startApp({ config, logger, metrics, health, startupSignal: starting.signal });
  app = started;
  if (signalled) {
    // Asked to stop while starting: no doctor; in-flight sends still finish, scrapes go on meanwhile.
    stopAndExit(started);
    return;
  }
  logger.info({ grpc: hostPort(started.address.host, started.address.port), env: config.env }, "otp-email listening");
  if (reloadAfterStart) {
    logger.info({ signal: "SIGHUP" }, "SIGHUP: reading the certificate files, the AUTH_TOKENS file and TEMPLATES_DIR again");
    void started.reloadCertificates();
    void started.reloadAuthTokens();
    void started.reloadTemplates();
  }
  if (config.env !== "production") devBanner(config, logger, started.address.port, started.address.host, started.captureSinkUrl);
  // The doctor's checks, as warnings, whenever a real relay is configured: the
  // operator learns at start-up why Gmail would junk or refuse the mail.
  // Not awaited: each lookup may take up to DOCTOR_TIMEOUT. In a worker
  // thread, so that the checks' modules do not stay in the service's heap.
  if (config.smtp.url !== undefined && config.env !== "test") {
    runStartupDoctor().then(
      (report) => logDoctorReport(report, logger),
      (error: unknown) => logger.warn({ err: error }, "start-up sender-domain checks could not run"),
    );
  }
}

main().catch((error: unknown) => {
  // What only start-up can check (TEMPLATES_DIR's files...) is configuration too.
  if (error instanceof ConfigError) {
    process.stderr.write(`otp-email: configuration error: ${error.message}\n`);
    process.exit(78); // EX_CONFIG
  }
  process.stderr.write(`otp-email: failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
