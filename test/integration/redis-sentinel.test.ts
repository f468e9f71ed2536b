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
 * - Over TLS (rediss://, REDIS_TLS_CA) to the sentinels and the data nodes.
 */
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { createLogger } from "../../src/logger.js";
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
import { randomPrefix, scanPrefix } from "../support/redis.js";
import { startRedisSentinels, type RedisSentinelSet } from "../support/redis-sentinel.js";
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
async function ownSet(downAfterMs?: number): Promise<RedisSentinelSet> {
  const set = await startRedisSentinels({ password: dataPassword, sentinelPassword, ...(downAfterMs === undefined ? {} : { downAfterMs }) });
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
  ])("$what: NOT_SERVING, UNAVAILABLE, and the log says what to check, once", async ({ env, says }) => {
    const instance = await start({ ...sentinelEnv(shared), ...env });
    const error = await failure(call(instance.client, sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }, auth()));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
    expect(error.details).toBe("storage is unavailable; retry shortly");
    expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);
    const said = (): Record<string, unknown>[] => instance.logs.filter((line) => line["msg"] === "no redis sentinel named the master of " + (env["REDIS_SENTINEL_MASTER"] ?? "mymaster") + "; retrying");
    const deadline = Date.now() + 5000;
    while (said().length === 0 && Date.now() < deadline) await sleep(50);
    expect((said()[0]?.["err"] as { message?: string } | undefined)?.message).toMatch(says);
    // Once per outage, not once per round over the sentinels.
    await sleep(1000);
    expect(said()).toHaveLength(1);
    expect(logText(instance)).not.toMatch(/s3cret/);
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
  });

  it("the primary crashes: UNAVAILABLE and NOT_SERVING while no master is known, then sends and verifies on the promoted replica", async () => {
    // The sentinels wait 2 s before calling the primary down: time to see the outage before the promotion ends it.
    const set = await ownSet(2000);
    const instance = await start(sentinelEnv(set), { storageProbe: { intervalMs: 200 } });
    await untilServing(instance);
    const before = await sendTo(instance, "crash@example.com");
    await set.synced();
    const oldPort = await set.masterPort();
    const mailed = sink.transactions();

    await set.kill(oldPort);
    await healthBecomes(instance, ServingStatus.NOT_SERVING, 5000);
    expect(instance.app.health.components().get("storage")?.up).toBe(false);
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
