/**
 * A real Redis Sentinel set for tests: a primary, a replica of it
 * (`--replicaof`) and three `redis-server --sentinel` processes monitoring
 * them as one master set, each on a free loopback port, in a temporary
 * directory removed on stop. Nothing is persisted. The sentinels judge a
 * primary down after 1 s (not the usual 30 s) so that a failover after a
 * crash takes seconds; `failover()` asks for one at once (SENTINEL FAILOVER).
 * They are told the replica and each other in their configuration, and the
 * replica syncs without Redis's 5 s diskless-sync delay: the set is up in
 * well under a second.
 *
 * With `password`, the data nodes require it (requirepass, and masterauth so
 * that either can replicate from the other after a failover) and the
 * sentinels use it to reach them (auth-pass); with `sentinelPassword`, the
 * sentinels require theirs (requirepass, which they also present to each
 * other).
 *
 * With `hostnames` (the Bitnami chart's default, `sentinel.useHostnames`),
 * every node goes by a name rather than an IP: the data nodes announce
 * themselves by it (replica-announce-ip), the sentinels too (announce-ip),
 * and the sentinels resolve names (resolve-hostnames) and give names, not
 * IPs, to their clients (announce-hostnames): SENTINEL
 * GET-MASTER-ADDR-BY-NAME and `+switch-master` say `localhost`, not
 * `127.0.0.1`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { freePort } from "./ports.js";
import type { RedisServerTls } from "./redis.js";

export interface RedisSentinelSet {
  /**
   * REDIS_URL for sentinel mode: every sentinel, the data nodes' password on
   * the first (`redis://:pw@127.0.0.1:S1,redis://127.0.0.1:S2,...`;
   * rediss:// with TLS; the name instead of 127.0.0.1 with `hostnames`).
   */
  readonly url: string;
  /** The master set's name (REDIS_SENTINEL_MASTER). */
  readonly master: string;
  /** What every node goes by: `127.0.0.1`, or with `hostnames` the name. */
  readonly host: string;
  readonly sentinelPorts: readonly number[];
  /** The data nodes' ports: the first primary, then its replica. */
  readonly dataPorts: readonly [number, number];
  /** A client of the data node on `port` (authenticated), for inspection; closed on stop. */
  node(port: number): Redis;
  /** A client of the `index`th sentinel (authenticated); closed on stop. */
  sentinel(index: number): Redis;
  /** The port of the master as the first sentinel that answers names it. */
  masterPort(): Promise<number>;
  /** Resolves when every replica of the master has every write the master has. */
  synced(): Promise<void>;
  /**
   * Asks a sentinel for a failover (SENTINEL FAILOVER) and resolves, with
   * the new master's port, once every sentinel names it and it answers as a
   * master. The old master is demoted later by the sentinels (some seconds).
   */
  failover(): Promise<number>;
  /**
   * Resolves, with the port, once every sentinel names a master other than
   * `oldPort` and that one answers as a master (after `kill`).
   */
  masterOtherThan(oldPort: number, timeoutMs?: number): Promise<number>;
  /** Resolves once the data node on `port` is a replica with its link to the master up. */
  replicating(port: number, timeoutMs?: number): Promise<void>;
  /** Kills the data node on `port` (SIGKILL: a crash, no goodbye). */
  kill(port: number): Promise<void>;
  /**
   * Freezes the `index`th sentinel (SIGSTOP): its connections stay open but
   * it hears and says nothing, as a sentinel that is slow to learn a
   * failover. `masterPort`, `masterOtherThan` and `failover` ask only the
   * others meanwhile.
   */
  pauseSentinel(index: number): void;
  /** Lets a paused sentinel go on (SIGCONT): it learns what it missed from the others and announces it. */
  resumeSentinel(index: number): void;
  /**
   * Freezes the data node on `port` (SIGSTOP), as a master that hangs: its
   * connections stay open, and new ones wait in its accept queue, unanswered.
   */
  pauseNode(port: number): void;
  /** Lets a paused data node go on (SIGCONT). */
  resumeNode(port: number): void;
  stop(): Promise<void>;
}

