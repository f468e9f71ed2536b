/**
 * The compiled service and its commands as separate processes, as `npm start`
 * and `npm run <command>` run them: `dist/` (built by global-setup.ts),
 * configured only by the environment given (and PATH).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));

export interface ServiceProcess {
  readonly child: ChildProcess;
  /** Every JSON log line written to stdout so far, parsed. */
  readonly lines: Record<string, unknown>[];
  readonly stderr: string[];
  /** Resolves with the first log line matching `predicate`. */
  waitForLine(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  readonly exited: Promise<number | null>;
}

/** Children still running, killed by `killServiceProcesses` (call it in afterEach). */
const running = new Set<ChildProcess>();

/** SIGKILLs every service process started and not yet killed. */
export function killServiceProcesses(): void {
  for (const child of running) child.kill("SIGKILL");
  running.clear();
}

/** Starts `node dist/src/main.js` with only the given environment (and PATH). */
export function startServiceProcess(env: Record<string, string>): ServiceProcess {
  const child = spawn(process.execPath, ["dist/src/main.js"], {
    cwd: root,
    env: { PATH: process.env["PATH"] ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  const listeners = new Set<() => void>();
  let buffer = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    buffer += chunk.toString("utf8");
    let newline: number;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (line.trim() !== "") lines.push(JSON.parse(line) as Record<string, unknown>);
    }
    for (const listener of listeners) listener();
  });
  child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    lines,
    stderr,
    exited,
    waitForLine(predicate, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const found = lines.find(predicate);
          if (found !== undefined) {
            listeners.delete(check);
            clearTimeout(timer);
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`no matching log line within ${timeoutMs} ms; stderr: ${stderr.join("")}`));
        }, timeoutMs);
        listeners.add(check);
        check();
      });
    },
  };
}

/** What a command printed and how it ended. */
export interface CommandRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Wall-clock time from spawn to exit. */
  readonly elapsedMs: number;
}

/**
 * Runs a compiled command (`dist/src/doctor/cli.js`...) with only these
 * variables (and PATH) to its end. Asynchronous, so servers in the test
 * process can answer it. Killed after `timeoutMs` (then `code` is null).
 */
export function runCommand(script: string, args: readonly string[], env: Record<string, string>, timeoutMs = 30_000): Promise<CommandRun> {
  return new Promise<CommandRun>((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [script, ...args], {
      cwd: root,
      env: { PATH: process.env["PATH"] ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, elapsedMs: Date.now() - started });
    });
  });
}
