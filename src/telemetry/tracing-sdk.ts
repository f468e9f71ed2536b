/**
 * Starts the OpenTelemetry trace SDK: context propagation (W3C trace context
 * and baggage, or OTEL_PROPAGATORS) on our AsyncLocalStorage context manager,
 * sampling from OTEL_TRACES_SAMPLER, the resource from the detectors that
 * @opentelemetry/sdk-node runs (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME,
 * host, process...), span limits from OTEL_SPAN_*, the exporters the
 * TracingConfig names, and the ioredis instrumentation with
 * TRACE_REDIS_COMMANDS=true. The gRPC server span is ours
 * (server-tracing.ts), not an instrumentation's.
 *
 * It builds the tracer provider from @opentelemetry/sdk-trace itself rather
 * than through sdk-node's NodeSDK, which imports every exporter, the
 * metrics and logs SDKs and Zipkin whatever is configured: 10.8 MB of heap
 * and ~45 MB of RSS that a traced service carried for nothing, and that
 * every full garbage collection marked again.
 *
 * bootstrap.ts calls this before ioredis loads, and only when there is
 * something to export (else it sets up trace-context.ts instead); tests call
 * it with their own span processors. It registers the SDK's
 * shutdown with tracing-lifecycle.ts, so that main.ts can flush spans at
 * exit.
 */
import { context, createNoopMeter, diag, propagation, trace, type Meter, type MeterProvider, type TextMapPropagator } from "@opentelemetry/api";
import {
  CompositePropagator,
  ExportResultCode,
  getNumberFromEnv,
  setGlobalErrorHandler,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} from "@opentelemetry/core";
import type { Instrumentation } from "@opentelemetry/instrumentation";
import {
  defaultResource,
  detectResources,
  envDetector,
  hostDetector,
  osDetector,
  processDetector,
  resourceFromAttributes,
  serviceInstanceIdDetector,
  type Resource,
  type ResourceDetector,
} from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
  type SpanExporter,
  type SpanLimits,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace";
import type { ResourceDetectorName, TracePropagatorName, TracingConfig } from "../config.js";
import { describeSdkError, startSdkDiagnostics } from "./sdk-diagnostics.js";
import { AsyncLocalStorageContextManager } from "./trace-context.js";
import { noteTraceExport, registerTracingShutdown, setTracingMode } from "./tracing-lifecycle.js";

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
 * hashed ids, of no use in a trace); else none, and
 * @opentelemetry/instrumentation is not even loaded.
 */
export async function createInstrumentations(config: Pick<TracingConfig, "redisCommandSpans">): Promise<Instrumentation[]> {
  if (!config.redisCommandSpans) return [];
  const { IORedisInstrumentation } = await import("@opentelemetry/instrumentation-ioredis");
  return [new IORedisInstrumentation({ dbStatementSerializer: (command) => command })];
}

/** The sampler OTEL_TRACES_SAMPLER names (validated by the config). */
function createSampler(sampler: TracingConfig["sampler"]): Sampler {
  switch (sampler.name) {
    case "always_on":
      return new AlwaysOnSampler();
    case "always_off":
      return new AlwaysOffSampler();
    case "traceidratio":
      return new TraceIdRatioBasedSampler(sampler.ratio);
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(sampler.ratio) });
  }
}

/** The propagators OTEL_PROPAGATORS names, in order; undefined for none. B3's module is loaded only when named. */
async function createPropagator(names: readonly TracePropagatorName[]): Promise<TextMapPropagator | undefined> {
  const propagators: TextMapPropagator[] = [];
  for (const name of names) {
    if (name === "tracecontext") propagators.push(new W3CTraceContextPropagator());
    else if (name === "baggage") propagators.push(new W3CBaggagePropagator());
    else {
      const { B3Propagator, B3InjectEncoding } = await import("@opentelemetry/propagator-b3");
      propagators.push(new B3Propagator({ injectEncoding: name === "b3multi" ? B3InjectEncoding.MULTI_HEADER : B3InjectEncoding.SINGLE_HEADER }));
    }
  }
  if (propagators.length <= 1) return propagators[0];
  return new CompositePropagator({ propagators });
}

const resourceDetectors: Readonly<Record<ResourceDetectorName, ResourceDetector>> = {
  serviceinstance: serviceInstanceIdDetector,
  process: processDetector,
  host: hostDetector,
  os: osDetector,
  env: envDetector,
};

/**
 * The resource spans carry: the SDK's defaults (telemetry.sdk.*), what the
 * detectors OTEL_NODE_RESOURCE_DETECTORS names find (all five by default, as
 * sdk-node: service.instance.id, process.*, host.*, os.*, then
 * OTEL_RESOURCE_ATTRIBUTES), and the service name of the config last.
 */
