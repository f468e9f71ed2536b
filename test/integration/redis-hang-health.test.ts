/**
 * Health of a Redis that holds the connection but does not answer: a
 * private redis-server frozen with SIGSTOP (every socket stays open, so the
 * client sees no disconnect), under a whole instance (startApp, real gRPC
 * health checks, a real SMTP sink). The PING probe turns health NOT_SERVING
 * after its failures in a row and SERVING again once Redis answers; a short
 * stall (one slow PING) does not flip it; shutdown stops the probe.
 */
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { call, failure, sendOtp, servingStatus, startInstance, untilServing, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let redis: RedisServer;
let sink: SmtpSink;
const instances: Instance[] = [];

/** PING every 200 ms, 300 ms each at most, down after 3 in a row: about 1.5 s from freeze to NOT_SERVING. */
const probe = { intervalMs: 200, failuresBeforeDown: 3 };

async function start(): Promise<Instance> {
  const instance = await startInstance({
    env: { REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix(), REDIS_COMMAND_TIMEOUT: "300ms", SMTP_URL: sink.url },
    storageProbe: probe,
  });
  instances.push(instance);
  await untilServing(instance);
  return instance;
}

/** Polls the health check until it says `status`; rejects after `timeoutMs`. */
async function until(instance: Instance, status: ServingStatus, timeoutMs: number): Promise<number> {
  const started = Date.now();
  for (;;) {
    const now = await servingStatus(instance);
    if (now === status) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`health still ${ServingStatus[now]} after ${timeoutMs} ms, expected ${ServingStatus[status]}`);
    await sleep(50);
  }
}

function storageUp(instance: Instance): Promise<string> {
  return instance.app.metrics.render("text").then((text) => /^otp_health_component_up\{component="storage"\} (\d+)$/m.exec(text)?.[1] ?? "absent");
}

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
});

afterEach(async () => {
  redis.signal("SIGCONT");
  await Promise.all(instances.splice(0).map((instance) => instance.stop()));
});

afterAll(async () => {
  await sink.close();
  await redis.stop();
});

it("a Redis frozen with SIGSTOP turns health NOT_SERVING, and SERVING again after SIGCONT", async () => {
  const instance = await start();
  redis.signal("SIGSTOP");
  // SendOtp already fails (its commands time out); health must say so too.
  const error = await failure(call(instance.client, sendOtp, { recipient: "frozen@example.com", purpose: Purpose.LOGIN }));
  expect(error.code).toBe(grpc.status.UNAVAILABLE);
  await until(instance, ServingStatus.NOT_SERVING, 10_000);
  expect(await storageUp(instance)).toBe("0");
  expect(instance.logs.some((line) => line["msg"] === "storage is down: health NOT_SERVING")).toBe(true);

  redis.signal("SIGCONT");
  await until(instance, ServingStatus.SERVING, 10_000);
  expect(await storageUp(instance)).toBe("1");
  const sent = await call(instance.client, sendOtp, { recipient: "thawed@example.com", purpose: Purpose.LOGIN });
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
});

it("a stall shorter than the failures it takes (one slow PING) leaves health SERVING", async () => {
  const instance = await start();
  // 450 ms: longer than one PING's 300 ms, far shorter than three PINGs and their intervals.
  redis.signal("SIGSTOP");
  await sleep(450);
  redis.signal("SIGCONT");
  await sleep(3 * (probe.intervalMs + 300));
  expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
  expect(instance.logs.filter((line) => line["msg"] === "storage is down: health NOT_SERVING")).toEqual([]);
});

it("shutdown stops the probe: no PING after stop, nothing counted as a failed Redis operation", async () => {
  const instance = await start();
  instances.splice(instances.indexOf(instance), 1);
  await instance.stop();
  await sleep(5 * probe.intervalMs);
  const text = await instance.app.metrics.render("text");
  expect(text).toMatch(/^otp_redis_command_errors_total\{operation="ping"\} 0$/m);
});
