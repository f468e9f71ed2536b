/**
 * OpenTelemetry in the test process, set up as the service's bootstrap does
 * it with TRACE_REDIS_COMMANDS=true: the SDK with the ioredis
 * instrumentation, started before ioredis is required, so it is patched.
 * The app's server-tracing interceptor makes the gRPC server spans. Spans
 * go to memory.
 *
 * Import this module FIRST in a test file (before anything that loads
 * ioredis); vitest runs each test file in its own worker, so the
 * SDK it registers stays within that file.
 */
import { createRequire } from "node:module";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace";
import { loadTracingConfig } from "../../src/config.js";
import { startTracing } from "../../src/telemetry/tracing-sdk.js";

export const spanExporter = new InMemorySpanExporter();

await startTracing({ config: loadTracingConfig({ TRACE_REDIS_COMMANDS: "true" }), spanProcessors: [new SimpleSpanProcessor({ exporter: spanExporter })] });
const require = createRequire(import.meta.url);
require("ioredis");

/** Every finished span of one trace. */
export function spansOf(traceId: string): ReadableSpan[] {
  return spanExporter.getFinishedSpans().filter((span) => span.spanContext().traceId === traceId);
}

/** The parent span id of `span`, or undefined for a root. */
export function parentOf(span: ReadableSpan): string | undefined {
  return span.parentSpanContext?.spanId;
}
