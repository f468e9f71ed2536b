/**
 * Prometheus metrics of the real service (real Redis, real SMTP sink, real
 * gRPC sockets): exact values after a scripted scenario, bounded series
 * whatever the recipients' domains, promtool's lint on the real output,
 * Redis errors counted.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import http2 from "node:http2";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { createTransport } from "nodemailer";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, OtpEmailService, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { feedbackTypes } from "../../src/bounce/arf.js";
import { intakeRejectionReasons } from "../../src/bounce/intake-rejections.js";
import { OtpError } from "../../src/errors.js";
import { newMessageId } from "../../src/otp/code.js";
import { unlimited, type SendLimiter } from "../../src/limits/types.js";
import { arfFixture } from "../support/arf-fixtures.js";
import { openCertificateWorkshop, type KeyPair } from "../support/certs.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { GrpcHealthClient, grpcError, grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { startRedisServer } from "../support/redis.js";
import { behave } from "../support/smtp-sink.js";
import { sampleValue } from "../support/metric-samples.js";

const { sendOtp, verifyOtp, getDeliveryStatus } = OtpEmailService.method;

/** Refuses every recipient whose address starts with `limited`, as the recipient limit would. */
const scriptedLimiter: SendLimiter = {
  ...unlimited,
  admit(ctx, request) {
    if (!request.recipientKey.startsWith("limited")) return unlimited.admit(ctx, request);
    return Promise.reject(
      new OtpError("resource_exhausted", "too many codes to this recipient; retry later", {
        reason: "RATE_LIMITED",
        retryAfterMs: 60_000,
        quotaViolations: [{ subject: "recipient", description: "at most 5 codes per 15m to one recipient", quotaId: "recipient:15m", quotaValue: 5 }],
      }),
    );
  },
};

/** One sample's value from the service's registry, by name and exact labels; undefined when the series does not exist. */
function series(service: ObservedService, name: string, labels: Record<string, string>): Promise<number | undefined> {
  return sampleValue(service.metrics.registry, name, labels);
}

/** The same, 0 when absent. */
async function sample(service: ObservedService, name: string, labels: Record<string, string>): Promise<number> {
  return (await series(service, name, labels)) ?? 0;
}

/** The sample lines (`name{labels} value`) of the service's own families (otp_*, grpc_*) in the text format. */
async function serviceSeries(service: ObservedService): Promise<string[]> {
  const text = await service.metrics.render("text");
  return text.split("\n").filter((line) => /^(otp|grpc)_/.test(line)).map((line) => line.slice(0, line.lastIndexOf(" ")));
}

function promtool(input: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile("promtool", ["check", "metrics"], (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== "number") {
        reject(new Error(`promtool did not run (${error.message}): install the Debian package "prometheus"`));
        return;
      }
      resolve({ code: error === null ? 0 : Number(error.code), output: stdout + stderr });
    });
    child.stdin?.end(input);
  });
}

describe("metrics: a service that has taken no call yet", () => {
  let service: ObservedService;

  beforeAll(async () => {
    service = await startObservedService({
      env: { LIMIT_RECIPIENT: "5/15m,20/1d", LIMIT_RESEND_COOLDOWN: "30s", LIMIT_END_USER_IP: "50/1h", LIMIT_VERIFY_FAILURES: "10/1d" },
    });
  });
  afterAll(() => service.stop());

  it("already has every method's series (each of the 17 codes), each configured limit's refusals, each Redis operation's failures and the shutdown component", async () => {
    // rate() and increase() miss the first increment of a series that is born with it.
    const at = (name: string, labels: Record<string, string>) => series(service, name, labels);
    const methods = [
      { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "SendOtp" },
      { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "VerifyOtp" },
      { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "GetDeliveryStatus" },
      { grpc_type: "unary", grpc_service: "grpc.health.v1.Health", grpc_method: "Check" },
      { grpc_type: "server_stream", grpc_service: "grpc.health.v1.Health", grpc_method: "Watch" },
      { grpc_type: "bidi_stream", grpc_service: "grpc.reflection.v1.ServerReflection", grpc_method: "ServerReflectionInfo" },
      { grpc_type: "bidi_stream", grpc_service: "grpc.reflection.v1alpha.ServerReflection", grpc_method: "ServerReflectionInfo" },
    ];
    for (const labels of methods) {
      expect(await at("grpc_server_started_total", labels), labels.grpc_method).toBe(0);
      expect(await at("grpc_server_msg_received_total", labels)).toBe(0);
      expect(await at("grpc_server_msg_sent_total", labels)).toBe(0);
      expect(await at("grpc_server_handling_seconds_count", labels)).toBe(0);
      for (const code of ["OK", "InvalidArgument", "ResourceExhausted", "Unavailable", "Unauthenticated", "Internal"]) {
        expect(await at("grpc_server_handled_total", { ...labels, grpc_code: code }), `${labels.grpc_method} ${code}`).toBe(0);
      }
    }
    const text = await service.metrics.render("text");
    const handled = text.split("\n").filter((line) => line.startsWith('grpc_server_handled_total{') && line.includes('grpc_method="SendOtp"'));
    expect(handled).toHaveLength(17);
    // What calls refused before routing count in: an unknown method, a request that is not gRPC.
    const unknown = { grpc_type: "unknown", grpc_service: "unknown", grpc_method: "unknown" };
    expect(await at("grpc_server_started_total", unknown)).toBe(0);
    expect(await at("grpc_server_handled_total", { ...unknown, grpc_code: "Unimplemented" })).toBe(0);
    expect(await at("grpc_server_handled_total", { ...unknown, grpc_code: "Unknown" })).toBe(0);

    for (const limit of ["recipient:15m", "recipient:1d", "resend_cooldown:30s", "end_user_ip:1h"]) {
      expect(await at("otp_rate_limit_rejections_total", { rpc: "send", limit }), limit).toBe(0);
    }
    expect(await at("otp_rate_limit_rejections_total", { rpc: "verify", limit: "verify_failures:1d" })).toBe(0);

    expect(await at("otp_health_component_up", { component: "shutdown" })).toBe(1);
    // Each Redis operation's failures, the health probe's PING included.
    for (const operation of ["putRecord", "addCode", "verifyGuess", "consumeLimits", "getRecord", "ping"]) {
      expect(await at("otp_redis_command_errors_total", { operation }), operation).toBe(0);
    }
  });

  it("the series made at 0 count on from there: a call adds exactly one", async () => {
    await grpcUnary(service.grpcClient, sendOtp, { recipient: "first@example.com", purpose: Purpose.LOGIN });
    const labels = { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "SendOtp" };
    expect(await sample(service, "grpc_server_started_total", labels)).toBe(1);
    expect(await sample(service, "grpc_server_handled_total", { ...labels, grpc_code: "OK" })).toBe(1);
    expect(await sample(service, "grpc_server_handling_seconds_count", labels)).toBe(1);
  });
});

