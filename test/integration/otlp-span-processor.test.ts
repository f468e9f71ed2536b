/**
 * The default trace export (OTLP/HTTP protobuf), encoding spans as they end:
 * the bytes say what @opentelemetry/otlp-transformer's encoder says for the
 * same spans, and the processor sends them in batches to a real OTLP/HTTP
 * receiver on loopback, which decodes them without OpenTelemetry code.
 */
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { gunzipSync } from "node:zlib";
import { diag, DiagLogLevel, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags, type Tracer } from "@opentelemetry/api";
import { ExportResultCode, TraceState } from "@opentelemetry/core";
import { CompressionAlgorithm } from "@opentelemetry/otlp-exporter-base";
import { ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { AlwaysOffSampler, InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type SpanProcessor } from "@opentelemetry/sdk-trace";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { decodeExportTraceResponse, encodeTraceRequest, ProtobufWriter, writeSpan } from "../../src/telemetry/otlp-span-encoding.js";
import {
  createOtlpProtobufSpanExporter,
  OtlpProtobufSpanProcessor,
  type EncodedSpanBatch,
  type EncodedSpanExporter,
} from "../../src/telemetry/otlp-span-processor.js";
import { decodeExportTraceRequest, decodeFields, startOtlpHttpReceiver, type OtlpReceiver } from "../support/otlp-receiver.js";

// ---------------------------------------------------------------------------
// A whole-message decoder over trace.proto, for comparing two encodings field by field

type Schema = Readonly<Record<number, "scalar" | Schemas>>;
interface Schemas {
  readonly schema: () => Schema;
}
const message = (schema: () => Schema): Schemas => ({ schema });
const anyValue: Schema = { 1: "scalar", 2: "scalar", 3: "scalar", 4: "scalar", 5: message(() => arrayValue), 6: message(() => keyValueList), 7: "scalar" };
const arrayValue: Schema = { 1: message(() => anyValue) };
const keyValue: Schema = { 1: "scalar", 2: message(() => anyValue) };
const keyValueList: Schema = { 1: message(() => keyValue) };
const kv = message(() => keyValue);
const status: Schema = { 2: "scalar", 3: "scalar" };
const event: Schema = { 1: "scalar", 2: "scalar", 3: kv, 4: "scalar" };
const link: Schema = { 1: "scalar", 2: "scalar", 3: "scalar", 4: kv, 5: "scalar", 6: "scalar" };
const span: Schema = {
  ...Object.fromEntries([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16].map((field) => [field, "scalar"])),
  9: kv,
  11: message(() => event),
  13: message(() => link),
  15: message(() => status),
};
const scope: Schema = { 1: "scalar", 2: "scalar", 3: kv, 4: "scalar" };
const scopeSpans: Schema = { 1: message(() => scope), 2: message(() => span), 3: "scalar" };
const resource: Schema = { 1: kv, 2: "scalar" };
const resourceSpans: Schema = { 1: message(() => resource), 2: message(() => scopeSpans), 3: "scalar" };
const request: Schema = { 1: message(() => resourceSpans) };

/** Every field by number, repeated ones in order; proto3 defaults (0, empty) left out as a decoder sees them. */
function decode(bytes: Buffer, schema: Schema): Record<number, unknown[]> {
  const result: Record<number, unknown[]> = {};
  for (const field of decodeFields(bytes)) {
    const kind = schema[field.number];
    expect(kind, `field ${field.number}`).toBeDefined();
    let value: unknown;
    if (kind === "scalar") {
      if (field.value === 0n || (field.value instanceof Buffer && field.value.length === 0)) continue;
      value = field.value instanceof Buffer ? field.value.toString("hex") : field.value;
    } else {
      value = decode(field.value as Buffer, kind.schema());
    }
    (result[field.number] ??= []).push(value);
  }
  return result;
}

function ours(spans: Parameters<typeof writeSpan>[1][]): Buffer {
  const writer = new ProtobufWriter(16);
  for (const finished of spans) writeSpan(writer, finished);
  const { resource: spanResource, instrumentationScope } = spans[0];
  return Buffer.from(encodeTraceRequest([{ resource: spanResource, scopes: [{ scope: instrumentationScope, spans: writer.bytes() }] }]));
}

function stock(spans: Parameters<typeof writeSpan>[1][]): Buffer {
  const bytes = ProtobufTraceSerializer.serializeRequest(spans);
  if (bytes === undefined) throw new Error("nothing serialized");
  return Buffer.from(bytes);
}

function providerWith(processor: SpanProcessor): TracerProvider {
  return new TracerProvider({
    resource: resourceFromAttributes({ "service.name": "otp-email-test", "service.version": "1.2.3" }),
    spanProcessors: [processor],
  });
}

describe("OTLP protobuf encoding at span end", () => {
  it("gives, field for field, what the stock encoder gives for the same spans", async () => {
    const memory = new InMemorySpanExporter();
    const provider = providerWith(new SimpleSpanProcessor({ exporter: memory }));
    const tracer = provider.getTracer("otp-email", "0.1.0", { schemaUrl: "https://opentelemetry.io/schemas/1.30.0" });
    const remoteParent = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      traceFlags: TraceFlags.SAMPLED,
      isRemote: true,
      traceState: new TraceState("vendor=value,other=x"),
    });
    const server = tracer.startSpan(
      "grpc.otp.v1.OtpEmailService/SendOtp",
      { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.method": "SendOtp" } },
      remoteParent,
    );
    const send = tracer.startSpan(
      "smtp.send",
      {
        attributes: {
          "otp.recipient.masked": "j***@gmail.com",
          "otp.locale": "ko",
          "otp.note": "한국어 본문과 a long ASCII tail that passes forty-eight characters",
          "otp.long": "x".repeat(300),
          "server.port": 2525,
          "otp.negative": -42,
          "otp.big": 2 ** 40,
          "otp.ratio": 0.25,
          "otp.flag": true,
          "otp.list": ["a", "b"],
          "otp.numbers": [1, 2.5],
        },
        links: [{ context: server.spanContext(), attributes: { "link.kind": "send" } }],
      },
      trace.setSpan(remoteParent, server),
    );
    send.addEvent("smtp.retry", { "smtp.next_attempt": 2, "smtp.retry_delay_ms": 250 });
    send.addEvent("bare");
    const attempt = tracer.startSpan("smtp.attempt", { kind: SpanKind.CLIENT }, trace.setSpan(ROOT_CONTEXT, send));
    attempt.setStatus({ code: SpanStatusCode.ERROR, message: "transient failure: 421" });
    attempt.end();
    send.setStatus({ code: SpanStatusCode.OK });
    send.end();
    server.end();
    // Enough attributes that the span's length needs a three-byte varint, and the writer grows.
    const wide = tracer.startSpan("wide", { attributes: Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`key.${i}`, `value ${i}`])) });
    wide.end();
    await provider.forceFlush();

    const spans = memory.getFinishedSpans();
    expect(spans).toHaveLength(4);
    expect(decode(ours(spans), request)).toEqual(decode(stock(spans), request));
    for (const one of spans) expect(decode(ours([one]), request)).toEqual(decode(stock([one]), request));
    await provider.shutdown();
  });

  it("writes span times as the nanoseconds BigInt arithmetic gives, up to seconds past 2^32", () => {
    const cases: [number, number][] = [
      [0, 0],
      [1, 999_999_999],
      [1_764_250_000, 123_456_789],
      [0xffff, 999_999_999],
      [0x10000, 1],
      [2 ** 32 + 17, 999_999_999],
    ];
    for (const [seconds, nanos] of cases) {
      const writer = new ProtobufWriter(1);
      writer.time(1, [seconds, nanos]);
      const [field] = decodeFields(writer.bytes());
      expect(field.value, `${seconds}s ${nanos}ns`).toBe(BigInt(seconds) * 1_000_000_000n + BigInt(nanos));
    }
  });
});

