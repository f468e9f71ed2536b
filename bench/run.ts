/**
 * `npm run bench` (through bench/bench.mjs, which compiles first): starts a
 * private redis-server, the SMTP sink, the load generator and, per scenario,
 * the service exactly as `npm start` runs it; measures every scenario of
 * issue 6 in one run; prints one table and the targets; writes results.json
 * and results.svg.
 *
 *   --soak N        SendOtp calls in the soak (default 100000; 0 skips it)
 *   --soak-max-s S  time bound of the soak (default 300)
 *   --pool N        SMTP pool size of the service and of the ceiling (default 5, the service's default)
 *   --cpu-prof      run every service with node --cpu-prof and print where its CPU went
 *   --perf          sample each measured run of a service with Linux perf (every thread, the
 *                   compilers and GC included) and print its CPU per request by package
 *   --node-arg ARG  one more node option for every service (repeatable):
 *                   `--node-arg=--trace-gc`, `--node-arg=--import=/path/to/preload.mjs`
 *   --service-env KEY=VALUE  one more environment variable for every service, set last (repeatable):
 *                   `--service-env=OTEL_TRACES_SAMPLER=parentbased_traceidratio --service-env=OTEL_TRACES_SAMPLER_ARG=0.1`
 *   --keep-logs     keep the services' logs (stdout and stderr) after a run that did not fail
 *   --only LIST     run only these groups: smtp,service,echo,relay,tracing,dkim,soak (echo needs service)
 *   --service-dist DIR  run the service from DIR instead of dist/ (a saved build, for before/after)
 *   --plain-smtp    the sink offers no STARTTLS and every client sends in clear
 *                   (by default all SMTP, ceiling, naive and service, runs over
 *                   STARTTLS, as with any real relay)
 *   --smoke         one short scenario (the smoke test's run)
 *   --out DIR       where results.json and results.svg go (default bench/)
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { readProc, watchProcess, type ProcWindow } from "./proc.js";
import {
  killChildren,
  readStartCommand,
  repoRoot,
  startEchoServer,
  startLoadgen,
  startOtlpReceiver,
  startRedis,
  startService,
  startSink,
  track,
  type BenchRedis,
  type Loadgen,
  type ServiceProcess,
  type Sink,
} from "./processes.js";
import { freePort } from "../test/support/ports.js";
import { makeSelfSigned } from "../test/support/self-signed.js";
import { formatPerfSummary, summarizePerfScript } from "./perf-summary.js";
import { formatProfile, summarizeProfile } from "./profile-summary.js";
import type { GrpcJob, LoadBounds, RequestPlan, RpcMethod, RunResult, SmtpJob, SmtpTarget, VerifyItem } from "./protocol.js";
import {
  evaluateTargets,
  formatCpuBreakdown,
  formatMachine,
  setCores,
  formatScenarioTable,
  formatTargets,
  renderSvg,
  type BenchReport,
  type Machine,
  type ProcessRole,
  type RoundTrips,
  type RunSummary,
  type ScenarioResult,
  type SoakPoint,
} from "./report.js";
import {
  baseEnv,
  checkBaseEnv,
  dkimEnv,
  newBenchCaller,
  probeDkim,
  probeFeatures,
  probeTelemetry,
  runBounds,
  tracingEnv,
  type BenchCaller,
  type Env,
  type ProfileName,
} from "./scenarios.js";

interface BenchOptions {
  readonly profile: ProfileName;
  readonly soak: number;
  readonly soakMaxMs: number;
  readonly poolSize: number;
  readonly cpuProf: boolean;
  readonly perf: boolean;
  readonly nodeArgs: readonly string[];
  readonly keepLogs: boolean;
  /** --service-env: set on every service after the bench's own settings. */
  readonly serviceEnv: Readonly<Record<string, string>>;
  readonly outDir: string;
  readonly plainSmtp: boolean;
  readonly groups: ReadonlySet<Group>;
  readonly serviceDist: string | undefined;
  /** --caller-traceparent: every gRPC request carries a fresh sampled traceparent. */
  readonly callerTraceparent: boolean;
}

const groups = ["smtp", "service", "echo", "relay", "tracing", "dkim", "soak"] as const;
type Group = (typeof groups)[number];

const usage = `usage: npm run bench -- [--soak N] [--soak-max-s S] [--pool N] [--cpu-prof] [--perf] [--node-arg ARG]... [--service-env KEY=VALUE]... [--keep-logs] [--only ${groups.join(",")}] [--service-dist DIR] [--plain-smtp] [--caller-traceparent] [--smoke] [--out DIR]`;

/** A bad option, or --perf without perf: said in one line with the usage, exit 2, nothing started. */
class UsageError extends Error {}

function wholeNumber(name: string, raw: string | undefined, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min) throw new UsageError(`--${name} must be a whole number >= ${min}\n${usage}`);
  return Number(raw);
}

/** `KEY=VALUE` settings, checked: a bad one stops the bench before it starts anything. */
function serviceEnvOf(settings: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const setting of settings) {
    const equals = setting.indexOf("=");
    const key = equals === -1 ? "" : setting.slice(0, equals);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new UsageError(`--service-env wants KEY=VALUE, got "${setting}"\n${usage}`);
    env[key] = setting.slice(equals + 1);
  }
  return env;
}

function readOptions(argv: readonly string[]): BenchOptions | undefined {
  try {
    return parseOptions(argv);
  } catch (error) {
    // parseArgs' own refusals (an unknown option, a missing value) carry an ERR_PARSE_ARGS_* code.
    if (error instanceof TypeError && String((error as NodeJS.ErrnoException).code).startsWith("ERR_PARSE_ARGS")) {
      throw new UsageError(`${error.message}\n${usage}`);
    }
    throw error;
  }
}

function parseOptions(argv: readonly string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      smoke: { type: "boolean" },
      "plain-smtp": { type: "boolean" },
      "caller-traceparent": { type: "boolean" },
      soak: { type: "string" },
      "soak-max-s": { type: "string" },
      pool: { type: "string" },
      "cpu-prof": { type: "boolean" },
      perf: { type: "boolean" },
      "node-arg": { type: "string", multiple: true },
      "keep-logs": { type: "boolean" },
      "service-env": { type: "string", multiple: true },
      out: { type: "string" },
      only: { type: "string" },
      "service-dist": { type: "string" },
      help: { type: "boolean" },
    },
  });
  if (values.help === true) return undefined;
  const only = values.only?.split(",").map((group) => group.trim()) ?? [...groups];
  const unknown = only.filter((group) => !(groups as readonly string[]).includes(group));
  if (unknown.length > 0) throw new UsageError(`--only: unknown group ${unknown.join(", ")}\n${usage}`);
  return {
    groups: new Set(only as Group[]),
    serviceDist: values["service-dist"],
    profile: values.smoke === true ? "smoke" : "full",
    soak: wholeNumber("soak", values.soak, 100_000, 0),
    soakMaxMs: wholeNumber("soak-max-s", values["soak-max-s"], 300, 1) * 1000,
    poolSize: wholeNumber("pool", values.pool, 5, 1),
    cpuProf: values["cpu-prof"] === true,
    perf: values.perf === true,
    nodeArgs: values["node-arg"] ?? [],
    keepLogs: values["keep-logs"] === true,
    serviceEnv: serviceEnvOf(values["service-env"] ?? []),
    plainSmtp: values["plain-smtp"] === true,
    callerTraceparent: values["caller-traceparent"] === true,
    outDir: resolve(values.out ?? join(repoRoot, "bench")),
  };
}

