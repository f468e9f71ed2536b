/**
 * The benchmark's processes: a private redis-server, the SMTP sink, the load
 * generator, the echo server, the OTLP receiver and the service itself, each
 * a separate child on loopback. Every child is tracked and killed (by its own
 * pid) if the benchmark exits early.
 */
import { fork, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { closeSync, openSync, readFileSync } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "../gen/health/v1/health_pb.js";
import { serviceDefinition } from "../src/rpc/service-adapter.js";
import { freePort } from "../test/support/ports.js";
import type { SelfSigned } from "../test/support/self-signed.js";
import { waitForEvent } from "./ipc.js";
import type {
  EchoCommand,
  Job,
  ListeningEvent,
  LoadgenCommand,
  LoadgenEvent,
  ReceiverCommand,
  ReceiverEvent,
  RpcMethod,
  RunResult,
  SinkCommand,
  SinkEvent,
  SmtpTarget,
} from "./protocol.js";

/** dist/bench: the compiled benchmark (it only ever runs compiled). */
export const benchDir = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(benchDir, "../..");

const children = new Set<ChildProcess>();

/** Kills `child` with the others if the bench exits early. */
export function track<T extends ChildProcess>(child: T): T {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

/** Kills every child still running, each by its own pid. */
export function killChildren(): void {
  for (const child of children) child.kill("SIGKILL");
}
process.once("exit", killChildren);
// A signal ends the process without "exit": the children (the service and a redis-server have no IPC channel to
// notice) would live on, holding their ports and CPU. A terminal's Ctrl-C reaches them too; `kill` or a timeout
// reaches only the bench.
for (const [signal, number] of [["SIGINT", 2], ["SIGTERM", 15], ["SIGHUP", 1]] as const) {
  process.once(signal, () => {
    killChildren();
    process.exit(128 + number);
  });
}

/** Ends a child: `polite` first, SIGKILL if it is still there after `graceMs`. */
async function endChild(child: ChildProcess, polite: () => void, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  polite();
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

function forkBenchChild(name: string, env: Readonly<Record<string, string>> = {}): ChildProcess & { pid: number } {
  const child = track(
    fork(join(benchDir, `${name}.js`), [], { stdio: ["ignore", "inherit", "inherit", "ipc"], env: { ...process.env, ...env } }),
  );
  if (child.pid === undefined) throw new Error(`could not start ${name}`);
  return child as ChildProcess & { pid: number };
}

function sendCommand<C>(child: ChildProcess, command: C): void {
  if (child.connected) child.send(command as object);
}

// ---------------------------------------------------------------------------
// Load generator

export interface RunHooks {
  /** The first measured request was just issued. */
  readonly onMeasuring?: () => void;
  /** `completed` requests (warm-up included) have finished. */
  readonly onMilestone?: (completed: number) => void;
}

export interface Loadgen {
  readonly pid: number;
  run(job: Job, hooks?: RunHooks): Promise<RunResult>;
  close(): Promise<void>;
}

export async function startLoadgen(): Promise<Loadgen> {
  const child = forkBenchChild("loadgen");
  await waitForEvent<LoadgenEvent, "ready">(child, "ready", 15_000);
  return {
    pid: child.pid,
    run(job, hooks = {}) {
      return new Promise<RunResult>((resolvePromise, reject) => {
        const cleanup = (): void => {
          clearTimeout(timer);
          child.off("message", onMessage);
          child.off("exit", onExit);
        };
        const onMessage = (message: unknown): void => {
          const event = message as LoadgenEvent;
          switch (event.type) {
            case "measuring":
              hooks.onMeasuring?.();
              return;
            case "milestone":
              hooks.onMilestone?.(event.completed);
              return;
            case "done":
              cleanup();
              resolvePromise(event.result);
              return;
            case "failed":
              cleanup();
              reject(new Error(`load generator: ${event.message}`));
              return;
            case "ready":
              return;
          }
        };
        const onExit = (): void => {
          cleanup();
          reject(new Error("the load generator exited during a run"));
        };
        // In-flight requests have a 30 s deadline; a run cannot take longer than this.
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`load generator: no result ${job.maxMs + 60_000} ms after the run started`));
        }, job.maxMs + 60_000);
        child.on("message", onMessage);
        child.once("exit", onExit);
        sendCommand<LoadgenCommand>(child, { type: "run", job });
      });
    },
    close: () => endChild(child, () => sendCommand<LoadgenCommand>(child, { type: "exit" }), 5000),
  };
}

// ---------------------------------------------------------------------------
// SMTP sink, echo server, OTLP receiver

