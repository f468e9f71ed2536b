/**
 * The attempt spans delivery telemetry makes, on the real SDK (spans to
 * memory) and a real metrics registry: a span says of an attempt what
 * otp_smtp_attempts_total counts it as.
 */
import { SpanStatusCode } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import { expect, it } from "vitest";
import type { AttemptRecord, DeliveryRecord } from "../../src/delivery/record.js";
import { createDeliveryTelemetry } from "../../src/telemetry/delivery-telemetry.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";

/** One send with one attempt ending as `ended` says; resolves that attempt's span and the metrics' text. */
async function oneAttempt(ended: Pick<AttemptRecord, "replyText" | "errorCode">) {
  const exporter = new InMemorySpanExporter();
  const tracer = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] }).getTracer("test");
  const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
  const telemetry = createDeliveryTelemetry({ metrics, poolSize: 1, tracer });
  const now = Date.now();
  const record: DeliveryRecord = {
    messageId: "attempt-1",
    caller: "test",
    state: "SENDING",
    recipientMasked: "a***@example.com",
    recipientDomain: "example.com",
    purpose: "login",
    locale: "en",
    createdAt: now,
    updatedAt: now,
    expiresAt: now + 600_000,
    attempts: [],
    traceId: "",
  };
  const attempt: AttemptRecord = { number: 1, startedAt: now, durationMs: 5, outcome: "transient", replyCode: 0, enhancedStatus: "", ...ended };

  const send = telemetry.sendStarted(record, "relay.example:587");
  send.attemptStarted(1);
  send.attemptFinished(attempt);
  send.finished({ ...record, state: "FAILED", attempts: [attempt], failureReason: "gave up" });

  const spans = exporter.getFinishedSpans().filter((span) => span.name === "smtp.attempt");
  expect(spans).toHaveLength(1);
  return { span: spans[0], metrics: await metrics.render("text") };
}

it("an attempt given up because its code expired (EEXPIRED) is an expired attempt in its span, as in the metrics: not a transient failure", async () => {
  const { span, metrics } = await oneAttempt({
    replyText: "the code expired while the message waited for a connection to the relay; nothing was sent",
    errorCode: "EEXPIRED",
  });

  expect(span?.attributes).toMatchObject({ "smtp.outcome": "expired", "error.type": "EEXPIRED" });
  expect(span?.status).toEqual({ code: SpanStatusCode.ERROR, message: "expired: the code expired before the relay took the message" });
  expect(metrics).toMatch(/^otp_smtp_attempts_total\{result="expired",reply_class="none"\} 1$/m);
});

it("an attempt a bug of ours ended (EINTERNAL) is an internal error in its span, as in the metrics: not a transient failure", async () => {
  const { span, metrics } = await oneAttempt({ replyText: "internal error in the SMTP transport", errorCode: "EINTERNAL" });

  expect(span?.attributes).toMatchObject({ "smtp.outcome": "internal", "error.type": "EINTERNAL" });
  expect(span?.status).toEqual({ code: SpanStatusCode.ERROR, message: "internal error: EINTERNAL (a bug of the service, not the relay's doing)" });
  expect(metrics).toMatch(/^otp_smtp_attempts_total\{result="internal",reply_class="none"\} 1$/m);
});
