/**
 * The tracing bootstrap, loaded before the service with
 *
 *   node --import ./dist/src/telemetry/bootstrap.js dist/src/main.js
 *
 * (what `npm start` and the Dockerfile run). OpenTelemetry can only patch a
 * module that loads after it starts, and in ESM an `import "./telemetry.js"`
 * at the top of main.ts runs too late: the whole import graph is linked
 * first. So this file, run by `--import` before main.ts is even read,
 * when there is an exporter to send spans to:
 *   1. registers import-in-the-middle's loader hook for the instrumented
 *      packages, for anything that imports them as ESM;
 *   2. starts the SDK with the grpc-js instrumentation (and the ioredis one
 *      with TRACE_REDIS_COMMANDS=true);
 *   3. requires grpc-js (and ioredis) once, so the instrumentations patch them
 *      through require (they are CommonJS) before any ESM import reads them.
 * With nothing to export it loads no SDK, no instrumentation and no hook:
 * it only sets up the caller's trace context (trace-context.ts), so that
 * records, log lines and exemplars still name the caller's trace.
 *
 * Configured by the standard OTEL_* variables (see loadTracingConfig). A bad
 * value stops the process with exit code 78, like any configuration error.
 */
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
  const instrumentedPackages = ["@grpc/grpc-js", ...(config.redisCommandSpans ? ["ioredis"] : [])];
  register("@opentelemetry/instrumentation/hook.mjs", import.meta.url, { data: { include: instrumentedPackages } });
  // Imported only now: the SDK itself loads grpc-js (for its OTLP/gRPC exporter), which must pass the hook.
  const { startTracing } = await import("./tracing-sdk.js");
  await startTracing({ config });
  const require = createRequire(import.meta.url);
  for (const name of instrumentedPackages) require(name);
}