export interface Sink {
  readonly pid: number;
  readonly port: number;
  /** As SMTP_URL: `smtp://127.0.0.1:PORT` (STARTTLS required), or with `?starttls=off` when plaintext. */
  readonly url: string;
  /** The certificate the sink presents for STARTTLS (PEM), for clients to trust; undefined when plaintext. */
  readonly tlsCa: string | undefined;
  count(): Promise<{ accepted: number; signed: number; connections: number }>;
  /** From now on, each message's final reply waits `ms` (0: at once). */
  setReplyDelay(ms: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts the sink. With `tls` (a key and certificate for 127.0.0.1) it offers
 * STARTTLS like a real relay, and every client (the ceiling, the naive
 * design and the service) must use it.
 */
export async function startSink(tls: SelfSigned | undefined): Promise<Sink> {
  const child = forkBenchChild("smtp-sink", tls === undefined ? {} : { BENCH_SINK_TLS_KEY: tls.key, BENCH_SINK_TLS_CERT: tls.cert });
  const { port } = await waitForEvent<SinkEvent, "listening">(child, "listening", 15_000);
  return {
    pid: child.pid,
    port,
    url: tls === undefined ? `smtp://127.0.0.1:${port}?starttls=off` : `smtp://127.0.0.1:${port}`,
    tlsCa: tls?.cert,
    async count() {
      const counted = waitForEvent<SinkEvent, "count">(child, "count", 10_000);
      sendCommand<SinkCommand>(child, { type: "count" });
      const { accepted, signed, connections } = await counted;
      return { accepted, signed, connections };
    },
    async setReplyDelay(ms) {
      const set = waitForEvent<SinkEvent, "delay-set">(child, "delay-set", 10_000);
      sendCommand<SinkCommand>(child, { type: "delay", ms });
      await set;
    },
    close: () => endChild(child, () => sendCommand<SinkCommand>(child, { type: "exit" }), 5000),
  };
}

export interface EchoServer {
  readonly pid: number;
  readonly address: string;
  close(): Promise<void>;
}

/** Starts the bare grpc-js server answering each method with `responses[method]` (base64 protobuf). */
export async function startEchoServer(responses: Partial<Record<RpcMethod, string>>, smtp?: SmtpTarget): Promise<EchoServer> {
  const child = forkBenchChild("echo-server");
  const listening = waitForEvent<ListeningEvent, "listening">(child, "listening", 15_000);
  sendCommand<EchoCommand>(child, { type: "start", responses, ...(smtp === undefined ? {} : { smtp }) });
  const { port } = await listening;
  return {
    pid: child.pid,
    address: `127.0.0.1:${port}`,
    close: () => endChild(child, () => sendCommand<EchoCommand>(child, { type: "exit" }), 5000),
  };
}

export interface OtlpReceiver {
  readonly pid: number;
  readonly url: string;
  count(): Promise<{ requests: number; bytes: number; paths: Readonly<Record<string, number>> }>;
  close(): Promise<void>;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const child = forkBenchChild("otlp-receiver");
  const { port } = await waitForEvent<ReceiverEvent, "listening">(child, "listening", 15_000);
  return {
    pid: child.pid,
    url: `http://127.0.0.1:${port}`,
    async count() {
      const counted = waitForEvent<ReceiverEvent, "count">(child, "count", 10_000);
      sendCommand<ReceiverCommand>(child, { type: "count" });
      const { requests, bytes, paths } = await counted;
      return { requests, bytes, paths };
    },
    close: () => endChild(child, () => sendCommand<ReceiverCommand>(child, { type: "exit" }), 5000),
  };
}

// ---------------------------------------------------------------------------
// Redis

export interface BenchRedis {
  readonly pid: number;
  readonly url: string;
  readonly version: string;
  /** INFO <section> as key -> value. */
  info(section: string): Promise<Record<string, string>>;
  usedMemoryBytes(): Promise<number>;
  /**
   * Read events Redis has processed (INFO stats total_reads_processed): one
   * per batch of commands a client sends and then waits on, so at
   * concurrency 1 its growth per call is the call's round trips.
   */
  readsProcessed(): Promise<number>;
  /** Drops every key (between scenarios that measure memory). */
  flush(): Promise<void>;
  /**
   * Runs `work` with MONITOR on and counts the commands clients sent
   * (commands run by Lua scripts are not counted: they are no round trip).
   */
  countCommands<T>(work: () => Promise<T>): Promise<{ result: T; counts: Record<string, number> }>;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<BenchRedis> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await redisOnPort(port);
    } catch (error) {
      if (attempt >= 3) throw error;
    }
  }
}

