/**
 * Redis Sentinel (REDIS_SENTINEL_MASTER) against a real Sentinel set: a
 * primary, its replica and three sentinels (test/support/redis-sentinel.ts),
 * with a password on the data nodes and another on the sentinels.
 *
 * - The OtpStore contract through sentinel mode.
 * - A whole instance (startApp, real gRPC, a real SMTP sink) sends and
 *   verifies; misconfigured (the sentinels' password, the master set's
 *   name), it is NOT_SERVING, answers UNAVAILABLE and its log says what to
 *   check, never a password.
 * - Failovers, each on a Sentinel set of its own, the instance never
 *   restarted: SENTINEL FAILOVER (the old master, not yet demoted, still
 *   takes writes: none of ours goes there), a crashed primary (UNAVAILABLE
 *   and NOT_SERVING while no master is known, then serving again), and a
 *   demoted master that kept our connection (READONLY: reconnect). Each
 *   time a code sent before the failover, replicated, verifies after it.
 * - Nodes named by hostname (sentinels with resolve-hostnames and
 *   announce-hostnames, the Bitnami chart's default): a whole instance
 *   sends, verifies and follows a failover; a sentinel that announces the
 *   failover after the client reached the new master (`localhost:<port>`,
 *   the connection's peer being 127.0.0.1:<port>) does not drop it again.
 * - Over TLS (rediss://, REDIS_TLS_CA) to the sentinels and the data nodes.
 */
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import type { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { createLogger } from "../../src/logger.js";
import { connectSentinel } from "../../src/store/redis-sentinel.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import { openCertificateWorkshop } from "../support/certs.js";
import {
  bearer,
  call,
  detailsOf,
  failure,
  newToken,
  sendOtp,
  servingStatus,
  startInstance,
  untilServing,
  verifyOtp,
  type Instance,
  type InstanceOptions,
} from "../support/otp-instances.js";
import { freePort } from "../support/ports.js";
import { randomPrefix, scanPrefix } from "../support/redis.js";
import { startRedisSentinels, type RedisSentinelOptions, type RedisSentinelSet } from "../support/redis-sentinel.js";
import { codeFromMail } from "../support/service.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";
import { describeStoreContract } from "./store-contract.js";

const dataPassword = "data-s3cret/#?";
const sentinelPassword = "sentinel-s3cret";
const caller = newToken("alpha");
const auth = (): grpc.Metadata => bearer(caller.token);

let shared: RedisSentinelSet;
let sink: SmtpSink;
const instances: Instance[] = [];
const sets: RedisSentinelSet[] = [];

beforeAll(async () => {
  [shared, sink] = await Promise.all([startRedisSentinels({ password: dataPassword, sentinelPassword }), startSmtpSink()]);
});

afterEach(async () => {
  await Promise.all(instances.splice(0).map((instance) => instance.stop()));
  await Promise.all(sets.splice(0).map((set) => set.stop()));
});

afterAll(async () => {
  await Promise.all([sink.close(), shared.stop()]);
});

/** The service's environment for `set`: REDIS_URL lists its sentinels. */
function sentinelEnv(set: RedisSentinelSet): Record<string, string> {
  return { REDIS_URL: set.url, REDIS_SENTINEL_MASTER: set.master, REDIS_SENTINEL_PASSWORD: sentinelPassword };
}

/** REDIS_PREFIX of each instance started. */
const prefixes = new Map<Instance, string>();

async function start(env: Record<string, string>, options: Omit<InstanceOptions, "env"> = {}): Promise<Instance> {
  const prefix = randomPrefix();
  const instance = await startInstance({
    ...options,
    env: { REDIS_PREFIX: prefix, REDIS_COMMAND_TIMEOUT: "1s", SMTP_URL: sink.url, AUTH_TOKENS: caller.entry, LIMIT_RESEND_COOLDOWN: "0", ...env },
  });
  instances.push(instance);
  prefixes.set(instance, prefix);
  return instance;
}

/** The key of a message's delivery record, as `instance` writes it. */
function recordKey(instance: Instance, messageId: string): string {
  return `${prefixes.get(instance) ?? ""}msg:{${messageId}}`;
}

/** A Sentinel set of its own, for a test that moves its master. */
async function ownSet(options: Pick<RedisSentinelOptions, "downAfterMs" | "hostnames"> = {}): Promise<RedisSentinelSet> {
  const set = await startRedisSentinels({ password: dataPassword, sentinelPassword, ...options });
  sets.push(set);
  return set;
}

/** Polls health until it reports `wanted`. */
async function healthBecomes(instance: Instance, wanted: ServingStatus, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await servingStatus(instance)) !== wanted) {
    if (Date.now() > deadline) throw new Error(`health did not become ${ServingStatus[wanted]} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * Calls `attempt` until it succeeds (at most `timeoutMs`); every failure on
 * the way must be the storage's UNAVAILABLE, nothing else.
 */
async function eventually<T>(attempt: () => Promise<T>, timeoutMs = 15_000): Promise<{ result: T; failures: number }> {
  const deadline = Date.now() + timeoutMs;
  let failures = 0;
  for (;;) {
    try {
      return { result: await attempt(), failures };
    } catch (error) {
      const serviceError = error as grpc.ServiceError;
      expect(serviceError.code, serviceError.message).toBe(grpc.status.UNAVAILABLE);
      expect(detailsOf(serviceError).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
      failures += 1;
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

async function sendTo(instance: Instance, recipient: string, code?: string): Promise<{ messageId: string; code: string }> {
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN, ...(code === undefined ? {} : { code }) }, auth());
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  const mail = sink.messages.findLast((message) => message.envelope.rcptTo.includes(recipient));
  return { messageId: sent.messageId, code: code ?? codeFromMail(mail?.parsed.subject) };
}

function verify(instance: Instance, recipient: string, code: string) {
  return call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code }, auth());
}

/** The first line the instance logs that `matches`, once it has. */
async function logLine(instance: Instance, matches: (line: Record<string, unknown>) => boolean, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  await until("the log line", () => instance.logs.some(matches), timeoutMs);
  return instance.logs.find(matches) ?? {};
}

/** Every line the instance logged, as text, to look for what must never be there. */
function logText(instance: Instance): string {
  return instance.logs.map((line) => JSON.stringify(line)).join("\n");
}

describeStoreContract("redis sentinel (a password on the data nodes and on the sentinels)", () => {
  const prefix = randomPrefix();
  const store = createRedisStore({
    url: shared.url,
    sentinel: { master: shared.master, password: sentinelPassword },
    prefix,
    logger: createLogger({ level: "silent" }),
  });
  return Promise.resolve({
    store,
    elapse: (ms: number) => sleep(ms),
    teardown: async () => {
      await store.close();
      const master = shared.node(await shared.masterPort());
      const keys = await scanPrefix(master, prefix);
      const withoutTtl: string[] = [];
      for (const key of keys) if ((await master.pttl(key)) === -1) withoutTtl.push(key);
      if (keys.length > 0) await master.del(...keys);
      expect(withoutTtl, "keys written without a TTL").toEqual([]);
    },
  });
});

describe("a whole instance through Redis Sentinel", () => {
  it("sends and verifies on the master the sentinels name, is SERVING, and logs no password", async () => {
    const instance = await start(sentinelEnv(shared));
    await untilServing(instance);
    const sent = await sendTo(instance, "ana@example.com");
    expect(await shared.node(await shared.masterPort()).exists(recordKey(instance, sent.messageId))).toBe(1);
    expect((await verify(instance, "ana@example.com", sent.code)).result).toBe(VerifyResult.VERIFIED);
    expect(instance.logs.find((line) => line["msg"] === "redis: connected to the master the sentinels name")).toMatchObject({
      redis_master_set: "mymaster",
      master: `127.0.0.1:${await shared.masterPort()}`,
    });
    expect(logText(instance)).not.toMatch(/s3cret/);
  });

  it("warns at start-up when the master has no replica connected: a failover would have none to promote", async () => {
    const set = await ownSet();
    await set.kill(set.dataPorts[1]);
    await sleep(100);
    const instance = await start(sentinelEnv(set));
    await untilServing(instance);
    const deadline = Date.now() + 5000;
    const warned = (): Record<string, unknown> | undefined => instance.logs.find((line) => String(line["msg"]).includes("has no replica connected"));
    while (warned() === undefined && Date.now() < deadline) await sleep(50);
    expect(warned()).toMatchObject({ level: "warn", redis_master_set: "mymaster" });
    // The shared set's master has its replica: no such warning there.
    const healthy = await start(sentinelEnv(shared));
    await untilServing(healthy);
    await sleep(300);
    expect(healthy.logs.some((line) => String(line["msg"]).includes("has no replica connected"))).toBe(false);
  });

  it.each<{ what: string; env: Record<string, string>; says: RegExp }>([
    {
      what: "a wrong REDIS_SENTINEL_PASSWORD",
      env: { REDIS_SENTINEL_PASSWORD: "wrong-s3cret" },
      says: /^sentinel 127\.0\.0\.1:\d+: refused REDIS_SENTINEL_PASSWORD \(or REDIS_SENTINEL_USERNAME\): check them/,
    },
    { what: "no REDIS_SENTINEL_PASSWORD", env: { REDIS_SENTINEL_PASSWORD: "" }, says: /^sentinel 127\.0\.0\.1:\d+: requires a password: set REDIS_SENTINEL_PASSWORD/ },
    {
      what: "a master set the sentinels do not monitor",
      env: { REDIS_SENTINEL_MASTER: "othermaster" },
      says: /^sentinel 127\.0\.0\.1:\d+: monitors no master set named othermaster: check REDIS_SENTINEL_MASTER/,
    },
  ])("$what: NOT_SERVING, UNAVAILABLE, and the log and /readyz's reason say what to check, once", async ({ env, says }) => {
    const instance = await start({ ...sentinelEnv(shared), ...env }, { storageProbe: { intervalMs: 100 } });
    const error = await failure(call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }, auth()));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    expect(error.details).toBe("storage is unavailable; retry shortly");
    expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);
    const message = "no redis sentinel named the master of " + (env["REDIS_SENTINEL_MASTER"] ?? "mymaster");
    const said = (): Record<string, unknown>[] => instance.logs.filter((line) => line["msg"] === `${message}; retrying`);
    const deadline = Date.now() + 5000;
    while (said().length === 0 && Date.now() < deadline) await sleep(50);
    const reasons = ((said()[0]?.["err"] as { message?: string } | undefined)?.message ?? "").split("; ");
    // One per sentinel, each saying what to check.
    expect(reasons).toHaveLength(3);
    for (const reason of reasons) expect(reason).toMatch(says);
    // /readyz names the component and why: the same account.
    const storage = (): string | undefined => instance.app.health.components().get("storage")?.reason;
    while (!(storage() ?? "").includes(":") && Date.now() < deadline) await sleep(50);
    expect(storage()).toBe(`storage has not connected yet: ${message}: ${reasons.join("; ")}`);
    // Once per outage, not once per round over the sentinels.
    await sleep(1000);
    expect(said()).toHaveLength(1);
    expect(logText(instance)).not.toMatch(/s3cret/);
  });

  it("a sentinel that is not listening: the log says unreachable and why (ECONNREFUSED), not only that the connection closed", async () => {
    const port = await freePort();
    const instance = await start({ ...sentinelEnv(shared), REDIS_URL: `redis://:pw@127.0.0.1:${port}` });
    const said = await logLine(instance, (line) => line["msg"] === "no redis sentinel named the master of mymaster; retrying");
    expect((said["err"] as { message?: string }).message).toBe(`sentinel 127.0.0.1:${port}: unreachable (connect ECONNREFUSED 127.0.0.1:${port})`);
  });

  // ioredis waits its connect timeout (10 s) for each sentinel that drops packets before its attempt fails, while a call
  // fails after REDIS_COMMAND_TIMEOUT (1 s) and marks storage down: the account must not wait for the one, nor be
  // silenced by the other.
  it("sentinels that drop packets (a call failed first): the log and /readyz say each is unreachable (ETIMEDOUT), within seconds", async () => {
    const set = await ownSet();
    for (const [index, port] of set.sentinelPorts.entries()) {
      set.pauseSentinel(index);
      await fillAcceptQueue(port);
    }
    const started = Date.now();
    const instance = await start(sentinelEnv(set), { storageProbe: { intervalMs: 100 } });
    const error = await failure(call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }, auth()));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    const message = "no redis sentinel named the master of mymaster";
    const said = await logLine(instance, (line) => line["msg"] === `${message}; retrying`, 6000);
    expect(Date.now() - started).toBeLessThan(8000);
    const reasons = (said["err"] as { message: string }).message.split("; ");
    expect(reasons).toEqual(set.sentinelPorts.map((port) => `sentinel 127.0.0.1:${port}: unreachable (connect ETIMEDOUT)`));
    await until("/readyz to say why", () => instance.app.health.components().get("storage")?.reason === `storage has not connected yet: ${message}: ${reasons.join("; ")}`, 3000);
  });

  // The sentinels name a master (their down-after-milliseconds not yet over, they still believe in it) that cannot
  // be used: ioredis says only ECONNREFUSED of one that is down, and nothing at all of one that answers as a replica.
  it("the master the sentinels name answers as a replica, or is down: the log and /readyz name it and say which, for each sentinel", async () => {
    const set = await ownSet({ downAfterMs: 60_000 });
    const [master, replica] = set.dataPorts;
    await set.node(master).call("REPLICAOF", "127.0.0.1", String(replica));
    const demoted = await start(sentinelEnv(set), { storageProbe: { intervalMs: 100 } });
    const unusable = "no master the redis sentinels name for mymaster can be used; retrying";
    const asReplica = await logLine(demoted, (line) => line["msg"] === unusable);
    const reasons = (asReplica["err"] as { message: string }).message.split("; ");
    expect(reasons).toHaveLength(3);
    for (const reason of reasons) {
      expect(reason).toMatch(new RegExp(`^sentinel 127\\.0\\.0\\.1:\\d+: names 127\\.0\\.0\\.1:${master} as the master, which answers as a replica \\(writes there fail READONLY\\)`));
    }
    await until("/readyz to say why", () => (demoted.app.health.components().get("storage")?.reason ?? "").includes("answers as a replica"));
    // A master again: the same instance connects, without a restart.
    await set.node(master).call("REPLICAOF", "NO", "ONE");
    await untilServing(demoted);

    await set.kill(master);
    const refused = await start(sentinelEnv(set));
    const down = await logLine(refused, (line) => line["msg"] === unusable);
    expect((down["err"] as { message: string }).message.split("; ")).toEqual(
      set.sentinelPorts.map((port) => `sentinel 127.0.0.1:${port}: names 127.0.0.1:${master} as the master, which is unreachable (connect ECONNREFUSED 127.0.0.1:${master})`),
    );
    expect(`${logText(demoted)}${logText(refused)}`).not.toMatch(/s3cret/);
  });
});

