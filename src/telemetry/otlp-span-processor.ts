/**
 * A batching span processor for OTLP/HTTP with protobuf (the default
 * export) that encodes each span when it ends and keeps only its bytes.
 *
 * The SDK's BatchSpanProcessor keeps the spans themselves until a batch
 * goes out (every 512 spans or 5 s), so each span, its attribute objects,
 * events and ids outlive the young generation, and the exporter then walks
 * them cold to encode them. Encoded at span end, the span is still in cache,
 * it dies young, and what waits for export is one buffer per batch. Same
 * batching as the BatchSpanProcessor and the same OTEL_BSP_* settings (queue
 * size, batch size, delay, export timeout); only sampled spans are kept.
 *
 * The HTTP side is @opentelemetry/otlp-exporter-base's, configured from the
 * same OTEL_EXPORTER_OTLP_* variables as the stock protobuf exporter
 * (endpoint, headers, compression, timeout, certificates), with its retries;
 * `createOtlpProtobufSpanExporter` builds it.
 */
import { context, diag } from "@opentelemetry/api";
import { ExportResultCode, globalErrorHandler, suppressTracing, type ExportResult, type InstrumentationScope } from "@opentelemetry/core";
import {
  convertLegacyHttpOptions,
  createOtlpHttpExportDelegate,
  type OTLPExporterNodeConfigBase,
} from "@opentelemetry/otlp-exporter-base/node-http";
import type { Resource } from "@opentelemetry/resources";
import type { ReadableSpan, Span, SpanProcessor } from "@opentelemetry/sdk-trace";
import { noteTraceExport } from "./tracing-lifecycle.js";
import {
  decodeExportTraceResponse,
  encodeTraceRequest,
  isSampled,
  ProtobufWriter,
  writeSpan,
  type EncodedResourceSpans,
} from "./otlp-span-encoding.js";

/** One export request's bytes and how many spans it carries. */
export interface EncodedSpanBatch {
  readonly bytes: Uint8Array;
  readonly spanCount: number;
}

/** Sends encoded batches: `createOtlpProtobufSpanExporter`, or a test's. */
export interface EncodedSpanExporter {
  export(batch: EncodedSpanBatch, done: (result: ExportResult) => void): void;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

/**
 * The OTLP/HTTP protobuf transport of @opentelemetry/exporter-trace-otlp-proto,
 * given bytes instead of spans. Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT,
 * _HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE and the client key ones;
 * `config` (the stock exporter's options: url, headers, compression...) takes
 * precedence over them.
 */
export function createOtlpProtobufSpanExporter(config: OTLPExporterNodeConfigBase = {}): EncodedSpanExporter {
  return createOtlpHttpExportDelegate<EncodedSpanBatch, unknown>(
    convertLegacyHttpOptions(config, "TRACES", "v1/traces", { "Content-Type": "application/x-protobuf" }),
    { serializeRequest: (batch) => batch.bytes, deserializeResponse: decodeExportTraceResponse },
    "otlp_http_span_exporter",
    { name: "span", countItems: (batch) => batch.spanCount },
    undefined,
  );
}

export interface OtlpProtobufSpanProcessorOptions {
  readonly exporter: EncodedSpanExporter;
  /** Spans waiting for export at most; more are dropped (OTEL_BSP_MAX_QUEUE_SIZE, 2048). */
  readonly maxQueueSize?: number;
  /** Spans per export request at most; a full batch goes out at once (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512). */
  readonly maxExportBatchSize?: number;
  /** How long a batch that is not full waits (OTEL_BSP_SCHEDULE_DELAY, 5000 ms). */
  readonly scheduledDelayMillis?: number;
  /** An export not done by then counts as failed (OTEL_BSP_EXPORT_TIMEOUT, 30000 ms). */
  readonly exportTimeoutMillis?: number;
}

/** A batch being filled or waiting: encoded spans by resource, then by scope. */
class Batch {
  spanCount = 0;
  private readonly resources = new Map<Resource, Map<InstrumentationScope, ProtobufWriter>>();
  private lastScope: InstrumentationScope | undefined;
  private lastResource: Resource | undefined;
  private lastWriter: ProtobufWriter | undefined;

  add(span: ReadableSpan): void {
    const { resource, instrumentationScope: scope } = span;
    let writer = this.lastWriter;
    if (writer === undefined || scope !== this.lastScope || resource !== this.lastResource) {
      let scopes = this.resources.get(resource);
      if (scopes === undefined) this.resources.set(resource, (scopes = new Map<InstrumentationScope, ProtobufWriter>()));
      writer = scopes.get(scope);
      if (writer === undefined) scopes.set(scope, (writer = new ProtobufWriter(32 * 1024)));
      this.lastScope = scope;
      this.lastResource = resource;
      this.lastWriter = writer;
    }
    writeSpan(writer, span);
    this.spanCount++;
  }

