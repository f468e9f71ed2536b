/**
 * Minimal OTLP trace receivers for tests, speaking the real wire protocol:
 * OTLP/HTTP (POST /v1/traces, protobuf or JSON) and OTLP/gRPC
 * (opentelemetry.proto.collector.trace.v1.TraceService/Export). The
 * ExportTraceServiceRequest protobuf is decoded by hand (a few fields of
 * trace.proto), so the test depends on no OpenTelemetry code to read what
 * the service sent.
 */
import { once } from "node:events";
import { createServer, type IncomingMessage } from "node:http";
import { gunzipSync } from "node:zlib";
import * as grpc from "@grpc/grpc-js";

export interface ReceivedSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** "" for a root span. */
  readonly parentSpanId: string;
  readonly name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client. */
  readonly kind: number;
  readonly scope: string;
  readonly serviceName: string;
  /** The resource's attributes (service.name, host.name, process.pid...). */
  readonly resource: Readonly<Record<string, string | number | boolean>>;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
  readonly events: readonly { readonly name: string; readonly attributes: Readonly<Record<string, string | number | boolean>> }[];
  /** 0 unset, 1 ok, 2 error. */
  readonly statusCode: number;
  readonly statusMessage: string;
}

export interface OtlpReceiver {
  /** The endpoint to give the exporter (`http://127.0.0.1:PORT`). */
  readonly endpoint: string;
  readonly spans: ReceivedSpan[];
  /** Export requests received (content type or "grpc"). */
  readonly requests: string[];
  /** Resolves with the spans once `predicate` holds for them; rejects after `timeoutMs`. */
  waitFor(predicate: (spans: readonly ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------
// Protobuf wire format

export interface Field {
  readonly number: number;
  readonly wireType: number;
  /** Varint and fixed values as bigint; length-delimited as bytes. */
  readonly value: bigint | Buffer;
}

function readVarint(buffer: Buffer, offset: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (let position = offset; position < buffer.length; position++) {
    const byte = buffer[position];
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [result, position + 1];
    shift += 7n;
  }
  throw new Error("truncated varint");
}

export function decodeFields(buffer: Buffer): Field[] {
  const fields: Field[] = [];
  let offset = 0;
  while (offset < buffer.length) {
    const [key, afterKey] = readVarint(buffer, offset);
    const number = Number(key >> 3n);
    const wireType = Number(key & 7n);
    offset = afterKey;
    switch (wireType) {
      case 0: {
        const [value, next] = readVarint(buffer, offset);
        fields.push({ number, wireType, value });
        offset = next;
        break;
      }
      case 1:
        fields.push({ number, wireType, value: buffer.readBigUInt64LE(offset) });
        offset += 8;
        break;
      case 2: {
        const [length, next] = readVarint(buffer, offset);
        const end = next + Number(length);
        fields.push({ number, wireType, value: buffer.subarray(next, end) });
        offset = end;
        break;
      }
      case 5:
        fields.push({ number, wireType, value: BigInt(buffer.readUInt32LE(offset)) });
        offset += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${wireType}`);
    }
  }
  return fields;
}

const bytesOf = (fields: Field[], number: number): Buffer[] =>
  fields.filter((field) => field.number === number && field.value instanceof Buffer).map((field) => field.value as Buffer);
const firstBytes = (fields: Field[], number: number): Buffer => bytesOf(fields, number)[0] ?? Buffer.alloc(0);
const firstInt = (fields: Field[], number: number): number => {
  const field = fields.find((candidate) => candidate.number === number && typeof candidate.value === "bigint");
  return field === undefined ? 0 : Number(field.value);
};

/** AnyValue: string 1, bool 2, int 3, double 4. */
function anyValue(buffer: Buffer): string | number | boolean {
  const [field] = decodeFields(buffer);
  if (field === undefined) return "";
  if (field.number === 1 && field.value instanceof Buffer) return field.value.toString("utf8");
  if (field.number === 2) return field.value === 1n;
  if (field.number === 3) return Number(BigInt.asIntN(64, field.value as bigint));
  if (field.number === 4) {
    const bytes = Buffer.alloc(8);
    bytes.writeBigUInt64LE(field.value as bigint);
    return bytes.readDoubleLE();
  }
  return "";
}

/** repeated KeyValue { key = 1; AnyValue value = 2 } */
function keyValues(buffers: Buffer[]): Record<string, string | number | boolean> {
  const result: Record<string, string | number | boolean> = {};
  for (const buffer of buffers) {
    const fields = decodeFields(buffer);
    result[firstBytes(fields, 1).toString("utf8")] = anyValue(firstBytes(fields, 2));
  }
  return result;
}

/** Decodes an ExportTraceServiceRequest. */
export function decodeExportTraceRequest(body: Buffer): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  for (const resourceSpans of bytesOf(decodeFields(body), 1)) {
    const rs = decodeFields(resourceSpans);
    const resource = keyValues(bytesOf(decodeFields(firstBytes(rs, 1)), 1));
    for (const scopeSpans of bytesOf(rs, 2)) {
      const ss = decodeFields(scopeSpans);
      const scope = firstBytes(decodeFields(firstBytes(ss, 1)), 1).toString("utf8");
      for (const spanBytes of bytesOf(ss, 2)) {
        const span = decodeFields(spanBytes);
        const status = decodeFields(firstBytes(span, 15));
        spans.push({
          traceId: firstBytes(span, 1).toString("hex"),
          spanId: firstBytes(span, 2).toString("hex"),
          parentSpanId: firstBytes(span, 4).toString("hex"),
          name: firstBytes(span, 5).toString("utf8"),
          kind: firstInt(span, 6),
          scope,
          serviceName: String(resource["service.name"] ?? ""),
          resource,
          attributes: keyValues(bytesOf(span, 9)),
          events: bytesOf(span, 11).map((event) => {
            const fields = decodeFields(event);
            return { name: firstBytes(fields, 2).toString("utf8"), attributes: keyValues(bytesOf(fields, 3)) };
          }),
          statusCode: firstInt(status, 3),
          statusMessage: firstBytes(status, 2).toString("utf8"),
        });
      }
    }
  }
  return spans;
}

// ---------------------------------------------------------------------------
// Receivers

function collector(): Pick<OtlpReceiver, "spans" | "requests" | "waitFor"> & { add(kind: string, spans: ReceivedSpan[]): void } {
  const spans: ReceivedSpan[] = [];
  const requests: string[] = [];
  const waiters = new Set<() => void>();
  return {
    spans,
    requests,
    add(kind, received) {
      requests.push(kind);
      spans.push(...received);
      for (const wake of waiters) wake();
    },
    waitFor(predicate, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (!predicate(spans)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve([...spans]);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`OTLP receiver: condition not met after ${timeoutMs} ms; got ${spans.map((s) => s.name).join(", ")}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

async function readBody(request: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks);
  return request.headers["content-encoding"] === "gzip" ? gunzipSync(body) : body;
}

/** OTLP/HTTP on 127.0.0.1:`port` (0: a free one). Only protobuf bodies are decoded. */
export async function startOtlpHttpReceiver(port = 0): Promise<OtlpReceiver> {
  const received = collector();
  const server = createServer((request, response) => {
    readBody(request).then(
      (body) => {
        const contentType = request.headers["content-type"] ?? "";
        if (request.method !== "POST" || request.url !== "/v1/traces") {
          received.add(`unexpected ${request.method ?? ""} ${request.url ?? ""}`, []);
          response.writeHead(404).end();
          return;
        }
        received.add(contentType, contentType === "application/x-protobuf" ? decodeExportTraceRequest(body) : []);
        // An empty ExportTraceServiceResponse.
        response.writeHead(200, { "content-type": "application/x-protobuf" }).end();
      },
      () => response.writeHead(400).end(),
    );
  });
  server.listen(port, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no address");
  return {
    ...received,
    endpoint: `http://127.0.0.1:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** OTLP/gRPC on a free port of 127.0.0.1. */
export async function startOtlpGrpcReceiver(): Promise<OtlpReceiver> {
  const received = collector();
  const server = new grpc.Server();
  const identity = (bytes: Buffer): Buffer => bytes;
  server.addService(
    {
      Export: {
        path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        requestStream: false,
        responseStream: false,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: () => Buffer.alloc(0),
        responseDeserialize: identity,
      },
    },
    {
      Export(call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
        received.add("grpc", decodeExportTraceRequest(call.request));
        callback(null, Buffer.alloc(0));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  return {
    ...received,
    endpoint: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}