/** Everything a scenario needs. */
interface Bench {
  readonly options: BenchOptions;
  readonly redis: BenchRedis;
  readonly sink: Sink;
  /** Replaced by a fresh process before every measured scenario (see `scenario`). */
  loadgen: Loadgen;
  readonly caller: BenchCaller;
  readonly env: Env;
  readonly metricsPort: number;
  readonly workDir: string;
  readonly scenarios: ScenarioResult[];
  readonly roundTrips: RoundTrips[];
  readonly soak: SoakPoint[];
  readonly features: Record<string, string>;
  /** Helper processes of the moment (the OTLP receiver). */
  readonly extraPids: number[];
}

const progress = (line: string): void => console.error(line);

let runCounter = 0;
const newRunId = (): string => `${randomBytes(3).toString("hex")}${(runCounter++).toString(36)}`;

function grpcJob(
  bench: Bench,
  address: string,
  method: RpcMethod,
  plan: RequestPlan,
  bounds: LoadBounds,
  extra: { milestones?: readonly number[]; collect?: boolean } = {},
): GrpcJob {
  return {
    kind: "grpc",
    address,
    method,
    plan,
    ...bounds,
    milestones: extra.milestones ?? [],
    token: bench.caller.token,
    callerTraceparent: bench.options.callerTraceparent,
    collect: extra.collect ?? false,
  };
}

/** The sink, as the bench's own sender reaches it (the service's pool size; nodemailer's 100 messages per connection). */
function smtpTarget(bench: Bench, pooled: boolean): SmtpTarget {
  return {
    host: "127.0.0.1",
    port: bench.sink.port,
    pooled,
    poolSize: bench.options.poolSize,
    maxMessagesPerConnection: 100,
    tlsCa: bench.sink.tlsCa,
  };
}

function smtpJob(bench: Bench, pooled: boolean, bounds: LoadBounds): SmtpJob {
  return { kind: "smtp", ...smtpTarget(bench, pooled), ...bounds };
}

interface ScenarioSpec {
  readonly id: string;
  readonly title: string;
  readonly job: GrpcJob | SmtpJob;
  /** The process whose CPU and memory the row reports. */
  readonly watch: { readonly pid: number; readonly role: ProcessRole };
  readonly onMilestone?: (completed: number) => void;
  /** The caller already gave this run a fresh, warmed load generator (default: a fresh one here). */
  readonly keepLoadgen?: boolean;
}

/** A run's numbers, without the ids and samples kept for later runs. */
function summaryOf(result: RunResult): RunSummary {
  const { measured, ok, errors, unexpected, errorSample, windowMs, throughput, latencyMs, stoppedBy, totalCompleted } = result;
  return { measured, ok, errors, unexpected, errorSample, windowMs, throughput, latencyMs, stoppedBy, totalCompleted };
}

/** The benchmark's own long-lived processes (the service or echo server is added per scenario). */
function ownPids(bench: Bench): number[] {
  return [process.pid, bench.loadgen.pid, bench.sink.pid, bench.redis.pid, ...bench.extraPids];
}

/** CPU ms per measured request of each process that worked for it (the watched one under its role). */
function cpuByProcess(spec: ScenarioSpec, window: ProcWindow, measured: number): Record<string, number> {
  const [, loadgen = 0, sink = 0, redis = 0] = window.ownCpuMs;
  const per = (ms: number): number => (measured > 0 ? ms / measured : 0);
  const all: Record<string, number> = { [spec.watch.role]: per(window.cpuMs), "load generator": per(loadgen), sink: per(sink), redis: per(redis) };
  // The sender is the load generator itself: counted once.
  if (spec.watch.role === "sender") delete all["load generator"];
  return all;
}

/**
 * A new load generator process. A long-lived one got slower as the run went
 * on (its heap holding earlier runs' nodemailer pools, ids and codes): the
 * same echo run measured 8,100 req/s late in a full run and 10,900 early in a
 * short one, which moved the echo ratios by a third. Each scenario gets one
 * in the same state, warmed up by its own warm-up.
 */
async function freshLoadgen(bench: Bench): Promise<void> {
  const old = bench.loadgen;
  bench.loadgen = await startLoadgen();
  await old.close();
}

/** CPU used by processes outside the bench, % of one core, above which a row is flagged as disturbed. */
const noisyPercent = 10;

/** Runs one measured scenario and records its row; a failure is recorded, not thrown. */
async function scenario(bench: Bench, spec: ScenarioSpec): Promise<RunResult | undefined> {
  const before = await bench.sink.count();
  let watch: ReturnType<typeof watchProcess> | undefined;
  let perf: PerfRecording | undefined;
  try {
    const senderPid = bench.loadgen.pid;
    if (spec.keepLoadgen !== true) await freshLoadgen(bench);
    // The SMTP rows' sender is the load generator itself: watch the new one.
    const watchPid = spec.watch.role === "sender" && spec.watch.pid === senderPid ? bench.loadgen.pid : spec.watch.pid;
    const sampled = bench.options.perf && spec.watch.role === "service" ? spec.watch.pid : undefined;
    const result = await bench.loadgen.run(spec.job, {
      onMeasuring: () => {
        watch = watchProcess(watchPid, [...ownPids(bench), watchPid]);
        if (sampled !== undefined) perf = startPerf(bench, spec.id, sampled);
      },
      ...(spec.onMilestone === undefined ? {} : { onMilestone: spec.onMilestone }),
    });
    const window = watch?.stop();
    const perfReport = perf === undefined ? undefined : await stopPerf(bench, perf, result.measured);
    perf = undefined;
    const after = await bench.sink.count();
    const run: RunSummary = summaryOf(result);
    const row: ScenarioResult = {
      id: spec.id,
      title: spec.title,
      concurrency: spec.job.concurrency,
      status: "ok",
      run,
      ...(window === undefined
        ? {}
        : {
            usage: {
              role: spec.watch.role,
              cpuPercent: window.cpuPercent,
              cpuMsPerOp: result.measured > 0 ? window.cpuMs / result.measured : 0,
              peakRssMb: window.peakRssBytes / 2 ** 20,
              hwmMb: window.hwmBytes / 2 ** 20,
              othersPercent: window.othersPercent,
              cpuMsPerOpByProcess: cpuByProcess(spec, window, result.measured),
            },
          }),
      sink: {
        messages: after.accepted - before.accepted,
        signed: after.signed - before.signed,
        connections: after.connections - before.connections,
      },
      ...(result.errorSample === undefined ? {} : { note: result.errorSample }),
    };
    bench.scenarios.push(row);
    const errors = result.measured - result.ok;
    progress(
      `  ${spec.id.padEnd(22)} ${result.throughput.toFixed(0).padStart(6)} req/s  p50 ${result.latencyMs.p50.toFixed(2)} ms  p99 ${result.latencyMs.p99.toFixed(2)} ms` +
        `${errors > 0 ? `  ${errors} errors (${result.errorSample ?? JSON.stringify(result.unexpected)})` : ""}` +
        // Work outside the bench took cores from it: this row's numbers are not comparable.
        `${window !== undefined && window.othersPercent >= noisyPercent ? `  WARNING: other processes used ${window.othersPercent.toFixed(0)} % of a core meanwhile` : ""}`,
    );
    if (perfReport !== undefined) progress(`perf, service of ${spec.id} while measured:\n${perfReport}`);
    return result;
  } catch (error) {
    watch?.stop();
    perf?.child.kill("SIGKILL");
    const note = error instanceof Error ? error.message : String(error);
    bench.scenarios.push({ id: spec.id, title: spec.title, concurrency: spec.job.concurrency, status: "failed", note });
    progress(`  ${spec.id}: FAILED: ${note}`);
    return undefined;
  }
}