async function redisOnPort(port: number): Promise<BenchRedis> {
  const url = `redis://127.0.0.1:${port}`;
  const child = track(
    spawn("redis-server", ["--save", "", "--appendonly", "no", "--port", String(port), "--bind", "127.0.0.1"], {
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  let output = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-2000);
  });
  const spawned = new Promise<never>((_resolve, reject) => {
    child.once("error", (error: NodeJS.ErrnoException) =>
      reject(error.code === "ENOENT" ? new Error("redis-server is not on PATH (apt-get install redis-server)") : error),
    );
    child.once("exit", (code, signal) => reject(new Error(`redis-server exited early (${signal ?? code}): ${output}`)));
  });
  spawned.catch(() => undefined);
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 50 });
  client.on("error", () => undefined);
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await Promise.race([client.connect().then(() => client.ping()), spawned]);
      break;
    } catch (error) {
      if (Date.now() > deadline || child.exitCode !== null) {
        client.disconnect();
        child.kill("SIGKILL");
        throw error;
      }
      client.disconnect();
      await sleep(50);
    }
  }
  if (child.pid === undefined) throw new Error("redis-server has no pid");
  const pid = child.pid;

  const info = async (section: string): Promise<Record<string, string>> => {
    const text = await client.info(section);
    const fields: Record<string, string> = {};
    for (const line of text.split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon > 0 && !line.startsWith("#")) fields[line.slice(0, colon)] = line.slice(colon + 1);
    }
    return fields;
  };
  const version = (await info("server"))["redis_version"] ?? "unknown";

  return {
    pid,
    url,
    version,
    info,
    async readsProcessed() {
      return Number((await info("stats"))["total_reads_processed"] ?? Number.NaN);
    },
    async usedMemoryBytes() {
      return Number((await info("memory"))["used_memory"] ?? 0);
    },
    async flush() {
      await client.flushall();
    },
    async countCommands<T>(work: () => Promise<T>) {
      const monitor = await monitorConnection(client);
      const counts: Record<string, number> = {};
      const ownPorts = new Set([client.stream.localPort, monitor.stream.localPort].map(String));
      monitor.on("monitor", (_time: string, args: string[], source: string) => {
        // source is "127.0.0.1:PORT" for a client, "lua" for a script's own calls.
        const clientPort = source.split(":").at(-1) ?? "";
        if (source === "lua" || ownPorts.has(clientPort)) return;
        const name = (args[0] ?? "").toLowerCase();
        counts[name] = (counts[name] ?? 0) + 1;
      });
      try {
        const result = await work();
        // MONITOR lines trail the replies a little.
        await sleep(300);
        return { result, counts };
      } finally {
        monitor.disconnect();
        // Redis counts reading the closed connection's EOF as a read event:
        // let it happen before anyone counts round trips.
        await sleep(200);
      }
    },
    async stop() {
      client.disconnect();
      await endChild(child, () => child.kill("SIGTERM"), 5000);
    },
  };
}

/**
 * A connection in MONITOR mode. ioredis's own `monitor()` fails when another
 * client's command is echoed in the same read as MONITOR's OK ("Command queue
 * state error": the mode is set a microtask after the OK), and the connection
 * it made then lives on, reconnecting for ever once Redis stops, so the bench
 * never exits. Here a failed one is closed and another made.
 */
async function monitorConnection(client: Redis): Promise<Redis> {
  for (let attempt = 1; ; attempt++) {
    const monitor = client.duplicate({ monitor: true, lazyConnect: false, retryStrategy: () => null });
    try {
      await new Promise<void>((resolve, reject) => {
        monitor.once("error", reject);
        monitor.once("monitoring", () => {
          monitor.off("error", reject);
          resolve();
        });
      });
      monitor.on("error", () => undefined);
      return monitor;
    } catch (error) {
      monitor.disconnect();
      if (attempt === 3) throw error;
    }
  }
}

// ---------------------------------------------------------------------------
// The service, exactly as `npm start` runs it

export interface StartCommand {
  /** `npm start`'s script, as read. */
  readonly text: string;
  readonly env: Readonly<Record<string, string>>;
  /** Node options before the script (`--import ./dist/src/telemetry/...`). */
  readonly nodeArgs: readonly string[];
  readonly script: string;
}

