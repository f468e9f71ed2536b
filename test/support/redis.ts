/**
 * Real Redis for tests: a private `redis-server` on a free loopback port, the
 * URL of the one the whole run shares (see global-setup.ts), and per-test key
 * prefixes so tests never see each other's keys.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { rmSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { inject } from "vitest";
import { freePort } from "./ports.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** The Redis every test file shares: REDIS_URL, or the private server global-setup.ts started. */
    redisUrl: string;
  }
}

/** A private redis-server process; `stop` and `start` simulate an outage on the same port. */
export interface RedisServer {
  readonly url: string;
  readonly port: number;
  /** Kills the server (idempotent). Its data is gone: nothing is persisted. */
  stop(): Promise<void>;
  /** Starts it again on the same port and waits until it answers (no-op while running). */
  start(): Promise<void>;
  /**
   * Sends `signal` to the running server: SIGSTOP freezes it with every
   * connection open (a hung Redis, as clients see it), SIGCONT wakes it.
   */
  signal(signal: NodeJS.Signals): void;
}

const missingRedisHelp =
  "redis-server was not found on PATH. Install it (`apt-get install redis-server`, " +
  "`brew install redis`) or set REDIS_URL to a Redis the tests may use.";

/** Children still running, killed if the test process exits without stopping them. */
const running = new Set<ChildProcess>();
/** Temporary directories holding TLS servers' key files, removed at exit. */
const tlsDirs = new Set<string>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
  for (const dir of tlsDirs) rmSync(dir, { recursive: true, force: true });
});

/** TLS for a private redis-server: PEM texts (written to a temporary directory for redis-server). */
export interface RedisServerTls {
  /** The server's certificate chain and key. */
  readonly cert: string;
  readonly key: string;
  /** The CA that signs `cert`: what a client must trust. */
  readonly ca: string;
}

export interface RedisServerOptions {
  /** Serve TLS only (`--port 0 --tls-port`), client certificates not required; the URL is rediss://. */
  readonly tls?: RedisServerTls;
}

/** Spawns a private, non-persistent redis-server on a free loopback port and waits until it answers. */
export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  // Another process may grab the free port before redis-server binds it: try a few.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await serverOnPort(port, options.tls);
    } catch (error) {
      if (attempt >= 3 || !(error instanceof PortInUseError)) throw error;
    }
  }
}

/** The URL of the Redis shared by the whole run, handed over by global-setup.ts. */
export function redisUrlForTests(): string {
  return inject("redisUrl");
}

/** A fresh key prefix for one test (`otp-test:<random>:`). */
export function randomPrefix(): string {
  return `otp-test:${randomBytes(6).toString("hex")}:`;
}

/** Every key under `prefix` (SCAN, never KEYS). The prefix must hold no glob characters. */
export async function scanPrefix(redis: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== "0");
  return keys;
}

/**
 * Resolves when a Redis answers PING at `url`, trying again until `timeoutMs`
 * has passed (then rejects with the last reason) or `signal` aborts.
 */
export async function pingRedis(url: string, timeoutMs: number, signal?: AbortSignal, tlsCa?: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    signal?.throwIfAborted();
    const client = new Redis(url, {
      ...(tlsCa === undefined ? {} : { tls: { ca: tlsCa } }),
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      connectTimeout: timeoutMs,
      commandTimeout: timeoutMs,
    });
    // The 'error' event says why (ECONNREFUSED...); connect() only says "Connection is closed".
    let reason: unknown;
    client.on("error", (error: unknown) => {
      reason ??= error;
    });
    try {
      await client.connect();
      await client.ping();
      return;
    } catch (error) {
      if (Date.now() >= deadline) throw reason ?? error;
    } finally {
      client.disconnect();
    }
    await sleep(50);
  }
}

class PortInUseError extends Error {}

async function serverOnPort(port: number, tls: RedisServerTls | undefined): Promise<RedisServer> {
  const url = `${tls === undefined ? "redis" : "rediss"}://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  let tlsArgs: string[] = [];
  if (tls !== undefined) {
    const dir = await mkdtemp(join(tmpdir(), "otp-redis-tls-"));
    tlsDirs.add(dir);
    await Promise.all([writeFile(join(dir, "cert.pem"), tls.cert), writeFile(join(dir, "key.pem"), tls.key), writeFile(join(dir, "ca.pem"), tls.ca)]);
    tlsArgs = [
      "--port", "0", "--tls-port", String(port),
      "--tls-cert-file", join(dir, "cert.pem"), "--tls-key-file", join(dir, "key.pem"), "--tls-ca-cert-file", join(dir, "ca.pem"),
      "--tls-auth-clients", "no",
    ];
  }

  async function start(): Promise<void> {
    if (child !== undefined) return;
    const server = spawn(
      "redis-server",
      ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", ...(tls === undefined ? ["--port", String(port)] : tlsArgs)],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    const collect = (chunk: Buffer): void => {
      output = (output + chunk.toString("utf8")).slice(-4000);
    };
    server.stdout?.on("data", collect);
    server.stderr?.on("data", collect);
    // Either it answers, or it fails to spawn / exits early: whichever comes first.
    const failed = new Promise<never>((_, reject) => {
      server.once("error", (error: NodeJS.ErrnoException) => {
        reject(error.code === "ENOENT" ? new Error(missingRedisHelp, { cause: error }) : error);
      });
      server.once("exit", (code, signal) => {
        const message = `redis-server on port ${port} exited early (${signal ?? code}):\n${output}`;
        reject(/Address already in use/i.test(output) ? new PortInUseError(message) : new Error(message));
      });
    });
    // An exit after startup is stop() at work, not a failure.
    failed.catch(() => undefined);
    const giveUp = new AbortController();
    try {
      await Promise.race([pingRedis(url, 10_000, giveUp.signal, tls?.ca), failed]);
    } catch (error) {
      giveUp.abort();
      server.kill("SIGKILL");
      throw error;
    }
    child = server;
    running.add(server);
  }

  async function stop(): Promise<void> {
    const server = child;
    if (server === undefined) return;
    child = undefined;
    if (server.exitCode === null && server.signalCode === null) {
      const exited = once(server, "exit");
      // A crash, as far as clients can tell: no goodbye, no persistence.
      server.kill("SIGKILL");
      await exited;
    }
    running.delete(server);
  }

  function signal(name: NodeJS.Signals): void {
    if (child === undefined || !child.kill(name)) throw new Error(`redis-server on port ${port} is not running: cannot send ${name}`);
  }

  await start();
  return { url, port, start, stop, signal };
}

