/**
 * The whole service over real sockets: a grpc-js client and the exported
 * connect-node client call SendOtp, GetDeliveryStatus and VerifyOtp against
 * the real app, real Redis and a real SMTP server; buf curl goes through
 * reflection; hostile requests are refused and send nothing.
 */
import { create, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import {
  AttemptOutcome,
  DeliveryState,
  GetDeliveryStatusResponseSchema,
  OtpEmailService,
  Purpose,
  SendOtpRequestSchema,
  VerifyResult,
} from "../../gen/otp/v1/otp_email_pb.js";
import { createOtpEmailClient } from "../../src/client.js";
import { ClientSessionManager } from "../../src/client-session.js";
import { bufCurl, errorDetails, grpcError, grpcUnary } from "../support/grpc.js";
import { codeFromMail, startTestService, type TestService } from "../support/service.js";
import { behave, startSmtpSink } from "../support/smtp-sink.js";

const { sendOtp, getDeliveryStatus, verifyOtp } = OtpEmailService.method;

let recipientCounter = 0;
/** A fresh recipient per test, so code sets never collide. */
function recipient(): string {
  recipientCounter += 1;
  return `user${recipientCounter}.${Date.now().toString(36)}@example.com`;
}

describe("OtpEmail end to end (Redis store, real SMTP)", () => {
  let svc: TestService;

  beforeAll(async () => {
    svc = await startTestService();
  });
  afterAll(async () => {
    await svc.stop();
  });
  afterEach(() => {
    // Scripted behaviours never leak into the next test.
    svc.sink.respondWith();
  });

  it("sends a code with grpc-js, reports the relay's acceptance, and verifies it once", async () => {
    const to = recipient();
    const before = svc.sink.messages.length;
    const sent = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    expect(sent.messageId).toMatch(/^[0-9a-z]{26}$/);
    expect(Number(sent.expiresAt?.seconds) * 1000).toBeGreaterThan(Date.now() + 9 * 60_000);

    const [mail] = (await svc.sink.waitForMessages(before + 1)).slice(before);
    expect(mail?.envelope.rcptTo).toEqual([to]);
    const code = codeFromMail(mail?.parsed.subject);
    expect(code).toMatch(/^\d{6}$/);

    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    expect(status.state).toBe(DeliveryState.ACCEPTED);
    expect(status.recipient).toBe(`u***@example.com`);
    expect(status.purpose).toBe(Purpose.LOGIN);
    expect(status.attempts).toHaveLength(1);
    expect(status.attempts[0]).toMatchObject({ number: 1, outcome: AttemptOutcome.ACCEPTED, replyCode: 250 });
    expect(status.relayReply?.queueId).toBe(mail?.queueId);
    expect(status.relayReply?.text).toContain("250");
    expect(status.explanation).toMatch(/not delivery/i);

    const wrong = await grpcUnary(svc.grpcClient, verifyOtp, {
      recipient: to,
      purpose: Purpose.LOGIN,
      code: code === "000000" ? "111111" : "000000",
    });
    expect(wrong).toMatchObject({ result: VerifyResult.INVALID, attemptsRemaining: 4 });
    // Another purpose never verifies this code.
    const otherPurpose = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.SIGNUP, code });
    expect(otherPurpose.result).toBe(VerifyResult.NOT_FOUND);
    const right = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to.toUpperCase(), purpose: Purpose.LOGIN, code });
    expect(right.result).toBe(VerifyResult.VERIFIED);
    const again = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code });
    expect(again.result).toBe(VerifyResult.NOT_FOUND);

    // Neither the code nor the full address reached the logs.
    const logText = JSON.stringify(svc.logs);
    expect(logText).not.toContain(code);
    expect(logText).not.toContain(to);
  });

  it("does the same through the exported connect-node client, with a caller's own code and a Korean template", async () => {
    const client = createOtpEmailClient({ baseUrl: `http://${svc.address}` });
    const to = recipient();
    const before = svc.sink.messages.length;
    const sent = await client.sendOtp({ recipient: to, purpose: Purpose.SIGNUP, code: "AB12CD", locale: "ko-KR" });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [mail] = (await svc.sink.waitForMessages(before + 1)).slice(before);
    expect(mail?.parsed.subject).toContain("AB12CD");
    expect(mail?.parsed.subject).toContain("회원가입");

    const status = await client.getDeliveryStatus({ messageId: sent.messageId });
    expect(status.state).toBe(DeliveryState.ACCEPTED);
    // What the user typed: spaces, dashes and lower case are forgiven.
    const verified = await client.verifyOtp({ recipient: to, purpose: Purpose.SIGNUP, code: " ab-12 cd " });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
  });

  it("the client's connection closes a stream the service answered before reading it all, so the connection goes idle and holds no process", async () => {
    // The client refuses such a request itself (writeMaxBytes); without that
    // limit the service answers after the first bytes, as a proxy may for a large body.
    const baseUrl = `http://${svc.address}`;
    const session = new ClientSessionManager(baseUrl);
    const client = createClient(OtpEmailService, createGrpcTransport({ baseUrl, sessionManager: session }));

    const error = await client.sendOtp({ recipient: `${"x".repeat(3 * 1024 * 1024)}@example.com`, purpose: Purpose.LOGIN }).then(
      () => undefined,
      (reason: unknown) => ConnectError.from(reason),
    );

    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(error?.rawMessage).toMatch(/^Received message larger than max/);
    // "open" while any stream is open, and an open session keeps its socket ref'd.
    const deadline = Date.now() + 2_000;
    while (session.state() !== "idle" && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(session.state()).toBe("idle");
    session.abort();
  });

  it("verifies a code typed in full-width forms with a dash of another kind, as an East Asian input method types it", async () => {
    const to = recipient();
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, code: "4321AB" });
    const verified = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "４３２ー１ａｂ" });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
  });

  it("keeps an earlier code valid after a resend and counts guesses against both together", async () => {
    const to = recipient();
    const before = svc.sink.messages.length;
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, code: "1111" });
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, code: "2222" });
    await svc.sink.waitForMessages(before + 2);
    const first = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "3333" });
    const second = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "4444" });
    expect([first.attemptsRemaining, second.attemptsRemaining]).toEqual([4, 3]);
    // The first email's code still works although a newer one was sent.
    const verified = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "1111" });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
    // ...and using it used up its sibling too.
    const sibling = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "2222" });
    expect(sibling.result).toBe(VerifyResult.NOT_FOUND);
  });

  it("locks after 5 wrong guesses until a new code is sent", async () => {
    const to = recipient();
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, code: "7777" });
    const remaining: number[] = [];
    for (let i = 0; i < 5; i++) {
      const guess = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, code: "0000" });
      expect(guess.result).toBe(VerifyResult.INVALID);
      remaining.push(guess.attemptsRemaining);
    }
    expect(remaining).toEqual([4, 3, 2, 1, 0]);
    const locked = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, code: "7777" });
    expect(locked).toMatchObject({ result: VerifyResult.LOCKED, attemptsRemaining: 0 });

    await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, code: "8888" });
    const fresh = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, code: "8888" });
    expect(fresh.result).toBe(VerifyResult.VERIFIED);
  });

  it("answers 100 concurrent guesses with exactly 5 counted before the lock", async () => {
    const to = recipient();
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, code: "5555" });
    const results = await Promise.all(
      Array.from({ length: 100 }, () =>
        grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "0000" }),
      ),
    );
    expect(results.filter((r) => r.result === VerifyResult.INVALID)).toHaveLength(5);
    expect(results.filter((r) => r.result === VerifyResult.LOCKED)).toHaveLength(95);
  });

  it("repeats an idempotent request without sending again, and refuses the key for a different request", async () => {
    const to = recipient();
    const key = `signup-${Date.now()}`;
    const before = svc.sink.transactions();
    const first = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.SIGNUP, idempotencyKey: key });
    const second = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.SIGNUP, idempotencyKey: key });
    expect(second.messageId).toBe(first.messageId);
    expect(second.state).toBe(DeliveryState.ACCEPTED);
    expect(svc.sink.transactions()).toBe(before + 1);

    const error = await grpcError(
      grpcUnary(svc.grpcClient, sendOtp, { recipient: recipient(), purpose: Purpose.SIGNUP, idempotencyKey: key }),
    );
    expect(error.code).toBe(GrpcStatus.ALREADY_EXISTS);
    expect(error.details).toMatch(/idempotency_key/);
    expect(errorDetails(error).errorInfo?.metadata["message_id"]).toBe(first.messageId);
    expect(svc.sink.transactions()).toBe(before + 1);
  });

  it("answers within a caller's deadline shorter than the wait budget: the message_id, SENDING, and the mail goes on", async () => {
    const to = recipient();
    const before = svc.sink.messages.length;
    // The relay answers (within SMTP_SOCKET_TIMEOUT, 2 s) after the caller's deadline (1 s), which comes
    // before the wait budget (3 s) ends.
    svc.sink.respondWith(behave.accept({ delayMs: 1700 }));
    const sent = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN }, { deadlineMs: 1000 });
    expect(sent.state).toBe(DeliveryState.SENDING);

    const [mail] = (await svc.sink.waitForMessages(before + 1)).slice(before);
    let status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    for (let i = 0; i < 100 && status.state !== DeliveryState.ACCEPTED; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    }
    expect(status.state).toBe(DeliveryState.ACCEPTED);
    expect(status.attempts).toHaveLength(1);
    expect(status.relayReply?.queueId).toBe(mail?.queueId);
  });

  it("loses nothing when the caller cancels mid-send: the mail goes, its record says so, and a retry with the key answers it", async () => {
    const to = recipient();
    const key = `cancel-${Date.now()}`;
    const before = svc.sink.messages.length;
    const transactions = svc.sink.transactions();
    svc.sink.respondWith(behave.accept({ delayMs: 1500 }));
    const request = { recipient: to, purpose: Purpose.LOGIN, idempotencyKey: key };
    const abort = new AbortController();
    const cancelled = svc.connectClient.sendOtp(request, { signal: abort.signal }).then(
      () => undefined,
      (reason: unknown) => ConnectError.from(reason),
    );
    // Cancelled once the message is with the relay, which holds its answer for 1.5 s.
    while (svc.sink.transactions() === transactions) await new Promise((resolve) => setTimeout(resolve, 10));
    abort.abort();
    expect((await cancelled)?.code).toBe(Code.Canceled);

    // The send goes on without the caller, and the caller's retry finds it.
    const [mail] = (await svc.sink.waitForMessages(before + 1)).slice(before);
    const retried = await grpcUnary(svc.grpcClient, sendOtp, request);
    expect(svc.sink.transactions()).toBe(transactions + 1);
    let status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: retried.messageId });
    // The sink captures the message before its (delayed) 250 reply.
    for (let i = 0; i < 100 && status.state !== DeliveryState.ACCEPTED; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: retried.messageId });
    }
    expect(status.state).toBe(DeliveryState.ACCEPTED);
    expect(status.relayReply?.queueId).toBe(mail?.queueId);
    const verified = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: codeFromMail(mail?.parsed.subject) });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
  });

  it("retries a greylisting 451 and records both attempts", async () => {
    svc.sink.respondWith(behave.reply("RCPT TO", 451, "4.7.1", "Greylisted, try again later"));
    const sent = await grpcUnary(svc.grpcClient, sendOtp, { recipient: recipient(), purpose: Purpose.LOGIN });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    expect(status.attempts.map((a) => [a.outcome, a.replyCode])).toEqual([
      [AttemptOutcome.TRANSIENT_FAILURE, 451],
      [AttemptOutcome.ACCEPTED, 250],
    ]);
    expect(status.attempts[0]?.enhancedStatusCode).toBe("4.7.1");
    expect(status.attempts[0]?.replyText).toContain("try again");
  });

  it("stops at a 550 and fails the call with the relay's own words", async () => {
    svc.sink.respondWith(behave.reply("RCPT TO", 550, "5.1.1", "No such user here"));
    const error = await grpcError(grpcUnary(svc.grpcClient, sendOtp, { recipient: recipient(), purpose: Purpose.LOGIN }));
    expect(error.code).toBe(GrpcStatus.FAILED_PRECONDITION);
    expect(error.details).toContain("No such user here");
    const { errorInfo } = errorDetails(error);
    expect(errorInfo?.reason).toBe("RELAY_REJECTED");
    const messageId = errorInfo?.metadata["message_id"] ?? "";
    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId });
    expect(status.state).toBe(DeliveryState.FAILED);
    expect(status.attempts).toHaveLength(1);
    expect(status.attempts[0]).toMatchObject({
      outcome: AttemptOutcome.PERMANENT_FAILURE,
      replyCode: 550,
      enhancedStatusCode: "5.1.1",
    });
    expect(status.failureReason).toContain("No such user here");
  });

  it("a relay reply that quotes the Subject keeps the code out of the caller's error, the record and the logs", async () => {
    // Content filters often refuse with the Subject quoted, and the Subject holds the code.
    const code = "739104";
    svc.sink.respondWith(
      behave.reply("DATA", 451, "4.7.1", "Deferred by content filter", { quoteSubject: true }),
      behave.reply("DATA", 554, "5.7.1", "Rejected by content filter", { quoteSubject: true }),
    );
    const error = await grpcError(grpcUnary(svc.grpcClient, sendOtp, { recipient: recipient(), purpose: Purpose.LOGIN, code }));
    expect(error.code).toBe(GrpcStatus.FAILED_PRECONDITION);
    expect(error.details).toContain('Rejected by content filter (Subject: "[redacted] is your Acme Login sign-in code")');
    const messageId = errorDetails(error).errorInfo?.metadata["message_id"] ?? "";
    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId });
    expect(status.attempts.map((a) => a.replyCode)).toEqual([451, 554]);
    expect(status.attempts[0]?.replyText).toContain('(Subject: "[redacted] is your');
    const everything = JSON.stringify([error.details, toJson(GetDeliveryStatusResponseSchema, status), svc.logs]);
    expect(everything).toContain("[redacted] is your");
    expect(everything).not.toContain(code);
  });

  it("answers NOT_FOUND for an unknown message and INVALID_ARGUMENT for a malformed id", async () => {
    const unknown = await grpcError(grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: "0".repeat(26) }));
    expect(unknown.code).toBe(GrpcStatus.NOT_FOUND);
    const malformed = await grpcError(grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: "../../etc/passwd" }));
    expect(malformed.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(errorDetails(malformed).badRequest?.fieldViolations[0]?.field).toBe("message_id");
  });

  describe("refuses hostile requests with INVALID_ARGUMENT and sends nothing", () => {
    const mb = "a".repeat(1024 * 1024);
    type SendInit = MessageInitShape<typeof SendOtpRequestSchema>;
    const valid: SendInit = { recipient: "victim@example.com", purpose: Purpose.LOGIN };
    const sendCases: [string, SendInit, string][] = [
      ["CRLF in recipient", { recipient: "victim@example.com\r\nBcc: all@example.com" }, "recipient"],
      ["LF at the end of recipient", { recipient: "victim@example.com\n" }, "recipient"],
      ["NUL in recipient", { recipient: "vic\u0000tim@example.com" }, "recipient"],
      ["bidi override in recipient", { recipient: "vic\u202etim@example.com" }, "recipient"],
      ["display name in recipient", { recipient: "Victim <victim@example.com>" }, "recipient"],
      ["angle brackets around recipient", { recipient: "<victim@example.com>" }, "recipient"],
      ["two '@' in recipient", { recipient: "victim@attacker.example@example.com" }, "recipient"],
      ["',' list in recipient", { recipient: "victim@example.com,all@attacker.example" }, "recipient"],
      ["';' list in recipient", { recipient: "victim@example.com;all@attacker.example" }, "recipient"],
      ["quoted local part in recipient", { recipient: '"victim"@example.com' }, "recipient"],
      ["URL syntax after the domain", { recipient: "victim@attacker.example/example.com" }, "recipient"],
      ["1 MB recipient", { recipient: `${mb}@example.com` }, "recipient"],
      ["empty recipient", { recipient: "" }, "recipient"],
      ["no purpose", { purpose: Purpose.UNSPECIFIED }, "purpose"],
      ["unknown purpose number", { purpose: 99 as Purpose }, "purpose"],
      ["CRLF in locale", { locale: "en\r\nX-Evil: 1" }, "locale"],
      ["malformed locale", { locale: "en_US!!" }, "locale"],
      ["1 MB locale", { locale: mb }, "locale"],
      ["CRLF in code", { code: "1234\r\n" }, "code"],
      ["lower-case code", { code: "abcd12" }, "code"],
      ["too short code", { code: "12" }, "code"],
      ["1 MB code", { code: mb }, "code"],
      ["CRLF in idempotency_key", { idempotencyKey: "key\r\n1" }, "idempotency_key"],
      ["1 MB idempotency_key", { idempotencyKey: mb }, "idempotency_key"],
      ["CRLF in end_user_ip", { endUserIp: "1.2.3.4\r\n" }, "end_user_ip"],
      ["not an IP", { endUserIp: "999.1.1.1" }, "end_user_ip"],
      ["zero ttl", { ttl: durationFromMs(0) }, "ttl"],
      ["negative ttl", { ttl: durationFromMs(-5000) }, "ttl"],
      ["ten-year ttl", { ttl: durationFromMs(10 * 365 * 86_400_000) }, "ttl"],
      ["absurd ttl", { ttl: create(DurationSchema, { seconds: 9_223_372_036_854_775_807n, nanos: 999_999_999 }) }, "ttl"],
      ["ttl of 60 s and 2e9 ns (not 62 s)", { ttl: create(DurationSchema, { seconds: 60n, nanos: 2_000_000_000 }) }, "ttl"],
      ["ttl whose nanos differ in sign", { ttl: create(DurationSchema, { seconds: 120n, nanos: -1 }) }, "ttl"],
    ];

    it.each(sendCases)("SendOtp: %s", async (_name, fields, field) => {
      const before = svc.sink.transactions();
      const request = create(SendOtpRequestSchema, { ...valid, ...fields } as SendInit);
      const error = await grpcError(grpcUnary(svc.grpcClient, sendOtp, request));
      expect(error.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(error.details).toContain(field);
      expect(error.details.length).toBeLessThan(300);
      expect(errorDetails(error).badRequest?.fieldViolations.map((v) => v.field)).toContain(field);
      expect(svc.sink.transactions()).toBe(before);
    });

    // What the caller reads must name its mistake and the fix, never the address.
    const recipientMessages: [string, string][] = [
      ["victim@attacker.example@example.com", "recipient: must contain exactly one '@' (one address, of the form local@domain)"],
      ["victim@example.com,all@attacker.example", "recipient: must be one address per request, not a list separated by ',' or ';'"],
      ["victim@example.com;all@attacker.example", "recipient: must be one address per request, not a list separated by ',' or ';'"],
      ["<victim@example.com>", "recipient: must not contain angle brackets; send only the address (local@domain), without < >"],
      ["Victim <victim@example.com>", "recipient: must not contain spaces; send only the address, without a display name"],
      ['"victim"@example.com', "recipient: must be a plain address (no quoted local part)"],
    ];
    it.each(recipientMessages)("SendOtp: %j is refused with %j", async (recipient, message) => {
      const error = await grpcError(grpcUnary(svc.grpcClient, sendOtp, { ...valid, recipient }));
      expect(error.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(error.details).toBe(message);
      expect(errorDetails(error).badRequest?.fieldViolations).toEqual([
        expect.objectContaining({ field: "recipient", description: message.slice("recipient: ".length) }),
      ]);
    });

    const verifyCases: [string, MessageInitShape<typeof OtpEmailService.method.verifyOtp.input>, string][] = [
      ["CRLF in code", { code: "1234\r\n" }, "code"],
      ["empty code", { code: "" }, "code"],
      ["1 MB code", { code: mb }, "code"],
      ["CRLF in recipient", { recipient: "a@example.com\r\n" }, "recipient"],
      ["no purpose", { purpose: Purpose.UNSPECIFIED }, "purpose"],
    ];
    it.each(verifyCases)("VerifyOtp: %s", async (_name, fields, field) => {
      const error = await grpcError(
        grpcUnary(svc.grpcClient, verifyOtp, { recipient: "a@example.com", purpose: Purpose.LOGIN, code: "123456", ...fields }),
      );
      expect(error.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(errorDetails(error).badRequest?.fieldViolations.map((v) => v.field)).toContain(field);
    });

    it("VerifyOtp: a code copied with invisible marks (RTL marks, a zero-width space, a BOM) is read without them, not refused", async () => {
      const answer = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: "nobody-here@example.com", purpose: Purpose.LOGIN, code: "\u200F\uFEFF123\u200B456\u200E" });
      // Valid input: no code was ever sent to this address, so the answer is NOT_FOUND, not INVALID_ARGUMENT.
      expect(answer.result).toBe(VerifyResult.NOT_FOUND);
    });

    it("reports every broken field at once", async () => {
      const error = await grpcError(grpcUnary(svc.grpcClient, sendOtp, { recipient: "nope", purpose: Purpose.UNSPECIFIED, code: "x" }));
      expect(errorDetails(error).badRequest?.fieldViolations.map((v) => v.field)).toEqual(["recipient", "purpose", "code"]);
    });
  });

  it("is reachable with buf curl through reflection alone", async () => {
    const services = await bufCurl(["--list-services", `http://${svc.address}`]);
    expect(services.split("\n")).toEqual(
      expect.arrayContaining(["otp.v1.OtpEmailService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]),
    );
    const before = svc.sink.transactions();
    const out = await bufCurl([
      "-d",
      JSON.stringify({ recipient: recipient(), purpose: "PURPOSE_LOGIN" }),
      `http://${svc.address}/otp.v1.OtpEmailService/SendOtp`,
    ]);
    expect(JSON.parse(out)).toMatchObject({ state: "DELIVERY_STATE_ACCEPTED" });
    expect(svc.sink.transactions()).toBe(before + 1);
  });

  it("reports SERVING on the health service", async () => {
    // Storage reads down until Redis's first connection, which may still be on its way when this runs first:
    // wait for it as a load balancer would.
    await vi.waitFor(
      async () => {
        const response = await svc.connectHealth.check({ service: "otp.v1.OtpEmailService" });
        expect(response.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      },
      { timeout: 10_000, interval: 20 },
    );
  });
});

describe("OtpEmail with a relay that rejects its credentials", () => {
  it("fails the send as UNAVAILABLE, records FAILED and reports NOT_SERVING", async () => {
    const sink = await startSmtpSink({ auth: { user: "otp", pass: "secret" } });
    const svc = await startTestService({ sink, store: "memory" });
    try {
      sink.respondWith(behave.rejectAuth());
      const error = await grpcError(grpcUnary(svc.grpcClient, sendOtp, { recipient: recipient(), purpose: Purpose.LOGIN }));
      expect(error.code).toBe(GrpcStatus.UNAVAILABLE);
      expect(error.details).toMatch(/credentials/);
      const messageId = errorDetails(error).errorInfo?.metadata["message_id"] ?? "";
      const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId });
      expect(status.state).toBe(DeliveryState.FAILED);
      expect(status.attempts).toHaveLength(1);
      const health = await svc.connectHealth.check({ service: "" });
      expect(health.status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
      expect(svc.logs.some((line) => line["level"] === "error" && /credentials/.test(String(line["msg"])))).toBe(true);
    } finally {
      await svc.stop();
      await sink.close();
    }
  });
});

describe("OtpEmail with an injected clock", () => {
  it("answers EXPIRED once every code's ttl has passed", async () => {
    let now = Date.now();
    const svc = await startTestService({ clock: { now: () => now } });
    try {
      const to = recipient();
      await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, code: "9999", ttl: durationFromMs(60_000) });
      now += 59_000;
      const early = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "0000" });
      expect(early.result).toBe(VerifyResult.INVALID);
      now += 2000;
      const late = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: "9999" });
      expect(late.result).toBe(VerifyResult.EXPIRED);
    } finally {
      await svc.stop();
    }
  });
});