export interface RedisSentinelOptions {
  /** The data nodes' password (requirepass, masterauth, the sentinels' auth-pass). */
  readonly password?: string;
  /** The sentinels' own password (their requirepass). */
  readonly sentinelPassword?: string;
  /** TLS only, for data nodes, sentinels and replication (`--port 0 --tls-port`); client certificates not required. */
  readonly tls?: RedisServerTls;
  /** Default `mymaster`. */
  readonly master?: string;
  /** How long the primary must not answer before the sentinels call it down (`down-after-milliseconds`). Default 1000. */
  readonly downAfterMs?: number;
  /**
   * Nodes go by this name, which must resolve to 127.0.0.1 (`localhost`),
   * and the sentinels announce it instead of IPs (resolve-hostnames and
   * announce-hostnames). Default: IPs only.
   */
  readonly hostnames?: string;
}

const missingBinaryHelp =
  "redis-server was not found on PATH. Install it (`apt-get install redis-server`, `brew install redis`): " +
  "these tests run a real Redis Sentinel set (redis-server --sentinel)";

/** Children still running, killed if the test process exits without stopping them. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export async function startRedisSentinels(options: RedisSentinelOptions = {}): Promise<RedisSentinelSet> {
  const master = options.master ?? "mymaster";
  const { password, sentinelPassword, tls } = options;
  const scheme = tls === undefined ? "redis" : "rediss";
  const host = options.hostnames ?? "127.0.0.1";
  const announce = options.hostnames === undefined ? [] : ["--replica-announce-ip", options.hostnames];
  const dir = await mkdtemp(join(tmpdir(), "otp-redis-sentinel-"));
  const children = new Map<number, ChildProcess>();
  const clients: Redis[] = [];

  const stop = async (): Promise<void> => {
    for (const client of clients.splice(0)) client.disconnect();
    await Promise.all([...children.values()].map((child) => killChild(child)));
    children.clear();
    await rm(dir, { recursive: true, force: true });
  };

  try {
    const ports = new Set<number>();
    while (ports.size < 5) ports.add(await freePort());
    const [primary, replica, ...sentinelPorts] = [...ports] as [number, number, number, number, number];

    let tlsServerArgs: string[] = [];
    if (tls !== undefined) {
      await Promise.all([writeFile(join(dir, "cert.pem"), tls.cert), writeFile(join(dir, "key.pem"), tls.key), writeFile(join(dir, "ca.pem"), tls.ca)]);
      tlsServerArgs = [
        "--tls-cert-file", join(dir, "cert.pem"), "--tls-key-file", join(dir, "key.pem"), "--tls-ca-cert-file", join(dir, "ca.pem"),
        "--tls-auth-clients", "no", "--tls-replication", "yes",
      ];
    }
    const listen = (port: number): string[] => (tls === undefined ? ["--port", String(port)] : ["--port", "0", "--tls-port", String(port), ...tlsServerArgs]);
    const auth = password === undefined ? [] : ["--requirepass", password, "--masterauth", password];
    const dataArgs = (port: number): string[] => [
      ...listen(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
      "--dbfilename", `dump-${port}.rdb`, "--logfile", join(dir, `redis-${port}.log`), ...auth,
      // A replica's first sync starts at once, not after Redis's 5 s wait for more replicas to share it.
      "--repl-diskless-sync-delay", "0", ...announce,
    ];

    const clientOptions = (port: number, pass: string | undefined) => ({
      host: "127.0.0.1",
      port,
      ...(pass === undefined ? {} : { password: pass }),
      ...(tls === undefined ? {} : { tls: { ca: tls.ca } }),
      maxRetriesPerRequest: 1,
      retryStrategy: () => 100,
      lazyConnect: true,
    });
    const nodeClients = new Map<number, Redis>();
    const node = (port: number): Redis => {
      let client = nodeClients.get(port);
      if (client === undefined) {
        client = new Redis(clientOptions(port, password));
        client.on("error", () => undefined);
        nodeClients.set(port, client);
        clients.push(client);
      }
      return client;
    };
    const sentinelClients = sentinelPorts.map((port) => {
      const client = new Redis(clientOptions(port, sentinelPassword));
      client.on("error", () => undefined);
      clients.push(client);
      return client;
    });

    children.set(primary, await spawnRedis(dataArgs(primary), join(dir, `redis-${primary}.log`)));
    children.set(replica, await spawnRedis([...dataArgs(replica), "--replicaof", host, String(primary)], join(dir, `redis-${replica}.log`)));
    await until(`the replica on ${replica} to reach its primary`, 15_000, async () => /master_link_status:up/.test(await node(replica).info("replication")));

    // Each sentinel is told the replica and the other sentinels (by their ids) from the start: learnt from the
    // master's INFO and hello messages instead, they take seconds to know each other.
    const ids = sentinelPorts.map(() => randomBytes(20).toString("hex"));
    for (const [index, port] of sentinelPorts.entries()) {
      const lines = [
        ...(tls === undefined
          ? [`port ${port}`]
          : [
              "port 0", `tls-port ${port}`, `tls-cert-file ${join(dir, "cert.pem")}`, `tls-key-file ${join(dir, "key.pem")}`,
              `tls-ca-cert-file ${join(dir, "ca.pem")}`, "tls-auth-clients no", "tls-replication yes",
            ]),
        "bind 127.0.0.1",
        `dir ${dir}`,
        `logfile ${join(dir, `sentinel-${port}.log`)}`,
        // Before the monitor line, which names the primary by its name.
        ...(options.hostnames === undefined
          ? []
          : ["sentinel resolve-hostnames yes", "sentinel announce-hostnames yes", `sentinel announce-ip ${options.hostnames}`]),
        `sentinel monitor ${master} ${host} ${primary} 2`,
        `sentinel down-after-milliseconds ${master} ${options.downAfterMs ?? 1000}`,
        `sentinel failover-timeout ${master} 5000`,
        `sentinel parallel-syncs ${master} 1`,
        `sentinel myid ${ids[index] ?? ""}`,
        `sentinel known-replica ${master} ${host} ${replica}`,
        ...sentinelPorts.flatMap((other, otherIndex) => (other === port ? [] : [`sentinel known-sentinel ${master} ${host} ${other} ${ids[otherIndex] ?? ""}`])),
        ...(password === undefined ? [] : [`sentinel auth-pass ${master} ${password}`]),
        ...(sentinelPassword === undefined ? [] : [`requirepass ${sentinelPassword}`]),
      ];
      const file = join(dir, `sentinel-${port}.conf`);
      await writeFile(file, `${lines.join("\n")}\n`);
      children.set(port, await spawnRedis([file, "--sentinel"], join(dir, `sentinel-${port}.log`)));
    }
    // Ready when each sentinel knows the replica (to promote) and the other two (to agree a failover).
    await until("the sentinels to know the replica and each other", 20_000, async () => {
      for (const sentinel of sentinelClients) {
        const replicas = (await sentinel.call("SENTINEL", "REPLICAS", master)) as unknown[];
        const others = (await sentinel.call("SENTINEL", "SENTINELS", master)) as unknown[];
        if (replicas.length !== 1 || others.length !== 2) return false;
        if (!/^OK/.test(String(await sentinel.call("SENTINEL", "CKQUORUM", master)))) return false;
      }
      return true;
    });

    const paused = new Set<number>();
    const awake = (): Redis[] => sentinelClients.filter((_, index) => !paused.has(index));
    const sentinelChild = (index: number): ChildProcess => {
      const child = children.get(sentinelPorts[index] ?? -1);
      if (child === undefined) throw new Error(`no sentinel ${index}`);
      return child;
    };

    const dataChild = (port: number): ChildProcess => {
      const child = port === primary || port === replica ? children.get(port) : undefined;
      if (child === undefined) throw new Error(`no data node on port ${port}`);
      return child;
    };

    const masterNamedBy = async (sentinel: Redis): Promise<number | undefined> => {
      const reply = (await sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)) as [string, string] | null;
      return reply === null ? undefined : Number(reply[1]);
    };
    const masterPort = async (): Promise<number> => {
      for (const sentinel of awake()) {
        try {
          const port = await masterNamedBy(sentinel);
          if (port !== undefined) return port;
        } catch {
          // Try the next sentinel.
        }
      }
      throw new Error(`no sentinel names a master for ${master}`);
    };
    const masterOtherThan = async (oldPort: number, timeoutMs = 30_000): Promise<number> => {
      let found = 0;
      await until(`every sentinel to name a master other than ${oldPort}`, timeoutMs, async () => {
        const named = await Promise.all(awake().map((sentinel) => masterNamedBy(sentinel)));
        const port = named[0];
        if (port === undefined || port === oldPort || named.some((other) => other !== port)) return false;
        if (!/^role:master/m.test(await node(port).info("replication"))) return false;
        found = port;
        return true;
      });
      return found;
    };

    return {
      url: [
        `${scheme}://${password === undefined ? "" : `:${encodeURIComponent(password)}@`}${host}:${sentinelPorts[0]}`,
        ...sentinelPorts.slice(1).map((port) => `${scheme}://${host}:${port}`),
      ].join(","),
      master,
      host,
      sentinelPorts,
      dataPorts: [primary, replica],
      node,
      sentinel: (index) => {
        const client = sentinelClients[index];
        if (client === undefined) throw new Error(`no sentinel ${index}`);
        return client;
      },
      masterPort,
      async synced() {
        const port = await masterPort();
        await until("the replicas to have every write of the master", 10_000, async () => {
          const info = await node(port).info("replication");
          const offset = Number(/^master_repl_offset:(\d+)/m.exec(info)?.[1]);
          const replicas = [...info.matchAll(/^slave\d+:.*offset=(\d+)/gm)].map((match) => Number(match[1]));
          return replicas.length > 0 && replicas.every((replicaOffset) => replicaOffset >= offset);
        });
      },
      async failover() {
        const oldPort = await masterPort();
        // Refused (NOGOODSLAVE) while the sentinels have not yet seen the replica as fit: ask again.
        await until("a sentinel to accept SENTINEL FAILOVER", 15_000, async () => {
          try {
            return String(await awake()[0]?.call("SENTINEL", "FAILOVER", master)) === "OK";
          } catch (error) {
            if (/INPROG/.test(String(error))) return true;
            return false;
          }
        });
        return masterOtherThan(oldPort);
      },
      masterOtherThan,
      async replicating(port, timeoutMs = 30_000) {
        await until(`the node on ${port} to replicate its new master`, timeoutMs, async () => {
          const info = await node(port).info("replication");
          return /^role:slave/m.test(info) && /^master_link_status:up/m.test(info);
        });
      },
      async kill(port) {
        const child = children.get(port);
        if (child === undefined) throw new Error(`no data node on port ${port}`);
        children.delete(port);
        await killChild(child);
      },
      pauseSentinel(index) {
        sentinelChild(index).kill("SIGSTOP");
        paused.add(index);
      },
      resumeSentinel(index) {
        sentinelChild(index).kill("SIGCONT");
        paused.delete(index);
      },
      pauseNode(port) {
        dataChild(port).kill("SIGSTOP");
      },
      resumeNode(port) {
        dataChild(port).kill("SIGCONT");
      },
      stop,
    };
  } catch (error) {
    // The logs say why the set did not come up.
    const names = (await readdir(dir).catch(() => [] as string[])).filter((name) => name.endsWith(".log"));
    const logs = await Promise.all(names.map(async (name) => `--- ${name}\n${(await readFile(join(dir, name), "utf8").catch(() => "")).slice(-1500)}`));
    await stop();
    if (error instanceof Error && logs.length > 0) error.message += `\n${logs.join("\n")}`;
    throw error;
  }
}

/** Spawns redis-server with `args`; rejects with how to get it when it is not installed, or when it exits at once. */
async function spawnRedis(args: readonly string[], logFile: string): Promise<ChildProcess> {
  const child = spawn("redis-server", args, { stdio: "ignore" });
  running.add(child);
  child.once("exit", () => running.delete(child));
  const failed = new Promise<never>((_, reject) => {
    child.once("error", (error: NodeJS.ErrnoException) => reject(error.code === "ENOENT" ? new Error(missingBinaryHelp, { cause: error }) : error));
    child.once("exit", (code, signal) => {
      void readFile(logFile, "utf8").then(
        (log) => reject(new Error(`redis-server ${args.join(" ")} exited early (${signal ?? code}):\n${log.slice(-2000)}`)),
        () => reject(new Error(`redis-server ${args.join(" ")} exited early (${signal ?? code})`)),
      );
    });
  });
  failed.catch(() => undefined);
  // Listening once the log says so; an early exit or a missing binary wins the race.
  await Promise.race([
    until(`redis-server ${args[0] ?? ""} to start`, 10_000, async () =>
      /Ready to accept connections|Sentinel ID is/.test(await readFile(logFile, "utf8").catch(() => "")),
    ),
    failed,
  ]);
  return child;
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGKILL");
  await exited;
}

/** Polls `check` every 100 ms until it is true (errors count as false), or rejects after `timeoutMs` naming `what`. */
async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ""}`);
    await sleep(100);
  }
}
