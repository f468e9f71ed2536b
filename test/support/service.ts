/**
 * The whole service in the test process: the real app (config, Redis or
 * memory store, pooled SMTP, gRPC server on a free port) against a real SMTP
 * sink, with log lines captured for assertions.
 */
import { Writable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../../gen/health/v1/health_pb.js";
import { OtpEmailService } from "../../gen/otp/v1/otp_email_pb.js";
import { startApp, type App } from "../../src/app.js";
import type { Clock } from "../../src/clock.js";
import { loadConfig } from "../../src/config.js";
import { createLogger } from "../../src/logger.js";
import { GrpcHealthClient, GrpcOtpClient } from "./grpc.js";
import { randomPrefix, redisUrlForTests } from "./redis.js";
import { startSmtpSink, type SmtpSink } from "./smtp-sink.js";

export interface TestService {
  readonly app: App;
  readonly sink: SmtpSink;
  /** `127.0.0.1:PORT` */
  readonly address: string;
  readonly grpcClient: grpc.Client;
  readonly healthClient: grpc.Client;
  readonly connectClient: Client<typeof OtpEmailService>;
  readonly connectHealth: Client<typeof Health>;
  /** Every log line written so far, parsed. */
  readonly logs: Record<string, unknown>[];
  /** The Redis key prefix of this instance (undefined with the memory store). */
  readonly prefix: string | undefined;
  stop(): Promise<void>;
}

export interface TestServiceOptions {
  /** Extra or overriding environment for loadConfig. */
  readonly env?: Record<string, string>;
  /** "redis" (default: the run's private Redis, a fresh prefix) or "memory". */
  readonly store?: "redis" | "memory";
  /** Reuse a sink (e.g. one shared by several instances); else a fresh one is started. */
  readonly sink?: SmtpSink;
  readonly clock?: Clock;
  /** The storage health probe's timing (its PINGs); by default the service's own. */
  readonly storageProbe?: { readonly intervalMs?: number; readonly failuresBeforeDown?: number };
}

export async function startTestService(options: TestServiceOptions = {}): Promise<TestService> {
  const sink = options.sink ?? (await startSmtpSink());
  const prefix = options.store === "memory" ? undefined : randomPrefix();
  const config = loadConfig({
    NODE_ENV: "test",
    GRPC_ADDR: "127.0.0.1:0",
    LOG_LEVEL: "debug",
    OTP_SECRET: "test-secret-0123456789-abcdefghijklmnop",
    MAIL_FROM: '"Acme Login" <no-reply@acme.test>',
    SMTP_URL: sink.url,
    SMTP_RETRY_BASE_DELAY: "20ms",
    SMTP_RETRY_MAX_DELAY: "100ms",
    SMTP_SOCKET_TIMEOUT: "2s",
    SEND_WAIT_BUDGET: "3s",
    // These tests resend to one recipient at once; the cooldown (and every
    // other limit) is tested in callers-and-limits.test.ts.
    LIMIT_RESEND_COOLDOWN: "0",
    ...(prefix === undefined ? {} : { REDIS_URL: redisUrlForTests(), REDIS_PREFIX: prefix }),
    ...options.env,
  });
  const logs: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.trim() !== "") logs.push(JSON.parse(line) as Record<string, unknown>);
      }
      callback();
    },
  });
  const logger = createLogger({ level: config.logLevel, destination });
  const app = await startApp({
    config,
    logger,
    ...(options.clock ? { clock: options.clock } : {}),
    ...(options.storageProbe ? { storageProbe: options.storageProbe } : {}),
  });
  const address = `${app.address.host}:${app.address.port}`;
  const transport = createGrpcTransport({ baseUrl: `http://${address}` });
  const grpcClient = new GrpcOtpClient(address, grpc.credentials.createInsecure());
  const healthClient = new GrpcHealthClient(address, grpc.credentials.createInsecure());
  return {
    app,
    sink,
    address,
    grpcClient,
    healthClient,
    connectClient: createClient(OtpEmailService, transport),
    connectHealth: createClient(Health, transport),
    logs,
    prefix,
    async stop() {
      grpcClient.close();
      healthClient.close();
      await app.stop(2000);
      if (options.sink === undefined) await sink.close();
    },
  };
}

/** The code in a captured OTP mail (the first run of 4-10 digits/capitals in its subject). */
export function codeFromMail(subject: string | undefined): string {
  const match = /\b([0-9A-Z]{4,10})\b/.exec(subject ?? "");
  if (match?.[1] === undefined) throw new Error("no code in the subject");
  return match[1];
}
