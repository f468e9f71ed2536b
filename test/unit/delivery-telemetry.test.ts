/**
 * The attempt spans delivery telemetry makes, on the real SDK (spans to
 * memory) and a real metrics registry: a span says of an attempt what
 * otp_smtp_attempts_total counts it as.
 */
import { SpanStatusCode, type Tracer } from "@opentelemetry/api";
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
  const telemetry = createDeliveryTelemetry({ metrics, tracer });
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

/** A send on a real registry, its metrics read back as text; the attempt's steps are the test's to play. */
function observedSend(tracer?: Tracer) {
  const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
  const telemetry = createDeliveryTelemetry({ metrics, ...(tracer === undefined ? {} : { tracer }) });
  const now = Date.now();
  const record: DeliveryRecord = {
    messageId: "attempt-2",
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
  const attempt = (ended: Pick<AttemptRecord, "outcome" | "replyCode" | "errorCode">): AttemptRecord => ({
    number: 1,
    startedAt: now,
    durationMs: 5,
    enhancedStatus: "",
    replyText: "",
    ...ended,
  });
  return { send: telemetry.sendStarted(record, "relay.example:587"), attempt, text: () => metrics.render("text") };
}

/** The `_count` of every series of histogram `name` in `text`, by its labels as written. */
function counts(text: string, name: string): Record<string, number> {
  return Object.fromEntries([...text.matchAll(new RegExp(`^${name}_count(\\{[^}]*\\})? (\\S+)$`, "gm"))].map((m) => [m[1] ?? "", Number(m[2])]));
}

it("the relay's time starts when a connection takes the attempt; the wait before it is the pool's, observed apart", async () => {
  const { send, attempt, text } = observedSend();
  send.attemptStarted(1);
  send.attemptTaken();
  send.attemptTaken();
  send.attemptFinished(attempt({ outcome: "accepted", replyCode: 250, errorCode: "" }));

  const metrics = await text();
  expect(counts(metrics, "otp_smtp_pool_wait_seconds")).toEqual({ "": 1 });
  expect(counts(metrics, "otp_smtp_attempt_duration_seconds")).toEqual({ '{result="ok"}': 1, '{result="transient"}': 0, '{result="permanent"}': 0, '{result="unanswered"}': 0 });
});

it("an attempt whose code expired while it waited for a connection is all wait: in the pool's histogram, not in the relay's time", async () => {
  const { send, attempt, text } = observedSend();
  send.attemptStarted(1);
  send.attemptFinished(attempt({ outcome: "transient", replyCode: 0, errorCode: "EEXPIRED" }));

  const metrics = await text();
  expect(counts(metrics, "otp_smtp_pool_wait_seconds")).toEqual({ "": 1 });
  expect(Object.values(counts(metrics, "otp_smtp_attempt_duration_seconds"))).toEqual([0, 0, 0, 0]);
});

it("attempts a connection took that say nothing of the relay's speed (expired, internal, abandoned) are not in its time", async () => {
  for (const ended of [
    { outcome: "transient", replyCode: 0, errorCode: "EEXPIRED" },
    { outcome: "transient", replyCode: 0, errorCode: "EINTERNAL" },
    { outcome: "abandoned", replyCode: 0, errorCode: "" },
  ] as const) {
    const { send, attempt, text } = observedSend();
    send.attemptStarted(1);
    send.attemptTaken();
    send.attemptFinished(attempt(ended));

    const metrics = await text();
    expect(counts(metrics, "otp_smtp_pool_wait_seconds"), ended.errorCode || ended.outcome).toEqual({ "": 1 });
    expect(Object.values(counts(metrics, "otp_smtp_attempt_duration_seconds")), ended.errorCode || ended.outcome).toEqual([0, 0, 0, 0]);
  }
});

it("a connection that takes an attempt drain() withdrew while it waited observes nothing: the shutdown ended that wait", async () => {
  const { send, text } = observedSend();
  send.attemptStarted(1);
  send.attemptWithdrawn();
  send.attemptTaken();

  const metrics = await text();
  expect(counts(metrics, "otp_smtp_pool_wait_seconds")).toEqual({ "": 0 });
  expect(Object.values(counts(metrics, "otp_smtp_attempt_duration_seconds"))).toEqual([0, 0, 0, 0]);
});

it("the attempt's span marks where a pooled connection took the message (smtp.connection): the wait before it, the relay's time after", () => {
  const exporter = new InMemorySpanExporter();
  const tracer = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] }).getTracer("test");
  const { send, attempt } = observedSend(tracer);
  send.attemptStarted(1);
  send.attemptTaken();
  send.attemptFinished(attempt({ outcome: "accepted", replyCode: 250, errorCode: "" }));

  const [span] = exporter.getFinishedSpans().filter((finished) => finished.name === "smtp.attempt");
  expect(span?.events.map((event) => event.name)).toEqual(["smtp.connection"]);
});

/** The value of gauge `name` in `text`. */
function gauge(text: string, name: string): number {
  return Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
}

it("an attempt is in flight from its start to its end, its wait for a connection included", async () => {
  const { send, attempt, text } = observedSend();
  send.attemptStarted(1);
  expect(gauge(await text(), "otp_smtp_attempts_in_flight")).toBe(1);
  send.attemptTaken();
  expect(gauge(await text(), "otp_smtp_attempts_in_flight")).toBe(1);
  send.attemptFinished(attempt({ outcome: "transient", replyCode: 421, errorCode: "" }));
  expect(gauge(await text(), "otp_smtp_attempts_in_flight")).toBe(0);
});
