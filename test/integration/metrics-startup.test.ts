/**
 * The compiled service as a separate process (as `npm start` runs it) while
 * its start-up waits for the relay's first check: /metrics and /readyz
 * answer from the start and say the relay has not answered (NOT_SERVING),
 * instead of being a port Prometheus cannot scrape; once the relay answers,
 * the instance is SERVING. The relay is a real SMTP sink behind a gate that
 * holds connections, unanswered, until the test opens it. With a Redis that
 * has never connected (a private redis-server, stopped before the service
 * starts), storage is down from the start and stays down, named, after the
 * relay has answered.
 */
import { createServer as createNetServer, connect, type AddressInfo, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../support/ports.js";
import { randomPrefix, startRedisServer } from "../support/redis.js";
import { killServiceProcesses, startServiceProcess } from "../support/service-process.js";
import { startSmtpSink } from "../support/smtp-sink.js";

afterEach(killServiceProcesses);

/** GET `url`; undefined while nothing answers there (connection refused). */
async function get(url: string): Promise<{ status: number; body: string } | undefined> {
  try {
    const response = await fetch(url);
    return { status: response.status, body: await response.text() };
  } catch {
    return undefined;
  }
}

/** GET `url` until `accept` takes the answer, for up to `timeoutMs`. */
async function until(
  url: string,
  accept: (answer: { status: number; body: string }) => boolean,
  timeoutMs = 10_000,
): Promise<{ status: number; body: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answer = await get(url);
    if (answer !== undefined && accept(answer)) return answer;
    if (Date.now() > deadline) throw new Error(`${url}: no such answer within ${timeoutMs} ms (last: ${JSON.stringify(answer)})`);
    await sleep(50);
  }
}

describe("the metrics port during start-up", () => {
  it("answers while the relay's first check waits for a greeting: relay down, NOT_SERVING; SERVING once the relay answers", async () => {
    const sink = await startSmtpSink();
    // The relay: connections are held without a word until the gate opens, then joined to the sink.
    let open = false;
    const held: Socket[] = [];
    const sockets = new Set<Socket>();
    const join = (socket: Socket): void => {
      const upstream = connect(sink.port, "127.0.0.1");
      socket.pipe(upstream).pipe(socket);
      upstream.on("error", () => socket.destroy());
      socket.on("error", () => upstream.destroy());
    };
    const gate = createNetServer((socket) => {
      sockets.add(socket);
      if (open) join(socket);
      else held.push(socket);
    });
    await new Promise<void>((resolve) => gate.listen(0, "127.0.0.1", resolve));
    const relayPort = (gate.address() as AddressInfo).port;
    const metricsPort = await freePort();
    const metricsUrl = `http://127.0.0.1:${metricsPort}`;
    try {
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${await freePort()}`,
        METRICS_ADDR: `127.0.0.1:${metricsPort}`,
        SMTP_URL: `smtp://127.0.0.1:${relayPort}?starttls=off`,
        // Far longer than the test waits for the metrics port: start-up cannot end before the gate opens.
        SMTP_GREETING_TIMEOUT: "60s",
        OTP_SECRET: "metrics-startup-test-secret-0123456789abcdef",
      });

      const scrape = await until(`${metricsUrl}/metrics`, (answer) => answer.status === 200);
      expect(scrape.body).toMatch(/^otp_health_component_up\{component="relay"\} 0$/m);
      expect(scrape.body).toMatch(/^otp_health_component_up\{component="shutdown"\} 1$/m);
      const notReady = await get(`${metricsUrl}/readyz`);
      expect(notReady).toEqual({ status: 503, body: "NOT_SERVING\nrelay: down (the SMTP relay has not answered its first check yet)\n" });
      // Still starting: the relay's first check holds it.
      expect(held.length).toBeGreaterThanOrEqual(1);
      expect(service.lines.some((line) => line["msg"] === "otp-email listening")).toBe(false);

      open = true;
      for (const socket of held.splice(0)) join(socket);
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      expect(await get(`${metricsUrl}/readyz`)).toEqual({ status: 200, body: "SERVING\n" });
      expect((await get(`${metricsUrl}/metrics`))?.body).toMatch(/^otp_health_component_up\{component="relay"\} 1$/m);

      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => gate.close(resolve));
      await sink.close();
    }
  });

  it("with a Redis that has never connected (down at deploy): storage down from the start, NOT_SERVING after the relay answered, SERVING once Redis connects", async () => {
    const sink = await startSmtpSink();
    const redis = await startRedisServer();
    await redis.stop();
    const metricsUrl = `http://127.0.0.1:${await freePort()}`;
    try {
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${await freePort()}`,
        METRICS_ADDR: metricsUrl.slice("http://".length),
        SMTP_URL: sink.url,
        REDIS_URL: redis.url,
        REDIS_PREFIX: randomPrefix(),
        OTP_SECRET: "metrics-startup-test-secret-0123456789abcdef",
      });
      await service.waitForLine((line) => line["msg"] === "otp-email listening");

      // The relay answered; storage alone keeps the instance out of rotation, and says it never connected.
      const notReady = "NOT_SERVING\nstorage: down (storage has not connected yet)\n";
      for (let i = 0; i < 5; i++) {
        expect(await get(`${metricsUrl}/readyz`)).toEqual({ status: 503, body: notReady });
        await sleep(100);
      }
      const scrape = await get(`${metricsUrl}/metrics`);
      expect(scrape?.body).toMatch(/^otp_health_component_up\{component="storage"\} 0$/m);
      expect(scrape?.body).toMatch(/^otp_health_component_up\{component="relay"\} 1$/m);

      await redis.start();
      await until(`${metricsUrl}/readyz`, (answer) => answer.status === 200);
      expect((await get(`${metricsUrl}/metrics`))?.body).toMatch(/^otp_health_component_up\{component="storage"\} 1$/m);

      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await redis.stop();
      await sink.close();
    }
  });
});