describe("failovers, the instance never restarted", () => {
  it("SENTINEL FAILOVER: the next calls go to the new master at once, not to the old one (still a master, not yet demoted); a code sent before verifies after", async () => {
    const set = await ownSet();
    const instance = await start(sentinelEnv(set), { storageProbe: { intervalMs: 200 } });
    await untilServing(instance);
    const before = await sendTo(instance, "before@example.com");
    await set.synced();
    const oldPort = await set.masterPort();

    const newPort = await set.failover();
    expect(newPort).not.toBe(oldPort);
    const { result: after } = await eventually(() => sendTo(instance, "after@example.com"));
    // The record went to the new master. The old one does not replicate from it until the sentinels demote it
    // (seconds later): while it is still a master, whatever it holds of ours was written to it, and would be lost.
    const key = recordKey(instance, after.messageId);
    expect(await set.node(newPort).exists(key)).toBe(1);
    const oldRole = /^role:(\w+)/m.exec(await set.node(oldPort).info("replication"))?.[1];
    if (oldRole === "master") expect(await set.node(oldPort).exists(key)).toBe(0);

    expect((await verify(instance, "before@example.com", before.code)).result).toBe(VerifyResult.VERIFIED);
    expect((await verify(instance, "after@example.com", after.code)).result).toBe(VerifyResult.VERIFIED);
    expect(instance.logs.some((line) => line["msg"] === "redis sentinel announced a failover: moving to the new master")).toBe(true);
    expect(instance.logs.find((line) => line["msg"] === "redis: the master moved (a Sentinel failover); connected to the new one")).toMatchObject({
      master: `127.0.0.1:${newPort}`,
      previous_master: `127.0.0.1:${oldPort}`,
    });
    expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
    // A failover reconnects at once: no outage to explain, sentinel by sentinel.
    expect(instance.logs.filter((line) => accountLine(line))).toEqual([]);
  });

  it("the primary crashes: UNAVAILABLE and NOT_SERVING while no master is known, then sends and verifies on the promoted replica", async () => {
    // The sentinels wait 2 s before calling the primary down: time to see the outage before the promotion ends it.
    const set = await ownSet({ downAfterMs: 2000 });
    const instance = await start(sentinelEnv(set), { storageProbe: { intervalMs: 200 } });
    await untilServing(instance);
    const before = await sendTo(instance, "crash@example.com");
    await set.synced();
    const oldPort = await set.masterPort();
    const mailed = sink.transactions();

    await set.kill(oldPort);
    await healthBecomes(instance, ServingStatus.NOT_SERVING, 5000);
    expect(instance.app.health.components().get("storage")?.up).toBe(false);
    // Reconnects fail while the sentinels still name the crashed primary: the log says so, sentinel by sentinel.
    const account = await logLine(instance, (line) => line["msg"] === "no master the redis sentinels name for mymaster can be used; retrying");
    for (const reason of (account["err"] as { message: string }).message.split("; ")) {
      expect(reason).toMatch(new RegExp(`^sentinel 127\\.0\\.0\\.1:\\d+: names 127\\.0\\.0\\.1:${oldPort} as the master, which is unreachable \\(connect ECONNREFUSED`));
    }
    for (const attempt of [
      () => call(instance.client, sendOtp, { recipient: "during@example.com", purpose: Purpose.LOGIN }, auth(), 3000),
      () => call(instance.client, verifyOtp, { recipient: "crash@example.com", purpose: Purpose.LOGIN, code: before.code }, auth(), 3000),
    ]) {
      const error = await failure(attempt());
      expect(error.code).toBe(grpc.status.UNAVAILABLE);
      expect(error.details).toBe("storage is unavailable; retry shortly");
      expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
    }
    expect(sink.transactions()).toBe(mailed);

    const newPort = await set.masterOtherThan(oldPort);
    await healthBecomes(instance, ServingStatus.SERVING);
    const { result: after } = await eventually(() => sendTo(instance, "after-crash@example.com"));
    expect(await set.node(newPort).exists(recordKey(instance, after.messageId))).toBe(1);
    expect((await verify(instance, "crash@example.com", before.code)).result).toBe(VerifyResult.VERIFIED);
    expect((await verify(instance, "after-crash@example.com", after.code)).result).toBe(VerifyResult.VERIFIED);
    expect(logText(instance)).not.toMatch(/s3cret/);
  });

  it("a demoted master that kept our connection (no CLIENT KILL, no announcement) answers READONLY: that call is UNAVAILABLE, the next ones reach the new master", async () => {
    const set = await ownSet();
    const instance = await start(sentinelEnv(set));
    await untilServing(instance);
    const before = await sendTo(instance, "demoted@example.com");
    await set.synced();
    const [oldPort, newPort] = set.dataPorts;

    // The roles swapped by hand, as an operator's switchover might: the sentinels forget the set, the replica
    // becomes the master and the master its replica (REPLICAOF keeps clients connected), then the sentinels
    // monitor the new master. No sentinel kills our connection or announces +switch-master.
    for (let i = 0; i < 3; i++) await set.sentinel(i).call("SENTINEL", "REMOVE", set.master);
    await set.node(newPort).call("REPLICAOF", "NO", "ONE");
    await set.node(oldPort).call("REPLICAOF", "127.0.0.1", String(newPort));
    await set.replicating(oldPort);
    for (let i = 0; i < 3; i++) {
      await set.sentinel(i).call("SENTINEL", "MONITOR", set.master, "127.0.0.1", String(newPort), "2");
      await set.sentinel(i).call("SENTINEL", "SET", set.master, "auth-pass", dataPassword);
    }

    const { result: after, failures } = await eventually(() => sendTo(instance, "promoted@example.com"));
    expect(failures).toBeGreaterThanOrEqual(1);
    expect(await set.node(newPort).exists(recordKey(instance, after.messageId))).toBe(1);
    expect((await verify(instance, "demoted@example.com", before.code)).result).toBe(VerifyResult.VERIFIED);
    expect((await verify(instance, "promoted@example.com", after.code)).result).toBe(VerifyResult.VERIFIED);
    expect(instance.logs.find((line) => String(line["msg"]).startsWith("redis answered READONLY"))).toMatchObject({
      level: "warn",
      master: `127.0.0.1:${oldPort}`,
    });
  });
});

