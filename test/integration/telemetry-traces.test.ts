/**
 * One trace from the caller to the SMTP conversation, in-process: the SDK
 * (set up as the bootstrap does, with Redis command spans), the real service
 * on real Redis, a real SMTP sink and real gRPC sockets, spans collected in
 * memory. Also: trace ids in records, logs and
 * exemplars, and a grep over everything captured for the code and the
 * address.
 */
import { spanExporter, spansOf, parentOf } from "../support/tracing.js";
import { context, propagation, SpanKind, SpanStatusCode, trace, type HrTime } from "@opentelemetry/api";
import { hrTimeToMilliseconds } from "@opentelemetry/core";
import type { ReadableSpan } from "@opentelemetry/sdk-trace";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { unlimited } from "../../src/limits/types.js";
import { createLogger } from "../../src/logger.js";
import { createBounceTelemetry, linkedTraceSpanId } from "../../src/telemetry/bounce-telemetry.js";
import { startMetricsServer, type MetricsServer } from "../../src/telemetry/metrics-server.js";
import { dsnMessage, type DsnRecipientFields } from "../support/dsn-fixtures.js";
import { bufCurl, errorDetails, grpcError, grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { randomPrefix, redisUrlForTests, scanPrefix } from "../support/redis.js";
import { behave } from "../support/smtp-sink.js";

const { sendOtp, getDeliveryStatus, verifyOtp } = OtpEmailService.method;
const caller = trace.getTracer("test-caller");

/** Runs `work` inside a fresh caller span; returns its result and the caller span's ids. */
async function inCallerSpan<T>(name: string, work: () => Promise<T>): Promise<{ result: T; traceId: string; spanId: string }> {
  const span = caller.startSpan(name);
  try {
    const result = await context.with(trace.setSpan(context.active(), span), work);
    return { result, traceId: span.spanContext().traceId, spanId: span.spanContext().spanId };
  } finally {
    span.end();
  }
}

/** What an instrumented grpc-js caller sends: its active span's context (`traceparent`) in the metadata. */
function callerMetadata(): { metadata: grpc.Metadata } {
  const metadata = new grpc.Metadata();
  propagation.inject(context.active(), metadata, { set: (carrier, key, value) => carrier.set(key, value) });
  return { metadata };
}

const one = <T>(items: readonly T[], what: string): T => {
  expect(items, what).toHaveLength(1);
  return items[0];
};

const bounceDomain = "bounces.acme.test";

/** Hands a DSN about `messageId` to the service's bounce intake over SMTP, as the relay would hours after the send. */
async function bounceThroughIntake(service: ObservedService, messageId: string, block: DsnRecipientFields): Promise<void> {
  const to = `bounce+${messageId}@${bounceDomain}`;
  const intake = createTransport({ host: "127.0.0.1", port: service.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
  try {
    const reply = await intake.sendMail({ envelope: { from: "", to }, raw: dsnMessage({ to, envelopeId: messageId, recipients: [block] }) });
    expect(reply.response).toMatch(/^250 /);
  } finally {
    intake.close();
  }
}

/** The smtp.send span of `messageId` and its attempts (first first), once the send span has ended. */
async function sendSpansOf(messageId: string): Promise<{ send: ReadableSpan; attempts: ReadableSpan[] }> {
  const send = await vi.waitFor(
    () => one(spanExporter.getFinishedSpans().filter((span) => span.name === "smtp.send" && span.attributes["otp.message_id"] === messageId), "send span"),
    { timeout: 10_000 },
  );
  const sendId = send.spanContext().spanId;
  const attempts = spanExporter
    .getFinishedSpans()
    .filter((span) => span.name === "smtp.attempt" && parentOf(span) === sendId)
    .sort((a, b) => Number(a.attributes["smtp.attempt.number"]) - Number(b.attributes["smtp.attempt.number"]));
  return { send, attempts };
}

const ms = hrTimeToMilliseconds;

/** Every key under `prefix` with its value, as text. */
async function redisDump(prefix: string): Promise<string> {
  const redis = new Redis(redisUrlForTests());
  try {
    const lines: string[] = [];
    for (const key of await scanPrefix(redis, prefix)) {
      const type = await redis.type(key);
      const value =
        type === "string" ? await redis.get(key)
        : type === "hash" ? await redis.hgetall(key)
        : type === "list" ? await redis.lrange(key, 0, -1)
        : type === "zset" ? await redis.zrange(key, "0", "-1", "WITHSCORES")
        : `(${type})`;
      lines.push(`${key} ${JSON.stringify(value)}`);
    }
    return lines.join("\n");
  } finally {
    redis.disconnect();
  }
}

describe("tracing: one trace from the caller to every SMTP attempt", () => {
  const redisPrefix = randomPrefix();
  let service: ObservedService;
  let metricsServer: MetricsServer;

  beforeAll(async () => {
    service = await startObservedService({
      limiter: unlimited,
      env: { REDIS_PREFIX: redisPrefix, BOUNCE_SMTP_ADDR: "127.0.0.1:0", BOUNCE_DOMAIN: bounceDomain },
    });
    metricsServer = await startMetricsServer({ address: "127.0.0.1:0", metrics: service.metrics, logger: createLogger({ level: "silent" }) });
  });
  afterAll(async () => {
    await metricsServer.close();
    await service.stop();
  });

  it("a grpc-js call with the caller span's traceparent: caller -> server -> redis, smtp.send -> attempts, with a 421 retried", async () => {
    service.sink.respondWith(behave.reply("RCPT TO", 421, "4.7.0", "Try again later, closing connection"), behave.accept());
    const { result: sent, traceId, spanId: callerSpanId } = await inCallerSpan("caller", () =>
      grpcUnary(service.grpcClient, sendOtp, { recipient: "jane.doe@googlemail.com", purpose: Purpose.LOGIN }, callerMetadata()),
    );
    expect(sent.state).toBe(DeliveryState.ACCEPTED);

    const spans = spansOf(traceId);
    const named = (name: string) => spans.filter((span) => span.name === name);
    const server = one(named("grpc.otp.v1.OtpEmailService/SendOtp").filter((s) => s.kind === SpanKind.SERVER), "grpc server span");
    const serverId = server.spanContext().spanId;
    expect(parentOf(server)).toBe(callerSpanId);
    expect(server.attributes).toEqual({
      "rpc.system": "grpc",
      "rpc.service": "otp.v1.OtpEmailService",
      "rpc.method": "SendOtp",
      "rpc.grpc.status_code": 0,
    });
    expect(server.status.code).toBe(SpanStatusCode.UNSET);

    // With TRACE_REDIS_COMMANDS=true (test/support/tracing.ts): the Redis commands of the request (record, code) and
    // of its send (record updates) are the server span's children.
    const redis = spans.filter((span) => span.instrumentationScope.name === "@opentelemetry/instrumentation-ioredis");
    expect(redis.length).toBeGreaterThanOrEqual(4);
    for (const span of redis) expect(parentOf(span)).toBe(serverId);

    // Rendering is no span of its own (it takes microseconds): its locale is on smtp.send.
    expect(named("otp.render")).toEqual([]);
    const send = one(named("smtp.send"), "send span");
    expect(parentOf(send)).toBe(serverId);
    expect(send.attributes).toMatchObject({
      "otp.message_id": sent.messageId,
      "otp.purpose": "login",
      "otp.locale": "en",
      "otp.recipient.masked": "j***@googlemail.com",
      "otp.recipient.provider": "gmail",
      "otp.delivery.state": "ACCEPTED",
      "smtp.attempts": 2,
      "server.address": "127.0.0.1",
      "server.port": service.sink.port,
    });
    expect(send.events.map((event) => [event.name, event.attributes?.["smtp.retry.next_attempt"]])).toEqual([["smtp.retry", 2]]);

    const attempts = named("smtp.attempt").sort((a, b) => Number(a.attributes["smtp.attempt.number"]) - Number(b.attributes["smtp.attempt.number"]));
    expect(attempts).toHaveLength(2);
    for (const attempt of attempts) {
      expect(parentOf(attempt)).toBe(send.spanContext().spanId);
      expect(attempt.kind).toBe(SpanKind.CLIENT);
      expect(attempt.attributes).toMatchObject({ "server.address": "127.0.0.1", "server.port": service.sink.port });
    }
    expect(attempts[0]?.attributes).toMatchObject({
      "smtp.attempt.number": 1,
      "smtp.retry.count": 0,
      "smtp.outcome": "transient",
      "smtp.reply.code": 421,
      "smtp.reply.enhanced_status": "4.7.0",
      "error.type": "421",
    });
    expect(attempts[0]?.status.code).toBe(SpanStatusCode.ERROR);
    expect(attempts[1]?.attributes).toMatchObject({
      "smtp.attempt.number": 2,
      "smtp.retry.count": 1,
      "smtp.outcome": "accepted",
      "smtp.reply.code": 250,
    });
    expect(attempts[1]?.attributes["error.type"]).toBeUndefined();
    expect(new Set(spans.map((span) => span.spanContext().traceId))).toEqual(new Set([traceId]));

    // The record keeps the trace id, and GetDeliveryStatus returns it.
    const status = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    expect(status.traceId).toBe(traceId);

    // Log lines written inside the request carry its trace and span.
    const lines = service.logs().filter((line) => line["message_id"] === sent.messageId);
    const queued = one(lines.filter((line) => line["msg"] === "otp queued"), "otp queued line");
    expect(queued).toMatchObject({ trace_id: traceId, span_id: serverId });
    const attemptLines = lines.filter((line) => line["msg"] === "smtp attempt");
    expect(attemptLines).toHaveLength(2);
    for (const line of attemptLines) expect(line["trace_id"]).toBe(traceId);
  });

  it("health probes and reflection make no span, whichever of their methods is called", async () => {
    const before = spanExporter.getFinishedSpans().length;
    const transport = createGrpcTransport({ baseUrl: `http://${service.address}` });
    const health = createClient(Health, transport);
    await health.check({ service: "" });
    await health.list({});
    const abort = new AbortController();
    for await (const answer of health.watch({ service: "" }, { signal: abort.signal })) {
      expect(answer.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      break;
    }
    abort.abort();
    await bufCurl(["--list-services", `http://${service.address}`]);
    // A traced call after them: their spans, had there been any, ended before its own.
    await service.connectClient.getDeliveryStatus({ messageId: "0".repeat(26) }).catch(() => undefined);
    const names = spanExporter.getFinishedSpans().slice(before).map((span) => span.name);
    expect(names.filter((name) => name.startsWith("grpc."))).toEqual(["grpc.otp.v1.OtpEmailService/GetDeliveryStatus"]);
  });

  it("the connect-node client's span parents the server span", async () => {
    const { result: sent, traceId, spanId: callerSpanId } = await inCallerSpan("node-caller", () =>
      service.connectClient.sendOtp({ recipient: "minji@hanmail.net", purpose: Purpose.SIGNUP }),
    );
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const spans = spansOf(traceId);
    const client = one(spans.filter((span) => span.instrumentationScope.name === "otp-email-client"), "connect client span");
    expect(client.name).toBe("otp.v1.OtpEmailService/SendOtp");
    expect(client.kind).toBe(SpanKind.CLIENT);
    expect(parentOf(client)).toBe(callerSpanId);
    expect(client.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.method": "SendOtp", "rpc.grpc.status_code": 0 });
    const server = one(spans.filter((span) => span.kind === SpanKind.SERVER), "server span");
    expect(parentOf(server)).toBe(client.spanContext().spanId);
    expect(one(spans.filter((span) => span.name === "smtp.send"), "send span").attributes["otp.recipient.provider"]).toBe("kakao");
    const status = await service.connectClient.getDeliveryStatus({ messageId: sent.messageId });
    expect(status.traceId).toBe(traceId);
  });

  it("latency histograms carry the trace id as an exemplar when the scraper asks for OpenMetrics", async () => {
    const { result: sent, traceId } = await inCallerSpan("exemplar-caller", () =>
      grpcUnary(service.grpcClient, sendOtp, { recipient: "exemplar@icloud.com", purpose: Purpose.LOGIN }, callerMetadata()),
    );
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const prometheusAccept =
      "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    const openMetrics = await fetch(metricsServer.url, { headers: { accept: prometheusAccept } });
    expect(openMetrics.headers.get("content-type")).toBe("application/openmetrics-text; version=1.0.0; charset=utf-8");
    const body = await openMetrics.text();
    expect(body.endsWith("# EOF\n")).toBe(true);
    expect(body).toContain("# TYPE grpc_server_started counter");
    expect(body).toMatch(/^grpc_server_started_total\{grpc_type="unary",grpc_service="otp\.v1\.OtpEmailService",grpc_method="SendOtp"\} \d+$/m);
    const exemplars = (metric: string) =>
      [...body.matchAll(new RegExp(`^${metric}_bucket\\{[^}]*\\} \\d+ # \\{trace_id="([0-9a-f]{32})"\\} [0-9.e+-]+ [0-9.]+$`, "gm"))].map(
        (match) => match[1],
      );
    // Exemplars keep the latest observation per bucket: this request's trace is among them.
    expect(exemplars("grpc_server_handling_seconds")).toContain(traceId);
    expect(exemplars("otp_smtp_attempt_duration_seconds")).toContain(traceId);
    expect(exemplars("otp_smtp_send_duration_seconds")).toContain(traceId);

    // The classic format is the default, has no exemplars, and counters keep their names after an OpenMetrics scrape.
    const text = await fetch(metricsServer.url);
    expect(text.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const textBody = await text.text();
    expect(textBody).not.toContain(" # {");
    expect(textBody).toContain("# TYPE grpc_server_started_total counter");
  });

  it("a bounce read later is a span of its own, linked to the SendOtp server span of the send's trace, and counted", async () => {
    const { result: sent, traceId } = await inCallerSpan("bounce-caller", () =>
      grpcUnary(service.grpcClient, sendOtp, { recipient: "late@yahoo.co.uk", purpose: Purpose.LOGIN }, callerMetadata()),
    );
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const server = one(spansOf(traceId).filter((span) => span.kind === SpanKind.SERVER), "server span");

    await bounceThroughIntake(service, sent.messageId, { action: "failed", status: "5.1.1", finalRecipient: "late@yahoo.co.uk" });
    const report = await vi.waitFor(() =>
      one(
        spanExporter.getFinishedSpans().filter((span) => span.name === "otp.delivery_report" && span.attributes["otp.message_id"] === sent.messageId),
        "delivery report span",
      ),
    );
    expect(parentOf(report)).toBeUndefined();
    expect(report.spanContext().traceId).not.toBe(traceId);
    // A span that exists, so Jaeger and Tempo land on it: the SendOtp server span, parent of the send and its attempts.
    expect(report.links.map((link) => [link.context.traceId, link.context.spanId])).toEqual([[traceId, server.spanContext().spanId]]);
    expect(report.attributes).toMatchObject({ "otp.delivery.state": "BOUNCED", "otp.recipient.provider": "yahoo" });
    const text = await service.metrics.render("text");
    expect(text).toMatch(/^otp_bounce_reports_total\{kind="applied",state="BOUNCED"\} 1$/m);
    expect(text).toMatch(/^otp_delivery_state_transitions_total\{state="BOUNCED",provider="yahoo"\} 1$/m);
  });

  it("a report on a record written before span ids were kept links to the send's trace with the placeholder span id", () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const older = {
      messageId: "01kb0000000000000000000000",
      state: "DELIVERED",
      recipientMasked: "o***@example.org",
      recipientDomain: "example.org",
      traceId,
    } satisfies Partial<DeliveryRecord> as DeliveryRecord;
    createBounceTelemetry({ metrics: service.metrics }).applied(older, traceId);
    const report = one(
      spanExporter.getFinishedSpans().filter((span) => span.name === "otp.delivery_report" && span.attributes["otp.message_id"] === older.messageId),
      "delivery report span",
    );
    expect(report.links.map((link) => [link.context.traceId, link.context.spanId])).toEqual([[traceId, linkedTraceSpanId]]);
  });

  it("log lines about an SMTP attempt name the attempt's span, and the send's verdict names the send span", async () => {
    service.sink.respondWith(
      behave.reply("RCPT TO", 421, "4.7.0", "Try again later"),
      behave.reply("RCPT TO", 550, "5.7.1", "Message refused"),
    );
    const { result: refused, traceId } = await inCallerSpan("log-caller", () =>
      grpcError(grpcUnary(service.grpcClient, sendOtp, { recipient: "logs@outlook.com", purpose: Purpose.LOGIN }, callerMetadata())),
    );
    expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
    const messageId = errorDetails(refused).errorInfo?.metadata["message_id"] ?? "";
    const { send, attempts } = await sendSpansOf(messageId);
    expect(attempts).toHaveLength(2);
    const attemptIds = attempts.map((attempt) => attempt.spanContext().spanId);
    const lines = service.logs().filter((line) => line["trace_id"] === traceId);

    const attemptLines = lines.filter((line) => line["msg"] === "smtp attempt" && line["message_id"] === messageId);
    expect(attemptLines.map((line) => [line["attempt"], line["span_id"]])).toEqual([
      [1, attemptIds[0]],
      [2, attemptIds[1]],
    ]);
    // The transport's own lines (debug) about each attempt's reply, written while the request's span is active.
    expect(lines.filter((line) => line["msg"] === "relay did not accept message").map((line) => [line["reply_code"], line["span_id"]])).toEqual([
      [421, attemptIds[0]],
      [550, attemptIds[1]],
    ]);
    const failed = one(lines.filter((line) => line["msg"] === "message failed" && line["message_id"] === messageId), "message failed line");
    expect(failed["span_id"]).toBe(send.spanContext().spanId);
  });

  it("no code and no full address in any span, event, log line, metric, gRPC answer or Redis key or value", async () => {
    const code = "Q7K4Z9";
    // An apostrophe is valid in a local part (o'brien@), and easy to stop a masking pattern at.
    const address = "zelda.o'secret@example.org";
    const localPart = "zelda.o'secret";
    // A relay that echoes the address in its refusal, and the local part alone, as real ones do.
    service.sink.respondWith(
      behave.reply("RCPT TO", 550, "5.1.1", `<${address}>: Recipient address rejected: User unknown in local recipient table (${localPart})`),
    );
    const refused = await grpcError(
      inCallerSpan("grep-refused", () => grpcUnary(service.grpcClient, sendOtp, { recipient: address, purpose: Purpose.LOGIN, code }, callerMetadata())),
    );
    expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
    const { result: sent } = await inCallerSpan("grep-sent", () =>
      grpcUnary(service.grpcClient, sendOtp, { recipient: address, purpose: Purpose.PASSWORD_RESET }, callerMetadata()),
    );
    const mail = service.sink.messages.find((message) => message.envelope.rcptTo.includes(address));
    const generated = /\b([0-9A-Z]{4,10})\b/.exec(mail?.parsed.subject ?? "")?.[1];
    expect(generated).toBeDefined();
    const verified = await inCallerSpan("grep-verify", () =>
      grpcUnary(service.grpcClient, verifyOtp, { recipient: address, purpose: Purpose.PASSWORD_RESET, code: generated ?? "" }, callerMetadata()),
    );
    expect(sent.messageId).not.toBe("");
    const refusedId = errorDetails(refused).errorInfo?.metadata["message_id"] ?? "";
    expect(refusedId).not.toBe("");
    const refusedStatus = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: refusedId });
    const sentStatus = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    const bigints = (_key: string, value: unknown): unknown => (typeof value === "bigint" ? String(value) : value);
    const grpcText = [refused.details, JSON.stringify(refusedStatus, bigints), JSON.stringify(sentStatus, bigints), JSON.stringify(verified, bigints)].join("\n");
    const redisText = await redisDump(redisPrefix);

    const spanText = JSON.stringify(
      spanExporter.getFinishedSpans().map((span) => ({
        name: span.name,
        attributes: span.attributes,
        events: span.events,
        status: span.status,
        links: span.links,
        resource: span.resource.attributes,
      })),
    );
    const metricsText = (await service.metrics.render("text")) + (await service.metrics.render("openmetrics"));
    const logText = service.logLines.join("\n");
    // The captures are not empty: the masked form is there, so the absence of the raw one means something.
    expect(spanText).toContain("z***@example.org");
    expect(logText).toContain("z***@example.org");
    expect(grpcText).toContain("z***@example.org");
    expect(redisText).toContain("z***@example.org");
    for (const [what, text] of [
      ["spans", spanText],
      ["logs", logText],
      ["metrics", metricsText],
      ["gRPC answers", grpcText],
      ["Redis", redisText],
    ] as const) {
      for (const secret of [code, generated ?? "", address, localPart, encodeURIComponent(address)]) {
        expect(text.includes(secret), `${secret} found in ${what}`).toBe(false);
      }
    }
  });
});


describe("tracing: a send that outlives its SendOtp call", () => {
  let service: ObservedService;

  beforeAll(async () => {
    // The caller is answered at once (SENDING), before the relay has said anything: every attempt ends after the call.
    service = await startObservedService({ limiter: unlimited, env: { SEND_WAIT_BUDGET: "0ms" } });
  });
  afterAll(async () => {
    await service.stop();
  });

  it("its attempts, the retry after a backoff too, stay in the caller's trace under smtp.send, timed after the server span ended", async () => {
    service.sink.respondWith(behave.reply("RCPT TO", 421, "4.7.0", "Try again later"), behave.accept({ delayMs: 300 }));
    const { result: sent, traceId, spanId: callerSpanId } = await inCallerSpan("early-answer-caller", () =>
      grpcUnary(service.grpcClient, sendOtp, { recipient: "later@gmail.com", purpose: Purpose.LOGIN }, callerMetadata()),
    );
    expect([DeliveryState.SENDING, DeliveryState.RETRYING]).toContain(sent.state);

    const { send, attempts } = await sendSpansOf(sent.messageId);
    const server = one(spansOf(traceId).filter((span) => span.kind === SpanKind.SERVER), "server span");
    expect(parentOf(server)).toBe(callerSpanId);
    expect(send.spanContext().traceId).toBe(traceId);
    expect(parentOf(send)).toBe(server.spanContext().spanId);
    expect(send.attributes["otp.delivery.state"]).toBe("ACCEPTED");
    expect(attempts.map((attempt) => [attempt.spanContext().traceId, attempt.attributes["smtp.outcome"]])).toEqual([
      [traceId, "transient"],
      [traceId, "accepted"],
    ]);
    // Not orphaned, not in a trace of their own: no attempt span of this send anywhere else.
    const sendId = send.spanContext().spanId;
    expect(spanExporter.getFinishedSpans().filter((span) => parentOf(span) === sendId)).toHaveLength(2);

    // Timing: the send inside the call's start, each attempt inside the send, the retry after the first attempt
    // ended, and the relay's late acceptance after the server span ended (the caller had its answer by then).
    // The SDK takes each span's start from Date.now() (whole milliseconds) and its end from the monotonic clock
    // after it: two spans' times can disagree by under a millisecond, hence the 1 ms of slack.
    const notBefore = (later: HrTime, earlier: HrTime) => expect(ms(later)).toBeGreaterThanOrEqual(ms(earlier) - 1);
    const [first, retry] = attempts as [ReadableSpan, ReadableSpan];
    notBefore(send.startTime, server.startTime);
    for (const attempt of attempts) {
      notBefore(attempt.startTime, send.startTime);
      notBefore(send.endTime, attempt.endTime);
    }
    notBefore(retry.startTime, first.endTime);
    expect(ms(retry.endTime)).toBeGreaterThan(ms(server.endTime) + 100);
    expect(ms(retry.duration)).toBeGreaterThanOrEqual(250);

    // The retry's log line, written after a timer, still names this trace and its own attempt span.
    const retryLine = one(
      service.logs().filter((line) => line["msg"] === "smtp attempt" && line["message_id"] === sent.messageId && line["attempt"] === 2),
      "retry's smtp attempt line",
    );
    expect(retryLine).toMatchObject({ trace_id: traceId, span_id: retry.spanContext().spanId });
  });
});
