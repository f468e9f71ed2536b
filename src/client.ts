/**
 * The typed Node client, for services written in Node:
 *
 * ```ts
 * import { createOtpEmailClient, Purpose } from "otp-email-client";
 * const client = createOtpEmailClient({ baseUrl: "http://127.0.0.1:50051" });
 * // The same idempotencyKey when retrying: the retry then answers this send's messageId and sends nothing.
 * const { messageId, state } = await client.sendOtp({ recipient: "ana@example.com", purpose: Purpose.LOGIN, idempotencyKey });
 * // state SENDING or RETRYING is no failure: the relay has not answered yet; follow it with getDeliveryStatus.
 * ```
 *
 * Built on connect-node's gRPC transport, so it speaks plain gRPC over
 * HTTP/2 to the service (and to any other gRPC server). With an
 * OpenTelemetry SDK in the calling process, each call is a CLIENT span that
 * carries the active trace to the service (`traceparent`), so the caller's
 * span parents the service's. There is nothing to close: an idle connection
 * does not keep the process alive (see client-session.ts for the one case
 * connect-node gets wrong).
 */
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BlockList, isIPv4, isIPv6 } from "node:net";
import { BadRequestSchema, ErrorInfoSchema, QuotaFailureSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { OtpEmailService } from "../gen/otp/v1/otp_email_pb.js";
import { ClientSessionManager } from "./client-session.js";
import { createClientTracingInterceptor } from "./telemetry/client-tracing.js";

export * from "../gen/otp/v1/otp_email_pb.js";
export {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
  type RetryInfo,
} from "../gen/google/rpc/error_details_pb.js";
export { Code, ConnectError };

export interface OtpEmailClientOptions {
  /** `http://host:port` (plaintext HTTP/2) or `https://host:port` (TLS). */
  readonly baseUrl: string;
  /**
   * Sent as `authorization: Bearer <token>` on every call: over https://, or
   * over http:// to a loopback host (127.0.0.0/8, ::1, localhost: development,
   * a sidecar on this host). With http:// to any other host the client is
   * refused unless `allowPlaintextToken`.
   */
  readonly token?: string;
  /**
   * Send the token over http:// to a host that is not loopback: for a service
   * mesh whose sidecar does the TLS, never otherwise (default false).
   */
  readonly allowPlaintextToken?: boolean;
  /** Extra interceptors (tracing, logging...), run before the token is added. */
  readonly interceptors?: Interceptor[];
  /** Trace each call and propagate the active context (default true; a no-op without an OpenTelemetry SDK). */
  readonly tracing?: boolean;
  /** Default deadline per call in ms (default 10 s; SendOtp waits up to the service's wait budget). */
  readonly timeoutMs?: number;
  /** TLS options for https:// (a private CA, a client certificate for mTLS). */
  readonly tls?: { readonly ca?: string | Buffer; readonly cert?: string | Buffer; readonly key?: string | Buffer };
}

export type OtpEmailClient = Client<typeof OtpEmailService>;

/**
 * The largest request the service accepts (its grpc.max_receive_message_length,
 * `maxRequestBytes` in src/rpc/server.ts, which this package does not ship).
 * A larger one fails with Code.ResourceExhausted before anything is sent.
 */
export const maxRequestBytes = 2 * 1024 * 1024;

/**
 * Makes a client. Throws, before anything is sent, when a token would go over
 * http:// to a host that is not loopback without `allowPlaintextToken`.
 */
export function createOtpEmailClient(options: OtpEmailClientOptions): OtpEmailClient {
  const url = new URL(options.baseUrl);
  if (options.token !== undefined && url.protocol === "http:" && options.allowPlaintextToken !== true && !isLoopbackHost(url.hostname)) {
    throw new Error(
      `otp-email-client: refusing to send the token without TLS to ${url.host}, which is not loopback: ` +
        "use an https:// baseUrl (with tls.ca for a private CA), or allowPlaintextToken: true when a sidecar on this host does the TLS",
    );
  }
  const interceptors: Interceptor[] = [
    ...(options.tracing === false ? [] : [createClientTracingInterceptor(options.baseUrl)]),
    ...(options.interceptors ?? []),
  ];
  if (options.token !== undefined) {
    const header = `Bearer ${options.token}`;
    interceptors.push((next) => (request) => {
      request.header.set("authorization", header);
      return next(request);
    });
  }
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors,
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
    // Refused here rather than uploaded for the service to refuse after its first bytes.
    writeMaxBytes: maxRequestBytes,
    sessionManager: new ClientSessionManager(options.baseUrl, {}, options.tls ? { ...options.tls } : undefined),
  });
  return createClient(OtpEmailService, transport);
}

const loopback = new BlockList();
loopback.addSubnet("127.0.0.0", 8, "ipv4");
loopback.addAddress("::1", "ipv6");

/** 127.0.0.0/8, ::1 or localhost, judged from the URL's hostname alone (never looked up). */
function isLoopbackHost(hostname: string): boolean {
  const host = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  if (host.toLowerCase().replace(/\.$/, "") === "localhost") return true;
  if (isIPv4(host)) return loopback.check(host, "ipv4");
  return isIPv6(host) && loopback.check(host, "ipv6");
}

/**
 * What a failed call says, read from its google.rpc details (the
 * `grpc-status-details-bin` trailer): ErrorInfo's reason (RECIPIENT_INVALID,
 * RESEND_COOLDOWN, RECIPIENT_SUPPRESSED...) and metadata, BadRequest's field
 * violations, RetryInfo's delay and QuotaFailure's violations.
 *
 * ```ts
 * try { await client.sendOtp(request); } catch (error) {
 *   const details = errorDetailsOf(error);
 *   if (details.code === Code.ResourceExhausted) retryAfter(details.retryDelayMs);
 * }
 * ```
 *
 * Anything thrown that is not a ConnectError reads as Code.Unknown with its message.
 */
export interface OtpErrorDetails {
  readonly code: Code;
  /** The service's message, without connect's `[code]` prefix. */
  readonly message: string;
  /** ErrorInfo.reason, "" when the error carries no ErrorInfo. */
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly { readonly field: string; readonly description: string; readonly reason: string }[];
  /** RetryInfo.retry_delay in milliseconds: do not retry sooner. Undefined without RetryInfo. */
  readonly retryDelayMs: number | undefined;
  readonly quotaViolations: readonly { readonly subject: string; readonly description: string }[];
}

export function errorDetailsOf(error: unknown): OtpErrorDetails {
  const connectError = ConnectError.from(error);
  const [info] = connectError.findDetails(ErrorInfoSchema);
  const [retry] = connectError.findDetails(RetryInfoSchema);
  const delay = retry?.retryDelay;
  return {
    code: connectError.code,
    message: connectError.rawMessage,
    reason: info?.reason ?? "",
    metadata: { ...(info?.metadata ?? {}) },
    fieldViolations: connectError
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations.map(({ field, description, reason }) => ({ field, description, reason }))),
    retryDelayMs: delay === undefined ? undefined : Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6),
    quotaViolations: connectError
      .findDetails(QuotaFailureSchema)
      .flatMap((quota) => quota.violations.map(({ subject, description }) => ({ subject, description }))),
  };
}