/** A line of the per-sentinel account of an outage. */
function accountLine(line: Record<string, unknown>): boolean {
  return /^no (master the redis sentinels name|redis sentinel named the master)/.test(String(line["msg"]));
}

/** Closes the instances' connections to the data node on `port` (not the sentinels', nor the test's own). */
async function dropClients(set: RedisSentinelSet, port: number): Promise<void> {
  const node = set.node(port);
  const ownId = String(await node.call("CLIENT", "ID"));
  const list = String(await node.call("CLIENT", "LIST", "TYPE", "NORMAL")).split("\n");
  for (const line of list) {
    const id = /^id=(\d+)/.exec(line)?.[1];
    if (id === undefined || id === ownId || / name=sentinel-/.test(line)) continue;
    await node.call("CLIENT", "KILL", "ID", id).catch(() => undefined);
  }
}

describe("an outage after the first connection", () => {
  // The data nodes' password changed under a connected instance (the sentinels, 60 s from calling the master down,
  // keep naming it): each reconnect is refused WRONGPASS, which ioredis says without naming a sentinel or a master.
  it("reconnects keep failing: one warn line gives each sentinel's account, /readyz gives it, recovery clears it, the next outage is told again", async () => {
    const set = await ownSet({ downAfterMs: 60_000 });
    const [master] = set.dataPorts;
    const instance = await start(sentinelEnv(set), { storageProbe: { intervalMs: 100 } });
    await untilServing(instance);
    const unusable = "no master the redis sentinels name for mymaster can be used; retrying";
    const said = (): Record<string, unknown>[] => instance.logs.filter((line) => line["msg"] === unusable);
    const storage = (): { up: boolean; reason: string } | undefined => instance.app.health.components().get("storage");
    const outage = async (): Promise<void> => {
      await set.node(master).call("CONFIG", "SET", "requirepass", "changed-s3cret");
      await dropClients(set, master);
    };
    const recover = async (): Promise<void> => {
      await set.node(master).call("CONFIG", "SET", "requirepass", dataPassword);
      await untilServing(instance);
    };

    await outage();
    await until("the account", () => said().length === 1, 10_000);
    expect(said()[0]).toMatchObject({ level: "warn" });
    const reasons = (said()[0]?.["err"] as { message: string }).message.split("; ");
    expect(reasons).toEqual(
      set.sentinelPorts.map(
        (port) =>
          `sentinel 127.0.0.1:${port}: names 127.0.0.1:${master} as the master, which refused REDIS_URL's password (WRONGPASS): ` +
          "check the data nodes' password on REDIS_URL's first entry (not REDIS_SENTINEL_PASSWORD)",
      ),
    );
    const reason = `storage is unreachable: no master the redis sentinels name for mymaster can be used: ${reasons.join("; ")}`;
    await until("/readyz to give it", () => storage()?.reason === reason, 3000);
    expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);
    // Once per outage, not once per failed reconnect (every 2 s at most) or failed call.
    for (let i = 0; i < 5; i++) await failure(call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }, auth()));
    await sleep(3000);
    expect(said()).toHaveLength(1);
    expect(storage()?.reason).toBe(reason);

    await recover();
    expect(storage()).toEqual({ up: true, reason: "" });
    expect(instance.logs.some((line) => line["msg"] === "redis connection restored")).toBe(true);

    // A new outage is a new account.
    await outage();
    await until("the next outage's account", () => said().length === 2, 10_000);
    await recover();
    expect(said()).toHaveLength(2);
    expect(instance.logs.filter((line) => line["msg"] === "redis connection lost; retrying")).toHaveLength(2);
    expect(logText(instance)).not.toMatch(/s3cret/);
  });
});

