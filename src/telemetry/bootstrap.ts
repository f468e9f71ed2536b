/**
 * The tracing bootstrap, loaded before the service with
 *
 *   node --import ./dist/src/telemetry/bootstrap.js dist/src/main.js
 *
 * (what `npm start` and the Dockerfile run). OpenTelemetry can only patch a
 * module that loads after it starts, and in ESM an `import "./telemetry.js"`
 * at the top of main.ts runs too late: the whole import graph is linked
 * first. So this file, run by `--import` before main.ts is even read,
 * when there is an exporter to send spans to, starts the SDK; the gRPC
 * server spans are then the app's own interceptor's (server-tracing.ts).
 * Only with TRACE_REDIS_COMMANDS=true is a package instrumented: then it
 *   1. registers import-in-the-middle's loader hook for ioredis, for
 *      anything that imports it as ESM;
 *   2. starts the SDK with the ioredis instrumentation;
 *   3. requires ioredis once, so the instrumentation patches it through
 *      require (it is CommonJS) before any ESM import reads it.
 * With nothing to export it loads no SDK and no hook: it only sets up the
 * caller's trace context (trace-context.ts), so that records, log lines and
 * exemplars still name the caller's trace.
 *
 * Configured by the standard OTEL_* variables (see loadTracingConfig). A bad
 * value stops the process with exit code 78, like any configuration error.
 */
// First: from here on a SIGHUP (a certificate renewal's) waits for main.ts instead of ending the process.
import "../early-hangup.js";
import { createRequire, register } from "node:module";
import { ConfigError, loadTracingConfig, type TracingConfig } from "../config.js";

let config: TracingConfig;
try {
  config = loadTracingConfig(process.env);
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`otp-email: configuration error: ${error.message}\n`);
  process.exit(78); // EX_CONFIG
}

// OTEL_SDK_DISABLED=true: nothing at all, not even the caller's context.
if (!config.disabled && config.exporters.length === 0) {
  const { startTraceContextPropagation } = await import("./trace-context.js");
  startTraceContextPropagation();
} else if (!config.disabled) {
  // What tracing-sdk.ts's createInstrumentations patches.
  const instrumentedPackages = config.redisCommandSpans ? ["ioredis"] : [];
  if (instrumentedPackages.length > 0) {
    register("@opentelemetry/instrumentation/hook.mjs", import.meta.url, { data: { include: instrumentedPackages } });
  }
  // Imported only now, after the hook.
  const { startTracing } = await import("./tracing-sdk.js");
  await startTracing({ config });
  const require = createRequire(import.meta.url);
  for (const name of instrumentedPackages) require(name);
}
