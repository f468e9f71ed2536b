/**
 * OTLP protobuf encoding of finished spans (opentelemetry/proto/trace/v1,
 * the ExportTraceServiceRequest an OTLP/HTTP collector takes), written so
 * that a span can be encoded the moment it ends and its bytes kept instead
 * of the span (otlp-span-processor.ts says why).
 *
 * One pass per message: a length-delimited field gets a one-byte length
 * slot, and the rare body of 128 bytes or more is moved up to make room for
 * a longer varint (a span's body is; its attributes, events and status are
 * not). Values are encoded as @opentelemetry/otlp-transformer encodes them:
 * integers as int_value, other numbers as double_value, arrays, byte arrays
 * and plain objects (kvlist) included.
 */
import { SpanStatusCode, TraceFlags, type Attributes, type HrTime, type SpanContext } from "@opentelemetry/api";
import type { InstrumentationScope } from "@opentelemetry/core";
import type { Resource } from "@opentelemetry/resources";
import type { ReadableSpan } from "@opentelemetry/sdk-trace";

const lengthDelimited = 2;
const varintType = 0;
const fixed64Type = 1;
const fixed32Type = 5;

/** Hex digit values by character code; -1 for anything else. */
const hexDigits = new Int8Array(128).fill(-1);
for (let digit = 0; digit < 16; digit++) {
  hexDigits[digit.toString(16).charCodeAt(0)] = digit;
  hexDigits[digit.toString(16).toUpperCase().charCodeAt(0)] = digit;
}

/** Strings this short are copied by a loop when ASCII; a native utf8 write costs more for them. */
const shortString = 48;

/** A protobuf writer into a Buffer that grows by doubling. */
export class ProtobufWriter {
  private buffer: Buffer;
  private position = 0;

  constructor(initialSize = 4096) {
    this.buffer = Buffer.allocUnsafe(initialSize);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.position;
  }

  /** A view of what was written (shares memory with the writer until it writes again). */
  bytes(): Buffer {
    return this.buffer.subarray(0, this.position);
  }

  /** Forgets what was written, keeping the memory. */
  reset(): void {
    this.position = 0;
  }

  private reserve(bytes: number): void {
    const needed = this.position + bytes;
    if (needed <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < needed) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.buffer.copy(grown, 0, 0, this.position);
    this.buffer = grown;
  }

  /** A field number with its wire type: one byte below field 16, two up to 2047 (callers reserve two). */
  private key(field: number, wireType: number): void {
    const key = (field << 3) | wireType;
    if (key < 0x80) {
      this.buffer[this.position++] = key;
    } else {
      this.buffer[this.position++] = (key & 0x7f) | 0x80;
      this.buffer[this.position++] = key >>> 7;
    }
  }

  private writeVarint(value: number): void {
    if (value >= 0 && value <= 0xffffffff) {
      let rest = value >>> 0;
      while (rest > 0x7f) {
        this.buffer[this.position++] = (rest & 0x7f) | 0x80;
        rest >>>= 7;
      }
      this.buffer[this.position++] = rest;
      return;
    }
    // int64 two's complement; beyond 32 bits is rare enough for BigInt.
    let rest = BigInt.asUintN(64, BigInt(value));
    while (rest > 0x7fn) {
      this.buffer[this.position++] = Number(rest & 0x7fn) | 0x80;
      rest >>= 7n;
    }
    this.buffer[this.position++] = Number(rest);
  }

  varint(field: number, value: number): void {
    this.reserve(12);
    this.key(field, varintType);
    this.writeVarint(value);
  }

  fixed32(field: number, value: number): void {
    this.reserve(6);
    this.key(field, fixed32Type);
    this.buffer.writeUInt32LE(value >>> 0, this.position);
    this.position += 4;
  }

  double(field: number, value: number): void {
    this.reserve(10);
    this.key(field, fixed64Type);
    this.buffer.writeDoubleLE(value, this.position);
    this.position += 8;
  }

