import { pino, type Logger, type DestinationStream } from "pino";
import { traceLogFields } from "./telemetry/log-correlation.js";

export type { Logger };

export interface LoggerOptions {
  /** pino level: fatal, error, warn, info, debug, trace, silent. */
  readonly level: string;
  /** Where lines go; stdout by default. Tests pass a capture stream. */
  readonly destination?: DestinationStream;
  /** Extra fields on every line (`instance`...). */
  readonly base?: Record<string, unknown>;
}

/**
 * JSON logs. Never log a code or a full address: use `maskAddress` from
 * `otp/address.ts`. Every line written inside a traced request carries
 * `trace_id` and `span_id` (a mixin reading the active OpenTelemetry context).
 */
export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      level: options.level,
      base: { service: "otp-email", ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin: traceLogFields,
    },
    options.destination,
  );
}
