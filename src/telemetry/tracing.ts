/**
 * The service's own tracing, against the OpenTelemetry API only: without an
 * SDK (no `--import` bootstrap, or nothing to export) every call here is a
 * no-op. The SDK itself is started by bootstrap.ts.
 */
import { context, isSpanContextValid, trace, type Tracer } from "@opentelemetry/api";
import { tracerName } from "./semconv.js";

/** The service's tracer (a proxy until an SDK registers, so it may be taken early). */
export function serviceTracer(): Tracer {
  return trace.getTracer(tracerName);
}

/**
 * The W3C trace id of the active context, or "" when there is none: in a
 * gRPC handler, the server span's (whose parent is the caller's span when
 * the caller sent `traceparent`). The rpc layer's `traceIdOf` hook.
 */
export function activeTraceId(): string {
  const spanContext = trace.getSpanContext(context.active());
  return spanContext !== undefined && isSpanContextValid(spanContext) ? spanContext.traceId : "";
}

/**
 * The span id of the active context, or undefined when there is none: in a
 * gRPC handler, the server span's (the caller's span with nothing to
 * export). Records keep it beside the trace id, so that what happens to a
 * message later (a bounce) links to the very span of its SendOtp. The rpc
 * layer's `spanIdOf` hook.
 */
export function activeSpanId(): string | undefined {
  const spanContext = trace.getSpanContext(context.active());
  return spanContext !== undefined && isSpanContextValid(spanContext) ? spanContext.spanId : undefined;
}
