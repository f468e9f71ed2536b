/**
 * The gRPC layer over the wire: a real grpc-js server on 127.0.0.1:0, called
 * by a grpc-js client, a connect-node client, raw bytes and `buf curl`.
 *
 * The domain is replaced by a small fake `OtpService`: what is under test is
 * the translation between protobuf and the domain, the status mapping,
 * reflection, health and shutdown, not the OTP rules.
 */
import { execFile } from "node:child_process";
import http2 from "node:http2";
import { connect as connectTcp } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { anyUnpack, durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client as ConnectClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "../../gen/health/v1/health_pb.js";
import {
  AttemptOutcome,
  DeliveryState,
  OtpEmailService,
  Purpose,
  SendOtpRequestSchema,
  VerifyResult,
} from "../../gen/otp/v1/otp_email_pb.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { OtpError } from "../../src/errors.js";
import { createHealthState, type HealthState } from "../../src/health.js";
import { createLogger } from "../../src/logger.js";
import type {
  CallContext,
  DeliveryStatus,
  OtpService,
  SendOtpInput,
  SendOtpResult,
  VerifyOtpInput,
  VerifyOtpResult,
} from "../../src/otp/types.js";
import { createGrpcServer, type GrpcServer } from "../../src/rpc/server.js";
import { serviceDefinition } from "../../src/rpc/service-adapter.js";
import { startTestService } from "../support/service.js";

const run = promisify(execFile);
const bufBin = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));

// ---------------------------------------------------------------------------
// The fake domain: answers fixed values, records what it was asked, and lets
// a test replace any operation.

const t0 = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z

const acceptedRecord: DeliveryRecord = {
  messageId: "msg-1",
  caller: "svc-a",
  state: "ACCEPTED",
  recipientMasked: "a***@b.test",
  recipientDomain: "b.test",
  purpose: "password_reset",
  locale: "en",
  createdAt: t0,
  updatedAt: t0 + 2_500,
  expiresAt: t0 + 600_000,
  attempts: [
    {
      number: 1,
      startedAt: t0 + 10,
      durationMs: 1_250,
      outcome: "transient",
      replyCode: 421,
      enhancedStatus: "4.7.0",
      replyText: "421 4.7.0 try again later",
      errorCode: "",
    },
    {
      number: 2,
      startedAt: t0 + 2_000,
      durationMs: 480,
      poolWaitMs: 120,
      outcome: "accepted",
      replyCode: 250,
      enhancedStatus: "2.0.0",
      replyText: "250 2.0.0 Ok: queued as 4F2A",
      errorCode: "",
    },
  ],
  relayReply: { relay: "relay.test", text: "250 2.0.0 Ok: queued as 4F2A", queueId: "4F2A", acceptedAt: t0 + 2_480 },
  traceId: "0af7651916cd43dd8448eb211c80319c",
};

interface Call<T> {
  readonly ctx: CallContext;
  readonly input: T;
}

class FakeOtpService implements OtpService {
  sends: Call<SendOtpInput>[] = [];
  statusQueries: Call<string>[] = [];
  verifies: Call<VerifyOtpInput>[] = [];
  onSend: (input: SendOtpInput) => Promise<SendOtpResult> = () =>
    Promise.resolve({ messageId: "msg-1", state: "ACCEPTED", expiresAt: t0 + 600_000, resendAvailableAt: t0 + 60_000 });
  onStatus: (messageId: string) => Promise<DeliveryStatus> = () =>
    Promise.resolve({ record: acceptedRecord, explanation: "The relay accepted the message; no bounce so far." });
  onVerify: (input: VerifyOtpInput) => Promise<VerifyOtpResult> = () =>
    Promise.resolve({ result: "VERIFIED", attemptsRemaining: 4 });

  sendOtp(ctx: CallContext, input: SendOtpInput): Promise<SendOtpResult> {
    this.sends.push({ ctx, input });
    return this.onSend(input);
  }
  getDeliveryStatus(ctx: CallContext, messageId: string): Promise<DeliveryStatus> {
    this.statusQueries.push({ ctx, input: messageId });
    return this.onStatus(messageId);
  }
  verifyOtp(ctx: CallContext, input: VerifyOtpInput): Promise<VerifyOtpResult> {
    this.verifies.push({ ctx, input });
    return this.onVerify(input);
  }
  reset(): void {
    const fresh = new FakeOtpService();
    Object.assign(this, fresh);
  }
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

// ---------------------------------------------------------------------------
// Servers and clients.

interface Harness {
  readonly server: GrpcServer;
  readonly otp: FakeOtpService;
  readonly health: HealthState;
  readonly address: string;
  readonly logLines: string[];
}

async function startHarness(options: { readonly maxConcurrentStreams?: number } = {}): Promise<Harness> {
  const otp = new FakeOtpService();
  const health = createHealthState({ components: ["storage", "relay"] });
  health.set("storage", true);
  health.set("relay", true);
  const logLines: string[] = [];
  const logger = createLogger({ level: "info", destination: { write: (line: string) => void logLines.push(line) } });
  const server = createGrpcServer({
    otp,
    health,
    logger,
    // Stand-ins for the auth and tracing issues: read what the test sends.
    identify: (call) => String(call.metadata.get("x-test-caller")[0] ?? "anonymous"),
    traceIdOf: (call) => String(call.metadata.get("x-test-trace")[0] ?? ""),
    maxConcurrentStreams: options.maxConcurrentStreams,
  });
  const { host, port } = await server.listen("127.0.0.1:0");
  return { server, otp, health, address: `${host}:${port}`, logLines };
}

const GrpcOtpClient = grpc.makeGenericClientConstructor(serviceDefinition(OtpEmailService), "OtpEmailService");
const GrpcHealthClient = grpc.makeGenericClientConstructor(serviceDefinition(Health), "Health");

type UnaryFn = (
  request: unknown,
  metadata: grpc.Metadata,
  callback: (error: grpc.ServiceError | null, response?: unknown) => void,
) => grpc.ClientUnaryCall;

/** Calls a unary method on a client made from our ServiceDefinition. */
function grpcUnary<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: DescMethodUnary<I, O>,
  request: MessageInitShape<I>,
  metadata = new grpc.Metadata(),
): Promise<MessageShape<O>> {
  const fn = (client as unknown as Record<string, UnaryFn>)[method.name];
  if (fn === undefined) throw new Error(`client has no ${method.name}`);
  return new Promise((resolve, reject) => {
    fn.call(client, create(method.input, request), metadata, (error, response) => {
      if (error) reject(error);
      else resolve(response as MessageShape<O>);
    });
  });
}

