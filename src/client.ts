/**
 * The typed Node client, for services written in Node:
 *
 * ```ts
 * import { createOtpEmailClient, Purpose } from "otp-email";
 * const client = createOtpEmailClient({ baseUrl: "http://127.0.0.1:50051" });
 * const { messageId } = await client.sendOtp({ recipient: "ana@example.com", purpose: Purpose.LOGIN });
 * ```
 *
 * Built on connect-node's gRPC transport, so it speaks plain gRPC over
 * HTTP/2 to the service (and to any other gRPC server). With an
 * OpenTelemetry SDK in the calling process, each call is a CLIENT span that
 * carries the active trace to the service (`traceparent`), so the caller's
 * span parents the service's.
 */
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { OtpEmailService } from "../gen/otp/v1/otp_email_pb.js";
import { createClientTracingInterceptor } from "./telemetry/client-tracing.js";

export * from "../gen/otp/v1/otp_email_pb.js";

export interface OtpEmailClientOptions {
  /** `http://host:port` (plaintext HTTP/2) or `https://host:port` (TLS). */
  readonly baseUrl: string;
  /** Sent as `authorization: Bearer <token>` on every call. */
  readonly token?: string;
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

export function createOtpEmailClient(options: OtpEmailClientOptions): OtpEmailClient {
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
    ...(options.tls ? { nodeOptions: { ...options.tls } } : {}),
  });
  return createClient(OtpEmailService, transport);
}
