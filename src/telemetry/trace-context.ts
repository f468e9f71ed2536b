/**
 * The context plumbing the service's tracing stands on, with or without an
 * SDK: a context manager on AsyncLocalStorage, so that `context.active()`
 * works across awaits, and a parser for the caller's W3C `traceparent`.
 *
 * With nothing to export the bootstrap sets up only this (no tracer
 * provider, no instrumentation, no loader hook) and server-tracing.ts runs
 * each call in the caller's context: records (`trace_id`), log lines
 * (`trace_id`, `span_id`) and exemplars then name the caller's trace for a
 * fraction of an SDK's cost. The parser is ours because @opentelemetry/core's
 * propagator would bring ~18 MB of modules along.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { context, ROOT_CONTEXT, trace, TraceFlags, type Context, type ContextManager, type SpanContext } from "@opentelemetry/api";
import { setTracingMode, tracingMode } from "./tracing-lifecycle.js";

/**
 * `context.active()` on AsyncLocalStorage: what @opentelemetry/context-async-hooks
 * does, without its EventEmitter binding (which patches five methods of an
 * emitter per bind; nothing here binds emitters). Also given to the SDK.
 */
export class AsyncLocalStorageContextManager implements ContextManager {
  private readonly storage = new AsyncLocalStorage<Context>();

  active(): Context {
    return this.storage.getStore() ?? ROOT_CONTEXT;
  }

  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    return this.storage.run(ctx, () => fn.apply(thisArg, args));
  }

  bind<T>(ctx: Context, target: T): T {
    if (typeof target !== "function") return target;
    const storage = this.storage;
    const fn = target as (this: unknown, ...args: unknown[]) => unknown;
    return function bound(this: unknown, ...args: unknown[]): unknown {
      return storage.run(ctx, () => fn.apply(this, args));
    } as T;
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
 * carrying the caller's context only; server-tracing.ts then runs each call
 * in it.
 */
export function startTraceContextPropagation(): void {
  if (tracingMode() !== undefined) return;
  context.setGlobalContextManager(new AsyncLocalStorageContextManager());
  setTracingMode("propagation");
}
