/**
 * What the OpenTelemetry SDK says about itself (an export that failed, a
 * collector's partial success, spans dropped because the queue was full),
 * written as the service's own JSON log lines with `component:
 * "opentelemetry"`. Left alone, the API drops these messages, so a wrong
 * endpoint or a collector that is down loses every trace without a word;
 * its console logger (what OTEL_LOG_LEVEL used to turn on) writes plain
 * text into the JSON lines on stdout.
 *
 * At OTEL_LOG_LEVEL (default warn). A message is logged at most once a
 * minute (an unreachable collector fails every batch, up to several times
 * a second); the next line of it says how many were held back. The
 * bootstrap starts this before the service's logger exists: until main.ts
 * hands the logger over, up to 50 lines wait.
 */
import { context, diag, DiagLogLevel, ROOT_CONTEXT, type DiagLogger } from "@opentelemetry/api";
import type { SdkLogLevel } from "../config.js";
import type { Logger } from "../logger.js";

type DiagLevel = "error" | "warn" | "info" | "debug" | "verbose";
const levels: readonly DiagLevel[] = ["error", "warn", "info", "debug", "verbose"];
const pinoLevels = { error: "error", warn: "warn", info: "info", debug: "debug", verbose: "trace" } as const;

/** OTEL_LOG_LEVEL's names (config.ts) as the API's levels. */
const sdkLogLevels: Readonly<Record<SdkLogLevel, DiagLogLevel>> = {
  none: DiagLogLevel.NONE,
  error: DiagLogLevel.ERROR,
  warn: DiagLogLevel.WARN,
  info: DiagLogLevel.INFO,
  debug: DiagLogLevel.DEBUG,
  verbose: DiagLogLevel.VERBOSE,
  all: DiagLogLevel.ALL,
};

const maxTextLength = 2000;

/**
 * An error the SDK reports (through its global error handler: a failed
 * export, a resource detector that threw) as one line: name, message, code
 * and what the collector answered, without the stack.
 */
export function describeSdkError(error: unknown): string {
  if (typeof error === "string") return error;
  if (typeof error !== "object" || error === null) return String(error);
  const { name, message, code, data } = error as { name?: unknown; message?: unknown; code?: unknown; data?: unknown };
  let text = `${typeof name === "string" ? name : "Error"}: ${typeof message === "string" ? message : ""}`;
  if ((typeof code === "string" && code !== "") || typeof code === "number") text += ` (code ${code})`;
  if (typeof data === "string" && data.trim() !== "") text += `: ${data.trim().slice(0, 200)}`;
  return text;
}

/** The message and its arguments as one line of text: errors by name and message, objects as JSON. */
function describe(message: string, args: readonly unknown[]): string {
  const parts = [message];
  for (const arg of args) {
    if (typeof arg === "string") parts.push(arg);
    else if (arg instanceof Error) parts.push(describeSdkError(arg));
    else if (arg instanceof Uint8Array) parts.push(`<${arg.length} bytes>`);
    else {
      try {
        parts.push(JSON.stringify(arg) ?? String(arg));
      } catch {
        parts.push(String(arg));
      }
    }
  }
  const text = parts.join(" ");
  return text.length > maxTextLength ? `${text.slice(0, maxTextLength)}...` : text;
}

export interface SdkDiagnosticsOptions {
  /** Milliseconds, for the once-a-minute rule (tests move it). */
  readonly now?: () => number;
  /** How long the same message is held back after it was logged; default 60 s. */
  readonly repeatWindowMs?: number;
}

/** The forwarding logger: give it to `diag.setLogger`, then `attach` the service's logger. */
export class SdkDiagnostics implements DiagLogger {
  readonly error: (message: string, ...args: unknown[]) => void;
  readonly warn: (message: string, ...args: unknown[]) => void;
  readonly info: (message: string, ...args: unknown[]) => void;
  readonly debug: (message: string, ...args: unknown[]) => void;
  readonly verbose: (message: string, ...args: unknown[]) => void;

  private logger: Logger | undefined;
  private readonly waiting: { level: DiagLevel; text: string }[] = [];
  private waitingDropped = 0;
  /** When each message was last logged and how many times it came since. */
  private readonly recent = new Map<string, { at: number; held: number }>();
  private readonly now: () => number;
  private readonly repeatWindowMs: number;

  constructor(options: SdkDiagnosticsOptions = {}) {
    this.now = options.now ?? Date.now;
    this.repeatWindowMs = options.repeatWindowMs ?? 60_000;
    const at =
      (level: DiagLevel) =>
      (message: string, ...args: unknown[]): void =>
        this.note(level, describe(message, args));
    [this.error, this.warn, this.info, this.debug, this.verbose] = levels.map(at) as [
      DiagLogger["error"],
      DiagLogger["warn"],
      DiagLogger["info"],
      DiagLogger["debug"],
      DiagLogger["verbose"],
    ];
  }

  /** Where lines go from now on; the lines that waited go first. */
  attach(logger: Logger): void {
    this.logger = logger;
    for (const { level, text } of this.waiting.splice(0)) this.write(level, text);
    if (this.waitingDropped > 0) {
      logger.warn({ dropped: this.waitingDropped }, "OpenTelemetry diagnostics written before the logger started were dropped");
      this.waitingDropped = 0;
    }
  }

  private note(level: DiagLevel, text: string): void {
    if (this.logger !== undefined) this.write(level, text);
    else if (this.waiting.length < 50) this.waiting.push({ level, text });
    else this.waitingDropped++;
  }

  private write(level: DiagLevel, text: string): void {
    const logger = this.logger;
    if (logger === undefined) return;
    const key = `${level} ${text.slice(0, 200)}`;
    const now = this.now();
    const seen = this.recent.get(key);
    if (seen !== undefined && now - seen.at < this.repeatWindowMs) {
      seen.held++;
      return;
    }
    const held = seen?.held ?? 0;
    this.recent.delete(key);
    if (this.recent.size >= 200) {
      const oldest = this.recent.keys().next().value;
      if (oldest !== undefined) this.recent.delete(oldest);
    }
    this.recent.set(key, { at: now, held: 0 });
    // Outside any request: the line is the SDK's, not the trace of whichever call was running.
    context.with(ROOT_CONTEXT, () => logger[pinoLevels[level]](held > 0 ? { repeated: held } : {}, text));
  }
}

let running: SdkDiagnostics | undefined;

/** Routes the SDK's diagnostics at `level` to the service's log (once per process; later calls change the level). */
export function startSdkDiagnostics(level: SdkLogLevel): void {
  running ??= new SdkDiagnostics();
  diag.setLogger(running, { logLevel: sdkLogLevels[level], suppressOverrideMessage: true });
}

/** main.ts: the service's logger exists; lines that waited for it are written. A no-op without an SDK. */
export function attachSdkDiagnostics(logger: Logger): void {
  running?.attach(logger.child({ component: "opentelemetry" }));
}
