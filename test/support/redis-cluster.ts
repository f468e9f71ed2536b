/**
 * A real Redis Cluster for tests: three `redis-server --cluster-enabled yes`
 * masters on free loopback ports (each with its bus port, +10000, free too),
 * joined with `redis-cli --cluster create`, in a temporary directory that is
 * removed on stop. Nothing is persisted.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { pingRedis, type RedisServerTls } from "./redis.js";
import { freePort } from "./ports.js";

const run = promisify(execFile);

export interface RedisCluster {
  /** `redis://127.0.0.1:P1,redis://127.0.0.1:P2,...` (rediss:// with TLS): REDIS_URL with REDIS_CLUSTER=true. */
  readonly seeds: string;
  readonly ports: readonly number[];
  /** One plain client per master, for inspection (SCAN, PTTL, CLUSTER KEYSLOT). */
  readonly nodes: readonly Redis[];
  stop(): Promise<void>;
}

export interface RedisClusterOptions {
  /**
   * TLS only, between clients and nodes and on the cluster bus (`--tls-port`,
   * `--tls-cluster yes`); client certificates not required.
   */
  readonly tls?: RedisServerTls;
}

export async function startRedisCluster(size = 3, options: RedisClusterOptions = {}): Promise<RedisCluster> {
  const dir = await mkdtemp(join(tmpdir(), "otp-redis-cluster-"));
  const { tls } = options;
  const scheme = tls === undefined ? "redis" : "rediss";
  const children: ChildProcess[] = [];
  const nodes: Redis[] = [];
  const stop = async (): Promise<void> => {
    for (const node of nodes) node.disconnect();
    await Promise.all(
      children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, "exit");
        child.kill("SIGKILL");
        await exited;
      }),
    );
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const ports: number[] = [];
    while (ports.length < size) {
      const port = await freePort();
      if (port + 10_000 <= 65_535 && !ports.includes(port) && (await isFree(port + 10_000))) ports.push(port);
    }
    let tlsArgs: string[] = [];
    if (tls !== undefined) {
      await Promise.all([writeFile(join(dir, "cert.pem"), tls.cert), writeFile(join(dir, "key.pem"), tls.key), writeFile(join(dir, "ca.pem"), tls.ca)]);
      tlsArgs = [
        "--tls-cert-file", join(dir, "cert.pem"), "--tls-key-file", join(dir, "key.pem"), "--tls-ca-cert-file", join(dir, "ca.pem"),
        "--tls-auth-clients", "no", "--tls-cluster", "yes",
      ];
    }
    for (const port of ports) {
      const child = spawn(
        "redis-server",
        [
          ...(tls === undefined ? ["--port", String(port)] : ["--port", "0", "--tls-port", String(port), ...tlsArgs]),
          "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
          "--cluster-enabled", "yes", "--cluster-config-file", `nodes-${port}.conf`, "--cluster-node-timeout", "5000",
        ],
        { stdio: "ignore" },
      );
      children.push(child);
    }
    await Promise.all(ports.map((port) => pingRedis(`${scheme}://127.0.0.1:${port}`, 10_000, undefined, tls?.ca)));
    const cliTls = tls === undefined ? [] : ["--tls", "--cacert", join(dir, "ca.pem")];
    await run("redis-cli", [...cliTls, "--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes"], {
      timeout: 20_000,
    });
    for (const port of ports) nodes.push(new Redis({ host: "127.0.0.1", port, ...(tls === undefined ? {} : { tls: { ca: tls.ca } }) }));
    // Every node must have learned the whole slot map before clients come.
    const deadline = Date.now() + 15_000;
    for (;;) {
      const infos = await Promise.all(nodes.map((node) => node.cluster("INFO")));
      if (infos.every((info) => /cluster_state:ok/.test(String(info)))) break;
      if (Date.now() > deadline) throw new Error("the Redis Cluster did not reach cluster_state:ok");
      await sleep(100);
    }
    return { seeds: ports.map((p) => `${scheme}://127.0.0.1:${p}`).join(","), ports, nodes, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function isFree(port: number): Promise<boolean> {
  const server = createServer();
  try {
    server.listen(port, "127.0.0.1");
    await once(server, "listening");
    server.close();
    await once(server, "close");
    return true;
  } catch {
    return false;
  }
}
