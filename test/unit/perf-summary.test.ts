/**
 * The bench's `--perf` summary: samples of `perf script` output charged to
 * threads, packages and functions. The text is what `perf script -F
 * comm,tid,ip,sym,dso` prints for a node process run with --perf-basic-prof.
 */
import { describe, expect, it } from "vitest";
import { formatPerfSummary, summarizePerfScript } from "../../bench/perf-summary.js";

const main = 4242;
const script = [
  // Main thread: ioredis's own code.
  "node 4242 ",
  "\t    7f00000010 JS:*'parseReply file:///app/node_modules/ioredis/built/Redis.js:10:5 (/tmp/perf-4242.map)",
  "\t    7f00000020 JS:~processTicksAndRejections node:internal/process/task_queues:72:35 (/tmp/perf-4242.map)",
  "",
  // Main thread: a V8 builtin and Node's stream code, on behalf of our telemetry.
  "node 4242 ",
  "\t    55000010 Builtins_LoadIC (/usr/bin/node)",
  "\t    7f00000030 JS:*'Writable.write node:internal/streams/writable:500:3 (/tmp/perf-4242.map)",
  "\t    7f00000040 JS:*'writeSpan file:///app/dist/src/telemetry/otlp-span-encoding.js:248:26 (/tmp/perf-4242.map)",
  "",
  // Main thread: a TLS record with no JavaScript on the stack.
  "node 4242 ",
  "\t    55000020 aesni_gcm_encrypt (/usr/bin/node)",
  "\t    55000030 uv__io_poll (/usr/bin/node)",
  "",
  // Main thread: the kernel, in a write the event loop made.
  "node 4242 ",
  "\t    ffffffff81000000 tcp_sendmsg ([kernel.kallsyms])",
  "\t    55000040 uv__write (/usr/bin/node)",
  "",
  // Background: TurboFan, then the scavenger's helpers.
  "V8Worker 4250 ",
  "\t    55000050 v8::internal::compiler::GraphReducer::ReduceTop (/usr/bin/node)",
  "\t    55000060 v8::internal::OptimizingCompileTaskExecutor::CompileTask::Run (/usr/bin/node)",
  "",
  "V8Worker 4251 ",
  "\t    55000070 v8::internal::Scavenger::ScavengeObject (/usr/bin/node)",
  "\t    55000080 v8::internal::ScavengerCollector::JobTask::Run (/usr/bin/node)",
  "",
  "libuv-worker 4252 ",
  "\t    55000090 uv__fs_work (/usr/bin/node)",
  "",
].join("\n");

describe("bench --perf summary", () => {
  const summary = summarizePerfScript(script, main);
  const byName = (entries: readonly { name: string; selfMs: number }[]): Record<string, number> =>
    Object.fromEntries(entries.map((entry) => [entry.name, entry.selfMs]));

  it("counts every sample and tells the main thread from V8's background work", () => {
    expect(summary.samples).toBe(7);
    expect(byName(summary.byThread)).toEqual({
      "main thread": 4,
      "V8 optimizing compilers (background)": 1,
      "V8 garbage collector (background)": 1,
      "libuv thread pool": 1,
    });
  });

  it("charges main-thread work to the package that caused it, Node's own code and builtins to their caller", () => {
    expect(byName(summary.byCaller)).toEqual({
      ioredis: 1,
      "src/telemetry": 1,
      "(native: OpenSSL)": 1,
      "(kernel)": 1,
    });
  });

  it("names the hottest functions by their own frame", () => {
    expect(byName(summary.byFunction)).toMatchObject({
      "parseReply ioredis/built/Redis.js:10:5": 1,
      Builtins_LoadIC: 1,
      aesni_gcm_encrypt: 1,
    });
  });

  it("reports per request at the sampling rate", () => {
    // 7 samples at 1000 Hz are 7 ms; over 7 requests, 1000 µs each.
    const text = formatPerfSummary(summary, 1000, 7);
    expect(text).toContain("7 samples at 1000 Hz over 7 requests (1000 µs of CPU per request)");
    expect(text).toMatch(/57\.1 % +571\.4 µs\/req {2}main thread/);
  });
});