/** perf's sampling rate: not a multiple of the kernel's tick, so the samples do not beat with timers. */
const perfHz = 999;

interface PerfRecording {
  readonly child: ChildProcess;
  readonly dataPath: string;
  readonly pid: number;
  readonly exited: Promise<void>;
}

/** Fails early, with what to install, when --perf cannot work here. */
function checkPerf(): void {
  const probe = spawnSync("perf", ["--version"], { encoding: "utf8" });
  if (probe.error !== undefined || probe.status !== 0) {
    throw new UsageError("--perf needs Linux perf on the PATH (Debian: apt-get install linux-perf) and permission to sample other processes (root, or kernel.perf_event_paranoid <= 1)");
  }
}

/** Samples every thread of `pid` with call chains until `stopPerf`. */
function startPerf(bench: Bench, id: string, pid: number): PerfRecording {
  const dir = join(bench.options.outDir, "perf");
  mkdirSync(dir, { recursive: true });
  const dataPath = join(dir, `${id.replace(/[^\w.-]+/g, "_")}.data`);
  const child = track(spawn("perf", ["record", "-q", "-F", String(perfHz), "-g", "-p", String(pid), "-o", dataPath], { stdio: "ignore" }));
  // A perf that cannot start or attach ends the recording too; stopPerf then reports perf script's failure.
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    child.once("error", () => resolve());
  });
  return { child, dataPath, pid, exited };
}

