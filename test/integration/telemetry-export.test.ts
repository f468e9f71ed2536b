/**
 * The compiled service as a separate process, started the way `npm start`
 * starts it (`node --import dist/src/telemetry/bootstrap.js
 * dist/src/main.js`), exporting its spans over the OTLP wire protocol to a
 * receiver in this test: OTLP/HTTP with protobuf by default, OTLP/gRPC when
 * asked, nothing at all when no endpoint is configured. Its /metrics
 * endpoint is scraped and checked with promtool as it is.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { once } from "node:events";
import { createServer } from "node:http";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { afterEach, beforeAll, afterAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { startOtlpGrpcReceiver, startOtlpHttpReceiver, type OtlpReceiver, type ReceivedSpan } from "../support/otlp-receiver.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";
import { freePort } from "../support/ports.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const { sendOtp, getDeliveryStatus } = OtpEmailService.method;

interface ServiceProcess {
  readonly child: ChildProcess;
  readonly grpcAddress: string;
  readonly metricsUrl: string;
  readonly lines: Record<string, unknown>[];
  readonly stderr: string[];
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

const running = new Set<ChildProcess>();
afterEach(() => {
  for (const child of running) child.kill("SIGKILL");
  running.clear();
});

/** Spawns the service as `npm start` does, with only `env` (and PATH), and waits until it listens. */
async function startServiceProcess(env: Record<string, string>): Promise<ServiceProcess> {
  const grpcAddress = `127.0.0.1:${await freePort()}`;
  const child = spawn(process.execPath, ["--import", "./dist/src/telemetry/bootstrap.js", "dist/src/main.js"], {
    cwd: root,
    env: { PATH: process.env["PATH"] ?? "", GRPC_ADDR: grpcAddress, METRICS_ADDR: "127.0.0.1:0", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  const exited = once(child, "exit").then(([code]) => code as number | null);
  let buffer = "";
  let metricsUrl: string | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("utf8");
      let newline = buffer.indexOf("\n");
      while (newline !== -1) {
        const text = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        newline = buffer.indexOf("\n");
        if (!text.startsWith("{")) continue;
        const line = JSON.parse(text) as Record<string, unknown>;
        lines.push(line);
        if (line["msg"] === "metrics listening") metricsUrl = `http://${String(line["address"])}/metrics`;
        if (line["msg"] === "otp-email listening") resolve();
      }
    });
    child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));
    void exited.then((code) => reject(new Error(`the service exited (${code}) before listening: ${stderr.join("")}`)));
  });
  await ready;
  return {
    child,
    grpcAddress,
    metricsUrl: metricsUrl ?? "",
    lines,
    stderr,
    async stop() {
      child.kill("SIGTERM");
      const code = await exited;
      running.delete(child);
      return code;
    },
  };
}

/**
 * A receiver on OTLP/HTTP's default port, 4318. Another test run on this
 * machine may hold it for a few seconds (this very test): wait for it.
 */
async function defaultEndpointReceiver(): Promise<OtlpReceiver> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOtlpHttpReceiver(4318);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt >= 60) throw error;
      await sleep(500);
    }
  }
}