/** Records what it is given; with `hold`, answers only when `release` is called. */
function recordingExporter(hold = false): EncodedSpanExporter & { batches: EncodedSpanBatch[]; shutDown: boolean; release(): void } {
  const waiting: Parameters<EncodedSpanExporter["export"]>[1][] = [];
  const recorder = {
    batches: [] as EncodedSpanBatch[],
    shutDown: false,
    export(batch: EncodedSpanBatch, done: Parameters<EncodedSpanExporter["export"]>[1]) {
      recorder.batches.push(batch);
      if (hold) waiting.push(done);
      else done({ code: ExportResultCode.SUCCESS });
    },
    release() {
      hold = false;
      for (const done of waiting.splice(0)) done({ code: ExportResultCode.SUCCESS });
    },
    forceFlush: () => Promise.resolve(),
    shutdown() {
      recorder.shutDown = true;
      return Promise.resolve();
    },
  };
  return recorder;
}

function endSpans(tracer: Tracer, count: number, name = "span"): void {
  for (let index = 0; index < count; index++) tracer.startSpan(`${name}-${index}`).end();
}

/** An ExportTraceServiceResponse: partial_success { rejected_spans, error_message } plus whatever `extra` holds. */
function exportResponse(rejected: number, message: string, extra: readonly number[] = []): Uint8Array {
  const text = Buffer.from(message, "utf8");
  const inner = [0x08, ...varint(rejected), 0x12, ...varint(text.length), ...text];
  return Uint8Array.from([0x0a, ...varint(inner.length), ...inner, ...extra]);
}