describe("metrics: a scripted scenario gives exactly the values it implies", () => {
  let service: ObservedService;

  beforeAll(async () => {
    service = await startObservedService({ limiter: scriptedLimiter });
  });
  afterAll(() => service.stop());

  it("success, retry after a 451, permanent 550, rate-limited, invalid, two verifications, health and reflection", async () => {
    const client = service.grpcClient;
    // 1. success
    const ok = await grpcUnary(client, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN });
    expect(ok.state).toBe(DeliveryState.ACCEPTED);
    // 2. a 451, then accepted. (Not a 421: smtp-server hangs up after one, and on a reused
    // pooled connection nodemailer then reports a closed connection rather than the 421.)
    service.sink.respondWith(behave.reply("RCPT TO", 451, "4.3.0", "Try again later"), behave.accept());
    const retried = await grpcUnary(client, sendOtp, { recipient: "ben@outlook.com", purpose: Purpose.LOGIN });
    expect(retried.state).toBe(DeliveryState.ACCEPTED);
    // 3. refused for good
    service.sink.respondWith(behave.reply("RCPT TO", 550, "5.1.1", "User unknown"));
    expect((await grpcError(grpcUnary(client, sendOtp, { recipient: "cho@naver.com", purpose: Purpose.SIGNUP }))).code).toBe(
      grpc.status.FAILED_PRECONDITION,
    );
    // 4. rate-limited (never reaches the relay)
    expect((await grpcError(grpcUnary(client, sendOtp, { recipient: "limited@daum.net", purpose: Purpose.LOGIN }))).code).toBe(
      grpc.status.RESOURCE_EXHAUSTED,
    );
    // 5. invalid
    expect((await grpcError(grpcUnary(client, sendOtp, { recipient: "not-an-address", purpose: Purpose.LOGIN }))).code).toBe(
      grpc.status.INVALID_ARGUMENT,
    );
    // Verifications: a wrong code, then the right one.
    const [mail] = await service.sink.waitForMessages(1);
    const code = /\b([0-9A-Z]{4,10})\b/.exec(mail?.parsed.subject ?? "")?.[1] ?? "";
    const wrong = code === "000000" ? "111111" : "000000";
    expect((await grpcUnary(client, verifyOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN, code: wrong })).result).toBe(
      VerifyResult.INVALID,
    );
    expect((await grpcUnary(client, verifyOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN, code })).result).toBe(
      VerifyResult.VERIFIED,
    );
    // Health and reflection are RPCs too.
    const health = new GrpcHealthClient(service.address, grpc.credentials.createInsecure());
    await grpcUnary(health, Health.method.check, { service: "" });
    health.close();

    const at = (name: string, labels: Record<string, string>) => sample(service, name, labels);
    const otpRpc = { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService" };

    // SendOtp outcomes, by purpose.
    expect(await at("otp_sends_total", { purpose: "login", outcome: "accepted" })).toBe(2);
    expect(await at("otp_sends_total", { purpose: "signup", outcome: "relay_rejected" })).toBe(1);
    expect(await at("otp_sends_total", { purpose: "login", outcome: "rate_limited" })).toBe(1);
    expect(await at("otp_sends_total", { purpose: "login", outcome: "invalid" })).toBe(1);
    expect(await at("otp_sends_total", { purpose: "login", outcome: "pending" })).toBe(0);
    expect(await at("otp_rate_limit_rejections_total", { rpc: "send", limit: "recipient:15m" })).toBe(1);
    expect(await at("otp_verifications_total", { purpose: "login", result: "invalid" })).toBe(1);
    expect(await at("otp_verifications_total", { purpose: "login", result: "verified" })).toBe(1);

    // SMTP attempts: ok x2, one 451, one 550.
    expect(await at("otp_smtp_attempts_total", { result: "ok", reply_class: "2xx" })).toBe(2);
    expect(await at("otp_smtp_attempts_total", { result: "transient", reply_class: "4xx" })).toBe(1);
    expect(await at("otp_smtp_attempts_total", { result: "permanent", reply_class: "5xx" })).toBe(1);
    expect(await at("otp_smtp_attempts_total", { result: "transient", reply_class: "none" })).toBe(0);
    expect(await at("otp_smtp_attempt_duration_seconds_count", { result: "ok" })).toBe(2);
    expect(await at("otp_smtp_attempt_duration_seconds_count", { result: "transient" })).toBe(1);
    expect(await at("otp_smtp_attempt_duration_seconds_count", { result: "permanent" })).toBe(1);
    // Each send's final verdict, by purpose: the two login sends accepted, the signup one refused.
    expect(await at("otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "accepted" })).toBe(2);
    expect(await at("otp_smtp_send_duration_seconds_count", { purpose: "signup", outcome: "failed" })).toBe(1);
    expect(await at("otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "failed" })).toBe(0);
    expect(await at("otp_smtp_send_duration_seconds_count", { purpose: "password_reset", outcome: "accepted" })).toBe(0);
    expect(await at("otp_smtp_attempts_in_flight", {})).toBe(0);
    expect(await at("otp_smtp_pool_connections_in_use", {})).toBe(0);
    expect(await at("otp_smtp_pool_size", {})).toBe(5);

    // Delivery states, by provider class: gmail sent once, microsoft retried once, naver refused.
    // A send is stored as SENDING straight away (it is handed to the relay at
    // once), so no message passes through QUEUED.
    const transitions: [string, string, number][] = [
      ["QUEUED", "gmail", 0],
      ["SENDING", "gmail", 1],
      ["ACCEPTED", "gmail", 1],
      ["QUEUED", "microsoft", 0],
      ["SENDING", "microsoft", 2],
      ["RETRYING", "microsoft", 1],
      ["ACCEPTED", "microsoft", 1],
      ["QUEUED", "naver", 0],
      ["SENDING", "naver", 1],
      ["FAILED", "naver", 1],
      ["QUEUED", "kakao", 0],
      ["FAILED", "gmail", 0],
    ];
    for (const [state, provider, count] of transitions) {
      expect(await at("otp_delivery_state_transitions_total", { state, provider }), `${state} ${provider}`).toBe(count);
    }

    // gRPC: every call, by code, with one latency observation each.
    const sendRpc = { ...otpRpc, grpc_method: "SendOtp" };
    expect(await at("grpc_server_started_total", sendRpc)).toBe(5);
    expect(await at("grpc_server_handled_total", { ...sendRpc, grpc_code: "OK" })).toBe(2);
    expect(await at("grpc_server_handled_total", { ...sendRpc, grpc_code: "FailedPrecondition" })).toBe(1);
    expect(await at("grpc_server_handled_total", { ...sendRpc, grpc_code: "ResourceExhausted" })).toBe(1);
    expect(await at("grpc_server_handled_total", { ...sendRpc, grpc_code: "InvalidArgument" })).toBe(1);
    expect(await at("grpc_server_handling_seconds_count", sendRpc)).toBe(5);
    expect(await at("grpc_server_msg_received_total", sendRpc)).toBe(5);
    expect(await at("grpc_server_msg_sent_total", sendRpc)).toBe(2);
    const verifyRpc = { ...otpRpc, grpc_method: "VerifyOtp" };
    expect(await at("grpc_server_handled_total", { ...verifyRpc, grpc_code: "OK" })).toBe(2);
    expect(await at("grpc_server_handling_seconds_count", verifyRpc)).toBe(2);
    const checkRpc = { grpc_type: "unary", grpc_service: "grpc.health.v1.Health", grpc_method: "Check" };
    expect(await at("grpc_server_handled_total", { ...checkRpc, grpc_code: "OK" })).toBe(1);

    expect(await at("otp_health_component_up", { component: "storage" })).toBe(1);
    expect(await at("otp_health_component_up", { component: "relay" })).toBe(1);
  });

  it("every read of the gRPC counters sees each call made before it, and the counts keep adding up across reads", async () => {
    const checkRpc = { grpc_type: "unary", grpc_service: "grpc.health.v1.Health", grpc_method: "Check" };
    const counts = async (): Promise<number[]> => [
      await sample(service, "grpc_server_started_total", checkRpc),
      await sample(service, "grpc_server_msg_received_total", checkRpc),
      await sample(service, "grpc_server_msg_sent_total", checkRpc),
      await sample(service, "grpc_server_handled_total", { ...checkRpc, grpc_code: "OK" }),
    ];
    const health = new GrpcHealthClient(service.address, grpc.credentials.createInsecure());
    try {
      const before = await counts();
      for (let i = 0; i < 3; i++) await grpcUnary(health, Health.method.check, { service: "" });
      expect(await counts()).toEqual(before.map((count) => count + 3));
      // Read twice with nothing in between: nothing is counted twice.
      expect(await counts()).toEqual(before.map((count) => count + 3));
      await Promise.all(Array.from({ length: 4 }, () => grpcUnary(health, Health.method.check, { service: "" })));
      expect(await counts()).toEqual(before.map((count) => count + 7));
      // The text exposition flushes too.
      await grpcUnary(health, Health.method.check, { service: "" });
      const text = await service.metrics.render("text");
      expect(text).toContain(`grpc_server_started_total{grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check"} ${(before[0] ?? 0) + 8}`);
    } finally {
      health.close();
    }
  });

  it("reflection calls are counted with their streaming type", async () => {
    await new Promise<void>((resolve, reject) => {
      execFile(
        "node_modules/.bin/buf",
        ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", `http://${service.address}`],
        (error, stdout) => (error === null && stdout.includes("otp.v1.OtpEmailService/SendOtp") ? resolve() : reject(error ?? new Error(stdout))),
      );
    });
    const reflectionCalls =
      (await sample(service, "grpc_server_handled_total", {
        grpc_type: "bidi_stream",
        grpc_service: "grpc.reflection.v1.ServerReflection",
        grpc_method: "ServerReflectionInfo",
        grpc_code: "OK",
      })) +
      (await sample(service, "grpc_server_handled_total", {
        grpc_type: "bidi_stream",
        grpc_service: "grpc.reflection.v1alpha.ServerReflection",
        grpc_method: "ServerReflectionInfo",
        grpc_code: "OK",
      }));
    expect(reflectionCalls).toBeGreaterThanOrEqual(1);
  });

  it("1,000 random recipient domains add no series: the provider is a fixed class, never the domain", async () => {
    const before = await serviceSeries(service);
    const domains = Array.from({ length: 1000 }, () => `${randomBytes(6).toString("hex")}.example-${randomBytes(3).toString("hex")}.com`);
    const queue = [...domains];
    const workers = Array.from({ length: 25 }, async () => {
      for (let domain = queue.pop(); domain !== undefined; domain = queue.pop()) {
        const sent = await service.connectClient.sendOtp({ recipient: `user@${domain}`, purpose: Purpose.LOGIN });
        expect(sent.state).toBe(DeliveryState.ACCEPTED);
      }
    });
    await Promise.all(workers);
    expect(await sample(service, "otp_delivery_state_transitions_total", { state: "ACCEPTED", provider: "other" })).toBe(1000);

    const after = await serviceSeries(service);
    expect(after.length).toBe(before.length);
    expect(new Set(after)).toEqual(new Set(before));
    const text = (await service.metrics.render("text")) + (await service.metrics.render("openmetrics"));
    for (const domain of domains) expect(text.includes(domain), domain).toBe(false);
    const providers = new Set([...text.matchAll(/provider="([^"]*)"/g)].map((match) => match[1]));
    expect([...providers].sort()).toEqual(["apple", "gmail", "kakao", "microsoft", "naver", "other", "proton", "yahoo"]);
  }, 120_000);

  it("promtool check metrics passes on the real output, process and runtime metrics included", async () => {
    const text = await service.metrics.render("text");
    expect(text).toContain("process_cpu_seconds_total");
    expect(text).toContain("nodejs_eventloop_lag_seconds");
    expect(text).toContain("nodejs_heap_size_used_bytes");
    // Removed on purpose: gauges named like counters (see metrics.ts); their by-type versions stay.
    expect(text).not.toContain("nodejs_active_handles_total");
    expect(text).toContain("nodejs_active_handles");
    const { code, output } = await promtool(text);
    expect(output).toBe("");
    expect(code).toBe(0);
  });

  it("promtool itself still flags the lint this output avoids (the check can fail)", async () => {
    const { code, output } = await promtool("# HELP nodejs_active_handles_total x\n# TYPE nodejs_active_handles_total gauge\nnodejs_active_handles_total 3\n");
    expect(code).not.toBe(0);
    expect(output).toMatch(/non-counter metrics should not have "_total" suffix/);
  });
});

describe("metrics: calls refused before they reach the domain", () => {
  const token = randomBytes(16).toString("hex");
  let service: ObservedService;

  beforeAll(async () => {
    service = await startObservedService({
      limiter: unlimited,
      env: { AUTH_TOKENS: `beta:${createHash("sha256").update(token).digest("hex")}`, CALLER_PURPOSES: "beta:login" },
    });
  });
  afterAll(() => service.stop());

  it("every SendOtp and VerifyOtp refused for its caller is counted denied: no credentials, a wrong token, a purpose not allowed", async () => {
    const bearer = (value: string): grpc.Metadata => {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${value}`);
      return metadata;
    };
    const client = service.grpcClient;
    const refusals: [Promise<unknown>, grpc.status][] = [
      [grpcUnary(client, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN }), grpc.status.UNAUTHENTICATED],
      [grpcUnary(client, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.SIGNUP }, { metadata: bearer("wrong") }), grpc.status.UNAUTHENTICATED],
      [grpcUnary(client, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.SIGNUP }, { metadata: bearer(token) }), grpc.status.PERMISSION_DENIED],
      [grpcUnary(client, verifyOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN, code: "123456" }), grpc.status.UNAUTHENTICATED],
      [
        grpcUnary(client, verifyOtp, { recipient: "ana@gmail.com", purpose: Purpose.PASSWORD_RESET, code: "123456" }, { metadata: bearer(token) }),
        grpc.status.PERMISSION_DENIED,
      ],
      [grpcUnary(client, getDeliveryStatus, { messageId: newMessageId(Date.now()) }), grpc.status.UNAUTHENTICATED],
    ];
    for (const [call, code] of refusals) expect((await grpcError(call)).code).toBe(code);

    const at = (name: string, labels: Record<string, string>) => sample(service, name, labels);
    // What the callers were told, call for call.
    const rpc = (method: string, code: string) =>
      at("grpc_server_handled_total", { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: method, grpc_code: code });
    expect(await rpc("SendOtp", "Unauthenticated")).toBe(2);
    expect(await rpc("SendOtp", "PermissionDenied")).toBe(1);
    expect(await rpc("VerifyOtp", "Unauthenticated")).toBe(1);
    expect(await rpc("VerifyOtp", "PermissionDenied")).toBe(1);
    // The same calls in the domain's counters, each once, as denied.
    expect(await at("otp_sends_total", { purpose: "login", outcome: "denied" })).toBe(1);
    expect(await at("otp_sends_total", { purpose: "signup", outcome: "denied" })).toBe(2);
    expect(await at("otp_verifications_total", { purpose: "login", result: "denied" })).toBe(1);
    expect(await at("otp_verifications_total", { purpose: "password_reset", result: "denied" })).toBe(1);
    for (const purpose of ["login", "signup", "password_reset", "unknown"]) {
      expect(await at("otp_sends_total", { purpose, outcome: "error" }), purpose).toBe(0);
      expect(await at("otp_verifications_total", { purpose, result: "error" }), purpose).toBe(0);
    }
  });

  it("a call to a method the service does not have, and a request that is not gRPC, are counted under one unknown method", async () => {
    const unimplemented = (path: string): Promise<unknown> => {
      const client = new grpc.Client(service.address, grpc.credentials.createInsecure());
      return new Promise((resolve, reject) => {
        client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (error, response) => {
          if (error) reject(error);
          else resolve(response);
        });
      }).finally(() => client.close());
    };
    // A client built against a newer contract, and one pointed at the wrong service.
    expect((await grpcError(unimplemented("/otp.v1.OtpEmailService/SendOtpV2"))).code).toBe(grpc.status.UNIMPLEMENTED);
    expect((await grpcError(unimplemented("/billing.v1.Invoices/Create"))).code).toBe(grpc.status.UNIMPLEMENTED);
    // curl or a browser posting JSON to a real method: HTTP 415, no gRPC status at all.
    const session = http2.connect(`http://${service.address}`);
    try {
      const httpStatus = await new Promise<number>((resolve, reject) => {
        const stream = session.request({ ":method": "POST", ":path": "/otp.v1.OtpEmailService/SendOtp", "content-type": "application/json" });
        stream.on("response", (headers) => resolve(Number(headers[":status"])));
        stream.on("error", reject);
        stream.end('{"recipient":"ana@gmail.com"}');
      });
      expect(httpStatus).toBe(415);
    } finally {
      session.close();
    }

    const at = (name: string, labels: Record<string, string>) => sample(service, name, labels);
    const unknown = { grpc_type: "unknown", grpc_service: "unknown", grpc_method: "unknown" };
    expect(await at("grpc_server_started_total", unknown)).toBe(3);
    expect(await at("grpc_server_handled_total", { ...unknown, grpc_code: "Unimplemented" })).toBe(2);
    expect(await at("grpc_server_handled_total", { ...unknown, grpc_code: "Unknown" })).toBe(1);
    // The 415 is not a SendOtp: SendOtp's series and otp_sends_total still add up to what its handler answered.
    expect(await at("grpc_server_handled_total", { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "SendOtp", grpc_code: "Unknown" })).toBe(0);
    // The paths the callers sent name no series.
    const text = await service.metrics.render("text");
    for (const sent of ["SendOtpV2", "billing", "Invoices"]) expect(text).not.toContain(sent);
  });

  it("a request that does not decode is counted invalid, as the INVALID_ARGUMENT its caller gets", async () => {
    const raw = (path: string, body: Buffer, metadata: grpc.Metadata): Promise<unknown> => {
      const client = new grpc.Client(service.address, grpc.credentials.createInsecure());
      return new Promise((resolve, reject) => {
        client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, body, metadata, (error, response) => {
          if (error) reject(error);
          else resolve(response);
        });
      }).finally(() => client.close());
    };
    const authorized = new grpc.Metadata();
    authorized.set("authorization", `Bearer ${token}`);
    // Field 1 (recipient), length 5: "a", an invalid UTF-8 byte, "b@c".
    const invalidUtf8 = Buffer.from([0x0a, 0x05, 0x61, 0xff, 0x62, 0x40, 0x63]);
    for (const path of ["/otp.v1.OtpEmailService/SendOtp", "/otp.v1.OtpEmailService/VerifyOtp"]) {
      expect((await grpcError(raw(path, invalidUtf8, authorized))).code).toBe(grpc.status.INVALID_ARGUMENT);
    }

    const at = (name: string, labels: Record<string, string>) => sample(service, name, labels);
    const rpc = (method: string) =>
      at("grpc_server_handled_total", { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: method, grpc_code: "InvalidArgument" });
    expect(await rpc("SendOtp")).toBe(1);
    expect(await rpc("VerifyOtp")).toBe(1);
    expect(await at("otp_sends_total", { purpose: "unknown", outcome: "invalid" })).toBe(1);
    expect(await at("otp_verifications_total", { purpose: "unknown", result: "invalid_request" })).toBe(1);
  });
});

describe("metrics: an idempotency key reused for another request", () => {
  it("is the caller's invalid request, not an error of the service's sends (OtpSendFailureRatioHigh counts those)", async () => {
    const service = await startObservedService({ limiter: unlimited });
    try {
      const first = await grpcUnary(service.grpcClient, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN, idempotencyKey: "signup-42" });
      expect(first.state).toBe(DeliveryState.ACCEPTED);
      const reused = grpcUnary(service.grpcClient, sendOtp, { recipient: "ben@gmail.com", purpose: Purpose.LOGIN, idempotencyKey: "signup-42" });
      expect((await grpcError(reused)).code).toBe(grpc.status.ALREADY_EXISTS);

      expect(await sample(service, "otp_sends_total", { purpose: "login", outcome: "accepted" })).toBe(1);
      expect(await sample(service, "otp_sends_total", { purpose: "login", outcome: "invalid" })).toBe(1);
      expect(await sample(service, "otp_sends_total", { purpose: "login", outcome: "error" })).toBe(0);
    } finally {
      await service.stop();
    }
  });
});

describe("metrics: an idempotent replay", () => {
  it("is counted replayed, not as another mail the relay accepted or refused: accepted and relay_rejected count each mail once", async () => {
    const service = await startObservedService({ limiter: unlimited });
    try {
      const client = service.grpcClient;
      const request = { recipient: "ana@gmail.com", purpose: Purpose.LOGIN, idempotencyKey: "login-7" };
      const first = await grpcUnary(client, sendOtp, request);
      expect(first.state).toBe(DeliveryState.ACCEPTED);
      // The caller retries twice (a lost answer, a restarted worker): the same message, nothing sent.
      for (let retry = 0; retry < 2; retry++) expect((await grpcUnary(client, sendOtp, request)).messageId).toBe(first.messageId);
      // Refused for good by the relay, then retried: the same refusal, nothing sent.
      service.sink.respondWith(behave.reply("RCPT TO", 550, "5.1.1", "User unknown"));
      const refused = { recipient: "cho@naver.com", purpose: Purpose.SIGNUP, idempotencyKey: "signup-8" };
      for (let attempt = 0; attempt < 2; attempt++) {
        expect((await grpcError(grpcUnary(client, sendOtp, refused))).code).toBe(grpc.status.FAILED_PRECONDITION);
      }
      // One mail taken by the relay: the first login's.
      expect(service.sink.messages).toHaveLength(1);

      const sends = (purpose: string, outcome: string) => sample(service, "otp_sends_total", { purpose, outcome });
      expect(await sends("login", "accepted")).toBe(1);
      expect(await sends("login", "replayed")).toBe(2);
      expect(await sends("signup", "relay_rejected")).toBe(1);
      expect(await sends("signup", "replayed")).toBe(1);
      // Every call still counted once: the outcomes add up to SendOtp's calls.
      const handled = (code: string) =>
        sample(service, "grpc_server_handled_total", { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "SendOtp", grpc_code: code });
      expect((await handled("OK")) + (await handled("FailedPrecondition"))).toBe(5);
      expect((await sends("login", "accepted")) + (await sends("login", "replayed")) + (await sends("signup", "relay_rejected")) + (await sends("signup", "replayed"))).toBe(5);
    } finally {
      await service.stop();
    }
  });
});

describe("metrics: Redis errors", () => {
  it("counts failed storage operations by operation while Redis is down", async () => {
    const redis = await startRedisServer();
    const service = await startObservedService({ limiter: unlimited, env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: "200ms" } });
    try {
      await redis.stop();
      const error = await grpcError(grpcUnary(service.grpcClient, sendOtp, { recipient: "ana@proton.me", purpose: Purpose.LOGIN }, { deadlineMs: 10_000 }));
      expect(error.code).toBe(grpc.status.UNAVAILABLE);
      const text = await service.metrics.render("text");
      const counted = [...text.matchAll(/^otp_redis_command_errors_total\{operation="(\w+)"\} (\d+)$/gm)].map((match) => [match[1], Number(match[2])]);
      // Every operation has its series from the start; those that ran against the stopped Redis count their failures.
      expect(counted.length).toBeGreaterThanOrEqual(17);
      expect(counted.filter(([, count]) => Number(count) >= 1).length).toBeGreaterThanOrEqual(1);
      expect(await sample(service, "otp_sends_total", { purpose: "login", outcome: "error" })).toBe(1);
      expect(await sample(service, "otp_health_component_up", { component: "storage" })).toBe(0);
    } finally {
      await service.stop();
      await redis.stop();
    }
  });
});

describe("metrics: delivery reports from the bounce intake", () => {
  it("a duplicate failed DSN and a late delay notice are reports, not transitions: BOUNCED is entered once, the copy counts as a duplicate", async () => {
    const service = await startObservedService({
      limiter: unlimited,
      env: { BOUNCE_SMTP_ADDR: "127.0.0.1:0", BOUNCE_DOMAIN: "bounces.acme.test" },
    });
    try {
      const sent = await grpcUnary(service.grpcClient, sendOtp, { recipient: "bo@yahoo.com", purpose: Purpose.LOGIN });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      const to = `bounce+${sent.messageId}@bounces.acme.test`;
      const intake = createTransport({ host: "127.0.0.1", port: service.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
      const failed = { action: "failed", status: "5.2.2", diagnosticCode: "smtp; 552 5.2.2 Mailbox full" };
      try {
        // The relay's DSN, the same DSN again (an MTA retrying after a lost 250), then a late delay notice.
        for (const block of [failed, failed, { action: "delayed", status: "4.2.2" }]) {
          await intake.sendMail({ envelope: { from: "", to }, raw: dsnMessage({ to, envelopeId: sent.messageId, recipients: [block] }) });
        }
      } finally {
        intake.close();
      }

      const transitions = (state: string) => sample(service, "otp_delivery_state_transitions_total", { state, provider: "yahoo" });
      expect(await transitions("ACCEPTED")).toBe(1);
      expect(await transitions("BOUNCED")).toBe(1);
      expect(await transitions("DELAYED")).toBe(0);
      // Every report read is counted once: the copy, which changed nothing, apart.
      expect(await sample(service, "otp_bounce_reports_total", { kind: "applied", state: "BOUNCED" })).toBe(2);
      expect(await sample(service, "otp_bounce_reports_total", { kind: "duplicate", state: "none" })).toBe(1);
    } finally {
      await service.stop();
    }
  });

  it("a resent feedback report counts as a duplicate of its feedback type, as a resent DSN does, and is no second complaint", async () => {
    const service = await startObservedService({
      limiter: unlimited,
      env: { BOUNCE_SMTP_ADDR: "127.0.0.1:0", BOUNCE_DOMAIN: "bounces.acme.test" },
    });
    try {
      // Every feedback type's duplicates are there from the start, so increase() sees the first.
      for (const feedbackType of feedbackTypes) {
        expect(await series(service, "otp_feedback_reports_total", { kind: "duplicate", feedback_type: feedbackType }), feedbackType).toBe(0);
      }
      const sent = await grpcUnary(service.grpcClient, sendOtp, { recipient: "fi@yahoo.com", purpose: Purpose.LOGIN });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      const intake = createTransport({ host: "127.0.0.1", port: service.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
      try {
        // Yahoo's complaint (Feedback-Type abuse), then the same report again (a provider resending it).
        const raw = arfFixture("yahoo-cfl", sent.messageId);
        for (let copy = 0; copy < 2; copy++) await intake.sendMail({ envelope: { from: "", to: "fbl@bounces.acme.test" }, raw });
      } finally {
        intake.close();
      }

      expect(await sample(service, "otp_feedback_reports_total", { kind: "applied", feedback_type: "abuse" })).toBe(1);
      expect(await sample(service, "otp_feedback_reports_total", { kind: "duplicate", feedback_type: "abuse" })).toBe(1);
      expect(await sample(service, "otp_spam_complaints_total", { feedback_type: "abuse", provider: "yahoo" })).toBe(1);
      expect(await sample(service, "otp_delivery_state_transitions_total", { state: "DELIVERED", provider: "yahoo" })).toBe(1);
    } finally {
      await service.stop();
    }
  });
});

describe("metrics: what the bounce intake refuses, and the certificates it and the gRPC server present", () => {
  let workshop: Awaited<ReturnType<typeof openCertificateWorkshop>>;
  let certificates: { ca: string; longLived: KeyPair; expiresSoon: KeyPair; expired: KeyPair };
  beforeAll(async () => {
    workshop = await openCertificateWorkshop();
    const ca = await workshop.newCa("Test MX CA");
    const issue = (days: number) => ca.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1,DNS:localhost", server: true, days });
    certificates = { ca: ca.cert, longLived: await issue(90), expiresSoon: await issue(5), expired: await issue(-1) };
  });
  afterAll(async () => {
    await workshop.cleanup();
  });

  /** The unix second a certificate's notAfter names. */
  const notAfterSeconds = (pair: KeyPair): number => Math.floor(new X509Certificate(pair.cert).validToDate.getTime() / 1000);

  it("counts refusals by reason over real SMTP connections (TLS required, bad recipient, rate limit), with no peer, address or HELO in a label", async () => {
    const service = await startObservedService({
      env: {
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_DOMAIN: "bounces.acme.test",
        BOUNCE_TLS_CERT: certificates.longLived.cert,
        BOUNCE_TLS_KEY: certificates.longLived.key,
        BOUNCE_TLS_REQUIRED: "true",
        BOUNCE_CONNECTIONS_PER_MINUTE: "3",
      },
    });
    try {
      const port = service.app.bounceIntake?.port;
      const to = `bounce+${newMessageId(Date.now())}@bounces.acme.test`;
      const dsn = dsnMessage({ to, recipients: [{ action: "failed", status: "5.1.1" }] });
      const send = async (recipient: string, tls: boolean): Promise<number> => {
        const client = createTransport({
          host: "127.0.0.1",
          port,
          secure: false,
          name: "mx.forger.test",
          logger: false,
          ...(tls ? { requireTLS: true, tls: { ca: [certificates.ca] } } : { ignoreTLS: true }),
        });
        try {
          await client.sendMail({ envelope: { from: "", to: recipient }, raw: dsn });
          return 250;
        } catch (error) {
          return (error as { responseCode?: number }).responseCode ?? -1;
        } finally {
          client.close();
        }
      };

      // One connection each: in clear, to a stranger's address, a report for an unknown message, and one too many.
      expect([await send(to, false), await send("postmaster@bounces.acme.test", true), await send(to, true), await send(to, true)]).toEqual([
        530, 550, 250, 421,
      ]);

      const rejections = (reason: string) => sample(service, "otp_bounce_intake_rejections_total", { reason });
      expect(await rejections("tls_required")).toBe(1);
      expect(await rejections("bad_recipient")).toBe(1);
      expect(await rejections("rate_limited")).toBe(1);
      for (const reason of intakeRejectionReasons.filter((r) => !["tls_required", "bad_recipient", "rate_limited"].includes(r))) {
        expect(await rejections(reason), reason).toBe(0);
      }
      // The report that was taken is counted where DSNs are, not here.
      expect(await sample(service, "otp_bounce_reports_total", { kind: "unmatched", state: "none" })).toBe(1);

      const lines = (await service.metrics.render("text")).split("\n").filter((line) => line.startsWith("otp_bounce_intake_rejections_total"));
      expect(lines).toHaveLength(intakeRejectionReasons.length);
      for (const line of lines) expect(line).toMatch(/^otp_bounce_intake_rejections_total\{reason="[a-z_]+"\} \d+$/);
      const rendered = lines.join("\n");
      for (const leak of ["127.0.0.1", "forger", "postmaster", "acme"]) expect(rendered).not.toContain(leak);
    } finally {
      await service.stop();
    }
  });

  it("exports each listener's certificate expiry, warns at start-up when one expires within 14 days and logs an error when one has expired, and still starts", async () => {
    const service = await startObservedService({
      env: {
        TLS_CERT: certificates.expiresSoon.cert,
        TLS_KEY: certificates.expiresSoon.key,
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_DOMAIN: "bounces.acme.test",
        BOUNCE_TLS_CERT: certificates.expired.cert,
        BOUNCE_TLS_KEY: certificates.expired.key,
      },
    });
    try {
      const expiry = (certificate: string) => sample(service, "otp_tls_certificate_expiry_timestamp_seconds", { certificate });
      expect(await expiry("grpc")).toBe(notAfterSeconds(certificates.expiresSoon));
      expect(await expiry("bounce_intake")).toBe(notAfterSeconds(certificates.expired));

      const about = service.logs().filter((line) => line["certificate"] !== undefined);
      expect(about).toMatchObject([
        { level: "warn", certificate: "grpc", subject: "CN=127.0.0.1", days_left: expect.closeTo(5, 0) as number, msg: expect.stringMatching(/^TLS_CERT expires in [\d.]+ days: renew TLS_CERT/) as string },
        { level: "error", certificate: "bounce_intake", msg: expect.stringMatching(/^BOUNCE_TLS_CERT has expired: renew BOUNCE_TLS_CERT/) as string },
      ]);
      // The intake still takes a relay that encrypts without verifying (Postfix `encrypt`): a bounce over STARTTLS.
      const to = `bounce+${newMessageId(Date.now())}@bounces.acme.test`;
      const relay = createTransport({ host: "127.0.0.1", port: service.app.bounceIntake?.port, secure: false, requireTLS: true, tls: { rejectUnauthorized: false }, logger: false });
      try {
        const info = await relay.sendMail({ envelope: { from: "", to }, raw: dsnMessage({ to, recipients: [{ action: "failed", status: "5.1.1" }] }) });
        expect(info.response).toMatch(/^250 /);
      } finally {
        relay.close();
      }
    } finally {
      await service.stop();
    }
  });

  it("a certificate far from expiry is exported and logged about by nobody; without certificates there is no series", async () => {
    const withCertificate = await startObservedService({
      env: {
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_DOMAIN: "bounces.acme.test",
        BOUNCE_TLS_CERT: certificates.longLived.cert,
        BOUNCE_TLS_KEY: certificates.longLived.key,
      },
    });
    try {
      expect(await sample(withCertificate, "otp_tls_certificate_expiry_timestamp_seconds", { certificate: "bounce_intake" })).toBe(
        notAfterSeconds(certificates.longLived),
      );
      expect(withCertificate.logs().filter((line) => line["certificate"] !== undefined)).toEqual([]);
    } finally {
      await withCertificate.stop();
    }
    const without = await startObservedService({ env: { BOUNCE_SMTP_ADDR: "127.0.0.1:0", BOUNCE_DOMAIN: "bounces.acme.test" } });
    try {
      const text = await without.metrics.render("text");
      expect(text).toContain("# TYPE otp_tls_certificate_expiry_timestamp_seconds gauge");
      expect(text).not.toMatch(/^otp_tls_certificate_expiry_timestamp_seconds\{/m);
    } finally {
      await without.stop();
    }
  });
});

describe("metrics: a send that fails after SendOtp answered", () => {
  it("a relay that takes the message and never answers: SendOtp says pending, the send is later counted failed", async () => {
    // What OtpSendFailureRatioHigh must see (deploy/prometheus/alerts.test.yml,
    // "a hung relay"): the caller's answer is pending, the failure shows only
    // in the send's own verdict.
    const service = await startObservedService({
      limiter: unlimited,
      env: { SEND_WAIT_BUDGET: "100ms", SMTP_MAX_ATTEMPTS: "2", SMTP_SOCKET_TIMEOUT: "300ms" },
    });
    try {
      service.sink.respondWith(behave.stall(), behave.stall());
      const sent = await grpcUnary(service.grpcClient, sendOtp, { recipient: "hana@kakao.com", purpose: Purpose.LOGIN });
      expect([DeliveryState.SENDING, DeliveryState.RETRYING]).toContain(sent.state);
      for (let polls = 0; ; polls++) {
        const status = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
        if (status.state === DeliveryState.FAILED) break;
        expect(polls, "the send never ended").toBeLessThan(100);
        await sleep(50);
      }

      expect(await sample(service, "otp_sends_total", { purpose: "login", outcome: "pending" })).toBe(1);
      expect(await sample(service, "otp_sends_total", { purpose: "login", outcome: "relay_unavailable" })).toBe(0);
      expect(await sample(service, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "failed" })).toBe(1);
      expect(await sample(service, "otp_smtp_send_duration_seconds_count", { purpose: "login", outcome: "accepted" })).toBe(0);
    } finally {
      await service.stop();
    }
  });
});