/** Sends raw bytes to a method path, bypassing any serializer. */
function rawUnary(address: string, path: string, body: Buffer): Promise<Buffer> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise<Buffer>((resolve, reject) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      (error, response) => {
        if (error) reject(error);
        else resolve(response ?? Buffer.alloc(0));
      },
    );
  }).finally(() => client.close());
}

/**
 * One gRPC call over a bare HTTP/2 stream, with headers no gRPC client would
 * send (a `grpc-timeout` of its own choosing); resolves with its grpc-status.
 */
function http2Unary(address: string, path: string, headers: http2.OutgoingHttpHeaders, message: Uint8Array): Promise<string> {
  const frame = Buffer.alloc(5 + message.byteLength);
  frame.writeUInt32BE(message.byteLength, 1);
  frame.set(message, 5);
  const session = http2.connect(`http://${address}`);
  return new Promise<string>((resolve, reject) => {
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    let status: string | undefined;
    const read = (fields: http2.IncomingHttpHeaders) => {
      const value = fields["grpc-status"];
      if (typeof value === "string") status = value;
    };
    stream.on("response", read);
    stream.on("trailers", read);
    stream.on("error", reject);
    stream.on("close", () => (status === undefined ? reject(new Error("no grpc-status")) : resolve(status)));
    stream.resume();
    stream.end(frame);
  }).finally(() => session.close());
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to fail");
}

async function grpcError(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  const error = await rejection(promise);
  expect(error).toHaveProperty("code");
  return error as grpc.ServiceError;
}

/** The google.rpc.Status in a grpc-js error's trailers. */
function richStatus(error: grpc.ServiceError): MessageShape<typeof StatusSchema> {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  if (!(bytes instanceof Buffer)) throw new Error("no grpc-status-details-bin trailer");
  return fromBinary(StatusSchema, bytes);
}

async function bufCurl(args: string[]): Promise<string> {
  const { stdout } = await run(bufBin, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
    timeout: 20_000,
  });
  return stdout;
}

// ---------------------------------------------------------------------------