  /** An HrTime as fixed64 nanoseconds since the epoch (seconds * 1e9 passes 2^53, so in two 32-bit halves). */
  time(field: number, [seconds, nanos]: HrTime): void {
    this.reserve(10);
    this.key(field, fixed64Type);
    // seconds = high * 2^16 + low, so seconds * 1e9 = high * 1e9 * 2^16 + low * 1e9, each exact in a double.
    const fromLow = (seconds & 0xffff) * 1e9 + nanos;
    const fromHigh = Math.floor(seconds / 0x10000) * 1e9;
    // fromHigh * 2^16 = (fromHigh mod 2^16) * 2^16 + floor(fromHigh / 2^16) * 2^32
    const low = (fromHigh % 0x10000) * 0x10000 + (fromLow % 0x100000000);
    const high = Math.floor(fromHigh / 0x10000) + Math.floor(fromLow / 0x100000000) + Math.floor(low / 0x100000000);
    this.buffer.writeUInt32LE(low >>> 0, this.position);
    this.buffer.writeUInt32LE(high >>> 0, this.position + 4);
    this.position += 8;
  }

  string(field: number, value: string): void {
    const length = value.length;
    if (length < shortString) {
      this.reserve(3 * length + 3);
      const start = this.position;
      this.key(field, lengthDelimited);
      const slot = this.position++;
      for (let index = 0; index < length; index++) {
        const code = value.charCodeAt(index);
        if (code >= 0x80) {
          this.position = start;
          this.longString(field, value);
          return;
        }
        this.buffer[this.position++] = code;
      }
      this.buffer[slot] = length;
      return;
    }
    this.longString(field, value);
  }

  private longString(field: number, value: string): void {
    const byteLength = Buffer.byteLength(value, "utf8");
    this.reserve(byteLength + 7);
    this.key(field, lengthDelimited);
    this.writeVarint(byteLength);
    this.position += this.buffer.write(value, this.position, byteLength, "utf8");
  }

  /** `bytes` field from the hex of a known byte length (trace and span ids). */
  hex(field: number, hex: string, byteLength: number): void {
    this.reserve(byteLength + 3);
    this.key(field, lengthDelimited);
    this.buffer[this.position++] = byteLength;
    // A loop over a table: for 8 or 16 bytes it beats a native hex write's call.
    for (let index = 0; index < byteLength; index++) {
      const high = hexDigits[hex.charCodeAt(2 * index)] ?? -1;
      const low = hexDigits[hex.charCodeAt(2 * index + 1)] ?? -1;
      // An invalid id (the SDK makes none) still yields a field of the declared length.
      this.buffer[this.position++] = (high | low) < 0 ? 0 : (high << 4) | low;
    }
  }

  bytesField(field: number, value: Uint8Array): void {
    this.reserve(value.length + 7);
    this.key(field, lengthDelimited);
    this.writeVarint(value.length);
    this.buffer.set(value, this.position);
    this.position += value.length;
  }

  /** Bytes already encoded (as a field's contents), appended as they are. */
  raw(value: Uint8Array): void {
    this.reserve(value.length);
    this.buffer.set(value, this.position);
    this.position += value.length;
  }

  /** Opens an embedded message; pass what it returns to `end`. */
  begin(field: number): number {
    this.reserve(3);
    this.key(field, lengthDelimited);
    return this.position++;
  }

  end(slot: number): void {
    const length = this.position - slot - 1;
    if (length < 0x80) {
      this.buffer[slot] = length;
      return;
    }
    let extra = 1;
    while (length >= 2 ** (7 * (extra + 1))) extra++;
    this.reserve(extra);
    this.buffer.copyWithin(slot + 1 + extra, slot + 1, this.position);
    const end = this.position + extra;
    this.position = slot;
    this.writeVarint(length);
    this.position = end;
  }
}

function writeAnyValue(writer: ProtobufWriter, value: unknown): void {
  if (typeof value === "string") {
    writer.string(1, value);
  } else if (typeof value === "boolean") {
    writer.varint(2, value ? 1 : 0);
  } else if (typeof value === "number") {
    if (Number.isInteger(value) && value >= -(2 ** 63) && value < 2 ** 63) writer.varint(3, value);
    else writer.double(4, value);
  } else if (value instanceof Uint8Array) {
    writer.bytesField(7, value);
  } else if (Array.isArray(value)) {
    const array = writer.begin(5);
    for (const item of value as unknown[]) {
      const element = writer.begin(1);
      writeAnyValue(writer, item);
      writer.end(element);
    }
    writer.end(array);
  } else if (typeof value === "object" && value !== null) {
    const list = writer.begin(6);
    writeKeyValues(writer, 1, value as Readonly<Record<string, unknown>>);
    writer.end(list);
  }
  // undefined, null and anything else: an empty AnyValue, as the stock encoder writes it.
}

