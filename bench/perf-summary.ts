/**
 * Says where a process's CPU went during one measured run, from Linux
 * `perf record -g -p PID` (every thread of the service, sampled by the
 * kernel) and the JIT symbols node writes with `--perf-basic-prof`.
 *
 * It sees what V8's own profiler (`--cpu-prof`) cannot: V8's background
 * threads (TurboFan and Maglev compiling, the parallel scavenger, concurrent
 * marking and sweeping) and the kernel; and, sampling from outside, it does
 * not slow the JavaScript it samples. Main-thread time is charged to the
 * package whose code caused it (Node internals, V8 builtins and native
 * frames to their nearest JavaScript caller), as profile-summary.ts does.
 * A function the optimizing compiler inlined has no frame of its own: its
 * time is its caller's. Where a package's small functions are inlined into
 * ours (the SDK's setAttribute into our telemetry), the split between the two
 * moves from one run to the next; their sum is steadier.
 */
import { packageOfScript, type ProfileEntry } from "./profile-summary.js";

export interface PerfSummary {
  readonly samples: number;
  /** Main thread, and each kind of background work. */
  readonly byThread: readonly ProfileEntry[];
  /** Main thread only, charged to the package that caused the work. */
  readonly byCaller: readonly ProfileEntry[];
  /** Main thread only, self time by function (JavaScript, builtin or native). */
  readonly byFunction: readonly ProfileEntry[];
}

interface Frame {
  readonly symbol: string;
  readonly kernel: boolean;
}

/** `JS:*'name file:///...js:12:3` (what --perf-basic-prof writes): the script's URL, else undefined. */
function scriptOf(symbol: string): string | undefined {
  if (!symbol.startsWith("JS:")) return undefined;
  const match = / ((?:file:\/\/|node:|\/)\S*?)(?::\d+){1,2}$/.exec(symbol);
  return match?.[1];
}

/** What a V8 background thread was doing, from its stack (innermost first). */
function backgroundWork(comm: string, frames: readonly Frame[]): string {
  const stack = frames.map((frame) => frame.symbol).join(" ");
  if (/OptimizingCompileTask|OptimizedCompilationJob|maglev::/i.test(stack)) return "V8 optimizing compilers (background)";
  if (/Baseline|Compiler|Parse/.test(stack) && /Compile/.test(stack)) return "V8 other compiling (background)";
  if (/Scaveng|Marking|Sweep|Evacuat|PointersUpdating|ParallelClearing|ArrayBufferSweeper/.test(stack)) return "V8 garbage collector (background)";
  return comm.startsWith("libuv") ? "libuv thread pool" : `other threads (${comm})`;
}

/** `ip symbol (dso)` lines of one sample; the dso tells kernel frames apart. */
function parseFrame(line: string): Frame | undefined {
  const match = /^\s*[0-9a-f]+ (.*?)(?: \(([^()]*)\))?$/.exec(line);
  if (match === null) return undefined;
  return { symbol: match[1] ?? "", kernel: (match[2] ?? "").includes("kernel") };
}

const gcFrame = /Scaveng|Heap::|MarkCompact|Sweep|Evacuat/;

/** Native work with no JavaScript on the stack (the event loop's own callbacks), by library. */
function nativeOf(symbol: string): string {
  if (/^(ossl_|EVP_|SSL_|tls_|ssl3_|aesni_|aes_|gcm_|sha\d|SHA\d|BN_|bn_|RSA_|CRYPTO_|OPENSSL_)/.test(symbol)) return "(native: OpenSSL)";
  if (symbol.startsWith("nghttp2_")) return "(native: nghttp2)";
  if (symbol.startsWith("uv_") || symbol.startsWith("uv__")) return "(native: libuv)";
  if (symbol.startsWith("node::")) return "(native: node)";
  if (symbol.startsWith("v8::") || symbol.startsWith("Builtins_")) return "(native: V8)";
  return "(native)";
}

/**
 * Summarizes `perf script -F comm,tid,ip,sym,dso` output (with call chains)
 * of one process whose main thread is `mainTid`.
 */
export function summarizePerfScript(text: string, mainTid: number, top = 15): PerfSummary {
  const threads = new Map<string, number>();
  const callers = new Map<string, number>();
  const functions = new Map<string, number>();
  const add = (map: Map<string, number>, key: string): void => {
    map.set(key, (map.get(key) ?? 0) + 1);
  };
  let samples = 0;
  const sample = (comm: string, tid: number, frames: readonly Frame[]): void => {
    samples++;
    if (tid !== mainTid) {
      add(threads, backgroundWork(comm, frames));
      return;
    }
    add(threads, "main thread");
    const leaf = frames[0];
    if (leaf === undefined) return;
    const script = scriptOf(leaf.symbol);
    add(functions, script === undefined ? leaf.symbol.slice(0, 100) : leaf.symbol.replace(/^JS:[*+~^]?'?/, "").replace(/file:\/\/\S*\/(node_modules|dist)\//, ""));
    let caller: string;
    if (gcFrame.test(leaf.symbol) && script === undefined) caller = "(gc)";
    else {
      // The nearest frame in a package or in our code; Node's own JavaScript and native frames charge their caller.
      const owner = frames.map((frame) => scriptOf(frame.symbol)).find((url) => url !== undefined && !url.startsWith("node:"));
      caller = owner === undefined ? (leaf.kernel ? "(kernel)" : script === undefined ? nativeOf(leaf.symbol) : packageOfScript(script)) : packageOfScript(owner);
    }
    add(callers, caller);
  };

  let header: { comm: string; tid: number } | undefined;
  let frames: Frame[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") {
      if (header !== undefined) sample(header.comm, header.tid, frames);
      header = undefined;
      frames = [];
    } else if (!/^\s/.test(line)) {
      const match = /^(.*?)\s+(\d+)\s*$/.exec(line.trimEnd());
      header = match === null ? undefined : { comm: (match[1] ?? "").trim(), tid: Number(match[2]) };
      frames = [];
    } else if (header !== undefined) {
      const frame = parseFrame(line);
      if (frame !== undefined) frames.push(frame);
    }
  }
  if (header !== undefined) sample(header.comm, header.tid, frames);

  const entries = (map: Map<string, number>, total: number): ProfileEntry[] =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, count]) => ({ name, selfMs: count, percent: total > 0 ? (count / total) * 100 : 0 }));
  const main = threads.get("main thread") ?? 0;
  return { samples, byThread: entries(threads, samples), byCaller: entries(callers, main), byFunction: entries(functions, main) };
}

/** The summary as µs of CPU per request (`hz`: perf's sampling frequency; `requests`: the run's measured calls). */
export function formatPerfSummary(summary: PerfSummary, hz: number, requests: number): string {
  const usPerRequest = (count: number): number => (requests > 0 ? (count * 1e6) / hz / requests : 0);
  const line = (entry: ProfileEntry): string =>
    `  ${entry.percent.toFixed(1).padStart(5)} %  ${usPerRequest(entry.selfMs).toFixed(1).padStart(7)} µs/req  ${entry.name}`;
  return [
    `${summary.samples} samples at ${hz} Hz over ${requests} requests (${usPerRequest(summary.samples).toFixed(0)} µs of CPU per request); by thread:`,
    ...summary.byThread.map(line),
    "main thread, charged to the package or module that caused it:",
    ...summary.byCaller.map(line),
    "main thread, hottest functions (self):",
    ...summary.byFunction.map(line),
  ].join("\n");
}
