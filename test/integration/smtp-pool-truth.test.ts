/**
 * What the pool gauges and the attempt record say about waiting for a pooled
 * connection, on the real service (real gRPC over a socket, real Redis, a
 * real SMTP server on loopback, or a port nothing listens on):
 *
 * - otp_smtp_pool_connections_in_use counts the connections that carry a
 *   message, not the attempts in flight: with messages queued behind one
 *   slow connection it says 1 (and the backlog the rest); with the relay
 *   refusing connections, attempts wait in the pool's queue while no
 *   connection is in use, and it says 0. Never above the pool size, never
 *   above the attempts in flight, never negative.
 * - GetDeliveryStatus shows, per attempt, the wait for a connection
 *   (`pool_wait`) apart from its whole duration, and so does the
 *   "smtp attempt" log line (`pool_wait_ms`): a message that waited 2 s
 *   behind others for a relay that answers in 1 s does not read as a
 *   relay that took 3 s.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { freePort } from "../support/ports.js";
import { behave } from "../support/smtp-sink.js";

const { sendOtp, getDeliveryStatus } = OtpEmailService.method;

interface PoolSample {
  readonly inUse: number;
  readonly inFlight: number;
  readonly backlog: number;
}

/** The pool gauges as a scrape reads them (the backlog is computed at collection). */
async function poolGauges(service: ObservedService): Promise<PoolSample> {
  const values = new Map<string, number>();
  for (const metric of await service.metrics.registry.getMetricsAsJSON()) {
    if (metric.name.startsWith("otp_smtp_")) values.set(metric.name, metric.values[0]?.value ?? Number.NaN);
  }
  return {
    inUse: values.get("otp_smtp_pool_connections_in_use") ?? Number.NaN,
    inFlight: values.get("otp_smtp_attempts_in_flight") ?? Number.NaN,
    backlog: values.get("otp_smtp_backlog") ?? Number.NaN,
  };
}

