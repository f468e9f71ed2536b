/**
 * The running tracing SDK's shutdown, kept apart from the SDK itself so that
 * main.ts can flush spans at exit without loading the SDK when the bootstrap
 * did not start one. The one piece of module-level state in the service.
 */

let shutdown: (() => Promise<void>) | undefined;

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
