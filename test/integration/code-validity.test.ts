/**
 * What a code's email promises against what the code really has, when the
 * email goes out only on a retry: the real app, real Redis and a real SMTP
 * server, with the service's clock moved on while the relay defers the
 * first attempt (no sleeps: the clock jumps when the relay is reached).
 */
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { DeliveryState, OtpEmailService, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { errorDetails, grpcError, grpcUnary } from "../support/grpc.js";
import { codeFromMail, startTestService, type TestService } from "../support/service.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const { sendOtp, getDeliveryStatus, verifyOtp } = OtpEmailService.method;
const minute = 60_000;

let running: { svc: TestService; sink: SmtpSink } | undefined;
afterEach(async () => {
  await running?.svc.stop();
  await running?.sink.close();
  running = undefined;
});

/**
 * The service against a relay that defers the first message (451 at RCPT
 * TO) and accepts the rest; the service's clock moves `jumpMs` on when
 * that first message reaches the relay, as if the retry came that much later.
 */
async function deferredRelay(jumpMs: number): Promise<{ svc: TestService; sink: SmtpSink }> {
  let offset = 0;
  let deferred = false;
  const sink = await startSmtpSink({
    route: () => {
      if (deferred) return undefined;
      deferred = true;
      offset += jumpMs;
      return behave.reply("RCPT TO", 451, "4.3.0", "Temporary failure, try again later");
    },
  });
  // A wait budget a loaded machine cannot outlast: SendOtp answers with the verdict of both attempts.
  const svc = await startTestService({ sink, clock: { now: () => Date.now() + offset }, env: { SEND_WAIT_BUDGET: "10s" } });
  running = { svc, sink };
  return running;
}

describe("a code whose email goes out on a retry", () => {
  it("states the whole minutes the code has left when the retry starts, not the ttl it was sent with", async () => {
    const { svc, sink } = await deferredRelay(2 * minute + 30_000);
    const to = "retried.later@example.com";

    const sent = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, ttl: durationFromMs(10 * minute) });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);

    const [mail] = await sink.waitForMessages(1);
    // 10 minutes less the 2.5 the retry came later: 7 and some seconds, rounded down.
    expect(mail?.parsed.text).toContain("The code is valid for 7 min.");
    expect(mail?.parsed.html).toContain("valid for 7 min.");
    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: sent.messageId });
    expect(status.attempts.map((attempt) => attempt.replyCode)).toEqual([451, 250]);
    // The code itself is the one sent, with its expiry unchanged.
    expect(status.expiresAt).toEqual(sent.expiresAt);
    const verified = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: codeFromMail(mail?.parsed.subject) });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
  });

  it("is not retried with less than a minute left, which its email could not state: the send fails instead", async () => {
    const { svc, sink } = await deferredRelay(minute + 30_000);
    const to = "too.late@example.com";

    const error = await grpcError(
      grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, ttl: durationFromMs(2 * minute) }),
    );
    expect(error.code).toBe(GrpcStatus.UNAVAILABLE);
    const messageId = errorDetails(error).errorInfo?.metadata["message_id"] ?? "";
    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId });
    expect(status.state).toBe(DeliveryState.FAILED);
    expect(status.attempts).toHaveLength(1);
    expect(status.failureReason).toMatch(/less than 60 s of validity left for a retry/);
    expect(sink.messages).toHaveLength(0);
    expect(sink.transactions()).toBe(1);
  });
});

/**
 * The service with a one-connection pool against a relay that holds every
 * message until released: a second message waits in the pool's queue behind
 * the first while the service's clock is moved on (`jump`).
 */
async function slowRelay(): Promise<{ svc: TestService; sink: SmtpSink; jump: (ms: number) => void }> {
  let offset = 0;
  const sink = await startSmtpSink();
  sink.hold();
  const svc = await startTestService({
    sink,
    clock: { now: () => Date.now() + offset },
    // SendOtp answers SENDING soon (with its message_id) while its message waits for the connection.
    env: { SMTP_POOL_SIZE: "1", SMTP_SOCKET_TIMEOUT: "30s", SEND_WAIT_BUDGET: "200ms" },
  });
  running = { svc, sink };
  return { svc, sink, jump: (ms) => (offset += ms) };
}