/** Reads the pool gauges every few ms while `work` runs; resolves its result and every reading. */
async function sampled<T>(service: ObservedService, work: Promise<T>): Promise<{ result: T; samples: PoolSample[] }> {
  const samples: PoolSample[] = [];
  let done = false;
  const sampling = (async () => {
    while (!done) {
      samples.push(await poolGauges(service));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  try {
    return { result: await work, samples };
  } finally {
    done = true;
    await sampling;
  }
}

function expectBounded(samples: readonly PoolSample[], poolSize: number): void {
  expect(samples.length).toBeGreaterThan(10);
  for (const sample of samples) {
    expect(sample.inUse, JSON.stringify(sample)).toBeGreaterThanOrEqual(0);
    expect(sample.inUse, JSON.stringify(sample)).toBeLessThanOrEqual(poolSize);
    expect(sample.inUse, JSON.stringify(sample)).toBeLessThanOrEqual(sample.inFlight);
  }
}

describe("one pooled connection, a relay that answers each message in 1 s, three sends at once", () => {
  const relayMs = 1000;
  let service: ObservedService;

  beforeAll(async () => {
    // The relay's 1 s is well inside the socket timeout even on a loaded machine (the default here is 2 s).
    service = await startObservedService({ env: { SMTP_POOL_SIZE: "1", SEND_WAIT_BUDGET: "10s", SMTP_SOCKET_TIMEOUT: "5s" } });
  });
  afterAll(() => service.stop());

  it("the gauge says one connection in use and the backlog two waiting while three attempts are in flight; the record and the log line show each wait apart", async () => {
    service.sink.respondWith(...Array.from({ length: 3 }, () => behave.accept({ delayMs: relayMs })));
    const { result: answers, samples } = await sampled(
      service,
      Promise.all(
        [0, 1, 2].map((index) => grpcUnary(service.grpcClient, sendOtp, { recipient: `queued${index}@example.com`, purpose: Purpose.LOGIN })),
      ),
    );
    expect(answers.map((answer) => answer.state)).toEqual([DeliveryState.ACCEPTED, DeliveryState.ACCEPTED, DeliveryState.ACCEPTED]);

    expectBounded(samples, 1);
    expect(samples).toContainEqual({ inUse: 1, inFlight: 3, backlog: 2 });
    expect(await poolGauges(service)).toEqual({ inUse: 0, inFlight: 0, backlog: 0 });

    const attempts = await Promise.all(
      answers.map(async (answer) => {
        const status = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: answer.messageId });
        expect(status.attempts).toHaveLength(1);
        const attempt = status.attempts[0];
        expect(attempt.poolWait).toBeDefined();
        return { messageId: answer.messageId, duration: durationMs(attempt.duration!), poolWait: durationMs(attempt.poolWait!) };
      }),
    );
    for (const attempt of attempts) {
      // The relay's own time: its 1 s, whatever the wait before it.
      expect(attempt.duration - attempt.poolWait, JSON.stringify(attempt)).toBeGreaterThanOrEqual(relayMs - 50);
      expect(attempt.duration - attempt.poolWait, JSON.stringify(attempt)).toBeLessThan(relayMs + 900);
    }
    // The one that went last waited for both before it (about 2 s of its 3 s; the calls reach the pool a little apart).
    const longest = attempts.reduce((a, b) => (b.poolWait > a.poolWait ? b : a));
    expect(longest.poolWait).toBeGreaterThanOrEqual(relayMs + 500);
    expect(longest.duration).toBeGreaterThanOrEqual(longest.poolWait + relayMs - 50);

    for (const attempt of attempts) {
      const line = service.logs().find((entry) => entry["msg"] === "smtp attempt" && entry["message_id"] === attempt.messageId);
      expect(line).toMatchObject({ duration_ms: attempt.duration, pool_wait_ms: attempt.poolWait });
    }
  });
});

describe("one pooled connection, a relay that refuses connections, four sends at once", () => {
  let service: ObservedService;

  beforeAll(async () => {
    service = await startObservedService({
      env: { SMTP_POOL_SIZE: "1", SMTP_URL: `smtp://127.0.0.1:${await freePort()}?starttls=off`, SMTP_MAX_ATTEMPTS: "3", SEND_WAIT_BUDGET: "10s" },
    });
  });
  afterAll(() => service.stop());

  it("while attempts wait in the pool's queue and no connection is up, the gauge says no connection in use", async () => {
    const { result: answers, samples } = await sampled(
      service,
      Promise.all(
        [0, 1, 2, 3].map((index) =>
          grpcUnary(service.grpcClient, sendOtp, { recipient: `refused${index}@example.com`, purpose: Purpose.LOGIN }).then(
            () => undefined,
            (error: unknown) => error as Error,
          ),
        ),
      ),
    );
    // Each call fails (UNAVAILABLE) naming its message.
    const messageIds = answers.map((error) => /message_id (\w+)/.exec(error?.message ?? "")?.[1]);
    expect(messageIds.every((id) => id !== undefined), String(answers)).toBe(true);

    expectBounded(samples, 1);
    // The pool waits before it tries the next queued message after a connection failed: attempts in flight, none on a connection.
    expect(samples.some((sample) => sample.inFlight >= 2 && sample.inUse === 0)).toBe(true);
    expect(await poolGauges(service)).toEqual({ inUse: 0, inFlight: 0, backlog: 0 });

    // Every attempt that could not connect was taken by the connection that tried: its wait ended then, and the
    // record says how much of it was the wait.
    const status = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: messageIds[0]! });
    expect(status.attempts.length).toBeGreaterThanOrEqual(1);
    for (const attempt of status.attempts) {
      expect(attempt.errorCode).toBe("ECONNREFUSED");
      expect(durationMs(attempt.poolWait!)).toBeLessThanOrEqual(durationMs(attempt.duration!));
    }
  });
});
