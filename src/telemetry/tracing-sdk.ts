/**
 * Starts the OpenTelemetry SDK: context propagation (W3C trace context and
 * baggage, or OTEL_PROPAGATORS) on our AsyncLocalStorage context manager,
 * sampling from OTEL_TRACES_SAMPLER, the exporters the TracingConfig names,
 * and the ioredis instrumentation with TRACE_REDIS_COMMANDS=true. The gRPC
 * server span is ours (server-tracing.ts), not an instrumentation's.
 *
 * bootstrap.ts calls this before ioredis loads, and only when there is
 * something to export (else it sets up trace-context.ts instead); tests call
 * it with their own span processors. It registers the SDK's
 * shutdown with tracing-lifecycle.ts, so that main.ts can flush spans at
 * exit.
 */
import type { Instrumentation } from "@opentelemetry/instrumentation";
import { IORedisInstrumentation } from "@opentelemetry/instrumentation-ioredis";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, type SpanExporter, type SpanProcessor } from "@opentelemetry/sdk-trace";
import type { TracingConfig } from "../config.js";
import { AsyncLocalStorageContextManager } from "./trace-context.js";
import { registerTracingShutdown, setTracingMode } from "./tracing-lifecycle.js";

export interface TracingOptions {
  readonly config: TracingConfig;
  /** Used instead of the exporters the config names (tests: an in-memory exporter). */
  readonly spanProcessors?: readonly SpanProcessor[];
}

export interface Tracing {
  /** Exports what is buffered and stops; later calls return the first call's promise. */
  shutdown(): Promise<void>;
}

/**
 * The instrumentations: with TRACE_REDIS_COMMANDS=true, a span per Redis
 * command named by the command alone (its arguments hold code HMACs and
 * hashed ids, of no use in a trace); else none.
 */
export function createInstrumentations(config: Pick<TracingConfig, "redisCommandSpans">): Instrumentation[] {
  return config.redisCommandSpans ? [new IORedisInstrumentation({ dbStatementSerializer: (command) => command })] : [];
}

async function exporterProcessors(config: TracingConfig): Promise<SpanProcessor[]> {
  const processors: SpanProcessor[] = [];
  for (const name of config.exporters) {
    if (name === "console") {
      processors.push(new SimpleSpanProcessor({ exporter: new ConsoleSpanExporter() }));
      continue;
    }
    // Unset OTEL_BSP_* values leave the SDK's defaults (2048 queued, 512 per batch, every 5 s).
    const batch = Object.fromEntries(Object.entries(config.batch).filter(([, value]) => value !== undefined));
    if (config.protocol === "http/protobuf") {
      // The default: spans encoded as they end, not kept until their batch goes out (otlp-span-processor.ts).
      const { OtlpProtobufSpanProcessor, createOtlpProtobufSpanExporter } = await import("./otlp-span-processor.js");
      processors.push(new OtlpProtobufSpanProcessor({ exporter: createOtlpProtobufSpanExporter(), ...batch }));
      continue;
    }
    // Only the chosen protocol's exporter is loaded (the gRPC one pulls in a gRPC client).
    const exporter: SpanExporter =
      config.protocol === "grpc"
        ? new (await import("@opentelemetry/exporter-trace-otlp-grpc")).OTLPTraceExporter()
        : new (await import("@opentelemetry/exporter-trace-otlp-http")).OTLPTraceExporter();
    processors.push(new BatchSpanProcessor({ exporter, ...batch }));
  }
  return processors;
}

let running: Tracing | undefined;

/** Starts the SDK once per process; a second call returns the first one's handle. */
export async function startTracing(options: TracingOptions): Promise<Tracing> {
  if (running !== undefined) return running;
  if (options.config.disabled) {
    running = { shutdown: () => Promise.resolve() };
    return running;
  }
  const sdk = new NodeSDK({
    serviceName: options.config.serviceName,
    spanProcessors: [...(options.spanProcessors ?? (await exporterProcessors(options.config)))],
    // Traces only: metrics are Prometheus' (prom-client), logs are pino's.
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: createInstrumentations(options.config),
    contextManager: new AsyncLocalStorageContextManager(),
  });
  sdk.start();
  setTracingMode("sdk");
  let stopping: Promise<void> | undefined;
  const tracing: Tracing = {
    shutdown() {
      stopping ??= sdk.shutdown();
      return stopping;
    },
  };
  running = tracing;
  registerTracingShutdown(() => tracing.shutdown());
  return tracing;
}