/** Connections opened by `fillAcceptQueue`, closed after each test. */
const fillers: Socket[] = [];
afterEach(() => {
  for (const socket of fillers.splice(0)) socket.destroy();
});

/**
 * Opens connections to the paused process on `port` until one is not even
 * accepted by the kernel: its accept queue is full, and a client's new
 * connection now waits for its SYN to be sent again (1 s, 3 s...), as to a
 * host that hangs or drops packets.
 */
async function fillAcceptQueue(port: number): Promise<void> {
  for (let opened = 0; opened < 10_000; opened++) {
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("error", () => undefined);
    fillers.push(socket);
    if (!(await Promise.race([once(socket, "connect").then(() => true), sleep(300).then(() => false)]))) return;
  }
  throw new Error(`the accept queue of the process on ${port} never filled`);
}

/** Sentinel subscriptions of `announcementOf`, closed after each test. */
const subscribers: Redis[] = [];
afterEach(() => {
  for (const subscriber of subscribers.splice(0)) subscriber.disconnect();
});

/** Resolves, once subscribed, with `heard`: the `index`th sentinel's `+switch-master` to `port`, when it says it. */
async function announcementOf(set: RedisSentinelSet, index: number, port: number): Promise<{ heard: Promise<string> }> {
  const subscriber = set.sentinel(index).duplicate();
  subscribers.push(subscriber);
  subscriber.on("error", () => undefined);
  const heard = new Promise<string>((resolve) => {
    subscriber.on("message", (channel: string, message: string) => {
      if (channel === "+switch-master" && message.endsWith(` ${port}`)) {
        subscriber.disconnect();
        resolve(message);
      }
    });
  });
  await subscriber.subscribe("+switch-master");
  return { heard };
}

