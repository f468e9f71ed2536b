/**
 * Whole OtpEmail instances in the test process for the callers-and-limits
 * tests: the real app from `startApp` (config from `loadConfig`), several of
 * them on one Redis prefix when a test needs them, a grpc-js client per
 * instance, bearer-token helpers, and the rich error details of a failed call
 * (QuotaFailure included).
 */
import { createHash, randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { OtpEmailService } from "../../gen/otp/v1/otp_email_pb.js";
import { startApp, type App } from "../../src/app.js";
import type { Clock } from "../../src/clock.js";
import { loadConfig } from "../../src/config.js";
import type { HealthState } from "../../src/health.js";
import { createLogger } from "../../src/logger.js";
import { serviceDefinition } from "../../src/rpc/service-adapter.js";
import { errorDetails, grpcError, grpcUnary } from "./grpc.js";

const OtpClient = grpc.makeGenericClientConstructor(serviceDefinition(OtpEmailService), "OtpEmailService");
const HealthClient = grpc.makeGenericClientConstructor(serviceDefinition(Health), "Health");

export const sendOtp = OtpEmailService.method.sendOtp;
export const verifyOtp = OtpEmailService.method.verifyOtp;
export const getDeliveryStatus = OtpEmailService.method.getDeliveryStatus;

/** A fixed secret so that instances agree on codes and limit keys. */
export const testOtpSecret = "callers-and-limits-test-secret-0123456789";

/** A fresh random token and its AUTH_TOKENS entry. */
export function newToken(caller: string): { token: string; entry: string } {
  const token = randomBytes(24).toString("base64url");
  return { token, entry: `${caller}:${createHash("sha256").update(token).digest("hex")}` };
}

/** Metadata carrying `authorization: Bearer <token>`. */
export function bearer(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

export interface Instance {
  readonly app: App;
  /** `127.0.0.1:PORT` */
  readonly address: string;
  readonly client: grpc.Client;
  readonly health: grpc.Client;
  /** Every log line so far, parsed. */
  readonly logs: Record<string, unknown>[];
  stop(): Promise<void>;
}

export interface InstanceOptions {
  /** Environment for loadConfig, over the defaults below (NODE_ENV=test, GRPC_ADDR port 0...). */
  readonly env: Record<string, string>;
  readonly clock?: Clock;
  /** How often the app re-checks a relay that is down (its default: 15 s). */
  readonly relayProbeIntervalMs?: number;
  /** The Redis PING probe's timing (its defaults: every 5 s, down after 3 failures). */
  readonly storageProbe?: { readonly intervalMs?: number; readonly failuresBeforeDown?: number };
  /** The instance's health (`createAppHealth()` by default): given, a test can follow every flip with `onChange`. */
  readonly health?: HealthState;
  /** Client credentials (TLS); plaintext by default. */
  readonly credentials?: grpc.ChannelCredentials;
  /** Channel options of the instance's clients (`grpc.ssl_target_name_override`...). */
  readonly channelOptions?: grpc.ChannelOptions;
}

/** A grpc-js OtpEmailService client with its own connection. */
export function otpClient(address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions = {}): grpc.Client {
  return new OtpClient(address, credentials, options);
}

/** Starts one instance of the whole service. */
export async function startInstance(options: InstanceOptions): Promise<Instance> {
  const config = loadConfig({
    NODE_ENV: "test",
    GRPC_ADDR: "127.0.0.1:0",
    LOG_LEVEL: "info",
    OTP_SECRET: testOtpSecret,
    MAIL_FROM: '"Acme Login" <no-reply@acme.test>',
    SMTP_SOCKET_TIMEOUT: "5s",
    SEND_WAIT_BUDGET: "10s",
    SMTP_POOL_SIZE: "3",
    // Generous: a thousand calls in one test process may stall the event loop
    // for a while, and these tests are about exactness, not latency.
    REDIS_COMMAND_TIMEOUT: "15s",
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
    ...(options.clock === undefined ? {} : { clock: options.clock }),
    ...(options.relayProbeIntervalMs === undefined ? {} : { relayProbeIntervalMs: options.relayProbeIntervalMs }),
    ...(options.storageProbe === undefined ? {} : { storageProbe: options.storageProbe }),
    ...(options.health === undefined ? {} : { health: options.health }),
  });
  const address = `${app.address.host}:${app.address.port}`;
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const client = new OtpClient(address, credentials, options.channelOptions ?? {});
  const health = new HealthClient(address, credentials, options.channelOptions ?? {});
  return {
    app,
    address,
    client,
    health,
    logs,
    async stop() {
      client.close();
      health.close();
      await app.stop(2000);
    },
  };
}

/** A unary call with a deadline (default 20 s). */
export function call<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: DescMethodUnary<I, O>,
  request: MessageInitShape<I>,
  metadata: grpc.Metadata = new grpc.Metadata(),
  deadlineMs = 20_000,
): Promise<MessageShape<O>> {
  return grpcUnary(client, method, request, { metadata, deadlineMs });
}

/** The ServiceError a call failed with; fails the test when it succeeded. */
export const failure = grpcError;

/** The google.rpc details of a failed call, unpacked. */
export const detailsOf = errorDetails;

export function retryDelayMs(error: grpc.ServiceError): number | undefined {
  const delay = detailsOf(error).retryInfo?.retryDelay;
  return delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1e6;
}

/** grpc.health.v1 Check of the whole server. */
export async function servingStatus(instance: Instance): Promise<HealthCheckResponse_ServingStatus> {
  const response = await call(instance.health, Health.method.check, { service: "" }, new grpc.Metadata(), 5000);
  return response.status;
}

/** Resolves once the instance's health says SERVING (its Redis connected); rejects after `timeoutMs`. */
export async function untilServing(instance: Instance, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await servingStatus(instance)) !== HealthCheckResponse_ServingStatus.SERVING) {
    if (Date.now() > deadline) throw new Error(`instance ${instance.address} not SERVING after ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** Settles every promise and counts the outcomes by gRPC status code (0 = OK). */
export async function tally(calls: readonly Promise<unknown>[]): Promise<{ codes: Map<number, number>; errors: grpc.ServiceError[] }> {
  const results = await Promise.allSettled(calls);
  const codes = new Map<number, number>();
  const errors: grpc.ServiceError[] = [];
  for (const result of results) {
    const code = result.status === "fulfilled" ? 0 : (result.reason as grpc.ServiceError).code;
    if (result.status === "rejected") errors.push(result.reason as grpc.ServiceError);
    codes.set(code, (codes.get(code) ?? 0) + 1);
  }
  return { codes, errors };
}