describe("gRPC server", () => {
  let h: Harness;
  let grpcClient: grpc.Client;
  let healthClient: grpc.Client;
  let connectClient: ConnectClient<typeof OtpEmailService>;
  let connectHealth: ConnectClient<typeof Health>;

  beforeAll(async () => {
    h = await startHarness();
    grpcClient = new GrpcOtpClient(h.address, grpc.credentials.createInsecure());
    healthClient = new GrpcHealthClient(h.address, grpc.credentials.createInsecure());
    const transport = createGrpcTransport({ baseUrl: `http://${h.address}` });
    connectClient = createClient(OtpEmailService, transport);
    connectHealth = createClient(Health, transport);
  });

  afterAll(async () => {
    grpcClient.close();
    healthClient.close();
    await h.server.shutdown(1_000);
  });

  afterEach(() => {
    h.otp.reset();
    h.health.set("storage", true);
    h.health.set("relay", true);
  });

  describe("SendOtp", () => {
    it("translates the request for the domain and the answer back, over grpc-js", async () => {
      const metadata = new grpc.Metadata();
      metadata.set("x-test-caller", "svc-a");
      metadata.set("x-test-trace", "4bf92f3577b34da6a3ce929d0e0e4736");

      const response = await grpcUnary(
        grpcClient,
        OtpEmailService.method.sendOtp,
        {
          recipient: "a@b.test",
          purpose: Purpose.SIGNUP,
          locale: "ko-KR",
          code: "",
          ttl: { seconds: 300n, nanos: 500_000_000 },
          idempotencyKey: "key-1",
          endUserIp: "192.0.2.7",
        },
        metadata,
      );

      expect(h.otp.sends).toEqual([
        {
          ctx: { caller: "svc-a", traceId: "4bf92f3577b34da6a3ce929d0e0e4736" },
          input: {
            recipient: "a@b.test",
            purpose: "signup",
            locale: "ko-KR",
            code: "",
            ttlMs: 300_500,
            idempotencyKey: "key-1",
            endUserIp: "192.0.2.7",
          },
        },
      ]);
      expect(response.messageId).toBe("msg-1");
      expect(response.state).toBe(DeliveryState.ACCEPTED);
      expect(timestampMs(response.expiresAt!)).toBe(t0 + 600_000);
      expect(timestampMs(response.resendAvailableAt!)).toBe(t0 + 60_000);
    });

    it("maps every purpose, and passes UNSPECIFIED or unknown numbers as '' for the domain to reject", async () => {
      const purposes = [Purpose.LOGIN, Purpose.SIGNUP, Purpose.PASSWORD_RESET, Purpose.UNSPECIFIED, 42 as Purpose];
      for (const purpose of purposes) {
        await connectClient.sendOtp({ recipient: "a@b.test", purpose });
      }
      expect(h.otp.sends.map((s) => s.input.purpose)).toEqual(["login", "signup", "password_reset", "", ""]);
    });

    it("passes an unset ttl as undefined and a negative one as is", async () => {
      await connectClient.sendOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN });
      await connectClient.sendOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN, ttl: { seconds: -5n } });
      expect(h.otp.sends.map((s) => s.input.ttlMs)).toEqual([undefined, -5_000]);
    });

    it("passes a Duration that breaks google.protobuf.Duration's rules as NaN, not as some other ttl", async () => {
      const ttls = [
        { seconds: 60n, nanos: 2_000_000_000 },
        { seconds: 120n, nanos: -5 },
        { seconds: -120n, nanos: 5 },
        { seconds: 0n, nanos: -1_000_000_000 },
        { seconds: -5n, nanos: -500_000_000 },
        { seconds: 0n, nanos: 999_999_999 },
      ];
      for (const ttl of ttls) await connectClient.sendOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN, ttl });
      expect(h.otp.sends.map((s) => s.input.ttlMs)).toEqual([NaN, NaN, NaN, NaN, -5_500, 999.999999]);
    });

    it("answers a connect-node client, with the default caller when identify finds none", async () => {
      h.otp.onSend = () =>
        Promise.resolve({ messageId: "msg-2", state: "RETRYING", expiresAt: t0 + 1, resendAvailableAt: t0 + 2 });

      const response = await connectClient.sendOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN });

      expect(response.messageId).toBe("msg-2");
      expect(response.state).toBe(DeliveryState.RETRYING);
      expect(timestampMs(response.expiresAt!)).toBe(t0 + 1);
      expect(h.otp.sends[0]?.ctx).toEqual({ caller: "anonymous", traceId: "" });
    });

    it("lets a 1 MB field through the transport to validation, which answers INVALID_ARGUMENT", async () => {
      h.otp.onSend = (input) =>
        Promise.reject(
          input.recipient.length > 254
            ? OtpError.invalid([
                { field: "recipient", description: "at most 254 characters", reason: "RECIPIENT_TOO_LONG" },
              ])
            : new Error("unexpected"),
        );
      const recipient = `${"a".repeat(1_000_000)}@b.test`;

      const error = await rejection(connectClient.sendOtp({ recipient, purpose: Purpose.LOGIN }));

      expect(ConnectError.from(error).code).toBe(Code.InvalidArgument);
      expect(h.otp.sends[0]?.input.recipient.length).toBe(recipient.length);
    });

    it("refuses a request over the 2 MiB cap at the transport, before the domain", async () => {
      const recipient = `${"a".repeat(3 * 1024 * 1024)}@b.test`;

      const error = await rejection(connectClient.sendOtp({ recipient, purpose: Purpose.LOGIN }));

      expect(ConnectError.from(error).code).toBe(Code.ResourceExhausted);
      // The README's Errors table: unlike a limit's refusal, this one (from grpc-js) carries no details.
      expect(ConnectError.from(error).details).toEqual([]);
      expect(h.otp.sends).toEqual([]);
      const raw = await grpcError(grpcUnary(grpcClient, OtpEmailService.method.sendOtp, { recipient, purpose: Purpose.LOGIN }));
      expect(raw.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(raw.metadata.get("grpc-status-details-bin")).toEqual([]);
    });

    it("tells the domain when the caller must have its answer: its deadline less a tenth of the time it gave", async () => {
      const before = Date.now();
      await connectClient.sendOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN }, { timeoutMs: 5_000 });
      await connectClient.sendOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN });
      const [withDeadline, without] = h.otp.sends;
      expect(withDeadline?.ctx.answerBy).toBeGreaterThan(before + 4_000);
      expect(withDeadline?.ctx.answerBy).toBeLessThanOrEqual(Date.now() + 4_500);
      expect(without?.ctx).toEqual({ caller: "anonymous", traceId: "" });
      expect(without?.ctx).not.toHaveProperty("answerBy");
    });

    it("a call whose deadline passed before its handler could start is not started: DEADLINE_EXCEEDED, nothing sent", async () => {
      const request = toBinary(SendOtpRequestSchema, create(SendOtpRequestSchema, { recipient: "a@b.test", purpose: Purpose.LOGIN }));
      // A nanosecond; and 30 days, past the 2^31 ms that grpc-js overflows into a deadline already past.
      for (const timeout of ["1n", "2592000S"]) {
        const status = await http2Unary(h.address, "/otp.v1.OtpEmailService/SendOtp", { "grpc-timeout": timeout }, request);
        expect(status).toBe(String(grpc.status.DEADLINE_EXCEEDED));
      }
      expect(h.otp.sends).toEqual([]);
      // A deadline well ahead is no reason to refuse.
      const status = await http2Unary(h.address, "/otp.v1.OtpEmailService/SendOtp", { "grpc-timeout": "10S" }, request);
      expect(status).toBe(String(grpc.status.OK));
      expect(h.otp.sends).toHaveLength(1);
    });

    it("more than 128 header fields: the stream is reset below the service, which grpc-js reports as RESOURCE_EXHAUSTED, nothing runs", async () => {
      // What the README's Errors section says: Node's maxHeaderListPairs (128, grpc-js's own headers included).
      const metadata = new grpc.Metadata();
      for (let i = 0; i < 130; i++) metadata.set(`x-entry-${i}`, "v");
      const error = await grpcError(grpcUnary(grpcClient, OtpEmailService.method.sendOtp, { recipient: "a@b.test", purpose: Purpose.LOGIN }, metadata));
      expect(error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(error.details).toBe("Bandwidth exhausted or memory limit exceeded");
      expect(error.metadata.get("grpc-status-details-bin")).toEqual([]);
      expect(h.otp.sends).toEqual([]);
      // A hundred entries are fine, on the same connection.
      const fewer = new grpc.Metadata();
      for (let i = 0; i < 100; i++) fewer.set(`x-entry-${i}`, "v");
      const status = await grpcUnary(grpcClient, OtpEmailService.method.getDeliveryStatus, { messageId: "msg-1" }, fewer);
      expect(status.messageId).toBe("msg-1");
    });

    it("metadata over HTTP/2's 64 KiB header list: the stream is reset below the service (INTERNAL), nothing runs, the connection goes on", async () => {
      // What the README's Errors section says: grpc-js has no server option for this limit.
      const metadata = new grpc.Metadata();
      metadata.set("x-big", "a".repeat(128 * 1024));
      const error = await grpcError(grpcUnary(grpcClient, OtpEmailService.method.sendOtp, { recipient: "a@b.test", purpose: Purpose.LOGIN }, metadata));
      expect(error.code).toBe(grpc.status.INTERNAL);
      expect(error.details).toMatch(/RST_STREAM/);
      expect(h.otp.sends).toEqual([]);
      // Under the limit, the same header is fine; and the same client's connection still works.
      metadata.set("x-big", "a".repeat(32 * 1024));
      const status = await grpcUnary(grpcClient, OtpEmailService.method.getDeliveryStatus, { messageId: "msg-1" }, metadata);
      expect(status.messageId).toBe("msg-1");
    });
  });

  describe("GetDeliveryStatus", () => {
    it("translates the record: state, purpose, timestamps, attempts (their wait for a connection unset where an older record lacks it) and relay reply", async () => {
      for (const response of [
        await grpcUnary(grpcClient, OtpEmailService.method.getDeliveryStatus, { messageId: "msg-1" }),
        await connectClient.getDeliveryStatus({ messageId: "msg-1" }),
      ]) {
        expect(response.messageId).toBe("msg-1");
        expect(response.state).toBe(DeliveryState.ACCEPTED);
        expect(response.recipient).toBe("a***@b.test");
        expect(response.purpose).toBe(Purpose.PASSWORD_RESET);
        expect(timestampMs(response.createdAt!)).toBe(t0);
        expect(timestampMs(response.updatedAt!)).toBe(t0 + 2_500);
        expect(timestampMs(response.expiresAt!)).toBe(t0 + 600_000);
        expect(response.traceId).toBe(acceptedRecord.traceId);
        expect(response.explanation).toBe("The relay accepted the message; no bounce so far.");
        expect(response.failureReason).toBe("");
        expect(
          response.attempts.map((a) => ({
            number: a.number,
            startedAt: timestampMs(a.startedAt!),
            durationMs: durationMs(a.duration!),
            poolWaitMs: a.poolWait === undefined ? "unset" : durationMs(a.poolWait),
            outcome: a.outcome,
            replyCode: a.replyCode,
            enhanced: a.enhancedStatusCode,
            text: a.replyText,
          })),
        ).toEqual([
          {
            number: 1,
            startedAt: t0 + 10,
            durationMs: 1_250,
            // Recorded before the wait was kept (no poolWaitMs): unknown, so unset rather than 0.
            poolWaitMs: "unset",
            outcome: AttemptOutcome.TRANSIENT_FAILURE,
            replyCode: 421,
            enhanced: "4.7.0",
            text: "421 4.7.0 try again later",
          },
          {
            number: 2,
            startedAt: t0 + 2_000,
            durationMs: 480,
            poolWaitMs: 120,
            outcome: AttemptOutcome.ACCEPTED,
            replyCode: 250,
            enhanced: "2.0.0",
            text: "250 2.0.0 Ok: queued as 4F2A",
          },
        ]);
        expect(response.relayReply?.queueId).toBe("4F2A");
        expect(timestampMs(response.relayReply!.acceptedAt!)).toBe(t0 + 2_480);
      }
      expect(h.otp.statusQueries.map((q) => q.input)).toEqual(["msg-1", "msg-1"]);
    });

    it("leaves relay_reply unset before acceptance and reports the failure reason", async () => {
      h.otp.onStatus = () =>
        Promise.resolve({
          record: {
            ...acceptedRecord,
            state: "FAILED",
            relayReply: undefined,
            failureReason: "550 5.1.1 no such user",
          },
          explanation: "The relay refused the message for good.",
        });

      const response = await connectClient.getDeliveryStatus({ messageId: "msg-1" });

      expect(response.state).toBe(DeliveryState.FAILED);
      expect(response.relayReply).toBeUndefined();
      expect(response.failureReason).toBe("550 5.1.1 no such user");
    });
  });

  describe("VerifyOtp", () => {
    it("translates the request and the result, over both clients", async () => {
      h.otp.onVerify = () => Promise.resolve({ result: "LOCKED", attemptsRemaining: 0 });

      const viaGrpc = await grpcUnary(grpcClient, OtpEmailService.method.verifyOtp, {
        recipient: "a@b.test",
        purpose: Purpose.LOGIN,
        code: "123456",
      });
      const viaConnect = await connectClient.verifyOtp({
        recipient: "a@b.test",
        purpose: Purpose.LOGIN,
        code: "654321",
      });

      for (const response of [viaGrpc, viaConnect]) {
        expect(response.result).toBe(VerifyResult.LOCKED);
        expect(response.attemptsRemaining).toBe(0);
      }
      expect(h.otp.verifies.map((v) => v.input)).toEqual([
        { recipient: "a@b.test", purpose: "login", code: "123456" },
        { recipient: "a@b.test", purpose: "login", code: "654321" },
      ]);
    });
  });

  describe("errors", () => {
    it("an OtpError keeps its message and carries ErrorInfo and BadRequest in grpc-status-details-bin", async () => {
      h.otp.onSend = () =>
        Promise.reject(
          OtpError.invalid([
            {
              field: "recipient",
              description: "must be an address like name@example.com",
              reason: "RECIPIENT_INVALID",
            },
          ]),
        );

      const error = await grpcError(
        grpcUnary(grpcClient, OtpEmailService.method.sendOtp, { recipient: "nope", purpose: Purpose.LOGIN }),
      );

      expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toBe("recipient: must be an address like name@example.com");
      const status = richStatus(error);
      expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
      const [info, badRequest] = status.details;
      expect(anyUnpack(info, ErrorInfoSchema)).toMatchObject({ reason: "RECIPIENT_INVALID", domain: "otp-email" });
      expect(anyUnpack(badRequest, BadRequestSchema)?.fieldViolations).toMatchObject([
        { field: "recipient", reason: "RECIPIENT_INVALID", description: "must be an address like name@example.com" },
      ]);
    });

    it("RESOURCE_EXHAUSTED carries RetryInfo and ErrorInfo metadata, readable by connect-node", async () => {
      h.otp.onSend = () =>
        Promise.reject(
          new OtpError("resource_exhausted", "too many codes for this recipient; retry in 42 s", {
            reason: "RECIPIENT_RATE_LIMITED",
            retryAfterMs: 42_000,
            metadata: { limit: "recipient_per_hour" },
          }),
        );

      const error = ConnectError.from(await rejection(connectClient.sendOtp({ recipient: "a@b.test", purpose: 1 })));

      expect(error.code).toBe(Code.ResourceExhausted);
      expect(error.rawMessage).toBe("too many codes for this recipient; retry in 42 s");
      const [retry] = error.findDetails(RetryInfoSchema);
      expect(durationMs(retry.retryDelay!)).toBe(42_000);
      const [info] = error.findDetails(ErrorInfoSchema);
      expect(info).toMatchObject({
        reason: "RECIPIENT_RATE_LIMITED",
        domain: "otp-email",
        metadata: { limit: "recipient_per_hour" },
      });
    });

    it.each([
      ["not_found", grpc.status.NOT_FOUND],
      ["already_exists", grpc.status.ALREADY_EXISTS],
      ["failed_precondition", grpc.status.FAILED_PRECONDITION],
      ["unavailable", grpc.status.UNAVAILABLE],
      ["unauthenticated", grpc.status.UNAUTHENTICATED],
      ["permission_denied", grpc.status.PERMISSION_DENIED],
      ["internal", grpc.status.INTERNAL],
    ] as const)("an OtpError of kind %s ends the call with code %i", async (kind, code) => {
      h.otp.onStatus = () => Promise.reject(new OtpError(kind, `the ${kind} message`));

      const error = await grpcError(
        grpcUnary(grpcClient, OtpEmailService.method.getDeliveryStatus, { messageId: "m" }),
      );

      expect(error.code).toBe(code);
      expect(error.details).toBe(`the ${kind} message`);
    });

    it("a plain Error becomes INTERNAL 'internal error': logged, never echoed", async () => {
      const secret = "redis at 10.0.0.5 said NOAUTH for code 123456";
      h.otp.onVerify = () => Promise.reject(new Error(secret));

      const error = await grpcError(
        grpcUnary(grpcClient, OtpEmailService.method.verifyOtp, { recipient: "a@b.test", purpose: 1, code: "1" }),
      );

      expect(error.code).toBe(grpc.status.INTERNAL);
      expect(error.details).toBe("internal error");
      expect(JSON.stringify(richStatus(error))).not.toContain("NOAUTH");
      expect(h.logLines.some((line) => line.includes(secret))).toBe(true);
    });

    it("an identify that refuses the caller ends the call before the domain", async () => {
      const strict = createGrpcServer({
        otp: h.otp,
        health: h.health,
        logger: createLogger({ level: "silent" }),
        identify: () => {
          throw new OtpError("unauthenticated", "send a bearer token", { reason: "TOKEN_MISSING" });
        },
      });
      const { port } = await strict.listen("127.0.0.1:0");
      const client = createClient(OtpEmailService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
      try {
        const error = ConnectError.from(await rejection(client.verifyOtp({ recipient: "a@b.test", code: "1" })));
        expect(error.code).toBe(Code.Unauthenticated);
        expect(error.rawMessage).toBe("send a bearer token");
        expect(h.otp.verifies).toEqual([]);
      } finally {
        await strict.shutdown(1_000);
      }
    });

    it("an identify that answers with a promise names the caller, or refuses it, all the same", async () => {
      const asyncIdentify = createGrpcServer({
        otp: h.otp,
        health: h.health,
        logger: createLogger({ level: "silent" }),
        identify: (call) =>
          call.metadata.get("x-test-caller").length === 0
            ? Promise.reject(new OtpError("unauthenticated", "send a bearer token", { reason: "TOKEN_MISSING" }))
            : Promise.resolve(`async-${String(call.metadata.get("x-test-caller")[0])}`),
        traceIdOf: () => "trace-of-the-call",
      });
      const { port } = await asyncIdentify.listen("127.0.0.1:0");
      const client = createClient(OtpEmailService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
      try {
        h.otp.onVerify = () => Promise.resolve({ result: "VERIFIED", attemptsRemaining: 5 });
        const answer = await client.verifyOtp(
          { recipient: "a@b.test", purpose: Purpose.LOGIN, code: "123456" },
          { headers: { "x-test-caller": "svc-b" } },
        );
        expect(answer.result).toBe(VerifyResult.VERIFIED);
        expect(h.otp.verifies.map((v) => v.ctx)).toEqual([{ caller: "async-svc-b", traceId: "trace-of-the-call" }]);

        const error = ConnectError.from(await rejection(client.verifyOtp({ recipient: "a@b.test", code: "1" })));
        expect(error.code).toBe(Code.Unauthenticated);
        expect(error.rawMessage).toBe("send a bearer token");
        expect(h.otp.verifies).toHaveLength(1);
      } finally {
        await asyncIdentify.shutdown(1_000);
      }
    });

    it("garbage request bytes are INVALID_ARGUMENT, not INTERNAL, and reach nothing", async () => {
      const error = await grpcError(
        rawUnary(h.address, "/otp.v1.OtpEmailService/SendOtp", Buffer.from([0xff, 0xff, 0xff, 0xff])),
      );

      expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toMatch(/could not be decoded as otp\.v1\.SendOtpRequest/);
      expect(h.otp.sends).toEqual([]);
    });

    it("a string field with invalid UTF-8 is INVALID_ARGUMENT saying so", async () => {
      // Field 1 (recipient), length 5: "a", an invalid byte, "b@c".
      const body = Buffer.from([0x0a, 0x05, 0x61, 0xff, 0x62, 0x40, 0x63]);

      const error = await grpcError(rawUnary(h.address, "/otp.v1.OtpEmailService/VerifyOtp", body));

      expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toMatch(/not valid UTF-8/);
      expect(anyUnpack(richStatus(error).details[0], ErrorInfoSchema)?.reason).toBe("MALFORMED_REQUEST");
      expect(h.otp.verifies).toEqual([]);
    });
  });

  describe("reflection (buf curl)", () => {
    it("lists the services, reflection included", async () => {
      const services = (await bufCurl(["--list-services", `http://${h.address}`])).trim().split("\n");

      expect(services).toEqual(
        expect.arrayContaining([
          "otp.v1.OtpEmailService",
          "grpc.health.v1.Health",
          "grpc.reflection.v1.ServerReflection",
          "grpc.reflection.v1alpha.ServerReflection",
        ]),
      );
    });

    it("lists the three OtpEmailService methods", async () => {
      const methods = (await bufCurl(["--list-methods", `http://${h.address}`])).trim().split("\n");

      expect(methods).toEqual(
        expect.arrayContaining([
          "otp.v1.OtpEmailService/SendOtp",
          "otp.v1.OtpEmailService/GetDeliveryStatus",
          "otp.v1.OtpEmailService/VerifyOtp",
        ]),
      );
    });

    it("calls SendOtp from JSON, with no .proto at hand", async () => {
      const out = await bufCurl([
        "--data",
        '{"recipient":"a@b.test","purpose":"PURPOSE_LOGIN"}',
        `http://${h.address}/otp.v1.OtpEmailService/SendOtp`,
      ]);

      expect(JSON.parse(out)).toMatchObject({
        messageId: "msg-1",
        state: "DELIVERY_STATE_ACCEPTED",
        expiresAt: "2026-01-01T00:10:00.123Z",
      });
      expect(h.otp.sends[0]?.input).toMatchObject({ recipient: "a@b.test", purpose: "login" });
    });

    it("describes the google.rpc error details every error carries, so grpcurl can print them", async () => {
      for (const symbol of ["google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo", "google.rpc.QuotaFailure"]) {
        const out = await bufCurl([
          "--data",
          JSON.stringify({ fileContainingSymbol: symbol }),
          `http://${h.address}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`,
        ]);
        const response = JSON.parse(out) as { fileDescriptorResponse?: unknown; errorResponse?: unknown };
        expect(response.errorResponse).toBeUndefined();
        expect(response.fileDescriptorResponse).toBeDefined();
      }
    });

    it("calls grpc.health.v1.Health/Check", async () => {
      const out = await bufCurl(["--data", '{"service":""}', `http://${h.address}/grpc.health.v1.Health/Check`]);

      expect(JSON.parse(out)).toEqual({ status: "SERVING" });
    });
  });

  describe("health", () => {
    const check = (service: string): Promise<HealthCheckResponse> =>
      grpcUnary(healthClient, Health.method.check, { service });

    it("Check says SERVING, then NOT_SERVING while a component is down, for '' and the service", async () => {
      expect((await check("")).status).toBe(ServingStatus.SERVING);
      expect((await check("otp.v1.OtpEmailService")).status).toBe(ServingStatus.SERVING);

      h.health.set("relay", false, "relay unreachable");

      expect((await check("")).status).toBe(ServingStatus.NOT_SERVING);
      expect((await check("otp.v1.OtpEmailService")).status).toBe(ServingStatus.NOT_SERVING);
      expect((await connectHealth.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    });

    it("Check of an unknown service is NOT_FOUND", async () => {
      const error = await grpcError(check("no.such.Service"));

      expect(error.code).toBe(grpc.status.NOT_FOUND);
    });

    it("List reports every known service", async () => {
      const response = await connectHealth.list({});

      expect(Object.keys(response.statuses).sort()).toEqual(["", "otp.v1.OtpEmailService"]);
      expect(response.statuses[""]?.status).toBe(ServingStatus.SERVING);
    });

    it("Watch sends the current status, then each change", async () => {
      const abort = new AbortController();
      const stream = connectHealth.watch({ service: "otp.v1.OtpEmailService" }, { signal: abort.signal });
      const seen: ServingStatus[] = [];
      try {
        for await (const response of stream) {
          seen.push(response.status);
          if (seen.length === 1) h.health.set("storage", false, "redis down");
          if (seen.length === 2) h.health.set("storage", true);
          if (seen.length === 3) break;
        }
      } finally {
        abort.abort();
      }
      expect(seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]);
    });

    it("Watch of an unknown service says SERVICE_UNKNOWN and stays open", async () => {
      const abort = new AbortController();
      const stream = connectHealth.watch({ service: "no.such.Service" }, { signal: abort.signal });
      try {
        for await (const response of stream) {
          expect(response.status).toBe(ServingStatus.SERVICE_UNKNOWN);
          break;
        }
      } finally {
        abort.abort();
      }
    });
  });
});

describe("shutdown", () => {
  it("lets a call in flight finish within the grace period, and refuses new calls", async () => {
    const h = await startHarness();
    const entered = deferred();
    const release = deferred();
    h.otp.onVerify = async () => {
      entered.resolve();
      await release.promise;
      return { result: "VERIFIED", attemptsRemaining: 4 };
    };
    const client = createClient(OtpEmailService, createGrpcTransport({ baseUrl: `http://${h.address}` }));
    const lateClient = createClient(OtpEmailService, createGrpcTransport({ baseUrl: `http://${h.address}` }));

    const slow = client.verifyOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN, code: "123456" });
    await entered.promise;
    const stopped = h.server.shutdown(30_000);
    // A fresh connection: the listener is already closed.
    const late = rejection(lateClient.verifyOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN, code: "1" }));
    release.resolve();

    expect((await slow).result).toBe(VerifyResult.VERIFIED);
    await stopped;
    expect(ConnectError.from(await late).code).toBe(Code.Unavailable);
  });

  it("cancels calls still running after the grace period", async () => {
    const h = await startHarness();
    const entered = deferred();
    h.otp.onVerify = () => {
      entered.resolve();
      return new Promise<never>(() => {});
    };
    const client = createClient(OtpEmailService, createGrpcTransport({ baseUrl: `http://${h.address}` }));

    const stuck = rejection(client.verifyOtp({ recipient: "a@b.test", purpose: Purpose.LOGIN, code: "1" }));
    await entered.promise;
    await h.server.shutdown(50);

    expect([Code.Unavailable, Code.Canceled, Code.Internal]).toContain(ConnectError.from(await stuck).code);
  });

  it("ends health Watch streams with NOT_SERVING", async () => {
    const h = await startHarness();
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://${h.address}` }));
    const seen: ServingStatus[] = [];

    const watching = (async () => {
      for await (const response of health.watch({ service: "" })) {
        seen.push(response.status);
        if (seen.length === 1) void h.server.shutdown(30_000);
      }
    })();

    await watching; // ends normally (status OK) rather than throwing
    expect(seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    await h.server.shutdown(30_000);
  });
});

