/**
 * The sender-domain checks `main.ts` runs at start-up, in a worker thread.
 *
 * The checks need mailauth, DNS and TLS code (about 10 MB of heap and 20 MB
 * of RSS) once, for a few seconds. In the service's own isolate that memory
 * would stay for the life of the process, since an ES module is never
 * unloaded; a worker's isolate, heap and modules go away when it exits.
 */
import { Worker } from "node:worker_threads";
import type { DoctorReport } from "./types.js";

/**
 * The worker's heap bounds. The checks need well under these; an overrun
 * ends the worker (reported as an error), not the service.
 */
const workerLimits = { maxOldGenerationSizeMb: 96, maxYoungGenerationSizeMb: 8 };

/**
 * Runs the doctor for the configuration in the process environment (the
 * worker reads it with the same `loadConfigFromProcess` as main.ts) and
 * resolves with its report. Rejects if the worker fails or exits without
 * one. The worker never keeps the process alive.
 */
export function runStartupDoctor(): Promise<DoctorReport> {
  return new Promise((resolve, reject) => {
    // execArgv []: not the service's `--import` (the tracing bootstrap) again in the worker.
    const worker = new Worker(new URL("./startup-worker.js", import.meta.url), { execArgv: [], resourceLimits: workerLimits });
    worker.unref();
    let report: DoctorReport | undefined;
    worker.once("message", (json: string) => {
      report = JSON.parse(json) as DoctorReport;
    });
    worker.once("error", reject);
    worker.once("exit", (code) => {
      if (report !== undefined) resolve(report);
      else reject(new Error(`the checks' worker exited (code ${code}) without a report`));
    });
  });
}