/** Repeated KeyValue (key = 1, value = 2) as field `field`. */
function writeKeyValues(writer: ProtobufWriter, field: number, values: Attributes | Readonly<Record<string, unknown>>): void {
  for (const key in values) {
    if (!Object.hasOwn(values, key)) continue;
    const entry = writer.begin(field);
    writer.string(1, key);
    const anyValue = writer.begin(2);
    writeAnyValue(writer, values[key]);
    writer.end(anyValue);
    writer.end(entry);
  }
}

const spanFlagsHasIsRemote = 0x100;
const spanFlagsIsRemote = 0x200;

function spanFlags(context: SpanContext, parentIsRemote: boolean | undefined): number {
  return (context.traceFlags & 0xff) | spanFlagsHasIsRemote | (parentIsRemote === true ? spanFlagsIsRemote : 0);
}

/**
 * Appends a span as a `spans` entry of ScopeSpans (field 2): the same
 * fields, in the same order, as @opentelemetry/otlp-transformer's encoder.
 */
export function writeSpan(writer: ProtobufWriter, span: ReadableSpan): void {
  const message = writer.begin(2);
  const context = span.spanContext();
  writer.hex(1, context.traceId, 16);
  writer.hex(2, context.spanId, 8);
  const traceState = context.traceState?.serialize();
  if (traceState) writer.string(3, traceState);
  const parent = span.parentSpanContext;
  if (parent?.spanId) writer.hex(4, parent.spanId, 8);
  writer.string(5, span.name);
  // OTLP's SpanKind counts from SPAN_KIND_UNSPECIFIED = 0; the API's from INTERNAL = 0.
  writer.varint(6, span.kind + 1);
  writer.time(7, span.startTime);
  writer.time(8, span.endTime);
  writeKeyValues(writer, 9, span.attributes);
  if (span.droppedAttributesCount > 0) writer.varint(10, span.droppedAttributesCount);
  for (const event of span.events) {
    const entry = writer.begin(11);
    writer.time(1, event.time);
    writer.string(2, event.name);
    if (event.attributes !== undefined) writeKeyValues(writer, 3, event.attributes);
    if (event.droppedAttributesCount) writer.varint(4, event.droppedAttributesCount);
    writer.end(entry);
  }
  if (span.droppedEventsCount > 0) writer.varint(12, span.droppedEventsCount);
  for (const link of span.links) {
    const entry = writer.begin(13);
    writer.hex(1, link.context.traceId, 16);
    writer.hex(2, link.context.spanId, 8);
    const linkTraceState = link.context.traceState?.serialize();
    if (linkTraceState) writer.string(3, linkTraceState);
    if (link.attributes !== undefined) writeKeyValues(writer, 4, link.attributes);
    if (link.droppedAttributesCount) writer.varint(5, link.droppedAttributesCount);
    writer.fixed32(6, spanFlags(link.context, link.context.isRemote));
    writer.end(entry);
  }
  if (span.droppedLinksCount > 0) writer.varint(14, span.droppedLinksCount);
  const status = writer.begin(15);
  if (span.status.message) writer.string(2, span.status.message);
  if (span.status.code !== SpanStatusCode.UNSET) writer.varint(3, span.status.code);
  writer.end(status);
  writer.fixed32(16, spanFlags(context, parent?.isRemote));
  writer.end(message);
}

/** Whether the span is to be exported at all (what the BatchSpanProcessor checks). */
export function isSampled(span: ReadableSpan): boolean {
  return (span.spanContext().traceFlags & TraceFlags.SAMPLED) !== 0;
}

/** Spans of one instrumentation scope, already encoded as ScopeSpans' `spans` entries. */
export interface EncodedScopeSpans {
  readonly scope: InstrumentationScope;
  readonly spans: Uint8Array;
}