/** Polls `check` every 50 ms until it is true, or throws naming `what`. */
async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe("nodes named by hostname (the Bitnami chart's default: sentinels with resolve-hostnames and announce-hostnames)", () => {
  // The failover is announced late by one sentinel (paused during it, as one that learns of it late): by then the
  // client has reconnected to the new master. A sentinel naming nodes by hostname says `localhost:<port>` where the
  // connection's peer is 127.0.0.1:<port>: that must still count as "already there". By IP, the control.
  it.each([
    { by: "IP", hostnames: undefined },
    { by: "hostname", hostnames: "localhost" },
  ])("named by $by: a sentinel announcing the failover after the client is on the new master does not drop it again", async ({ hostnames }) => {
    const set = await ownSet(hostnames === undefined ? {} : { hostnames });
    const [oldPort, newPort] = set.dataPorts;
    const connection = connectSentinel({
      urls: set.url,
      sentinel: { master: set.master, password: sentinelPassword },
      redisOptions: { commandTimeout: 1000, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => 100 },
      logger: createLogger({ level: "silent" }),
    });
    const { redis } = connection;
    redis.on("error", () => undefined);
    const peerPort = (): number | undefined => (redis.stream as { remotePort?: number } | undefined)?.remotePort;
    const readyOn: (number | undefined)[] = [];
    let drops = 0;
    redis.on("ready", () => readyOn.push(peerPort()));
    redis.on("close", () => (drops += 1));
    const onMaster = (port: number) => () => redis.status === "ready" && peerPort() === port;
    try {
      await until("the client to connect to the first master", onMaster(oldPort));
      const early = await Promise.all([0, 1].map((index) => announcementOf(set, index, newPort)));
      const late = await announcementOf(set, 2, newPort);
      set.pauseSentinel(2);
      expect(await set.failover()).toBe(newPort);
      await Promise.all(early.map(({ heard }) => heard));
      await until("the client to reconnect to the new master", onMaster(newPort));
      // Settled: whatever the two announcements did is done.
      await sleep(300);
      await until("the client to be on the new master", onMaster(newPort));
      const settled = { readyOn: [...readyOn], drops };
      expect(settled.readyOn.at(-1)).toBe(newPort);

      set.resumeSentinel(2);
      expect(await late.heard).toMatch(new RegExp(` ${newPort}$`));
      // The watch heard the same announcement at the same moment; give it time to act on it (a name lookup).
      await sleep(500);
      expect({ readyOn, drops }).toEqual(settled);
      expect(onMaster(newPort)()).toBe(true);
    } finally {
      connection.stop();
      redis.disconnect();
    }
  });

  it("a whole instance sends and verifies, follows a SENTINEL FAILOVER, and keeps its connection when a late sentinel announces it", async () => {
    const set = await ownSet({ hostnames: "localhost" });
    const [oldPort, newPort] = set.dataPorts;
    const instance = await start(sentinelEnv(set), { storageProbe: { intervalMs: 200 } });
    await untilServing(instance);
    // The sentinels name the master by hostname, and the client reaches it by that name.
    expect(set.url).toMatch(/^redis:\/\/:[^@]+@localhost:\d+,redis:\/\/localhost:\d+,redis:\/\/localhost:\d+$/);
    expect(await set.sentinel(0).call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", set.master)).toEqual(["localhost", String(oldPort)]);
    // The log names it as the sentinels do, and says the address that name led to.
    expect(instance.logs.find((line) => line["msg"] === "redis: connected to the master the sentinels name")).toMatchObject({
      master: `localhost:${oldPort}`,
      master_address: `127.0.0.1:${oldPort}`,
    });
    const before = await sendTo(instance, "named@example.com");
    await set.synced();

    const late = await announcementOf(set, 2, newPort);
    set.pauseSentinel(2);
    expect(await set.failover()).toBe(newPort);
    const { result: after } = await eventually(() => sendTo(instance, "renamed@example.com"));
    expect(await set.node(newPort).exists(recordKey(instance, after.messageId))).toBe(1);
    expect((await verify(instance, "named@example.com", before.code)).result).toBe(VerifyResult.VERIFIED);
    expect(instance.logs.find((line) => line["msg"] === "redis sentinel announced a failover: moving to the new master")).toMatchObject({
      from: `localhost:${oldPort}`,
      to: `localhost:${newPort}`,
    });
    expect(instance.logs.find((line) => line["msg"] === "redis: the master moved (a Sentinel failover); connected to the new one")).toMatchObject({
      master: `localhost:${newPort}`,
      master_address: `127.0.0.1:${newPort}`,
      previous_master: `localhost:${oldPort}`,
    });

    // The instance's one connection to the new master (not a sentinel's, a replica's or this test's).
    const ownId = String(await set.node(newPort).call("CLIENT", "ID"));
    const instanceConnections = async (): Promise<string[]> =>
      String(await set.node(newPort).call("CLIENT", "LIST", "TYPE", "NORMAL"))
        .split("\n")
        .filter((line) => / name= /.test(line) && !line.startsWith(`id=${ownId} `))
        .map((line) => /^id=(\d+)/.exec(line)?.[1] ?? "?");
    const connections = await instanceConnections();
    expect(connections).toHaveLength(1);

    set.resumeSentinel(2);
    await late.heard;
    await sleep(500);
    expect(await instanceConnections()).toEqual(connections);
    const last = await sendTo(instance, "still@example.com");
    expect((await verify(instance, "renamed@example.com", after.code)).result).toBe(VerifyResult.VERIFIED);
    expect((await verify(instance, "still@example.com", last.code)).result).toBe(VerifyResult.VERIFIED);
    expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
  });
});

describe("an announcement heard while the client is reconnecting", () => {
  // The client reconnects (for whatever reason) while the master hangs: a sentinel, the failover not yet begun, names
  // the old master, and the connection to it waits. The sentinels fail over meanwhile, and every one of them
  // announces it while the client is still connecting. The old master then wakes up and takes the connection; it is
  // still a master (the sentinels demote it 8 s and more later), and what is written to it until then is lost. The
  // announcements heard while connecting must take the client to the new master once connected.
  it.each([
    { by: "IP", hostnames: undefined },
    { by: "hostname", hostnames: "localhost" },
  ])("named by $by: connected to the old master after every announcement, the client moves to the new one before it writes there", async ({ hostnames }) => {
    // The sentinels must not fail over on their own while the accept queue fills (a second or more on a loaded machine):
    // the client is to reconnect to the old master before the failover the test starts itself.
    const set = await ownSet({ downAfterMs: 30_000, ...(hostnames === undefined ? {} : { hostnames }) });
    const [oldPort, newPort] = set.dataPorts;
    const lines: Record<string, unknown>[] = [];
    const connection = connectSentinel({
      urls: set.url,
      sentinel: { master: set.master, password: sentinelPassword },
      redisOptions: { commandTimeout: 1000, connectTimeout: 20_000, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => 100 },
      logger: createLogger({ level: "info", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } }),
    });
    const { redis } = connection;
    redis.on("error", () => undefined);
    const peerPort = (): number | undefined => (redis.stream as { remotePort?: number } | undefined)?.remotePort;
    const onMaster = (port: number) => () => redis.status === "ready" && peerPort() === port;
    try {
      await until("the client to connect to the first master", onMaster(oldPort));
      const announcements = await Promise.all([0, 1, 2].map((index) => announcementOf(set, index, newPort)));

      set.pauseNode(oldPort);
      await fillAcceptQueue(oldPort);
      const before = redis.stream;
      redis.disconnect(true);
      // A sentinel named the old master (no failover yet), and the client is connecting to it.
      await until("the client to connect to the master a sentinel named", () => redis.stream !== before && redis.stream.connecting);

      expect(await set.failover()).toBe(newPort);
      await Promise.all(announcements.map(({ heard }) => heard));
      // The watch heard them too; give it time to act on them (a name lookup).
      await sleep(300);
      expect(redis.status).toBe("connecting");

      set.resumeNode(oldPort);
      for (const socket of fillers.splice(0)) socket.destroy();
      await until("the client to connect", () => redis.status === "ready");
      await until("the client to be on the new master", onMaster(newPort), 3000).catch(() => undefined);
      const key = `reconnecting:${randomPrefix()}`;
      await redis.set(key, "written after the failover");
      // Still a master when written to (not yet demoted): a write there would have been lost.
      expect(/^role:(\w+)/m.exec(await set.node(oldPort).info("replication"))?.[1]).toBe("master");
      expect({ onNew: await set.node(newPort).exists(key), onOld: await set.node(oldPort).exists(key) }).toEqual({ onNew: 1, onOld: 0 });
      expect(lines.filter((line) => String(line["msg"]).startsWith("redis: connected to a node other than the master announced"))).toHaveLength(1);
    } finally {
      connection.stop();
      redis.disconnect();
    }
  });
});