// ---------------------------------------------------------------------------
// Concurrent streams on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).

/** The server's SETTINGS, as an HTTP/2 client receives them on connecting. */
async function serverSettings(address: string): Promise<http2.Settings> {
  const session = http2.connect(`http://${address}`);
  try {
    return await new Promise<http2.Settings>((resolve, reject) => {
      session.once("remoteSettings", resolve);
      session.once("error", reject);
    });
  } finally {
    session.close();
  }
}

/** What a server answered on each stream of a raw HTTP/2 connection. */
interface RawAnswers {
  /** Streams answered with response headers. */
  readonly answered: number[];
  /** Streams reset by the server, with the RST_STREAM error code (7: REFUSED_STREAM). */
  readonly reset: Map<number, number>;
  /** The GOAWAY error code (1: PROTOCOL_ERROR), if the server ended the connection. */
  readonly goaway: number | undefined;
}

/**
 * Opens `count` health Watch streams at once on one HTTP/2 connection spoken
 * by hand, as a client that ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS
 * does (every real HTTP/2 library holds such streams back): before it
 * acknowledges the server's SETTINGS, or after. Watch streams stay open, so
 * each one the server takes keeps its place. Resolves once every stream is
 * answered or reset, or the connection ends.
 */
function openStreamsIgnoringTheLimit(address: string, count: number, when: "before acknowledging" | "after acknowledging"): Promise<RawAnswers> {
  const [host = "", port = ""] = address.split(":");
  const frame = (type: number, flags: number, stream: number, payload: Buffer): Buffer => {
    const header = Buffer.alloc(9);
    header.writeUIntBE(payload.length, 0, 3);
    header.writeUInt8(type, 3);
    header.writeUInt8(flags, 4);
    header.writeUInt32BE(stream, 5);
    return Buffer.concat([header, payload]);
  };
  // HPACK "literal header field without indexing, new name", no Huffman: short names and values only.
  const field = (name: string, value: string): Buffer =>
    Buffer.concat([Buffer.from([0, name.length]), Buffer.from(name), Buffer.from([value.length]), Buffer.from(value)]);
  const headerBlock = Buffer.concat([
    field(":method", "POST"),
    field(":scheme", "http"),
    field(":path", "/grpc.health.v1.Health/Watch"),
    field(":authority", address),
    field("content-type", "application/grpc"),
    field("te", "trailers"),
  ]);
  // One gRPC message: an empty HealthCheckRequest (service "").
  const emptyRequest = Buffer.alloc(5);

  return new Promise<RawAnswers>((resolve, reject) => {
    const answered: number[] = [];
    const reset = new Map<number, number>();
    let goaway: number | undefined;
    let pending = Buffer.alloc(0);
    let sent = false;
    const socket = connectTcp(Number(port), host, () => {
      socket.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), frame(4, 0, 0, Buffer.alloc(0))]));
    });
    const done = (): void => {
      socket.destroy();
      resolve({ answered, reset, goaway });
    };
    socket.on("error", reject);
    socket.on("close", done);
    socket.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        const [type, flags, stream] = [pending.readUInt8(3), pending.readUInt8(4), pending.readUInt32BE(5) & 0x7fffffff];
        const payload = pending.subarray(9, 9 + length);
        pending = pending.subarray(9 + length);
        if (type === 4 && (flags & 1) === 0 && !sent) {
          // The server's SETTINGS: every stream at once, and the acknowledgement that puts them in force.
          sent = true;
          const ack = frame(4, 1, 0, Buffer.alloc(0));
          const streams = Array.from({ length: count }, (_, index) => 2 * index + 1).flatMap((id) => [
            frame(1, 0x4, id, headerBlock),
            frame(0, 0x1, id, emptyRequest),
          ]);
          socket.write(Buffer.concat(when === "after acknowledging" ? [ack, ...streams] : [...streams, ack]));
        } else if (type === 1 && !answered.includes(stream)) {
          answered.push(stream);
        } else if (type === 3) {
          reset.set(stream, payload.readUInt32BE(0));
        } else if (type === 7) {
          goaway = payload.readUInt32BE(4);
        }
      }
      if (answered.length + reset.size >= count) done();
    });
  });
}

