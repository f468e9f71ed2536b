/**
 * The caller's trace context without an SDK: what the bootstrap sets up when
 * nothing is exported. No tracer provider, no instrumentation, no loader
 * hook; only
 *   - a context manager on AsyncLocalStorage, so that `context.active()`
 *     works across awaits, and
 *   - a server interceptor that reads the caller's W3C `traceparent` from
 *     the gRPC metadata and runs the call in that context.
 * Records (`trace_id`), log lines (`trace_id`, `span_id`) and exemplars then
 * name the caller's trace, as they would under an SDK with nothing to
 * export, for a fraction of the cost. The parser is ours because
 * @opentelemetry/core's propagator would bring ~18 MB of modules along.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import {
  context,
  ROOT_CONTEXT,
  trace,
  TraceFlags,
  type Context,
  type ContextManager,
  type SpanContext,
} from "@opentelemetry/api";
import { ServerInterceptingCall, type ServerInterceptor } from "@grpc/grpc-js";
import { setTracingMode, tracingMode } from "./tracing-lifecycle.js";

/** `context.active()` on AsyncLocalStorage (what @opentelemetry/context-async-hooks does, without its EventEmitter binding). */
class AsyncLocalStorageContextManager implements ContextManager {
  private readonly storage = new AsyncLocalStorage<Context>();

  active(): Context {
    return this.storage.getStore() ?? ROOT_CONTEXT;
  }

  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    return this.storage.run(ctx, () => fn.apply(thisArg, args));
  }

  bind<T>(ctx: Context, target: T): T {
    if (typeof target !== "function") return target;
    const run = (...args: unknown[]): unknown => this.with(ctx, () => (target as (...a: unknown[]) => unknown)(...args));
    return run as T;
  }

  enable(): this {
    return this;
  }

  disable(): this {
    this.storage.disable();
    return this;
  }
}

const traceparentPattern = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-|$)/;

/**
 * The span context of a W3C `traceparent` header (version 00, or a later
 * version read as 00 does, as the specification says), or undefined when it
 * is malformed or all-zero.
 */
export function parseTraceparent(value: string): SpanContext | undefined {
  const match = traceparentPattern.exec(value.trim());
  if (match === null) return undefined;
  const [, version, traceId = "", spanId = "", flags = "00"] = match;
  if (version === "ff" || (version === "00" && value.trim().length !== 55)) return undefined;
  const spanContext: SpanContext = { traceId, spanId, traceFlags: parseInt(flags, 16) & TraceFlags.SAMPLED, isRemote: true };
  return trace.isSpanContextValid(spanContext) ? spanContext : undefined;
}

/**
 * Registers the context manager (once per process) and marks the process as
 * carrying the caller's context only; `traceContextInterceptors()` then
 * returns the interceptor that does it.
 */
export function startTraceContextPropagation(): void {
  if (tracingMode() !== undefined) return;
  context.setGlobalContextManager(new AsyncLocalStorageContextManager());
  setTracingMode("propagation");
}

/** The interceptor: runs a call that came with a valid `traceparent` in the caller's context. */
export function createTraceContextInterceptor(): ServerInterceptor {
  return (_method, call) => {
    let callContext: Context | undefined;
    const inCall = (next: () => void): void => {
      if (callContext === undefined) next();
      else context.with(callContext, next);
    };
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            const [traceparent] = metadata.get("traceparent");
            const spanContext = typeof traceparent === "string" ? parseTraceparent(traceparent) : undefined;
            if (spanContext !== undefined) callContext = trace.setSpanContext(ROOT_CONTEXT, spanContext);
            inCall(() => nextMetadata(metadata));
          },
          onReceiveMessage(message, nextMessage) {
            inCall(() => nextMessage(message));
          },
          onReceiveHalfClose(nextHalfClose) {
            // A unary handler starts here, synchronously: everything it awaits keeps this context.
            inCall(nextHalfClose);
          },
        });
      },
    });
  };
}

/**
 * The server interceptors that carry the caller's trace context: one when
 * the bootstrap set up propagation only; none under the SDK (its grpc-js
 * instrumentation does it, with a server span) or with tracing disabled.
 * Pass them last, nearest the handler.
 */
export function traceContextInterceptors(): ServerInterceptor[] {
  return tracingMode() === "propagation" ? [createTraceContextInterceptor()] : [];
}