describe("over TLS (rediss://) to the sentinels and the data nodes", () => {
  it("with REDIS_TLS_CA it sends and verifies; without it the log names REDIS_TLS_CA", async () => {
    const workshop = await openCertificateWorkshop();
    try {
      const ca = await workshop.newCa("Redis Sentinel Test CA");
      const server = await ca.issue({ cn: "redis", san: "IP:127.0.0.1,DNS:localhost", server: true, alsoClient: true });
      const set = await startRedisSentinels({ password: dataPassword, sentinelPassword, tls: { ...server, ca: ca.cert } });
      sets.push(set);
      expect(set.url).toMatch(/^rediss:\/\//);

      const instance = await start({ ...sentinelEnv(set), REDIS_TLS_CA: ca.cert });
      await untilServing(instance);
      const sent = await sendTo(instance, "tls@example.com");
      expect((await verify(instance, "tls@example.com", sent.code)).result).toBe(VerifyResult.VERIFIED);

      const untrusting = await start(sentinelEnv(set));
      expect(await servingStatus(untrusting)).toBe(ServingStatus.NOT_SERVING);
      const deadline = Date.now() + 5000;
      const said = (): Record<string, unknown> | undefined =>
        untrusting.logs.find((line) => line["msg"] === "no redis sentinel named the master of mymaster; retrying");
      while (said() === undefined && Date.now() < deadline) await sleep(50);
      const reasons = ((said()?.["err"] as { message?: string } | undefined)?.message ?? "").split("; ");
      expect(reasons).toHaveLength(3);
      for (const reason of reasons) expect(reason).toMatch(/^sentinel 127\.0\.0\.1:\d+: .*\(if a private CA signs the sentinels' certificates, set REDIS_TLS_CA to its PEM file\)$/);
    } finally {
      await workshop.cleanup();
    }
  });
});