/** A W3C traceparent for a caller span that is not in this process. */
function callerContext(): { traceId: string; spanId: string; traceparent: string } {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

describe("trace export from a separately started service process", () => {
  let sink: SmtpSink;
  const baseEnv = (): Record<string, string> => ({
    NODE_ENV: "test",
    LOG_LEVEL: "info",
    OTP_SECRET: "test-secret-0123456789-abcdefghijklmnop",
    MAIL_FROM: '"Acme Login" <no-reply@acme.test>',
    SMTP_URL: sink.url,
    REDIS_URL: redisUrlForTests(),
    REDIS_PREFIX: randomPrefix(),
    // Export within 50 ms instead of the default 5 s.
    OTEL_BSP_SCHEDULE_DELAY: "50",
  });

  beforeAll(async () => {
    sink = await startSmtpSink();
  });
  afterAll(() => sink.close());

  /** Calls SendOtp with `traceparent`, then GetDeliveryStatus; returns what the service answered. */
  async function sendTraced(service: ServiceProcess, recipient: string, traceparent: string) {
    const client = new GrpcOtpClient(service.grpcAddress, grpc.credentials.createInsecure());
    try {
      const metadata = new grpc.Metadata();
      metadata.set("traceparent", traceparent);
      const sent = await grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN }, { metadata });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      const status = await grpcUnary(client, getDeliveryStatus, { messageId: sent.messageId });
      return { sent, status };
    } finally {
      client.close();
    }
  }

  /**
   * The whole tree, as received: server span under the caller's, then smtp.send, attempts, and Redis
   * commands only when asked for (TRACE_REDIS_COMMANDS=true).
   */
  function expectTree(
    spans: readonly ReceivedSpan[],
    traceId: string,
    callerSpanId: string,
    redisCommandSpans: boolean,
    serviceName = "otp-email",
  ): void {
    const ours = spans.filter((span) => span.traceId === traceId);
    const server = ours.find((span) => span.name === "grpc.otp.v1.OtpEmailService/SendOtp");
    expect(server?.kind).toBe(2);
    expect(server?.parentSpanId).toBe(callerSpanId);
    expect(server?.serviceName).toBe(serviceName);
    const serverId = server?.spanId;
    const send = ours.find((span) => span.name === "smtp.send");
    expect(send?.parentSpanId).toBe(serverId);
    expect(send?.attributes["otp.recipient.provider"]).toBe("proton");
    const attempt = ours.find((span) => span.name === "smtp.attempt");
    expect(attempt?.parentSpanId).toBe(send?.spanId);
    expect(attempt?.attributes).toMatchObject({ "smtp.reply.code": 250, "server.address": "127.0.0.1", "server.port": sink.port });
    const redis = ours.filter((span) => span.scope === "@opentelemetry/instrumentation-ioredis");
    if (redisCommandSpans) expect(redis.length).toBeGreaterThanOrEqual(2);
    else expect(redis).toEqual([]);
    for (const span of redis) expect(span.parentSpanId).toBe(serverId);
  }

  const complete = (traceId: string) => (spans: readonly ReceivedSpan[]) =>
    ["grpc.otp.v1.OtpEmailService/SendOtp", "smtp.send", "smtp.attempt"].every((name) =>
      spans.some((span) => span.traceId === traceId && span.name === name),
    );

  it("OTLP/HTTP with protobuf by default: the whole tree under the caller's span; metrics pass promtool", async () => {
    const receiver = await startOtlpHttpReceiver();
    try {
      const service = await startServiceProcess({ ...baseEnv(), OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint });
      const caller = callerContext();
      const { status } = await sendTraced(service, "olivia@proton.me", caller.traceparent);
      expect(status.traceId).toBe(caller.traceId);
      const spans = await receiver.waitFor(complete(caller.traceId));
      expectTree(spans, caller.traceId, caller.spanId, false);
      expect(new Set(receiver.requests)).toEqual(new Set(["application/x-protobuf"]));

      // The process's own /metrics: promtool-clean text, OpenMetrics with this trace as an exemplar.
      const text = await (await fetch(service.metricsUrl)).text();
      expect(execFileSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" })).toBe("");
      expect(text).toMatch(/^otp_sends_total\{purpose="login",outcome="accepted"\} 1$/m);
      const openMetrics = await (await fetch(service.metricsUrl, { headers: { accept: "application/openmetrics-text; version=1.0.0" } })).text();
      expect(openMetrics).toContain(`# {trace_id="${caller.traceId}"}`);

      // Log lines of the request carry its trace.
      expect(service.lines.find((line) => line["msg"] === "otp queued")?.["trace_id"]).toBe(caller.traceId);
      expect(await service.stop()).toBe(0);
    } finally {
      await receiver.close();
    }
  });

  it("OTLP/gRPC when OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc; a span per Redis command with TRACE_REDIS_COMMANDS=true", async () => {
    const receiver = await startOtlpGrpcReceiver();
    try {
      const service = await startServiceProcess({
        ...baseEnv(),
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "grpc",
        TRACE_REDIS_COMMANDS: "true",
      });
      const caller = callerContext();
      await sendTraced(service, "pia@pm.me", caller.traceparent);
      const spans = await receiver.waitFor(complete(caller.traceId));
      expectTree(spans, caller.traceId, caller.spanId, true);
      expect(new Set(receiver.requests)).toEqual(new Set(["grpc"]));
      expect(await service.stop()).toBe(0);
    } finally {
      await receiver.close();
    }
  });

  it("the SDK's standard settings: resource attributes and detectors, B3 propagation, a ratio sampler that follows the caller", async () => {
    const receiver = await startOtlpHttpReceiver();
    try {
      const service = await startServiceProcess({
        ...baseEnv(),
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        // service.name from here when OTEL_SERVICE_NAME is unset; percent-encoded values.
        OTEL_RESOURCE_ATTRIBUTES: "service.name=otp-staging,deployment.environment.name=staging%20eu",
        OTEL_PROPAGATORS: "b3",
        OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG: "0",
        // Span limits from the standard variables: string attributes cut at 12 characters.
        OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: "12",
      });
      const client = new GrpcOtpClient(service.grpcAddress, grpc.credentials.createInsecure());
      const call = async (recipient: string, header: string, value: string): Promise<void> => {
        const metadata = new grpc.Metadata();
        metadata.set(header, value);
        const sent = await grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN }, { metadata });
        expect(sent.state).toBe(DeliveryState.ACCEPTED);
      };
      try {
        // Not traced: an unsampled B3 parent; a W3C traceparent, which OTEL_PROPAGATORS=b3 does not read (a new
        // root, and the ratio is 0).
        const unsampled = callerContext();
        await call("rosa@proton.me", "b3", `${unsampled.traceId}-${unsampled.spanId}-0`);
        const w3c = callerContext();
        await call("sara@proton.me", "traceparent", w3c.traceparent);
        // Traced: a sampled B3 parent, whatever the ratio.
        const sampled = callerContext();
        await call("tara@proton.me", "b3", `${sampled.traceId}-${sampled.spanId}-1`);
        const spans = await receiver.waitFor(complete(sampled.traceId));
        expectTree(spans, sampled.traceId, sampled.spanId, false, "otp-staging");
        // Exported in order, every 50 ms: the earlier calls' spans would be here by now.
        expect(spans.filter((span) => span.traceId !== sampled.traceId)).toEqual([]);
        const server = spans.find((span) => span.name === "grpc.otp.v1.OtpEmailService/SendOtp");
        expect(server?.attributes["rpc.service"]).toBe("otp.v1.OtpEm");

        const { resource } = spans[0] ?? { resource: {} };
        expect(resource).toMatchObject({
          "deployment.environment.name": "staging eu",
          "host.name": hostname(),
          "process.pid": service.child.pid,
          "process.runtime.name": "nodejs",
          "telemetry.sdk.language": "nodejs",
        });
        expect(resource["service.instance.id"]).toMatch(/^[0-9a-f-]{36}$/);
      } finally {
        client.close();
      }
      expect(await service.stop()).toBe(0);
    } finally {
      await receiver.close();
    }
  });

  it("a collector that refuses the spans: the SDK's error in the service's JSON log, once, and the lost spans counted", async () => {
    // An OTLP/HTTP endpoint that answers every export 400 (not retried: the spans are lost at once).
    const refusing = createServer((request, response) => {
      request.resume();
      request.on("end", () => response.writeHead(400, { "content-type": "text/plain" }).end("no such tenant"));
    });
    refusing.listen(0, "127.0.0.1");
    await once(refusing, "listening");
    const { port } = refusing.address() as AddressInfo;
    try {
      const service = await startServiceProcess({ ...baseEnv(), OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}` });
      const first = callerContext();
      await sendTraced(service, "uma@proton.me", first.traceparent);
      const metric = async (result: string): Promise<number> => {
        const text = await (await fetch(service.metricsUrl)).text();
        return Number(new RegExp(`^otp_trace_export_spans_total\\{result="${result}"\\} (\\d+)$`, "m").exec(text)?.[1] ?? NaN);
      };
      // SendOtp's 3 spans and GetDeliveryStatus' 1, each export every 50 ms.
      await expect.poll(() => metric("failed"), { timeout: 10_000 }).toBe(4);
      const second = callerContext();
      await sendTraced(service, "vera@proton.me", second.traceparent);
      await expect.poll(() => metric("failed"), { timeout: 10_000 }).toBe(8);
      expect(await metric("exported")).toBe(0);
      expect(await metric("dropped")).toBe(0);

      // Every line is JSON; the failure is one line from the SDK, not one per failed export.
      const sdkLines = service.lines.filter((line) => line["component"] === "opentelemetry");
      expect(sdkLines.length, JSON.stringify(sdkLines)).toBe(1);
      expect(sdkLines[0]?.["level"]).toBe("error");
      expect(String(sdkLines[0]?.["msg"])).toMatch(/Bad Request|400/);
      // Nothing from the SDK on stderr either: only development mode's try-it commands, as plain lines.
      expect(service.stderr.join("").replace(/^otp-email: try it .*\n(?: {2}.*\n)*/, "")).toBe("");
      expect(await service.stop()).toBe(0);
    } finally {
      refusing.close();
    }
  });

  it("an unreachable collector: the calls are unaffected, the lost spans counted and the refusal logged once", async () => {
    const service = await startServiceProcess({
      ...baseEnv(),
      // Nothing listens there; the exporter retries within its timeout, then gives the batch up.
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await freePort()}`,
      OTEL_EXPORTER_OTLP_TIMEOUT: "500",
    });
    for (const recipient of ["xena@proton.me", "yara@proton.me"]) {
      const { status } = await sendTraced(service, recipient, callerContext().traceparent);
      expect(status.state).toBe(DeliveryState.ACCEPTED);
    }
    await expect
      .poll(async () => /^otp_trace_export_spans_total\{result="failed"\} 8$/m.test(await (await fetch(service.metricsUrl)).text()), {
        timeout: 15_000,
      })
      .toBe(true);
    const sdkLines = service.lines.filter((line) => line["component"] === "opentelemetry");
    expect(sdkLines.map((line) => [line["level"], line["msg"]])).toEqual([["error", expect.stringMatching(/ECONNREFUSED/)]]);
    expect(await service.stop()).toBe(0);
  });

  it("spans dropped for a full export queue are counted as dropped, whatever the protocol", async () => {
    // A collector that takes the connection and never answers: the first export hangs, the queue fills.
    const sockets = new Set<Socket>();
    const hanging = createNetServer((socket) => {
      sockets.add(socket);
      socket.resume();
    });
    hanging.listen(0, "127.0.0.1");
    await once(hanging, "listening");
    const { port } = hanging.address() as AddressInfo;
    try {
      for (const protocol of ["http/protobuf", "http/json", "grpc"]) {
        const service = await startServiceProcess({
          ...baseEnv(),
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
          OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
          OTEL_EXPORTER_OTLP_TIMEOUT: "30000",
          OTEL_BSP_MAX_QUEUE_SIZE: "1",
          OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "1",
        });
        for (const recipient of ["ana@proton.me", "bea@proton.me"]) {
          const { status } = await sendTraced(service, recipient, callerContext().traceparent);
          expect(status.state).toBe(DeliveryState.ACCEPTED);
        }
        // 8 spans: one in the hanging export, one queued, the rest dropped as they end.
        await expect
          .poll(
            async () => Number(/^otp_trace_export_spans_total\{result="dropped"\} (\d+)$/m.exec(await (await fetch(service.metricsUrl)).text())?.[1]),
            { timeout: 10_000 },
          )
          .toBeGreaterThanOrEqual(5);
        service.child.kill("SIGKILL");
        running.delete(service.child);
      }
    } finally {
      for (const socket of sockets) socket.destroy();
      hanging.close();
    }
  });

  it("spans the collector took are counted as exported", async () => {
    const receiver = await startOtlpHttpReceiver();
    try {
      const service = await startServiceProcess({ ...baseEnv(), OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint });
      const caller = callerContext();
      await sendTraced(service, "wren@proton.me", caller.traceparent);
      await receiver.waitFor(complete(caller.traceId));
      await expect
        .poll(async () => /^otp_trace_export_spans_total\{result="exported"\} 4$/m.test(await (await fetch(service.metricsUrl)).text()), {
          timeout: 10_000,
        })
        .toBe(true);
      expect(await service.stop()).toBe(0);
    } finally {
      await receiver.close();
    }
  });

  it("a sampler, propagator, detector, resource attribute, SDK log level or endpoint the SDK cannot use stops the process at start-up (exit 78), naming the variable", async () => {
    for (const [variable, value] of [
      ["OTEL_TRACES_SAMPLER", "jaeger_remote"],
      ["OTEL_TRACES_SAMPLER_ARG", "1.5"],
      ["OTEL_PROPAGATORS", "tracecontext,xray"],
      ["OTEL_NODE_RESOURCE_DETECTORS", "gcp"],
      ["OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,region"],
      ["OTEL_LOG_LEVEL", "loud"],
      ["OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4318"],
    ] as const) {
      const child = spawn(process.execPath, ["--import", "./dist/src/telemetry/bootstrap.js", "dist/src/main.js"], {
        cwd: root,
        env: {
          PATH: process.env["PATH"] ?? "",
          ...baseEnv(),
          OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
          OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
          [variable]: value,
        },
        stdio: ["ignore", "ignore", "pipe"],
      });
      running.add(child);
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      const [code] = (await once(child, "exit")) as [number | null];
      running.delete(child);
      expect(code, `${variable}=${value}`).toBe(78);
      expect(stderr).toContain(`configuration error: ${variable}=${value}`);
    }
  });

  it("with no endpoint configured nothing is exported, yet the caller's trace id still reaches records and logs", async () => {
    // Where an SDK left to its defaults would send: localhost:4318.
    const receiver = await defaultEndpointReceiver();
    try {
      const service = await startServiceProcess(baseEnv());
      const caller = callerContext();
      const { status } = await sendTraced(service, "quinn@protonmail.com", caller.traceparent);
      expect(status.traceId).toBe(caller.traceId);
      expect(service.lines.find((line) => line["msg"] === "otp queued")?.["trace_id"]).toBe(caller.traceId);
      // No span of its own is recorded: the only trace an exemplar can name is the caller's.
      const openMetrics = await (await fetch(service.metricsUrl, { headers: { accept: "application/openmetrics-text" } })).text();
      const exemplarTraces = new Set([...openMetrics.matchAll(/# \{trace_id="([0-9a-f]+)"\}/g)].map((match) => match[1]));
      expect([...exemplarTraces]).toEqual([caller.traceId]);
      expect(await service.stop()).toBe(0);
      expect(receiver.requests).toEqual([]);
    } finally {
      await receiver.close();
    }
  });
});
