/**
 * Tracing for the exported connect-node client, which no OpenTelemetry
 * instrumentation covers: a CLIENT span per call, child of the caller's
 * active span, whose context travels in the request headers (`traceparent`,
 * `tracestate`, baggage: whatever propagator the caller's SDK registered).
 * The service's server span then has this span as its parent. Without an
 * SDK in the calling process every call here is a no-op.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { context, propagation, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { attributes, clientTracerName } from "./semconv.js";

/** The interceptor for a client of `baseUrl` (for the span's server.address and server.port). */
export function createClientTracingInterceptor(baseUrl: string): Interceptor {
  const tracer = trace.getTracer(clientTracerName);
  const url = new URL(baseUrl);
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  const port = url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port);

  return (next) => async (request) => {
    const service = request.service.typeName;
    const method = request.method.name;
    const span = tracer.startSpan(`${service}/${method}`, {
      kind: SpanKind.CLIENT,
      attributes: {
        [attributes.rpcSystem]: "grpc",
        [attributes.rpcService]: service,
        [attributes.rpcMethod]: method,
        [attributes.serverAddress]: host,
        [attributes.serverPort]: port,
      },
    });
    const callContext = trace.setSpan(context.active(), span);
    propagation.inject(callContext, request.header, { set: (headers, key, value) => headers.set(key, value) });
    try {
      const response = await context.with(callContext, () => next(request));
      span.setAttribute(attributes.rpcGrpcStatusCode, 0);
      return response;
    } catch (error) {
      const code = error instanceof ConnectError ? error.code : Code.Unknown;
      span.setAttribute(attributes.rpcGrpcStatusCode, code);
      span.setStatus({ code: SpanStatusCode.ERROR, message: Code[code] });
      throw error;
    } finally {
      span.end();
    }
  };
}