  /** Resolves when every resource's async attributes have settled (as the BatchSpanProcessor waits). */
  async settled(): Promise<void> {
    for (const resource of this.resources.keys()) {
      if (resource.asyncAttributesPending) await resource.waitForAsyncAttributes?.();
    }
  }

  encode(): EncodedSpanBatch {
    const resources: EncodedResourceSpans[] = [];
    for (const [resource, scopes] of this.resources) {
      resources.push({ resource, scopes: Array.from(scopes, ([scope, writer]) => ({ scope, spans: writer.bytes() })) });
    }
    return { bytes: encodeTraceRequest(resources), spanCount: this.spanCount };
  }
}

/** The processor; see the module comment. */
export class OtlpProtobufSpanProcessor implements SpanProcessor {
  private readonly exporter: EncodedSpanExporter;
  private readonly maxQueueSize: number;
  private readonly maxExportBatchSize: number;
  private readonly scheduledDelayMillis: number;
  private readonly exportTimeoutMillis: number;
  /** Full batches waiting, oldest first. */
  private readonly full: Batch[] = [];
  private open: Batch | undefined;
  /** Spans in `full` and `open`. */
  private queued = 0;
  private dropped = 0;
  private exporting = false;
  private timer: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;

  constructor(options: OtlpProtobufSpanProcessorOptions) {
    this.exporter = options.exporter;
    this.maxQueueSize = options.maxQueueSize ?? 2048;
    this.maxExportBatchSize = Math.min(options.maxExportBatchSize ?? 512, this.maxQueueSize);
    this.scheduledDelayMillis = options.scheduledDelayMillis ?? 5000;
    this.exportTimeoutMillis = options.exportTimeoutMillis ?? 30_000;
  }

  onStart(_span: Span): void {}

  onEnd(span: ReadableSpan): void {
    if (this.stopping !== undefined || !isSampled(span)) return;
    if (this.queued >= this.maxQueueSize) {
      if (this.dropped === 0) diag.debug("maxQueueSize reached, dropping spans");
      this.dropped++;
      noteTraceExport("dropped", 1);
      return;
    }
    if (this.dropped > 0) {
      diag.warn(`Dropped ${this.dropped} spans because maxQueueSize reached`);
      this.dropped = 0;
    }
    const batch = (this.open ??= new Batch());
    batch.add(span);
    this.queued++;
    if (batch.spanCount >= this.maxExportBatchSize) {
      this.full.push(batch);
      this.open = undefined;
    }
    this.schedule();
  }

  forceFlush(): Promise<void> {
    return this.stopping ?? this.flushAll();
  }

  shutdown(): Promise<void> {
    this.stopping ??= this.flushAll().then(() => this.exporter.shutdown());
    return this.stopping;
  }

  /** Exports a full batch now, else starts the delay for the open one (one export at a time). */
  private schedule(): void {
    if (this.exporting) return;
    if (this.full.length > 0) {
      this.clearTimer();
      this.exporting = true;
      this.exportNext()
        .catch((error: unknown) => globalErrorHandler(error as Error))
        .finally(() => {
          this.exporting = false;
          if (this.queued > 0) this.schedule();
        });
      return;
    }
    if (this.timer !== undefined || this.open === undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.sealOpen();
      this.schedule();
    }, this.scheduledDelayMillis);
    this.timer.unref();
  }

  private clearTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private sealOpen(): void {
    if (this.open === undefined) return;
    this.full.push(this.open);
    this.open = undefined;
  }

  /** Every queued span, in as many requests as batches, at once (as the BatchSpanProcessor flushes). */
  private async flushAll(): Promise<void> {
    this.clearTimer();
    this.sealOpen();
    const exports: Promise<void>[] = [];
    while (this.full.length > 0) exports.push(this.exportNext());
    await Promise.all(exports);
  }

  private exportNext(): Promise<void> {
    const batch = this.full.shift();
    if (batch === undefined) return Promise.resolve();
    this.queued -= batch.spanCount;
    return new Promise<void>((resolve, reject) => {
      // Counted once: by the exporter's answer, or as failed when the export timed out or never started.
      let counted = false;
      const settle = (result: "exported" | "failed", error?: Error): void => {
        if (counted) return;
        counted = true;
        clearTimeout(timer);
        noteTraceExport(result, batch.spanCount);
        if (result === "exported") resolve();
        else reject(error ?? new Error("OtlpProtobufSpanProcessor: span export failed"));
      };
      const timer = setTimeout(() => settle("failed", new Error("Timeout")), this.exportTimeoutMillis);
      const send = (): void => {
        // The export's own HTTP request is not to be traced.
        context.with(suppressTracing(context.active()), () => {
          this.exporter.export(batch.encode(), (result) => {
            if (result.code === ExportResultCode.SUCCESS) settle("exported");
            else settle("failed", result.error);
          });
        });
      };
      batch.settled().then(send, (error: unknown) => settle("failed", error instanceof Error ? error : new Error(String(error))));
    });
  }
}
