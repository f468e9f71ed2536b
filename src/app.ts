/**
 * Builds the whole service from a Config: storage, SMTP, delivery, the OTP
 * domain and the gRPC server. `main.ts` adds signals and process exit; tests
 * start an App in-process on port 0.
 */
import { systemClock, type Clock } from "./clock.js";
import type { Config } from "./config.js";
import { startCaptureSink, type CaptureSink } from "./delivery/capture-sink.js";
import { createDeliveryService } from "./delivery/delivery-service.js";
import { createRenderer } from "./delivery/render.js";
import { createSmtpTransport } from "./delivery/smtp-transport.js";
import { createHealthState } from "./health.js";
import { unlimited, type SendLimiter } from "./limits/types.js";
import type { Logger } from "./logger.js";
import { createHasher } from "./otp/code.js";
import { createOtpService } from "./otp/otp-service.js";
import { createGrpcServer } from "./rpc/server.js";
import { createMemoryStore } from "./store/memory-store.js";
import { createRedisStore } from "./store/redis-store.js";
import type { OtpStore } from "./store/types.js";

export interface AppOptions {
  readonly config: Config;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly limiter?: SendLimiter;
  /** How often to re-check a relay that is down (default 15 s). */
  readonly relayProbeIntervalMs?: number;
}

export interface App {
  /** Where the gRPC server listens. */
  readonly address: { readonly host: string; readonly port: number };
  /** The capture sink's URL in development mode, else undefined. */
  readonly captureSinkUrl: string | undefined;
  /**
   * Graceful stop: health goes NOT_SERVING, the server stops accepting calls
   * and lets running ones finish, background sends get `graceMs` to finish,
   * then the pool, the store and the sink close.
   */
  stop(graceMs?: number): Promise<void>;
}

export async function startApp(options: AppOptions): Promise<App> {
  const { config, logger } = options;
  const clock = options.clock ?? systemClock;
  const health = createHealthState();
  const closers: (() => Promise<void>)[] = [];

  try {
    const store: OtpStore = config.redis
      ? createRedisStore({ url: config.redis.url, prefix: config.redis.prefix, logger, commandTimeoutMs: config.redis.commandTimeoutMs })
      : createMemoryStore({ clock });
    closers.push(() => store.close());
    health.set("storage", store.isReady(), store.isReady() ? undefined : "storage is not connected yet");
    store.onReadyChange((ready) => health.set("storage", ready, ready ? undefined : "storage is unreachable"));

    let sink: CaptureSink | undefined;
    if (config.smtp.url === undefined) {
      sink = await startCaptureSink({ outboxDir: config.outboxDir, logger, showCodes: config.env === "development" });
      closers.push(() => (sink as CaptureSink).close());
    }
    const transport = createSmtpTransport({
      url: config.smtp.url ?? (sink as CaptureSink).url,
      tlsCa: config.smtp.tlsCa,
      maxConnections: config.smtp.maxConnections,
      maxMessages: config.smtp.maxMessagesPerConnection,
      connectionTimeoutMs: config.smtp.connectionTimeoutMs,
      greetingTimeoutMs: config.smtp.greetingTimeoutMs,
      socketTimeoutMs: config.smtp.socketTimeoutMs,
      logger,
    });
    closers.push(() => transport.close());

    // The relay is "up" until proven otherwise; a failed probe or send says so.
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
      onRelayHealth: (event) => {
        if (event === "ok") {
          health.set("relay", true);
        } else {
          health.set("relay", false, event === "auth_failed" ? "the SMTP relay rejected our credentials" : "the SMTP relay is unreachable");
          relayProbe.schedule();
        }
      },
    });

    const otp = createOtpService({
      store,
      delivery,
      renderer: createRenderer({
        defaultLocale: config.mail.defaultLocale,
        productName: config.mail.fromName,
        templatesDir: config.mail.templatesDir,
      }),
      limiter: options.limiter ?? unlimited,
      hasher: createHasher(config.otp.secret),
      clock,
      logger,
      from: { name: config.mail.fromName, address: config.mail.fromAddress },
      codeLength: config.otp.length,
      ttl: { defaultMs: config.otp.ttlDefaultMs, minMs: config.otp.ttlMinMs, maxMs: config.otp.ttlMaxMs },
      maxFailedAttempts: config.otp.maxFailedAttempts,
      recordRetentionMs: config.recordRetentionMs,
      idempotencyTtlMs: config.idempotencyTtlMs,
    });

    const server = createGrpcServer({ otp, health, logger });
    const address = await server.listen(config.grpcAddr);
    await relayProbe.runNow();

    let stopping: Promise<void> | undefined;
    const stop = (graceMs = config.shutdownGraceMs): Promise<void> => {
      stopping ??= (async () => {
        health.set("shutdown", false, "shutting down");
        const deadline = Date.now() + graceMs;
        await server.shutdown(graceMs);
        await delivery.drain(Math.max(0, deadline - Date.now()));
        await closeAll(closers, logger);
      })();
      return stopping;
    };
    return { address, captureSinkUrl: sink?.url, stop };
  } catch (error) {
    await closeAll(closers, logger);
    throw error;
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

/** Re-checks a relay that is down, every `intervalMs`, until it is up. */
function createRelayProbe(intervalMs: number, check: () => Promise<boolean>) {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
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
    stop(): void {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
    },
  };
}