/** Spans of one resource. */
export interface EncodedResourceSpans {
  readonly resource: Resource;
  readonly scopes: readonly EncodedScopeSpans[];
}

/**
 * The ExportTraceServiceRequest around spans encoded by `writeSpan`.
 * The resources' async attributes must have settled.
 */
export function encodeTraceRequest(resources: readonly EncodedResourceSpans[]): Uint8Array {
  let size = 64;
  for (const { scopes } of resources) for (const { spans } of scopes) size += spans.length + 256;
  const writer = new ProtobufWriter(size);
  for (const { resource, scopes } of resources) {
    const resourceSpans = writer.begin(1);
    const resourceMessage = writer.begin(1);
    writeKeyValues(writer, 1, resource.attributes);
    writer.end(resourceMessage);
    for (const { scope, spans } of scopes) {
      const scopeSpans = writer.begin(2);
      const scopeMessage = writer.begin(1);
      writer.string(1, scope.name);
      if (scope.version) writer.string(2, scope.version);
      writer.end(scopeMessage);
      writer.raw(spans);
      if (scope.schemaUrl) writer.string(3, scope.schemaUrl);
      writer.end(scopeSpans);
    }
    if (resource.schemaUrl) writer.string(3, resource.schemaUrl);
    writer.end(resourceSpans);
  }
  return writer.bytes();
}

/** What a collector answers to an export: a partial success names the spans it rejected and why. */
export interface ExportTraceResponse {
  partialSuccess?: { rejectedSpans?: number; errorMessage?: string };
}

/** Reads protobuf fields one at a time; throws on truncated or malformed input. */
class ProtobufReader {
  private offset = 0;

  constructor(private readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.offset >= this.bytes.length;
  }

  varint(): number {
    let value = 0;
    let scale = 1;
    for (let shift = 0; shift < 70; shift += 7) {
      if (this.offset >= this.bytes.length) throw new Error("truncated varint");
      const byte = this.bytes[this.offset++] ?? 0;
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
    throw new Error("varint too long");
  }

  /** A length-delimited field's bytes. */
  chunk(): Uint8Array {
    const length = this.varint();
    const end = this.offset + length;
    if (end > this.bytes.length) throw new Error("truncated field");
    const chunk = this.bytes.subarray(this.offset, end);
    this.offset = end;
    return chunk;
  }

  skip(wireType: number): void {
    if (wireType === varintType) this.varint();
    else if (wireType === lengthDelimited) this.chunk();
    else if (wireType === 1 || wireType === 5) {
      this.offset += wireType === 1 ? 8 : 4;
      if (this.offset > this.bytes.length) throw new Error("truncated field");
    } else throw new Error(`wire type ${wireType}`);
  }
}

/**
 * An ExportTraceServiceResponse (opentelemetry/proto/collector/trace/v1):
 * partial_success (1) with rejected_spans (1, int64) and error_message (2),
 * as @opentelemetry/otlp-transformer's deserializer reads it (which would
 * load the metrics SDK along with it). Unknown fields are skipped; malformed
 * bytes throw, and the exporter then logs that it could not read the answer.
 */
export function decodeExportTraceResponse(bytes: Uint8Array): ExportTraceResponse {
  const response: ExportTraceResponse = {};
  const reader = new ProtobufReader(bytes);
  while (!reader.done) {
    const tag = reader.varint();
    if (tag >>> 3 !== 1 || (tag & 7) !== lengthDelimited) {
      reader.skip(tag & 7);
      continue;
    }
    const partial: NonNullable<ExportTraceResponse["partialSuccess"]> = {};
    const inner = new ProtobufReader(reader.chunk());
    while (!inner.done) {
      const field = inner.varint();
      if (field >>> 3 === 1 && (field & 7) === varintType) partial.rejectedSpans = inner.varint();
      else if (field >>> 3 === 2 && (field & 7) === lengthDelimited) partial.errorMessage = new TextDecoder().decode(inner.chunk());
      else inner.skip(field & 7);
    }
    response.partialSuccess = partial;
  }
  return response;
}