function varint(value: number): number[] {
  const bytes: number[] = [];
  while (value >= 0x80) {
    bytes.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  return [...bytes, value];
}

describe("a collector's answer", () => {
  it("reads as the stock deserializer reads it: partial success, large counts, unknown fields, empty", () => {
    const cases = [
      new Uint8Array(),
      exportResponse(3, "3 spans had no name"),
      exportResponse(2 ** 40, "ünïcode ✓"),
      // Unknown fields of every wire type before and after, in both messages.
      Uint8Array.from([0x10, 0x96, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, ...exportResponse(0, "", [0x25, 1, 2, 3, 4, 0x2a, 0x01, 0x41])]),
      Uint8Array.from([0x0a, 0x05, 0x18, 0x01, 0x22, 0x01, 0x78]),
    ];
    for (const bytes of cases) {
      expect(decodeExportTraceResponse(bytes)).toEqual(ProtobufTraceSerializer.deserializeResponse(bytes));
    }
    expect(decodeExportTraceResponse(exportResponse(3, "bad"))).toEqual({ partialSuccess: { rejectedSpans: 3, errorMessage: "bad" } });
  });

  it("throws on truncated or malformed bytes, as the stock deserializer does", () => {
    for (const bytes of [Uint8Array.from([0x0a, 0x05, 0x08]), Uint8Array.from([0x08, 0x80]), Uint8Array.from([0x0f, 0x00])]) {
      expect(() => decodeExportTraceResponse(bytes)).toThrow();
      expect(() => ProtobufTraceSerializer.deserializeResponse(bytes)).toThrow();
    }
  });
});

describe("OtlpProtobufSpanProcessor", () => {
  let receiver: OtlpReceiver;
  beforeEach(async () => {
    receiver = await startOtlpHttpReceiver();
  });
  afterEach(async () => {
    await receiver.close();
  });

  it("sends a trace over OTLP/HTTP (gzip) to a real receiver: parents, attributes, events, status and resource intact", async () => {
    const exporter = createOtlpProtobufSpanExporter({ url: `${receiver.endpoint}/v1/traces`, compression: CompressionAlgorithm.GZIP });
    const provider = providerWith(new OtlpProtobufSpanProcessor({ exporter, scheduledDelayMillis: 20 }));
    const tracer = provider.getTracer("otp-email");
    const server = tracer.startSpan("grpc.otp.v1.OtpEmailService/SendOtp", { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc" } });
    const send = tracer.startSpan("smtp.send", { attributes: { "otp.purpose": "login", "server.port": 2525 } }, trace.setSpan(ROOT_CONTEXT, server));
    send.addEvent("smtp.retry", { "smtp.next_attempt": 2 });
    const attempt = tracer.startSpan("smtp.attempt", { kind: SpanKind.CLIENT }, trace.setSpan(ROOT_CONTEXT, send));
    attempt.setStatus({ code: SpanStatusCode.ERROR, message: "transient failure: 421" });
    attempt.end();
    send.end();
    server.end();

    const received = await receiver.waitFor((spans) => spans.length === 3);
    expect(receiver.requests).toEqual(["application/x-protobuf"]);
    const byName = Object.fromEntries(received.map((one) => [one.name, one]));
    const traceId = server.spanContext().traceId;
    expect(received.every((one) => one.traceId === traceId && one.serviceName === "otp-email-test" && one.scope === "otp-email")).toBe(true);
    expect(byName["grpc.otp.v1.OtpEmailService/SendOtp"]).toMatchObject({ parentSpanId: "", kind: 2, attributes: { "rpc.system": "grpc" } });
    expect(byName["smtp.send"]).toMatchObject({
      spanId: send.spanContext().spanId,
      parentSpanId: server.spanContext().spanId,
      kind: 1,
      attributes: { "otp.purpose": "login", "server.port": 2525 },
      events: [{ name: "smtp.retry", attributes: { "smtp.next_attempt": 2 } }],
    });
    expect(byName["smtp.attempt"]).toMatchObject({
      parentSpanId: send.spanContext().spanId,
      kind: 3,
      statusCode: 2,
      statusMessage: "transient failure: 421",
    });
    await provider.shutdown();
  });

  it("takes endpoint, headers and compression from the OTEL_EXPORTER_OTLP_* variables, as the stock exporter does", async () => {
    const seen: { url: string | undefined; headers: IncomingHttpHeaders; spans: string[] }[] = [];
    const collector = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        const body = Buffer.concat(chunks);
        const decoded = request.headers["content-encoding"] === "gzip" ? gunzipSync(body) : body;
        seen.push({ url: request.url, headers: request.headers, spans: decodeExportTraceRequest(decoded).map((one) => one.name) });
        response.writeHead(200, { "content-type": "application/x-protobuf" }).end();
      });
    });
    collector.listen(0, "127.0.0.1");
    await once(collector, "listening");
    const { port } = collector.address() as AddressInfo;
    const variables = {
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${port}/custom/traces`,
      OTEL_EXPORTER_OTLP_HEADERS: "x-otp-tenant=blue,authorization=Bearer%20t0ken",
      OTEL_EXPORTER_OTLP_COMPRESSION: "gzip",
    };
    const saved = Object.fromEntries(Object.keys(variables).map((name) => [name, process.env[name]]));
    Object.assign(process.env, variables);
    try {
      const provider = providerWith(new OtlpProtobufSpanProcessor({ exporter: createOtlpProtobufSpanExporter() }));
      endSpans(provider.getTracer("otp-email"), 2);
      await provider.forceFlush();
      await provider.shutdown();
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) Reflect.deleteProperty(process.env, name);
        else process.env[name] = value;
      }
      collector.close();
    }
    expect(seen).toHaveLength(1);
    expect(seen[0].url).toBe("/custom/traces");
    expect(seen[0].headers).toMatchObject({
      "content-type": "application/x-protobuf",
      "content-encoding": "gzip",
      "x-otp-tenant": "blue",
      authorization: "Bearer t0ken",
    });
    expect(seen[0].spans).toEqual(["span-0", "span-1"]);
  });

  it("logs a collector's partial success as a warning and counts the export as done", async () => {
    const collector = createServer((request, response) => {
      request.resume();
      request.on("end", () => response.writeHead(200, { "content-type": "application/x-protobuf" }).end(exportResponse(1, "span 0 rejected")));
    });
    collector.listen(0, "127.0.0.1");
    await once(collector, "listening");
    const { port } = collector.address() as AddressInfo;
    const warnings: string[] = [];
    const record = (...args: unknown[]): void => void warnings.push(args.map(String).join(" "));
    diag.setLogger({ error: record, warn: record, info: () => {}, debug: () => {}, verbose: () => {} }, DiagLogLevel.WARN);
    try {
      const results: number[] = [];
      const exporter = createOtlpProtobufSpanExporter({ url: `http://127.0.0.1:${port}/v1/traces` });
      const provider = providerWith(new OtlpProtobufSpanProcessor({ exporter }));
      endSpans(provider.getTracer("otp-email"), 1);
      await provider.forceFlush();
      exporter.export({ bytes: new Uint8Array(), spanCount: 0 }, (result) => results.push(result.code));
      await expect.poll(() => results).toEqual([ExportResultCode.SUCCESS]);
      await provider.shutdown();
    } finally {
      diag.disable();
      collector.close();
    }
    expect(warnings.filter((line) => line.includes("Partial Success"))).toEqual([
      'Received Partial Success response: {"rejectedSpans":1,"errorMessage":"span 0 rejected"}',
      'Received Partial Success response: {"rejectedSpans":1,"errorMessage":"span 0 rejected"}',
    ]);
  });

  it("sends a full batch at once and the rest after the delay, in as many requests as batches", async () => {
    const exporter = createOtlpProtobufSpanExporter({ url: `${receiver.endpoint}/v1/traces` });
    const provider = providerWith(new OtlpProtobufSpanProcessor({ exporter, maxExportBatchSize: 4, scheduledDelayMillis: 60_000 }));
    endSpans(provider.getTracer("otp-email"), 9);
    await receiver.waitFor((spans) => spans.length === 8);
    expect(receiver.requests).toHaveLength(2);
    await provider.forceFlush();
    expect(receiver.spans.map((one) => one.name).sort()).toEqual(Array.from({ length: 9 }, (_, i) => `span-${i}`).sort());
    expect(receiver.requests).toHaveLength(3);
    await provider.shutdown();
  });

  it("keeps spans of two instrumentation scopes apart in one request", async () => {
    const exporter = createOtlpProtobufSpanExporter({ url: `${receiver.endpoint}/v1/traces` });
    const provider = providerWith(new OtlpProtobufSpanProcessor({ exporter }));
    endSpans(provider.getTracer("otp-email"), 2, "ours");
    endSpans(provider.getTracer("@opentelemetry/instrumentation-ioredis"), 1, "redis");
    endSpans(provider.getTracer("otp-email"), 1, "ours-again");
    await provider.forceFlush();
    expect(receiver.requests).toHaveLength(1);
    expect(receiver.spans.map((one) => `${one.scope} ${one.name}`)).toEqual([
      "otp-email ours-0",
      "otp-email ours-1",
      "otp-email ours-again-0",
      "@opentelemetry/instrumentation-ioredis redis-0",
    ]);
    await provider.shutdown();
  });

  it("while an export runs, queues spans up to the queue size and drops the rest; never keeps unsampled spans", async () => {
    const exporter = recordingExporter(true);
    const processor = new OtlpProtobufSpanProcessor({ exporter, maxQueueSize: 4, maxExportBatchSize: 4, scheduledDelayMillis: 60_000 });
    const provider = providerWith(processor);
    const unsampled = new TracerProvider({ sampler: new AlwaysOffSampler(), spanProcessors: [processor] });
    // 4 go out at once (the export hangs), 4 wait, 4 are dropped.
    endSpans(provider.getTracer("otp-email"), 12);
    endSpans(unsampled.getTracer("otp-email"), 3);
    await new Promise((resolve) => setImmediate(resolve));
    expect(exporter.batches.map((batch) => batch.spanCount)).toEqual([4]);
    exporter.release();
    await provider.forceFlush();
    expect(exporter.batches.map((batch) => batch.spanCount)).toEqual([4, 4]);
    const names = exporter.batches.map((batch) => decodeExportTraceRequest(Buffer.from(batch.bytes)).map((one) => one.name));
    expect(names).toEqual([
      ["span-0", "span-1", "span-2", "span-3"],
      ["span-4", "span-5", "span-6", "span-7"],
    ]);
    await provider.shutdown();
  });

  it("on shutdown sends what is queued, shuts the exporter down and takes no more spans", async () => {
    const exporter = recordingExporter();
    const processor = new OtlpProtobufSpanProcessor({ exporter, scheduledDelayMillis: 60_000 });
    const provider = providerWith(processor);
    const tracer = provider.getTracer("otp-email");
    endSpans(tracer, 3);
    await processor.shutdown();
    expect(exporter.batches.map((batch) => batch.spanCount)).toEqual([3]);
    expect(exporter.shutDown).toBe(true);
    endSpans(tracer, 2);
    await processor.forceFlush();
    expect(exporter.batches).toHaveLength(1);
  });
});