export function createResource(config: Pick<TracingConfig, "serviceName" | "resourceDetectors">): Resource {
  const detected = detectResources({ detectors: config.resourceDetectors.map((name) => resourceDetectors[name]) });
  return defaultResource()
    .merge(detected)
    .merge(resourceFromAttributes({ "service.name": config.serviceName }));
}

/** OTEL_SPAN_* and OTEL_ATTRIBUTE_* limits, as sdk-node reads them (unset: the SDK's defaults). */
function spanLimitsFromEnv(): SpanLimits {
  const limits: SpanLimits = {
    attributeCountLimit: getNumberFromEnv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT") ?? getNumberFromEnv("OTEL_ATTRIBUTE_COUNT_LIMIT"),
    attributeValueLengthLimit:
      getNumberFromEnv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT") ?? getNumberFromEnv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"),
    eventCountLimit: getNumberFromEnv("OTEL_SPAN_EVENT_COUNT_LIMIT"),
    linkCountLimit: getNumberFromEnv("OTEL_SPAN_LINK_COUNT_LIMIT"),
    attributePerEventCountLimit:
      getNumberFromEnv("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT") ?? getNumberFromEnv("OTEL_SPAN_ATTRIBUTE_PER_EVENT_COUNT_LIMIT"),
    attributePerLinkCountLimit:
      getNumberFromEnv("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT") ?? getNumberFromEnv("OTEL_SPAN_ATTRIBUTE_PER_LINK_COUNT_LIMIT"),
  };
  return Object.fromEntries(Object.entries(limits).filter(([, value]) => value !== undefined));
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
    processors.push(new BatchSpanProcessor({ exporter: countingExporter(exporter), selfObsMeterProvider: droppedSpansMeter, ...batch }));
  }
  return processors;
}

/**
 * The BatchSpanProcessor's own metrics, reduced to what the service counts:
 * spans it dropped because its queue was full, as
 * otp_trace_export_spans_total{result="dropped"} (what it exported or
 * failed to is counted by countingExporter). Every other instrument it asks
 * for is a no-op.
 */
const droppedSpansMeter: MeterProvider = {
  getMeter(): Meter {
    const noop = createNoopMeter();
    const meter: Meter = Object.create(noop) as Meter;
    meter.createCounter = (name, options) => {
      if (name !== "otel.sdk.processor.span.processed") return noop.createCounter(name, options);
      return {
        add(count, attributes) {
          if (attributes?.["error.type"] === "queue_full") noteTraceExport("dropped", count);
        },
      };
    };
    return meter;
  },
};

/**
 * The stock exporter, with each export's spans counted as exported or
 * failed (otp_trace_export_spans_total). The BatchSpanProcessor's own drops
 * (a full queue) are not seen here: droppedSpansMeter counts them.
 */
function countingExporter(exporter: SpanExporter): SpanExporter {
  return {
    export(spans, done) {
      exporter.export(spans, (result) => {
        noteTraceExport(result.code === ExportResultCode.SUCCESS ? "exported" : "failed", spans.length);
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
  };
}

let running: Tracing | undefined;

/** Starts the SDK once per process; a second call returns the first one's handle. */
export async function startTracing(options: TracingOptions): Promise<Tracing> {
  if (running !== undefined) return running;
  if (options.config.disabled) {
    running = { shutdown: () => Promise.resolve() };
    return running;
  }
  const config = options.config;
  // Export failures and the like, as the service's log lines (OTEL_LOG_LEVEL, default warn).
  startSdkDiagnostics(config.sdkLogLevel);
  // Errors the SDK reports (a failed export...) as one line each, not a JSON dump with the stack.
  setGlobalErrorHandler((error) => diag.error(describeSdkError(error)));
  // Instrumentations first: each patches its module as soon as it is enabled.
  const instrumentations = await createInstrumentations(config);
  if (instrumentations.length > 0) {
    const { registerInstrumentations } = await import("@opentelemetry/instrumentation");
    registerInstrumentations({ instrumentations });
  }
  context.setGlobalContextManager(new AsyncLocalStorageContextManager());
  const propagator = await createPropagator(config.propagators);
  if (propagator !== undefined) propagation.setGlobalPropagator(propagator);
  const provider = new TracerProvider({
    resource: createResource(config),
    sampler: createSampler(config.sampler),
    spanLimits: spanLimitsFromEnv(),
    spanProcessors: [...(options.spanProcessors ?? (await exporterProcessors(config)))],
  });
  trace.setGlobalTracerProvider(provider);
  setTracingMode("sdk");
  let stopping: Promise<void> | undefined;
  const tracing: Tracing = {
    shutdown() {
      stopping ??= provider.shutdown();
      return stopping;
    },
  };
  running = tracing;
  registerTracingShutdown(() => tracing.shutdown());
  return tracing;
}
