/**
 * The worker thread of {@link runStartupDoctor} (startup-check.ts): runs the
 * doctor for the process's configuration and posts the report, as JSON (its
 * `details` are JSON by design; structured clone could refuse an odd value).
 */
import { parentPort } from "node:worker_threads";
import { loadConfigFromProcess } from "../config.js";
import { doctorOptionsFromConfig, runDoctor } from "./doctor.js";

const report = await runDoctor(doctorOptionsFromConfig(loadConfigFromProcess()));
parentPort?.postMessage(JSON.stringify(report));
