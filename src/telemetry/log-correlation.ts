/**
 * Trace correlation for pino: `trace_id` and `span_id` on every line written
 * inside a traced request (a pino mixin, so child loggers get it too).
 */
import { context, isSpanContextValid, trace } from "@opentelemetry/api";

/** The active span's ids as log fields; `{}` outside a trace. A fresh object: pino merges into it. */
export function traceLogFields(): Record<string, string> {
  const spanContext = trace.getSpanContext(context.active());
  if (spanContext === undefined || !isSpanContextValid(spanContext)) return {};
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
}
