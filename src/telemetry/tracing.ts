/**
 * The service's own tracing, against the OpenTelemetry API only: without an
 * SDK (no `--import` bootstrap, or nothing to export) every call here is a
 * no-op. The SDK itself is started by bootstrap.ts.
 */
import { context, isSpanContextValid, SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import type { Renderer } from "../delivery/render.js";
import { attributes, spanNames, tracerName } from "./semconv.js";

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

/** Wraps a renderer so each render is an `otp.render` span (purpose and locales; never the code). */
export function traceRenderer(renderer: Renderer, tracer: Tracer = serviceTracer()): Renderer {
  return {
    render(request) {
      return tracer.startActiveSpan(
        spanNames.render,
        { attributes: { [attributes.purpose]: request.purpose, [attributes.localeRequested]: request.locale } },
        (span) => {
          try {
            const rendered = renderer.render(request);
            span.setAttribute(attributes.locale, rendered.locale);
            return rendered;
          } catch (error) {
            // The error's name only: a template error's text could quote the filled-in template.
            const type = error instanceof Error ? error.name : "Error";
            span.setAttribute(attributes.errorType, type);
            span.setStatus({ code: SpanStatusCode.ERROR, message: type });
            throw error;
          } finally {
            span.end();
          }
        },
      );
    },
  };
}
