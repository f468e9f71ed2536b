/**
 * The whole service in the test process for the observability tests: the
 * real app on real Redis (a fresh prefix), a real SMTP sink, a grpc-js and a
 * connect-node client on a real socket, every log line captured raw, and the
 * app's metrics registry at hand.
 */
import { Writable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import { startApp, type App } from "../../src/app.js";
import { createOtpEmailClient, type OtpEmailClient } from "../../src/client.js";
import { loadConfig } from "../../src/config.js";
import type { SendLimiter } from "../../src/limits/types.js";
import { createLogger } from "../../src/logger.js";
import type { Metrics } from "../../src/telemetry/metrics.js";
import { GrpcOtpClient } from "./grpc.js";
import { randomPrefix, redisUrlForTests } from "./redis.js";
import { startSmtpSink, type SmtpSink } from "./smtp-sink.js";

export interface ObservedService {
  readonly app: App;
  readonly metrics: Metrics;
  readonly sink: SmtpSink;
  readonly address: string;
  readonly grpcClient: grpc.Client;
  readonly connectClient: OtpEmailClient;
  /** Every log line as written (JSON text). */
  readonly logLines: string[];
  /** The same, parsed. */
  logs(): Record<string, unknown>[];
  stop(): Promise<void>;
}

export interface ObservedServiceOptions {
  /** Extra or overriding environment for loadConfig. */
  readonly env?: Record<string, string>;
  /** Admits (or refuses) every SendOtp instead of the configured limits. */
  readonly limiter?: SendLimiter;
  readonly metrics?: Metrics;
  /** How long changed certificate files that fail their checks get to settle before they are refused (the app's default otherwise). */
  readonly certificateSettleMs?: number;
  /** How long a changed TEMPLATES_DIR must read the same before it is applied or refused (the app's default otherwise). */
  readonly templatesSettleMs?: number;
  /** How long a changed AUTH_TOKENS file must read the same before it is applied or refused (the app's default otherwise). */
  readonly authTokensSettleMs?: number;
}

export async function startObservedService(options: ObservedServiceOptions = {}): Promise<ObservedService> {
  const sink = await startSmtpSink();
  const config = loadConfig({
    NODE_ENV: "test",
    GRPC_ADDR: "127.0.0.1:0",
    METRICS_ADDR: "off",
    LOG_LEVEL: "debug",
    OTP_SECRET: "test-secret-0123456789-abcdefghijklmnop",
    MAIL_FROM: '"Acme Login" <no-reply@acme.test>',
    SMTP_URL: sink.url,
    SMTP_RETRY_BASE_DELAY: "10ms",
    SMTP_RETRY_MAX_DELAY: "20ms",
    SMTP_SOCKET_TIMEOUT: "2s",
    SEND_WAIT_BUDGET: "5s",
    REDIS_URL: redisUrlForTests(),
    REDIS_PREFIX: randomPrefix(),
    ...options.env,
  });
  const logLines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString("utf8").split("\n")) if (line.trim() !== "") logLines.push(line);
      callback();
    },
  });
  const logger = createLogger({ level: config.logLevel, destination });
  const app = await startApp({
    config,
    logger,
    ...(options.limiter ? { limiter: options.limiter } : {}),
    ...(options.metrics ? { metrics: options.metrics } : {}),
    ...(options.certificateSettleMs === undefined ? {} : { certificateSettleMs: options.certificateSettleMs }),
    ...(options.templatesSettleMs === undefined ? {} : { templatesSettleMs: options.templatesSettleMs }),
    ...(options.authTokensSettleMs === undefined ? {} : { authTokensSettleMs: options.authTokensSettleMs }),
  });
  const address = `${app.address.host}:${app.address.port}`;
  const grpcClient = new GrpcOtpClient(address, grpc.credentials.createInsecure());
  return {
    app,
    metrics: app.metrics,
    sink,
    address,
    grpcClient,
    connectClient: createOtpEmailClient({ baseUrl: `http://${address}` }),
    logLines,
    logs: () => logLines.map((line) => JSON.parse(line) as Record<string, unknown>),
    async stop() {
      grpcClient.close();
      await app.stop(2000);
      await sink.close();
    },
  };
}
