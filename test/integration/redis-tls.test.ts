/**
 * rediss:// to a Redis whose certificate a private CA signs: a real
 * redis-server serving TLS only (`--port 0 --tls-port`), a CA and server
 * certificate made with openssl, a whole instance (startApp, real gRPC, a
 * real SMTP sink). With REDIS_TLS_CA the service connects and a full
 * SendOtp + VerifyOtp works; without it the connection is refused by
 * certificate verification, health stays NOT_SERVING, callers get
 * UNAVAILABLE, and the log says to set REDIS_TLS_CA.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { openCertificateWorkshop, type CertificateWorkshop } from "../support/certs.js";
import { call, detailsOf, failure, sendOtp, servingStatus, startInstance, untilServing, verifyOtp, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startRedisCluster } from "../support/redis-cluster.js";
import { codeFromMail } from "../support/service.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let workshop: CertificateWorkshop;
let serverTls: { cert: string; key: string; ca: string };
let redis: RedisServer;
let sink: SmtpSink;
let dir: string;
let caPath: string;
const instances: Instance[] = [];

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  const ca = await workshop.newCa("Redis Test CA");
  const server = await ca.issue({ cn: "redis", san: "IP:127.0.0.1,DNS:localhost", server: true, alsoClient: true });
  serverTls = { ...server, ca: ca.cert };
  [redis, sink] = await Promise.all([startRedisServer({ tls: serverTls }), startSmtpSink()]);
  dir = await mkdtemp(join(tmpdir(), "otp-redis-ca-"));
  caPath = join(dir, "redis-ca.pem");
  await writeFile(caPath, ca.cert);
});

afterEach(async () => {
  await Promise.all(instances.splice(0).map((instance) => instance.stop()));
});

afterAll(async () => {
  await Promise.all([sink.close(), redis.stop(), workshop.cleanup(), rm(dir, { recursive: true, force: true })]);
});

async function start(env: Record<string, string>): Promise<Instance> {
  const instance = await startInstance({ env: { REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix(), REDIS_COMMAND_TIMEOUT: "1s", SMTP_URL: sink.url, ...env } });
  instances.push(instance);
  return instance;
}

it("serves TLS only: the test's Redis is rediss://", () => {
  expect(redis.url).toMatch(/^rediss:\/\/127\.0\.0\.1:\d+$/);
});

it("with REDIS_TLS_CA (a PEM file) the service connects over TLS, and a code is sent and verified", async () => {
  const instance = await start({ REDIS_TLS_CA: caPath });
  await untilServing(instance);
  const recipient = "tls@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  const mail = sink.messages.find((message) => message.envelope.rcptTo.includes(recipient));
  const verified = await call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code: codeFromMail(mail?.parsed.subject) });
  expect(verified.result).toBe(VerifyResult.VERIFIED);
});

it("without REDIS_TLS_CA: NOT_SERVING, SendOtp UNAVAILABLE, and the log names REDIS_TLS_CA", async () => {
  const instance = await start({});
  const error = await failure(call(instance.client, sendOtp, { recipient: "untrusted@example.com", purpose: Purpose.LOGIN }));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  expect(detailsOf(error).errorInfo?.reason).toBe("STORAGE_UNAVAILABLE");
  expect(await servingStatus(instance)).toBe(ServingStatus.NOT_SERVING);
  const deadline = Date.now() + 5000;
  const said = (): Record<string, unknown> | undefined => instance.logs.find((line) => String(line["msg"]).includes("REDIS_TLS_CA"));
  while (said() === undefined && Date.now() < deadline) await sleep(50);
  expect(said()?.["msg"]).toMatch(/not signed by a CA this process trusts; set REDIS_TLS_CA to the PEM file of the CA that signs it/);
  // Once per outage, not once per reconnect attempt.
  await sleep(1000);
  expect(instance.logs.filter((line) => String(line["msg"]).includes("REDIS_TLS_CA"))).toHaveLength(1);
});

it("a Redis Cluster over TLS (REDIS_CLUSTER=true): with REDIS_TLS_CA every node is reached, codes on several slots are sent and verified", async () => {
  const cluster = await startRedisCluster(3, { tls: serverTls });
  try {
    expect(cluster.seeds).toMatch(/^rediss:\/\//);
    // Without the CA the cluster client cannot reach a node either, and the log says what to set.
    const untrusting = await start({ REDIS_URL: cluster.seeds, REDIS_CLUSTER: "true" });
    const said = (): boolean => untrusting.logs.some((line) => String(line["msg"]).includes("set REDIS_TLS_CA"));
    for (const deadline = Date.now() + 5000; !said() && Date.now() < deadline; ) await sleep(50);
    expect(said(), JSON.stringify(untrusting.logs.slice(-3))).toBe(true);
    expect(await servingStatus(untrusting)).toBe(ServingStatus.NOT_SERVING);
    await Promise.all(instances.splice(0).map((instance) => instance.stop()));

    const instance = await start({ REDIS_URL: cluster.seeds, REDIS_CLUSTER: "true", REDIS_TLS_CA: caPath });
    await untilServing(instance);
    // Recipients whose code sets hash to different slots, so more than one node must be reached over TLS.
    const recipients = ["c1@example.com", "c2@example.com", "c3@example.com", "c4@example.com", "c5@example.com", "c6@example.com"];
    const slots = new Set<number>();
    for (const recipient of recipients) {
      const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      const mail = sink.messages.find((message) => message.envelope.rcptTo.includes(recipient));
      const verified = await call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code: codeFromMail(mail?.parsed.subject) });
      expect(verified.result).toBe(VerifyResult.VERIFIED);
      slots.add(Number(await cluster.nodes[0]?.cluster("KEYSLOT", `{${sent.messageId}}`)));
    }
    expect(slots.size).toBeGreaterThan(1);
  } finally {
    await Promise.all(instances.splice(0).map((instance) => instance.stop()));
    await cluster.stop();
  }
}, 60_000);
