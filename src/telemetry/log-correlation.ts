/**
 * Trace correlation for pino: `trace_id` and `span_id` on every line written
 * inside a traced request (a pino mixin, so child loggers get it too), and
 * the same fields for a line about a span that is not the active one (an
 * SMTP attempt, whose span is never made active): fields in the line
 * itself take precedence over the mixin's.
 */
import { context, isSpanContextValid, trace, type SpanContext } from "@opentelemetry/api";

const noFields: Readonly<Record<string, string>> = Object.freeze({});

/** A span's ids as log fields, to spread into a line; `{}` for none or an invalid one (not traced). */
export function spanLogFields(spanContext: SpanContext | undefined): Readonly<Record<string, string>> {
  if (spanContext === undefined || !isSpanContextValid(spanContext)) return noFields;
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
}

/** The active span's ids as log fields; `{}` outside a trace. A fresh object: pino merges into it. */
export function traceLogFields(): Record<string, string> {
  const spanContext = trace.getSpanContext(context.active());
  if (spanContext === undefined || !isSpanContextValid(spanContext)) return {};
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
}