describe("a code whose first attempt waits for a connection behind a slow relay", () => {
  it("states the whole minutes the code has left when it leaves, not the ttl it was sent with", async () => {
    const { svc, sink, jump } = await slowRelay();
    const ttl = durationFromMs(10 * minute);
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: "first.in.line@example.com", purpose: Purpose.LOGIN, ttl });
    await vi.waitFor(() => expect(sink.held()).toBe(1), { timeout: 5000 });
    const to = "waited@example.com";
    const queued = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, ttl });
    expect(queued.state).toBe(DeliveryState.SENDING);

    // The relay takes 3.5 minutes over the first message; the second leaves then.
    jump(3 * minute + 30_000);
    sink.release();
    const [, mail] = await sink.waitForMessages(2);

    expect(mail?.envelope.rcptTo).toEqual([to]);
    expect(mail?.parsed.text).toContain("The code is valid for 6 min.");
    expect(mail?.parsed.html).toContain("valid for 6 min.");
    const verified = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: codeFromMail(mail?.parsed.subject) });
    expect(verified.result).toBe(VerifyResult.VERIFIED);
  });

  it("is never sent once its code expired while it waited: FAILED, nothing reaches the relay", async () => {
    const { svc, sink, jump } = await slowRelay();
    await grpcUnary(svc.grpcClient, sendOtp, { recipient: "first.in.line@example.com", purpose: Purpose.LOGIN, ttl: durationFromMs(30 * minute) });
    await vi.waitFor(() => expect(sink.held()).toBe(1), { timeout: 5000 });
    const queued = await grpcUnary(svc.grpcClient, sendOtp, { recipient: "expired@example.com", purpose: Purpose.LOGIN, ttl: durationFromMs(10 * minute) });

    jump(11 * minute);
    sink.release();
    await sink.waitForMessages(1);

    const status = await vi.waitFor(async () => {
      const read = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: queued.messageId });
      expect(read.state).toBe(DeliveryState.FAILED);
      return read;
    }, { timeout: 5000 });
    expect(status.attempts).toHaveLength(1);
    expect(status.attempts[0]?.errorCode).toBe("EEXPIRED");
    expect(status.attempts[0]?.replyText).toBe("the code expired while the message waited for a connection to the relay; nothing was sent");
    expect(status.failureReason).toMatch(/^the code expired before it could be sent/);
    expect(sink.messages.map((mail) => mail.envelope.rcptTo)).toEqual([["first.in.line@example.com"]]);
    expect(sink.transactions()).toBe(1);
  });
});

describe("a code whose relay is free", () => {
  it("states its whole ttl: the moments it takes to reach a connection render nothing again", async () => {
    const sink = await startSmtpSink();
    const svc = await startTestService({ sink });
    running = { svc, sink };

    await grpcUnary(svc.grpcClient, sendOtp, { recipient: "at.once@example.com", purpose: Purpose.LOGIN, ttl: durationFromMs(10 * minute) });

    const [mail] = await sink.waitForMessages(1);
    expect(mail?.parsed.text).toContain("The code is valid for 10 min.");
  });
});

describe("a code's expiry", () => {
  it("verifies strictly before the expires_at SendOtp and GetDeliveryStatus report: 1 ms before, yes; at it, EXPIRED", async () => {
    const sink = await startSmtpSink();
    let now = Date.UTC(2030, 0, 1);
    const svc = await startTestService({ sink, clock: { now: () => now } });
    running = { svc, sink };
    const to = "on.the.edge@example.com";
    const ttl = durationFromMs(10 * minute);

    const first = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.LOGIN, ttl });
    const status = await grpcUnary(svc.grpcClient, getDeliveryStatus, { messageId: first.messageId });
    expect(status.expiresAt).toEqual(first.expiresAt);
    const [firstMail] = await sink.waitForMessages(1);
    now = Date.UTC(2030, 0, 1) + 10 * minute;
    const atExpiry = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.LOGIN, code: codeFromMail(firstMail?.parsed.subject) });
    expect(atExpiry.result).toBe(VerifyResult.EXPIRED);

    const second = await grpcUnary(svc.grpcClient, sendOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, ttl });
    const secondMail = (await sink.waitForMessages(2))[1];
    now += 10 * minute - 1;
    expect(Number(second.expiresAt?.seconds) * 1000 + (second.expiresAt?.nanos ?? 0) / 1e6 - now).toBe(1);
    const justBefore = await grpcUnary(svc.grpcClient, verifyOtp, { recipient: to, purpose: Purpose.PASSWORD_RESET, code: codeFromMail(secondMail?.parsed.subject) });
    expect(justBefore.result).toBe(VerifyResult.VERIFIED);
  });
});