/** Stops the recording and summarizes it per measured request (the data file is kept with --keep-logs). */
async function stopPerf(bench: Bench, recording: PerfRecording, requests: number): Promise<string> {
  recording.child.kill("SIGINT");
  await recording.exited;
  const script = spawnSync("perf", ["script", "-i", recording.dataPath, "-F", "comm,tid,ip,sym,dso"], {
    encoding: "utf8",
    maxBuffer: 2 ** 30,
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (!bench.options.keepLogs) rmSync(recording.dataPath, { force: true });
  if (script.error !== undefined || script.status !== 0) return `  perf script failed: ${script.error?.message ?? script.stderr.trim().split("\n").at(-1) ?? ""}`;
  return formatPerfSummary(summarizePerfScript(script.stdout, recording.pid), perfHz, requests);
}

function notBuilt(bench: Bench, id: string, title: string, concurrency: number, reason: string): void {
  bench.scenarios.push({ id, title, concurrency, status: "n/a", note: reason });
  progress(`  ${id.padEnd(22)} n/a (feature not built yet): ${reason}`);
}

/** A scenario left out of this run (--only), not for want of a feature. */
function notRun(bench: Bench, id: string, title: string, concurrency: number, reason: string): void {
  bench.scenarios.push({ id, title, concurrency, status: "skipped", note: reason });
  progress(`  ${id.padEnd(22)} skipped: ${reason}`);
}

/** Starts the service for `name`, runs `body`, stops it (and summarizes its CPU profile with --cpu-prof). */
async function withService<T>(bench: Bench, name: string, env: Env, body: (service: ServiceProcess) => Promise<T>): Promise<T> {
  // One directory per service: V8 writes a profile per thread (module
  // loader hooks run in a thread of their own), named by pid and thread.
  const profileDir = join(bench.options.outDir, "profiles", name);
  if (bench.options.cpuProf) {
    rmSync(profileDir, { recursive: true, force: true });
    mkdirSync(profileDir, { recursive: true });
  }
  const service = await startService({
    env: { ...env, ...bench.options.serviceEnv },
    extraNodeArgs: [
      ...bench.options.nodeArgs,
      ...(bench.options.cpuProf ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : []),
      // JIT symbols for perf (/tmp/perf-PID.map), interpreted functions included. The V8 log these turn on
      // goes with the service logs, not into the working directory as isolate-*.log.
      ...(bench.options.perf
        ? ["--perf-basic-prof", "--interpreted-frames-native-stack", "--no-logfile-per-isolate", `--logfile=${join(bench.workDir, `v8-${name}.log`)}`]
        : []),
    ],
    logPath: join(bench.workDir, `service-${name}.log`),
    token: bench.caller.token,
    distDir: bench.options.serviceDist,
  });
  progress(`service "${name}" (pid ${service.pid}): ${service.command}`);
  const readyUs = Number(process.hrtime.bigint() / 1000n);
  try {
    return await body(service);
  } finally {
    await service.stop();
    if (bench.options.cpuProf) reportProfile(name, profileDir, readyUs);
    // V8 writes its perf map to /tmp whatever TMPDIR says.
    if (bench.options.perf && !bench.options.keepLogs) rmSync(`/tmp/perf-${service.pid}.map`, { force: true });
  }
}

/** Prints the summary of the busiest thread's profile (the main thread's), from `sinceUs` on. */
function reportProfile(name: string, dir: string, sinceUs: number): void {
  const files = existsSync(dir) ? readdirSync(dir).filter((file) => file.endsWith(".cpuprofile")) : [];
  const summaries = files.map((file) => ({ file, summary: summarizeProfile(join(dir, file), 20, sinceUs) }));
  const busy = (entry: (typeof summaries)[number]): number =>
    entry.summary.totalMs - (entry.summary.byPackage.find((item) => item.name === "(idle)")?.selfMs ?? 0);
  const busiest = summaries.sort((a, b) => busy(b) - busy(a))[0];
  if (busiest === undefined) {
    progress(`no CPU profile for service "${name}" in ${dir}`);
    return;
  }
  progress(`CPU profile of service "${name}" once SERVING (${join(dir, busiest.file)}):\n${formatProfile(busiest.summary)}`);
}

/**
 * Counts, at concurrency 1, the Redis commands `calls` calls of `method`
 * send (first pass, under MONITOR) and the round trips they wait for
 * (second pass, Redis's read events). `plans[pass]` feeds each pass.
 */
async function countRoundTrips(
  bench: Bench,
  service: ServiceProcess,
  method: RpcMethod,
  plans: readonly [RequestPlan, RequestPlan],
  calls: number,
): Promise<void> {
  const job = (plan: RequestPlan): GrpcJob => grpcJob(bench, service.address, method, plan, { concurrency: 1, warmup: 0, count: calls, maxMs: 60_000 });
  try {
    const { result, counts: allCounts } = await bench.redis.countCommands(() => bench.loadgen.run(job(plans[0])));
    // The service's storage probe PINGs Redis every 5 s whatever the load: not part of any call.
    const { ping: firstPings = 0, ...counts } = allCounts;
    // The second pass under MONITOR too, only to count the probe's PINGs among its read events.
    const { result: second, counts: secondCounts } = await bench.redis.countCommands(async () => {
      const readsBefore = await bench.redis.readsProcessed();
      const run = await bench.loadgen.run(job(plans[1]));
      // The second INFO is itself one read event.
      return { ...run, reads: (await bench.redis.readsProcessed()) - readsBefore - 1 };
    });
    const probePings = secondCounts["ping"] ?? 0;
    const reads = second.reads - probePings;
    const total = Object.values(counts).reduce((sum, count) => sum + count, 0);
    const done = Math.max(1, result.measured);
    const entry: RoundTrips = {
      method,
      calls: done,
      commandsPerCall: total / done,
      byCommand: counts,
      roundTripsPerCall: reads / Math.max(1, second.measured),
    };
    bench.roundTrips.push(entry);
    const errors = result.measured - result.ok + second.measured - second.ok;
    progress(
      `  redis per ${method}: ${entry.roundTripsPerCall.toFixed(2)} round trips, ${entry.commandsPerCall.toFixed(2)} commands ${JSON.stringify(counts)}` +
        `${firstPings + probePings > 0 ? ` (the health probe's PINGs left out: ${firstPings} and ${probePings})` : ""}` +
        `${errors > 0 ? ` (${errors} errors)` : ""}`,
    );
  } catch (error) {
    progress(`  redis per ${method}: FAILED: ${(error as Error).message}`);
  }
}

/**
 * Scrapes the metrics endpoint every `intervalMs` while `work` runs (the first
 * scrape at once), as Prometheus would.
 */
async function whileScraping<T>(port: number, intervalMs: number, work: () => Promise<T>): Promise<{ result: T; scrapes: number; failures: number }> {
  let scrapes = 0;
  let failures = 0;
  let stop = false;
  let wake: (() => void) | undefined;
  const loop = (async () => {
    while (!stop) {
      try {
        const response = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
        await response.arrayBuffer();
        if (response.ok) scrapes++;
        else failures++;
      } catch {
        failures++;
      }
      // Woken early when the work is done, so a long interval does not hold the run up.
      await new Promise<void>((resolvePromise) => {
        const timer = setTimeout(resolvePromise, intervalMs);
        wake = () => {
          clearTimeout(timer);
          resolvePromise();
        };
      });
    }
  })();
  try {
    return { result: await work(), scrapes, failures };
  } finally {
    stop = true;
    wake?.();
    await loop;
  }
}

// ---------------------------------------------------------------------------
// The runs

async function smokeRun(bench: Bench): Promise<void> {
  await withService(bench, "smoke", bench.env, async (service) => {
    const sent = await scenario(bench, {
      id: "sendotp-c4",
      title: "SendOtp end to end",
      job: grpcJob(bench, service.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, runBounds("smoke", 4)),
      watch: { pid: service.pid, role: "service" },
    });
    // The gRPC floor too: its echo server sends mail only in this scenario.
    await floorRuns(bench, sent?.sampleResponse, [4]);
    const send = (): RequestPlan => ({ kind: "send", runId: newRunId(), withCodes: false });
    await countRoundTrips(bench, service, "SendOtp", [send(), send()], 10);
  });
}

const bounds = (concurrency: number): LoadBounds => runBounds("full", concurrency);

/** Status and verify runs are bounded by the codes seeded for them. */
// 20,000 measured verifications (each needs a code of its own, seeded by SendOtp):
// with 8,000 the run lasted about a second and its ratio to the echo moved by 0.1.
const verifyBounds: LoadBounds = { concurrency: 64, warmup: 1000, count: 15000, maxMs: 6000 };
/**
 * GetDeliveryStatus and VerifyOtp against the echo server: this many pairs, the
 * service's run and then the echo server's, alternately; the pair with the
 * median ratio is reported. The echo rows are bound by the load generator and
 * moved by a quarter between runs of the same build (8,500 to 11,300 req/s),
 * which alone moved the ratios between 0.5x and 0.85x.
 */
const echoPairs = 3;
const roundTripCalls = 200;

/** What the service group leaves for the echo group: real responses and the requests' inputs. */
interface Seeds {
  readonly samples: Partial<Record<RpcMethod, string>>;
  readonly messageIds: string[];
  readonly items: VerifyItem[];
}

async function fullRun(bench: Bench): Promise<void> {
  const seeds: Seeds = { samples: {}, messageIds: [], items: [] };
  const steps: readonly [Group, () => Promise<void>][] = [
    ["smtp", () => smtpGroup(bench)],
    ["service", () => serviceGroup(bench, seeds)],
    ["echo", () => Promise.resolve(echoGroup(bench))],
    ["relay", () => relayGroup(bench)],
    ["tracing", () => tracingGroup(bench)],
    ["dkim", () => dkimGroup(bench)],
    ["soak", () => (bench.options.soak > 0 ? soakRun(bench) : Promise.resolve())],
  ];
  for (const [group, step] of steps) {
    if (!bench.options.groups.has(group)) continue;
    // A group that cannot run (a service that will not start) is a failed row; the others still run.
    try {
      await step();
    } catch (error) {
      const note = error instanceof Error ? error.message : String(error);
      bench.scenarios.push({ id: `${group}-group`, title: `${group} group`, concurrency: 0, status: "failed", note });
      progress(`  ${group} group: FAILED: ${note}`);
    }
  }
}

async function smtpGroup(bench: Bench): Promise<void> {
  progress("SMTP ceiling and naive design (load generator -> sink, no gRPC, no Redis)");
  for (const concurrency of [1, 16, 64]) {
    await scenario(bench, {
      id: `smtp-ceiling-c${concurrency}`,
      title: `SMTP ceiling: nodemailer pool of ${bench.options.poolSize}`,
      job: smtpJob(bench, true, bounds(concurrency)),
      watch: { pid: bench.loadgen.pid, role: "sender" },
    });
  }
  // With the service group, naive c64 runs there, alternately with SendOtp c64 (naivePairs).
  for (const concurrency of bench.options.groups.has("service") ? [16] : [16, 64]) await naiveRun(bench, concurrency, "");
}

function naiveRun(bench: Bench, concurrency: number, suffix: string): Promise<RunResult | undefined> {
  return scenario(bench, {
    id: `smtp-naive-c${concurrency}${suffix}`,
    title: "Naive: new SMTP connection per message",
    job: smtpJob(bench, false, bounds(concurrency)),
    watch: { pid: bench.loadgen.pid, role: "sender" },
  });
}

/**
 * SendOtp c64 and naive c64 are run this many times alternately (with both
 * groups), and the pair with the median ratio is reported: the naive sender's
 * CPU per message (TLS handshakes) moved from 1.44 to 1.95 ms between full runs
 * on one afternoon, which alone moved the ratio from 2.7x to 1.8x.
 */
const naivePairs = 3;

async function serviceGroup(bench: Bench, seeds: Seeds): Promise<void> {
  progress("SendOtp end to end, GetDeliveryStatus, VerifyOtp, Redis round trips");
  await withService(bench, "baseline", bench.env, async (service) => {
    const watch = { pid: service.pid, role: "service" } as const;
    const sendRun = async (concurrency: number, suffix: string): Promise<void> => {
      const sent = await scenario(bench, {
        id: `sendotp-c${concurrency}${suffix}`,
        title: "SendOtp end to end",
        job: grpcJob(bench, service.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, bounds(concurrency)),
        watch,
      });
      if (sent?.sampleResponse !== undefined) seeds.samples.SendOtp ??= sent.sampleResponse;
    };
    for (const concurrency of [1, 16]) await sendRun(concurrency, "");
    if (bench.options.groups.has("smtp")) {
      for (let pair = 1; pair <= naivePairs; pair++) {
        await sendRun(64, `#${pair}`);
        await naiveRun(bench, 64, `#${pair}`);
      }
      progress(`  ${keepMedianPair(bench, "smtp-naive-c64", "sendotp-c64", naivePairs, "SendOtp/naive")}`);
    } else {
      await sendRun(64, "");
    }
    await floorRuns(bench, seeds.samples.SendOtp, [16, 64]);

    const pairs = bench.options.groups.has("echo") ? echoPairs : 1;
    const runItems = verifyBounds.warmup + verifyBounds.count;
    const seedCount = pairs * runItems + 2 * roundTripCalls;
    const seed = await bench.loadgen.run(
      grpcJob(
        bench,
        service.address,
        "SendOtp",
        { kind: "send", runId: newRunId(), withCodes: true },
        { concurrency: 64, warmup: 0, count: seedCount, maxMs: 120_000 },
        { collect: true },
      ),
    );
    seeds.messageIds.push(...seed.messageIds);
    seeds.items.push(...seed.verifyItems);
    progress(`  seeded ${seed.verifyItems.length} codes for GetDeliveryStatus and VerifyOtp`);

    let echo: Awaited<ReturnType<typeof startEchoServer>> | undefined;
    try {
      for (let pair = 1; pair <= pairs; pair++) {
        const suffix = pairs > 1 ? `#${pair}` : "";
        const status = await scenario(bench, {
          id: `status-c64${suffix}`,
          title: "GetDeliveryStatus",
          job: grpcJob(bench, service.address, "GetDeliveryStatus", { kind: "status", messageIds: seeds.messageIds }, bounds(64)),
          watch,
        });
        if (status?.sampleResponse !== undefined) seeds.samples.GetDeliveryStatus ??= status.sampleResponse;
        // Each code verifies once: every run has its own.
        const items = seeds.items.slice((pair - 1) * runItems, pair * runItems);
        const verify = await scenario(bench, {
          id: `verify-c64${suffix}`,
          title: "VerifyOtp (correct code)",
          job: grpcJob(bench, service.address, "VerifyOtp", { kind: "verify", items }, verifyRunBounds(items)),
          watch,
        });
        if (verify?.sampleResponse !== undefined) seeds.samples.VerifyOtp ??= verify.sampleResponse;
        if (pairs > 1) {
          if (echo === undefined && seeds.samples.GetDeliveryStatus !== undefined && seeds.samples.VerifyOtp !== undefined) {
            progress("  bare grpc-js echo server (the framework ceiling), same load generator, same requests, alternately");
            echo = await startEchoServer(seeds.samples);
          }
          if (echo !== undefined) await echoRuns(bench, echo, seeds, items, suffix);
        }
      }
    } finally {
      await echo?.close();
    }
    if (pairs > 1) {
      progress(`  ${keepMedianPair(bench, "echo-status-c64", "status-c64", pairs, "GetDeliveryStatus/echo")}`);
      progress(`  ${keepMedianPair(bench, "echo-verify-c64", "verify-c64", pairs, "VerifyOtp/echo")}`);
    }

    const send = (): RequestPlan => ({ kind: "send", runId: newRunId(), withCodes: false });
    await countRoundTrips(bench, service, "SendOtp", [send(), send()], roundTripCalls);
    const statusPlan: RequestPlan = { kind: "status", messageIds: seeds.messageIds };
    await countRoundTrips(bench, service, "GetDeliveryStatus", [statusPlan, statusPlan], roundTripCalls);
    // Each code verifies once: two passes need two sets.
    const spare = seeds.items.slice(pairs * runItems, pairs * runItems + 2 * roundTripCalls);
    const half = Math.floor(spare.length / 2);
    if (half > 0) {
      const pass = (from: number): RequestPlan => ({ kind: "verify", items: spare.slice(from, from + half) });
      await countRoundTrips(bench, service, "VerifyOtp", [pass(0), pass(half)], half);
    }
  });

  // The naive design inside the service itself: the same pool size, but every
  // connection carries one message (what the classic wrapper did, minus TLS).
  await withService(bench, "naive", { ...bench.env, SMTP_MAX_MESSAGES_PER_CONNECTION: "1" }, async (service) => {
    await scenario(bench, {
      id: "sendotp-naive-c64",
      title: "SendOtp, new SMTP connection per message",
      job: grpcJob(bench, service.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, bounds(64)),
      watch: { pid: service.pid, role: "service" },
    });
  });
}

/**
 * The gRPC floor: a bare grpc-js server (the echo server) whose SendOtp sends
 * the message the way the SMTP ceiling does and answers with the service's own
 * response. The same load generator and sink; no Redis, no limits, no records,
 * no logs. What the ceiling's sender costs plus the gRPC call around it: the
 * most any gRPC service that sends each message before answering could reach
 * on this machine, and so how much of the ceiling is within reach at all.
 */
async function floorRuns(bench: Bench, response: string | undefined, concurrencies: readonly number[]): Promise<void> {
  if (response === undefined) {
    for (const concurrency of concurrencies) notRun(bench, `grpc-floor-c${concurrency}`, "gRPC floor", concurrency, "no SendOtp response to answer with");
    return;
  }
  progress("  the gRPC floor: a bare grpc-js server whose SendOtp only sends the message as the SMTP ceiling does");
  const floor = await startEchoServer({ SendOtp: response }, smtpTarget(bench, true));
  try {
    for (const concurrency of concurrencies) {
      await scenario(bench, {
        id: `grpc-floor-c${concurrency}`,
        title: "gRPC floor: bare grpc-js server + the ceiling's send",
        job: grpcJob(bench, floor.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, runBounds(bench.options.profile, concurrency)),
        watch: { pid: floor.pid, role: "floor" },
      });
    }
  } finally {
    await floor.close();
  }
}

function verifyRunBounds(items: readonly VerifyItem[]): LoadBounds {
  return { ...verifyBounds, count: Math.max(0, items.length - verifyBounds.warmup) };
}

/**
 * The echo rows are measured inside the service group, alternately with the
 * service's (see echoPairs); alone, this group has nothing to compare with.
 */
function echoGroup(bench: Bench): void {
  if (bench.options.groups.has("service")) return;
  notRun(bench, "echo-status-c64", "grpc-js echo: GetDeliveryStatus", 64, "runs alternately with the service group's GetDeliveryStatus");
  notRun(bench, "echo-verify-c64", "grpc-js echo: VerifyOtp", 64, "runs alternately with the service group's VerifyOtp");
}

/** One echo run of GetDeliveryStatus and one of VerifyOtp, with the same requests as the service's. */
async function echoRuns(bench: Bench, echo: { readonly pid: number; readonly address: string }, seeds: Seeds, items: VerifyItem[], suffix: string): Promise<void> {
  const watch = { pid: echo.pid, role: "echo" } as const;
  await scenario(bench, {
    id: `echo-status-c64${suffix}`,
    title: "grpc-js echo: GetDeliveryStatus",
    job: grpcJob(bench, echo.address, "GetDeliveryStatus", { kind: "status", messageIds: seeds.messageIds }, bounds(64)),
    watch,
  });
  await scenario(bench, {
    id: `echo-verify-c64${suffix}`,
    title: "grpc-js echo: VerifyOtp",
    job: grpcJob(bench, echo.address, "VerifyOtp", { kind: "verify", items }, verifyRunBounds(items)),
    watch,
  });
}

/** A relay's time to queue a message before it answers 250 (Postfix writing its queue file, say). */
const relayDelayMs = 20;

/**
 * The ceiling and SendOtp again, against a relay that answers each message
 * after `relayDelayMs`: the regime of a real relay, where the SMTP
 * conversation and not this machine's CPU sets the ceiling.
 */
async function relayGroup(bench: Bench): Promise<void> {
  progress(`a relay that takes ${relayDelayMs} ms to queue each message (the sink answers late)`);
  const relayBounds: LoadBounds = { concurrency: 64, warmup: 200, count: 60_000, maxMs: 7000 };
  await bench.sink.setReplyDelay(relayDelayMs);
  try {
    await scenario(bench, {
      id: "smtp-ceiling-relay-c64",
      title: `SMTP ceiling, relay ${relayDelayMs} ms per message`,
      job: smtpJob(bench, true, relayBounds),
      watch: { pid: bench.loadgen.pid, role: "sender" },
    });
    await withService(bench, "relay", bench.env, async (service) => {
      await scenario(bench, {
        id: "sendotp-relay-c64",
        title: `SendOtp, relay ${relayDelayMs} ms per message`,
        job: grpcJob(bench, service.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, relayBounds),
        watch: { pid: service.pid, role: "service" },
      });
    });
  } finally {
    await bench.sink.setReplyDelay(0);
  }
}

/** Fresh services per side, off and on alternately, this many each; the pair of median ratio is reported. */
const tracingPairs = 5;
/**
 * Each fresh service is driven this long at the measured load, unmeasured,
 * before its measured run: a fresh process spends its first seconds
 * compiling (about 0.9 ms of CPU per SendOtp in its first 6 s against 0.7 ms
 * once warm), so with 1 s the pairs measured JIT time along with tracing.
 * 3 s is enough: 10 s gave the same ratios.
 */
const tracingWarmupMs = 3000;
/** The measured run after the warm-up (a few hundred calls first, to let the load generator reach full concurrency). */
const tracingBounds: LoadBounds = { concurrency: 64, warmup: 200, count: 60_000, maxMs: 4000 };
/**
 * How often the traced side's /metrics is scraped: a third of the 15 s of
 * deploy/prometheus/prometheus.yml (Prometheus' own default is 1 min), so
 * that every run, warm-up and measured part, sees scrapes.
 */
const tracingScrapeMs = 5000;

/**
 * Tracing and metrics on vs off, paired: each run gets a freshly started
 * service (off, then on, alternately), the same time-bounded warm-up and the
 * same load, so neither side profits from a process that earlier scenarios
 * warmed up; the pair of median on/off ratio gives the two rows. One pair's
 * ratio moves by about +-0.05 on a 2-core machine.
 */
async function tracingGroup(bench: Bench): Promise<void> {
  progress(
    `tracing and metrics on vs off (${tracingPairs} fresh services each, alternately, each warmed up ${tracingWarmupMs / 1000} s; the median pair reported)`,
  );
  const telemetry = probeTelemetry();
  bench.features["tracing+metrics"] = telemetry.built ? telemetry.note : `n/a: ${telemetry.reason}`;
  if (!telemetry.built) {
    notBuilt(bench, "sendotp-traced-c64", "SendOtp, tracing + metrics on", 64, telemetry.reason);
    return;
  }
  const receiver = await startOtlpReceiver();
  bench.extraPids.push(receiver.pid);
  const sides = [
    { id: "sendotp-untraced-c64", title: "SendOtp, tracing off (paired runs)", env: bench.env, traced: false },
    { id: "sendotp-traced-c64", title: "SendOtp, tracing + metrics on (paired runs)", env: { ...bench.env, ...tracingEnv(receiver.url) }, traced: true },
  ] as const;
  let scrapes = 0;
  let failures = 0;
  const send = (): RequestPlan => ({ kind: "send", runId: newRunId(), withCodes: false });
  // Bounded by time alone: the count is far above what the machine sends in that time.
  const warmupBounds: LoadBounds = { concurrency: 64, warmup: 0, count: 100_000, maxMs: tracingWarmupMs };
  try {
    // When this group runs alone the sink is fresh too: warm it on a service
    // of its own, or the first pair's first run measures its JIT.
    await withService(bench, "rig-warmup", bench.env, async (service) => {
      await bench.loadgen.run(grpcJob(bench, service.address, "SendOtp", send(), warmupBounds));
    });
    for (let pair = 1; pair <= tracingPairs; pair++) {
      // Off first in odd pairs, on first in even ones: a drift of the machine or
      // of the long-lived sink and Redis within a pair does not favour one side.
      for (const side of pair % 2 === 1 ? sides : [sides[1], sides[0]]) {
        await withService(bench, `${side.traced ? "traced" : "untraced"}-${pair}`, side.env, async (service) => {
          const run = async (): Promise<RunResult | undefined> => {
            // A fresh load generator, warmed up with the service.
            await freshLoadgen(bench);
            await bench.loadgen.run(grpcJob(bench, service.address, "SendOtp", send(), warmupBounds));
            return scenario(bench, {
              id: `${side.id}#${pair}`,
              title: side.title,
              job: grpcJob(bench, service.address, "SendOtp", send(), tracingBounds),
              watch: { pid: service.pid, role: "service" },
              keepLoadgen: true,
            });
          };
          if (!side.traced) {
            await run();
            return;
          }
          const scraped = await whileScraping(bench.metricsPort, tracingScrapeMs, run);
          scrapes += scraped.scrapes;
          failures += scraped.failures;
        });
      }
    }
    // The services have stopped gracefully: every batch of spans was flushed.
    const received = await receiver.count();
    const note =
      `OTLP receiver: ${received.requests} exports, ${(received.bytes / 1024).toFixed(0)} KiB ${JSON.stringify(received.paths)}; ` +
      `/metrics scraped ${scrapes}x (${failures} failed)`;
    bench.features["tracing+metrics"] += `; ${note}`;
    progress(`  ${note}`);
    progress(`  ${keepMedianPair(bench, sides[0].id, sides[1].id)}`);
    const index = bench.scenarios.findIndex((row) => row.id === "sendotp-traced-c64");
    const row = bench.scenarios[index];
    if (row?.status === "ok" && received.requests === 0 && scrapes === 0) {
      // The module is there but nothing was exported or served: the row would be plain SendOtp under another name.
      bench.scenarios[index] = { ...row, status: "n/a", note: "telemetry module present, but no span exported and no /metrics served" };
      bench.features["tracing+metrics"] = `n/a: telemetry module present, but nothing exported or served; ${note}`;
      progress("  sendotp-traced-c64: nothing exported or scraped: n/a (feature not built yet)");
    } else if (row?.status === "ok" && (received.requests === 0 || scrapes === 0)) {
      bench.scenarios[index] = { ...row, note: received.requests === 0 ? "no span reached the OTLP receiver" : "/metrics did not answer" };
    }
  } finally {
    bench.extraPids.length = 0;
    await receiver.close();
  }
}

/**
 * Replaces the rows `offId#1`, `onId#1`, `offId#2`... by the two runs of the
 * pair whose on/off throughput ratio is the median one, as `offId` and `onId`
 * (every run's req/s in their notes). A pair's two runs follow each other, so
 * its ratio is free of what drifts on the machine over the group's two
 * minutes; medians of each side taken apart could pair a run from a quiet
 * minute with one from a busy minute. Returns each pair's ratio, with the
 * share of a core used by processes outside the bench when it was notable.
 */
function keepMedianPair(bench: Bench, offId: string, onId: string, pairCount = tracingPairs, label = "on/off"): string {
  const byId = new Map(bench.scenarios.map((row) => [row.id, row]));
  const pairs: { pair: number; ratio: number; off: ScenarioResult; on: ScenarioResult }[] = [];
  const described: string[] = [];
  for (let pair = 1; pair <= pairCount; pair++) {
    const off = byId.get(`${offId}#${pair}`);
    const on = byId.get(`${onId}#${pair}`);
    if (off?.status !== "ok" || on?.status !== "ok" || off.run === undefined || on.run === undefined || off.run.throughput === 0) continue;
    const ratio = on.run.throughput / off.run.throughput;
    pairs.push({ pair, ratio, off, on });
    const others = Math.max(off.usage?.othersPercent ?? 0, on.usage?.othersPercent ?? 0);
    // The watched process's CPU per request too: steadier than throughput when the machine is shared.
    const cpuOff = off.usage?.cpuMsPerOp ?? 0;
    const cpuOn = on.usage?.cpuMsPerOp ?? 0;
    const roleOff = off.usage?.role ?? "";
    const roleOn = on.usage?.role ?? "";
    const cpu =
      cpuOff <= 0 || cpuOn <= 0
        ? ""
        : roleOff === roleOn
          ? ` (${roleOn} CPU ${cpuOff.toFixed(2)} -> ${cpuOn.toFixed(2)} ms)`
          : ` (${roleOff} CPU ${cpuOff.toFixed(2)} ms, ${roleOn} CPU ${cpuOn.toFixed(2)} ms)`;
    described.push(`${ratio.toFixed(2)}x${cpu}${others >= noisyPercent ? ` (other load ${others.toFixed(0)} %)` : ""}`);
  }
  const runsOf = (id: string): ScenarioResult[] => bench.scenarios.filter((row) => row.id.startsWith(`${id}#`));
  const reqs = (rows: ScenarioResult[]): string => rows.map((row) => (row.run === undefined ? row.status : row.run.throughput.toFixed(0))).join(", ");
  const offRuns = runsOf(offId);
  const onRuns = runsOf(onId);
  const all = `off ${reqs(offRuns)}; on ${reqs(onRuns)}`;
  bench.scenarios.splice(0, bench.scenarios.length, ...bench.scenarios.filter((row) => !row.id.startsWith(`${offId}#`) && !row.id.startsWith(`${onId}#`)));
  const median = [...pairs].sort((a, b) => a.ratio - b.ratio)[Math.floor((pairs.length - 1) / 2)];
  const off = median?.off ?? offRuns[0];
  const on = median?.on ?? onRuns[0];
  const note = median === undefined ? `no pair measured (req/s: ${all})` : `pair ${median.pair} of ${pairCount}, the median ${label} ratio (req/s: ${all})`;
  if (off !== undefined) bench.scenarios.push({ ...off, id: offId, note });
  if (on !== undefined) bench.scenarios.push({ ...on, id: onId, note });
  return `${label} per pair: ${described.join(", ")}${median === undefined ? "" : `; the median pair (${median.pair}) is reported`}`;
}

async function dkimGroup(bench: Bench): Promise<void> {
  progress("DKIM signing (RSA 2048)");
  const dkim = dkimEnv();
  const probe = probeDkim(bench.env, dkim);
  bench.features["dkim"] = probe.built ? probe.note : `n/a: ${probe.reason}`;
  if (!probe.built) {
    notBuilt(bench, "sendotp-dkim-c64", "SendOtp, DKIM RSA 2048", 64, probe.reason);
    return;
  }
  await withService(bench, "dkim", { ...bench.env, ...dkim }, async (service) => {
    await scenario(bench, {
      id: "sendotp-dkim-c64",
      title: "SendOtp, DKIM RSA 2048",
      job: grpcJob(bench, service.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, bounds(64)),
      watch: { pid: service.pid, role: "service" },
    });
  });
  const index = bench.scenarios.findIndex((row) => row.id === "sendotp-dkim-c64");
  const row = bench.scenarios[index];
  if (row?.status === "ok" && (row.sink?.signed ?? 0) === 0) {
    // The config takes DKIM_* but nothing was signed: the row would be a plain SendOtp under another name.
    bench.scenarios[index] = { ...row, status: "n/a", note: "config accepts DKIM_* but no message reached the sink signed" };
    bench.features["dkim"] = "n/a: config accepts DKIM_* but messages are not signed yet";
    progress("  sendotp-dkim-c64: no signed message at the sink: n/a (feature not built yet)");
  } else if (row?.sink !== undefined) {
    bench.features["dkim"] += `; ${row.sink.signed} of ${row.sink.messages} messages signed at the sink`;
  }
}

async function soakRun(bench: Bench): Promise<void> {
  const count = bench.options.soak;
  progress(`soak: ${count} SendOtp at concurrency 64 on a fresh service and an empty Redis (bounded to ${bench.options.soakMaxMs / 1000} s)`);
  await bench.redis.flush();
  const milestones: number[] = [];
  for (let n = 10_000; n < count; n += 10_000) milestones.push(n);
  milestones.push(count);
  await withService(bench, "soak", bench.env, async (service) => {
    const started = performance.now();
    const pending: Promise<void>[] = [];
    await scenario(bench, {
      id: "sendotp-soak",
      title: `SendOtp soak (${count} sends)`,
      job: grpcJob(bench, service.address, "SendOtp", { kind: "send", runId: newRunId(), withCodes: false }, {
        concurrency: 64,
        warmup: 0,
        count,
        maxMs: bench.options.soakMaxMs,
      }, { milestones }),
      watch: { pid: service.pid, role: "service" },
      onMilestone: (sends) => {
        const rss = readProc(service.pid)?.rssBytes ?? 0;
        const elapsedS = (performance.now() - started) / 1000;
        pending.push(
          bench.redis.usedMemoryBytes().then((used) => {
            bench.soak.push({ sends, elapsedS, rssMb: rss / 2 ** 20, redisUsedMb: used / 2 ** 20 });
            if (sends === 10_000 || sends === count || sends % 50_000 === 0) {
              progress(`  ${sends} sends after ${elapsedS.toFixed(0)} s: service RSS ${(rss / 2 ** 20).toFixed(0)} MB, Redis used_memory ${(used / 2 ** 20).toFixed(0)} MB`);
            }
          }),
        );
      },
    });
    await Promise.all(pending);
    bench.soak.sort((a, b) => a.sends - b.sends);
  });
}

// ---------------------------------------------------------------------------

export async function main(argv: readonly string[]): Promise<number> {
  let options: BenchOptions | undefined;
  try {
    options = readOptions(argv);
    if (options?.perf === true) checkPerf();
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`otp-email bench: ${error.message}`);
    return 2;
  }
  if (options === undefined) {
    console.log(usage);
    return 0;
  }
  const startedAt = new Date();
  const workDir = mkdtempSync(join(tmpdir(), "otp-bench-"));
  mkdirSync(options.outDir, { recursive: true });
  progress(`otp-email bench (${options.profile}); service logs in ${workDir}`);
  // An interrupted or crashed run keeps its logs (they may say why), and says where they are.
  let logsSettled = false;
  process.once("exit", () => {
    if (!logsSettled) console.error(`otp-email bench: stopped before the end; service logs kept in ${workDir}`);
  });

  const redis = await startRedis();
  let sink: Sink | undefined;
  let loadgen: Loadgen | undefined;
  let bench: Bench | undefined;
  try {
    sink = await startSink(options.plainSmtp ? undefined : makeSelfSigned());
    loadgen = await startLoadgen();
    const caller = newBenchCaller();
    const metricsPort = await freePort();
    const env = baseEnv({ redisUrl: redis.url, smtpUrl: sink.url, smtpTlsCa: sink.tlsCa, poolSize: options.poolSize, caller, metricsPort, deadDnsPort: await freePort() });
    checkBaseEnv(env);
    const present = probeFeatures(env);
    bench = {
      options,
      redis,
      sink,
      loadgen,
      caller,
      env,
      metricsPort,
      workDir,
      scenarios: [],
      roundTrips: [],
      soak: [],
      extraPids: [],
      features: {
        limits: present.limits ? "on, limits far above the load (LIMIT_*)" : "not in the tree yet",
        "caller auth": present.callerAuth ? "on, one bearer token (AUTH_TOKENS)" : "not in the tree yet",
      },
    };
    const overrides = Object.entries(options.serviceEnv);
    if (overrides.length > 0) {
      // Long values (a key, a certificate) shortened: the table names the setting, the caller knows the value.
      const shown = overrides.map(([key, value]) => `${key}=${value.length > 40 ? `${value.slice(0, 37)}...` : value}`);
      bench.features["service env"] = `every service also runs with ${shown.join(" ")} (--service-env)`;
    }
    if (options.callerTraceparent) {
      bench.features["caller trace"] = "every gRPC request carries a fresh sampled traceparent, as a traced caller's would (--caller-traceparent)";
    }
    if (options.profile === "smoke") await smokeRun(bench);
    else await fullRun(bench);
  } finally {
    // The bench's current one (scenarios replace it).
    await (bench?.loadgen ?? loadgen)?.close();
    await sink?.close();
    await redis.stop();
    killChildren();
  }

  const machine: Machine = {
    cpuModel: cpus()[0]?.model.trim() ?? "unknown",
    cores: availableParallelism(),
    memoryGb: Math.round(totalmem() / 2 ** 30),
    node: process.versions.node,
    redis: redis.version,
    kernel: release(),
  };
  const report: BenchReport = {
    startedAt: startedAt.toISOString(),
    durationS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    machine,
    options: { ...options, groups: [...options.groups], outDir: undefined },
    serviceCommand: readStartCommand().text,
    features: bench.features,
    scenarios: bench.scenarios,
    roundTrips: bench.roundTrips,
    soak: bench.soak,
    targets: evaluateTargets(bench.scenarios, bench.roundTrips, bench.soak),
  };
  writeFileSync(join(options.outDir, "results.json"), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(options.outDir, "results.svg"), renderSvg(report));

  console.log(`\nOtpEmail benchmark, ${report.startedAt} (${report.durationS} s)`);
  console.log(`machine: ${formatMachine(machine)}`);
  console.log(`service: ${report.serviceCommand}; SMTP pool ${options.poolSize}; limits: ${bench.features["limits"]}; caller auth: ${bench.features["caller auth"]}\n`);
  console.log(formatScenarioTable(report.scenarios));
  setCores(machine.cores);
  console.log(`\nCPU ms per request by process (all share the ${machine.cores} cores; the last column is what they would allow if nothing else ran):`);
  console.log(formatCpuBreakdown(report.scenarios));
  if (report.roundTrips.length > 0) {
    console.log(`\nRedis per call at concurrency 1: round trips (read events) and commands (MONITOR; Lua's own calls excluded):`);
    for (const entry of report.roundTrips) {
      console.log(
        `  ${entry.method.padEnd(18)} ${entry.roundTripsPerCall.toFixed(2)} round trips, ${entry.commandsPerCall.toFixed(2)} commands ${JSON.stringify(entry.byCommand)} over ${entry.calls} calls`,
      );
    }
  }
  if (report.soak.length > 0) {
    console.log(`\nSoak: service RSS and Redis used_memory by sends`);
    for (const point of report.soak) {
      console.log(`  ${String(point.sends).padStart(7)} sends  ${point.elapsedS.toFixed(0).padStart(4)} s  RSS ${point.rssMb.toFixed(0).padStart(4)} MB  Redis ${point.redisUsedMb.toFixed(0).padStart(4)} MB`);
    }
  }
  const notes = Object.entries(bench.features).map(([name, value]) => `  ${name}: ${value}`);
  console.log(`\nFeatures:\n${notes.join("\n")}`);
  console.log(`\nTargets (ratios within this run):\n${formatTargets(report.targets)}`);
  console.log(`\nwrote ${join(options.outDir, "results.json")} and results.svg`);
  const failed = bench.scenarios.some((row) => row.status === "failed");
  // The service logs (about 1 KB per SendOtp) are kept only when something failed, or when asked.
  if (failed || options.keepLogs) console.log(`service logs kept in ${workDir}`);
  else rmSync(workDir, { recursive: true, force: true });
  logsSettled = true;
  return failed ? 1 : 0;
}
