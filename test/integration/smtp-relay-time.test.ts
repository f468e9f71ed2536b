/**
 * The relay's time and the wait for a pooled connection, as the metrics tell
 * them apart, on the real service (real gRPC over a socket, real Redis, a real
 * SMTP server on loopback that answers each message after a delay): with one
 * pooled connection and several sends at once, each message waits in line for
 * the one before it; that wait is ours (otp_smtp_pool_wait_seconds), not the
 * relay's (otp_smtp_attempt_duration_seconds, OtpSmtpAttemptLatencyP99High's input).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { behave } from "../support/smtp-sink.js";
import { sampleValue } from "../support/metric-samples.js";

const { sendOtp } = OtpEmailService.method;

/** One sample's value from the service's registry, by name and exact labels; undefined when the series does not exist. */
function series(service: ObservedService, name: string, labels: Record<string, string>): Promise<number | undefined> {
  return sampleValue(service.metrics.registry, name, labels);
}

describe("a relay that answers each message in 400 ms, one pooled connection, five sends at once", () => {
  const relayMs = 400;
  const sends = 5;
  let service: ObservedService;

  beforeAll(async () => {
    service = await startObservedService({ env: { SMTP_POOL_SIZE: "1", SEND_WAIT_BUDGET: "10s" } });
  });
  afterAll(() => service.stop());

  it("the relay's time per attempt is its 400 ms, though the messages waited in line for up to 1.6 s; the wait is in otp_smtp_pool_wait_seconds", async () => {
    service.sink.respondWith(...Array.from({ length: sends }, () => behave.accept({ delayMs: relayMs })));
    const answers = await Promise.all(
      Array.from({ length: sends }, (_, index) => grpcUnary(service.grpcClient, sendOtp, { recipient: `queued${index}@example.com`, purpose: Purpose.LOGIN })),
    );
    expect(answers.map((answer) => answer.state)).toEqual(Array.from({ length: sends }, () => DeliveryState.ACCEPTED));

    const relay = (suffix: string, labels: Record<string, string> = {}) =>
      series(service, `otp_smtp_attempt_duration_seconds${suffix}`, { result: "ok", ...labels });
    expect(await relay("_count")).toBe(sends);
    // Every attempt took the relay at least its 400 ms...
    expect(await relay("_bucket", { le: "0.25" })).toBe(0);
    // ...and, the wait left out, well under a second each (with the wait: 0.4, 0.8, 1.2, 1.6 and 2 s).
    expect(await relay("_bucket", { le: "1" })).toBe(sends);

    // The wait: the first message had the connection at once, the others waited for those before them to be answered.
    const wait = (suffix: string, labels: Record<string, string> = {}) => series(service, `otp_smtp_pool_wait_seconds${suffix}`, labels);
    expect(await wait("_count")).toBe(sends);
    expect(await wait("_bucket", { le: "0.25" })).toBeGreaterThanOrEqual(1);
    expect(await wait("_bucket", { le: "1" })).toBeLessThan(sends);
    // 0 + 0.4 + 0.8 + 1.2 + 1.6 s if they all arrived at once; the calls reach the pool a little apart.
    expect(await wait("_sum")).toBeGreaterThan(3);

    // Not a label anywhere: the recipients.
    expect(await service.metrics.render("text")).not.toContain("example.com");
  });
});
