/**
 * The gRPC server side of a trace, as a grpc-js server interceptor, for
 * every OtpEmailService call:
 *   - under the SDK, a SERVER span `grpc.<service>/<method>` (rpc.system,
 *     rpc.service, rpc.method, rpc.grpc.status_code; status ERROR for any
 *     other code than OK), child of the caller's span from the incoming
 *     metadata (through the registered propagator: W3C trace context by
 *     default, OTEL_PROPAGATORS), and the handler runs with it active;
 *   - with nothing to export, no span: the handler runs in the caller's
 *     context from its `traceparent` (trace-context.ts).
 * Health checks and reflection are not traced: probes every few seconds
 * would drown the traces that matter (the RPC metrics still count them).
 *
 * This replaces @opentelemetry/instrumentation-grpc on the server: the same
 * span name, kind and rpc.* attributes, for a fraction of its per-call cost
 * (it wraps a method and binds the call's EventEmitter per call) and with no
 * loader hook to patch grpc-js.
 */
import { ServerInterceptingCall, status as Status, type Metadata, type ServerInterceptor } from "@grpc/grpc-js";
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import { attributes } from "./semconv.js";
import { parseTraceparent } from "./trace-context.js";
import { tracingMode } from "./tracing-lifecycle.js";
import { serviceTracer } from "./tracing.js";

/**
 * Services never traced: every method of them (Health's Check, List and
 * Watch, reflection), and only theirs: an OtpEmailService method is traced
 * whatever its name.
 */
const untracedServices = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

const metadataGetter: TextMapGetter<Metadata> = {
  get(metadata, key) {
    const values = metadata.get(key);
    return values.length === 0 ? undefined : values.map(String);
  },
  keys: (metadata) => Object.keys(metadata.getMap()),
};

/** What a method's spans share, worked out on its first call rather than on every one. */
interface MethodSpanInfo {
  readonly traced: boolean;
  readonly spanName: string;
  /** The SDK copies a span's start attributes, so one object serves every call. */
  readonly attributes: Readonly<Record<string, string>>;
}

function methodSpanInfo(path: string): MethodSpanInfo {
  const slash = path.lastIndexOf("/");
  const service = path.slice(1, slash);
  const name = path.slice(slash + 1);
  return {
    traced: !untracedServices.has(service),
    spanName: `grpc.${service}/${name}`,
    attributes: { [attributes.rpcSystem]: "grpc", [attributes.rpcService]: service, [attributes.rpcMethod]: name },
  };
}

/** grpc-js calls interceptors only for the server's registered methods; the bound is a guard all the same. */
const maxCachedMethods = 256;

export interface ServerTracingOptions {
  /** true: a server span per call (an SDK is running); false: only the caller's context. */
  readonly spans: boolean;
  readonly tracer?: Tracer;
}

/** The interceptor; pass it last, nearest the handler, so the handler starts inside its context. */
export function createServerTracingInterceptor(options: ServerTracingOptions): ServerInterceptor {
  const tracer = options.tracer ?? serviceTracer();
  const methods = new Map<string, MethodSpanInfo>();
  return (method, call) => {
    let info = methods.get(method.path);
    if (info === undefined) {
      info = methodSpanInfo(method.path);
      if (methods.size < maxCachedMethods) methods.set(method.path, info);
    }
    if (!info.traced) return new ServerInterceptingCall(call);
    const { spanName, attributes: spanAttributes } = info;

    let callContext: Context | undefined;
    let span: Span | undefined;
    const inCall = (next: () => void): void => {
      if (callContext === undefined) next();
      else context.with(callContext, next);
    };
    // grpc-js starts a unary or server-streaming handler at half-close, with the
    // message it kept: only that step needs the call's context (entering a
    // context costs an AsyncLocalStorage frame). A client-streaming or bidi
    // handler starts with the metadata and reads its messages as they come.
    const streamsIn = method.requestStream;
    const end = (code: Status, details: string): void => {
      if (span === undefined) return;
      span.setAttribute(attributes.rpcGrpcStatusCode, code);
      if (code !== Status.OK) span.setStatus({ code: SpanStatusCode.ERROR, message: details });
      span.end();
      span = undefined;
    };

    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            if (options.spans) {
              const parent = propagation.extract(ROOT_CONTEXT, metadata, metadataGetter);
              span = tracer.startSpan(spanName, { kind: SpanKind.SERVER, attributes: spanAttributes }, parent);
              callContext = trace.setSpan(parent, span);
            } else {
              const [traceparent] = metadata.get("traceparent");
              const caller = typeof traceparent === "string" ? parseTraceparent(traceparent) : undefined;
              if (caller !== undefined) callContext = trace.setSpanContext(ROOT_CONTEXT, caller);
            }
            if (streamsIn) inCall(() => nextMetadata(metadata));
            else nextMetadata(metadata);
          },
          onReceiveMessage(message, nextMessage) {
            if (streamsIn) inCall(() => nextMessage(message));
            else nextMessage(message);
          },
          onReceiveHalfClose(nextHalfClose) {
            // A unary handler starts here, synchronously: everything it awaits keeps this context.
            inCall(nextHalfClose);
          },
          onCancel() {
            end(Status.CANCELLED, "cancelled");
          },
        });
      },
      sendStatus(status, next) {
        end(status.code, status.details);
        next(status);
      },
    });
  };
}

/**
 * The server interceptors for what the bootstrap set up: a span per call
 * under the SDK, the caller's context only when nothing is exported, none
 * when tracing is disabled or no bootstrap ran.
 */
export function serverTracingInterceptors(): ServerInterceptor[] {
  const mode = tracingMode();
  return mode === undefined ? [] : [createServerTracingInterceptor({ spans: mode === "sdk" })];
}
