/**
 * What the bootstrap set up, and the running tracing SDK's shutdown, kept
 * apart from the SDK itself so that main.ts and app.ts can ask without
 * loading the SDK when the bootstrap did not start one. The one piece of
 * module-level state in the service.
 */

/**
 * `sdk`: spans are built and exported (the grpc-js instrumentation carries
 * the caller's context); `propagation`: nothing to export, only the caller's
 * context is carried (trace-context.ts); undefined: nothing (no bootstrap,
 * or OTEL_SDK_DISABLED=true).
 */
export type TracingMode = "sdk" | "propagation";

let mode: TracingMode | undefined;
let shutdown: (() => Promise<void>) | undefined;

/** Called once by whichever of tracing-sdk.ts and trace-context.ts starts. */
export function setTracingMode(started: TracingMode): void {
  mode = started;
}

export function tracingMode(): TracingMode | undefined {
  return mode;
}

/** Called by the SDK starter (tracing-sdk.ts). */
export function registerTracingShutdown(stop: () => Promise<void>): void {
  shutdown = stop;
}

/**
 * Exports buffered spans and stops the SDK, if one runs in this process;
 * gives up after `timeoutMs` (an unreachable collector must not hold up exit).
 */
export async function shutdownTracing(timeoutMs = 5000): Promise<void> {
  if (shutdown === undefined) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    shutdown().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
      timer.unref();
    }),
  ]);
  clearTimeout(timer);
}

/** What became of the spans handed to the exporters: `otp_trace_export_spans_total{result}`. */
export const traceExportResults = ["exported", "failed", "dropped"] as const;
export type TraceExportResult = (typeof traceExportResults)[number];

const exportTally: Record<TraceExportResult, number> = { exported: 0, failed: 0, dropped: 0 };

/**
 * Counts spans: `exported` (the collector took them), `failed` (the export
 * failed after its retries: they are lost), `dropped` (never sent: the queue
 * was full).
 */
export function noteTraceExport(result: TraceExportResult, spans: number): void {
  exportTally[result] += spans;
}

/** The counts so far, for the metrics. */
export function traceExportTally(): Readonly<Record<TraceExportResult, number>> {
  return exportTally;
}