describe("concurrent streams on one connection", () => {
  it("the server announces a bound: 100 by default, RFC 9113's advised least, over the bench's 64 calls on one connection", async () => {
    const h = await startHarness();
    try {
      expect((await serverSettings(h.address)).maxConcurrentStreams).toBe(100);
    } finally {
      await h.server.shutdown(1_000);
    }
  });

  it("the service announces GRPC_MAX_CONCURRENT_STREAMS", async () => {
    const service = await startTestService({ store: "memory", env: { GRPC_MAX_CONCURRENT_STREAMS: "250" } });
    try {
      expect((await serverSettings(service.address)).maxConcurrentStreams).toBe(250);
    } finally {
      await service.stop();
    }
  });

  describe("at a bound of 4", () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({ maxConcurrentStreams: 4 });
    });
    afterAll(async () => {
      await h.server.shutdown(1_000);
    });

    it("a grpc-js client with 6 calls at once has 4 in progress and the other 2 held, not failed, until calls end", async () => {
      const release = deferred();
      h.otp.onStatus = async () => {
        await release.promise;
        return { record: acceptedRecord, explanation: "" };
      };
      const client = new GrpcOtpClient(h.address, grpc.credentials.createInsecure());
      try {
        const calls = Array.from({ length: 6 }, () => grpcUnary(client, OtpEmailService.method.getDeliveryStatus, { messageId: "msg-1" }));
        for (let waited = 0; h.otp.statusQueries.length < 4; waited++) {
          expect(waited, "4 calls never reached the service").toBeLessThan(200);
          await sleep(10);
        }
        // Given time, the held calls would have arrived by now; they wait for a place instead.
        await sleep(300);
        expect(h.otp.statusQueries).toHaveLength(4);
        release.resolve();
        const answers = await Promise.all(calls);
        expect(answers.map((answer) => answer.messageId)).toEqual(Array(6).fill("msg-1"));
        expect(h.otp.statusQueries).toHaveLength(6);
      } finally {
        client.close();
      }
    });

    it("a client that ignores the bound has the streams over it refused (REFUSED_STREAM: safe to retry), or its connection ended once it knew the bound", async () => {
      // Streams sent before the client has acknowledged the bound: the first 4 are served, the rest refused.
      const early = await openStreamsIgnoringTheLimit(h.address, 6, "before acknowledging");
      expect(early.answered.sort((a, b) => a - b)).toEqual([1, 3, 5, 7]);
      expect([...early.reset]).toEqual([
        [9, 7],
        [11, 7],
      ]);
      expect(early.goaway).toBeUndefined();
      // After acknowledging it, the client breaks the protocol: Node's HTTP/2 (nghttp2) ends the connection,
      // with PROTOCOL_ERROR (1) on Node 24 and INTERNAL_ERROR (2) on Node 22.
      const late = await openStreamsIgnoringTheLimit(h.address, 6, "after acknowledging");
      expect([1, 2]).toContain(late.goaway);
      // Other connections are served as before.
      const client = new GrpcHealthClient(h.address, grpc.credentials.createInsecure());
      try {
        expect((await grpcUnary(client, Health.method.check, { service: "" })).status).toBe(ServingStatus.SERVING);
      } finally {
        client.close();
      }
    });
  });
});