/** Reads `scripts.start` from package.json now: `[VAR=value ...] node [options] script`. */
export function readStartCommand(): StartCommand {
  const pkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { scripts?: Record<string, string> };
  const text = pkg.scripts?.["start"] ?? "";
  const tokens = text.trim().split(/\s+/);
  const env: Record<string, string> = {};
  while (tokens.length > 0 && /^[A-Za-z_][A-Za-z0-9_]*=/.test(tokens[0] ?? "")) {
    const [name, ...value] = (tokens.shift() ?? "").split("=");
    env[name ?? ""] = value.join("=");
  }
  if (tokens[0] !== "node" || tokens.length < 2 || /[|&;<>$`'"]/.test(text)) {
    throw new Error(`package.json scripts.start is not of the form "node [options] script": ${JSON.stringify(text)}`);
  }
  return { text, env, nodeArgs: tokens.slice(1, -1), script: tokens.at(-1) ?? "" };
}

/** The start command with `dist/` (and `./dist/`) in its paths replaced by `distDir`. */
function withDistDir(start: StartCommand, distDir: string | undefined): StartCommand {
  if (distDir === undefined) return start;
  // `--import` needs a path, not a bare name: keep relative paths ./-prefixed.
  const root = isAbsolute(distDir) ? distDir : `./${relative(repoRoot, resolve(repoRoot, distDir))}`;
  const swap = (arg: string): string => arg.replace(/^(\.\/)?dist\//, `${root}/`);
  return { ...start, nodeArgs: start.nodeArgs.map(swap), script: swap(start.script) };
}

export interface ServiceProcess {
  readonly pid: number;
  readonly address: string;
  readonly logPath: string;
  readonly command: string;
  /** SIGTERM (a graceful stop), SIGKILL after 20 s. */
  stop(): Promise<void>;
}

export interface StartServiceOptions {
  /** The service's whole environment besides PATH and HOME (GRPC_ADDR is added). */
  readonly env: Readonly<Record<string, string>>;
  /** Extra node options, after the start script's own (`--cpu-prof`...). */
  readonly extraNodeArgs?: readonly string[];
  /** stdout and stderr (the JSON log) go here. */
  readonly logPath: string;
  readonly token?: string | undefined;
  /**
   * Run another build of the service: `dist/` in the start command's paths
   * becomes this directory (a copy of dist/ kept from before a change).
   */
  readonly distDir?: string | undefined;
}

export async function startService(options: StartServiceOptions): Promise<ServiceProcess> {
  const start = withDistDir(readStartCommand(), options.distDir);
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const env: Record<string, string> = {
    PATH: process.env["PATH"] ?? "/usr/bin:/bin",
    HOME: process.env["HOME"] ?? "/tmp",
    ...start.env,
    ...options.env,
    GRPC_ADDR: address,
  };
  const args = [...start.nodeArgs, ...(options.extraNodeArgs ?? []), start.script];
  const log = openSync(options.logPath, "w");
  let child: ChildProcess;
  try {
    child = track(spawn(process.execPath, args, { cwd: repoRoot, env, stdio: ["ignore", log, log] }));
  } finally {
    closeSync(log);
  }
  if (child.pid === undefined) throw new Error("could not start the service");
  const pid = child.pid;
  const service: ServiceProcess = {
    pid,
    address,
    logPath: options.logPath,
    command: `node ${args.join(" ")}`,
    stop: () => endChild(child, () => child.kill("SIGTERM"), 20_000),
  };
  try {
    await waitUntilServing(address, child, options.token, 30_000);
  } catch (error) {
    await service.stop();
    const tail = readFileSync(options.logPath, "utf8").split("\n").slice(-15).join("\n");
    throw new Error(`the service did not become SERVING: ${(error as Error).message}\n--- ${options.logPath} (tail)\n${tail}`, {
      cause: error,
    });
  }
  return service;
}

const healthDefinition = serviceDefinition(Health);
const HealthClient = grpc.makeGenericClientConstructor(healthDefinition, "Health");

/** Polls grpc.health.v1.Health/Check until SERVING; fails when the process exits or time runs out. */
async function waitUntilServing(address: string, child: ChildProcess, token: string | undefined, timeoutMs: number): Promise<void> {
  const check = healthDefinition["Check"];
  if (check === undefined) throw new Error("Health has no Check");
  const client = new HealthClient(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
  const deadline = Date.now() + timeoutMs;
  let last = "no answer yet";
  try {
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`it exited (${child.signalCode ?? child.exitCode})`);
      try {
        const response = await new Promise<HealthCheckResponse>((resolvePromise, reject) => {
          client.makeUnaryRequest(
            check.path,
            check.requestSerialize,
            check.responseDeserialize,
            create(HealthCheckRequestSchema, { service: "" }),
            metadata,
            { deadline: Date.now() + 1000 },
            (error, value) => (error ? reject(error) : resolvePromise(value as HealthCheckResponse)),
          );
        });
        if (response.status === ServingStatus.SERVING) return;
        last = `status ${ServingStatus[response.status]}`;
      } catch (error) {
        last = (error as Error).message;
      }
      await sleep(100);
    }
    throw new Error(`not SERVING after ${timeoutMs} ms (last: ${last})`);
  } finally {
    client.close();
  }
}
