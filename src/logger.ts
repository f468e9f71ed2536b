import { pino, type Logger, type DestinationStream } from "pino";

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
 * `otp/address.ts`. Trace correlation (trace_id/span_id) is added by the
 * telemetry mixin when tracing is on.
 */
export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      level: options.level,
      base: { service: "otp-email", ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination,
  );
}
