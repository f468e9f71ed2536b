/**
 * The gRPC server: OtpEmailService, grpc.health.v1.Health and server
 * reflection (v1 + v1alpha) on one grpc-js Server.
 *
 * Built here, started by whoever owns the process (`main.ts`, tests): the
 * factory binds nothing until `listen`.
 */
import type { IncomingHttpHeaders } from "node:http2";
import { Server as TlsServer, type TLSSocket } from "node:tls";
import {
  Server,
  ServerCredentials,
  type ServerInterceptor,
  type ServerOptions,
} from "@grpc/grpc-js";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { file_google_rpc_status } from "../../gen/google/rpc/status_pb.js";
import { file_health_v1_health, Health } from "../../gen/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { file_grpc_reflection_v1alpha_reflection } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_otp_v1_otp_email, OtpEmailService } from "../../gen/otp/v1/otp_email_pb.js";
import type { HealthState } from "../health.js";
import { hostPort } from "../host-port.js";
import type { Logger } from "../logger.js";
import type { OtpService } from "../otp/types.js";
import { createHealthService } from "./health.js";
import { createOtpHandlers, type IdentifyCaller, type OnRefused, type OtpMethod, type SpanIdOf, type TraceIdOf } from "./otp-handlers.js";
import { addReflection } from "./reflection.js";
import { bindService } from "./service-adapter.js";
import type { RpcMethod } from "../telemetry/grpc-metrics.js";

/**
 * Largest request accepted, in bytes. Above the largest valid request (a few
 * KiB) by far, on purpose: a request with a 1 MB field must reach validation
 * and be refused as INVALID_ARGUMENT naming the field, not cut off by the
 * transport as RESOURCE_EXHAUSTED, which callers read as "retry later".
 * Anything over 2 MiB is still refused by grpc-js before it is decoded.
 */
export const maxRequestBytes = 2 * 1024 * 1024;

/**
 * Most calls one connection may have in progress at once (HTTP/2
 * SETTINGS_MAX_CONCURRENT_STREAMS; GRPC_MAX_CONCURRENT_STREAMS). Unset, Node
 * allows 2^32 - 1: one client could hold any number of SendOtps, each waiting
 * up to SEND_WAIT_BUDGET. 100 is what RFC 9113 advises as the least. A
 * client at the limit holds its further calls until one ends (HTTP/2 clients
 * do: grpc-js through Node's nghttp2, grpc-go, grpc-java, Python's grpcio; the
 * client tests burst each example's client at a bound of 4); one that ignores
 * it has the streams over it refused (REFUSED_STREAM), or, once it has
 * acknowledged the setting, its connection ended (GOAWAY PROTOCOL_ERROR).
 * The bench's 64 concurrent calls share one connection: under the bound.
 */
export const defaultMaxConcurrentStreams = 100;

/**
 * grpc-js options: the size cap above, the concurrent-stream bound and
 * keepalive that notices dead peers (the bench's echo server uses the same
 * options).
 */
export const serverOptions: ServerOptions = {
  "grpc.max_receive_message_length": maxRequestBytes,
  "grpc.max_send_message_length": 4 * 1024 * 1024,
  "grpc.max_concurrent_streams": defaultMaxConcurrentStreams,
  // Ping an idle connection every minute and drop it if the ping goes
  // unanswered for 20 s: half-open TCP connections otherwise live for hours.
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 20_000,
  // Recycle connections now and then so that new instances behind an L4
  // balancer get a share; clients reconnect transparently on GOAWAY.
  "grpc.max_connection_age_ms": 30 * 60_000,
  "grpc.max_connection_age_grace_ms": 30_000,
  // Channelz stays on, though no channelz service is offered: grpc-js 1.14's
  // forceShutdown only destroys the sessions channelz tracks, so without it
  // calls still running after the grace period were never cancelled (the
  // shutdown test in rpc.test.ts hangs).
};

export interface GrpcServerOptions {
  readonly otp: OtpService;
  readonly health: HealthState;
  readonly logger: Logger;
  /** Names the caller of a call; default "dev" for every call. */
  readonly identify?: IdentifyCaller | undefined;
  /** The W3C trace id of a call; default "". */
  readonly traceIdOf?: TraceIdOf | undefined;
  /** The id of a call's span (kept in its delivery record); default none. */
  readonly spanIdOf?: SpanIdOf | undefined;
  /** Told of each OtpEmailService call refused before it reached `otp` (for the metrics); default nobody. */
  readonly onRefused?: OnRefused | undefined;
  /** Default: insecure (plaintext HTTP/2). */
  readonly credentials?: ServerCredentials | undefined;
  /** Run around every call, in order (authentication, metrics...). */
  readonly interceptors?: readonly ServerInterceptor[] | undefined;
  /** Most calls in progress at once on one connection; default `defaultMaxConcurrentStreams`. */
  readonly maxConcurrentStreams?: number | undefined;
  /**
   * Told of each call grpc-js answers before any interceptor runs (so the
   * metrics interceptor never sees it): a method this server does not serve,
   * or a request that is not gRPC at all. Default: nobody.
   */
  readonly onUnrouted?: OnUnrouted | undefined;
  /**
   * Told of each TLS connection once its handshake is done, before any call
   * on it: whether its client certificate verified, and why not
   * (`authorized`, `authorizationError`), which grpc-js does not tell calls.
   * Default: nobody.
   */
  readonly onSecureConnection?: ((socket: TLSSocket) => void) | undefined;
}

/**
 * Why a call was refused before routing. `unimplemented`: no such method
 * (UNIMPLEMENTED, what a caller built against another contract gets).
 * `not_grpc`: a content-type other than application/grpc (a browser, curl,
 * a Connect or JSON client), answered HTTP 415 with no gRPC status. The path
 * is not passed on: it is whatever the caller sent.
 */
export type UnroutedRefusal = "unimplemented" | "not_grpc";
export type OnUnrouted = (refusal: UnroutedRefusal) => void;

export interface GrpcServer {
  /**
   * Binds `host:port` (port 0 picks a free one) and starts serving.
   * Resolves with the host as given and the port actually bound.
   */
  listen(address: string): Promise<{ host: string; port: number }>;
  /**
   * Stops: health turns NOT_SERVING and Watch streams end, new calls are
   * refused, calls in flight may finish for `graceMs`, then the rest are
   * cancelled. Resolves when every connection is closed. Later calls return
   * the first call's promise.
   */
  shutdown(graceMs: number): Promise<void>;
  /** The underlying grpc-js server, for what this wrapper does not cover. */
  readonly server: Server;
  /** Every method served (OtpEmailService, health, reflection), for the metrics to start at 0. */
  readonly methods: readonly RpcMethod[];
}

/** Creates the gRPC server with every service registered. */
export function createGrpcServer(options: GrpcServerOptions): GrpcServer {
  const { logger } = options;
  const credentials = options.credentials ?? ServerCredentials.createInsecure();
  const server = new Server({
    ...serverOptions,
    "grpc.max_concurrent_streams": options.maxConcurrentStreams ?? defaultMaxConcurrentStreams,
    interceptors: [...(options.interceptors ?? [])],
  });

  // Every method registered, as each service is added.
  const methods: RpcMethod[] = [];
  const registry: Pick<Server, "addService"> = {
    addService(definition, implementation) {
      for (const method of Object.values(definition)) {
        methods.push({ path: method.path, requestStream: method.requestStream, responseStream: method.responseStream });
      }
      server.addService(definition, implementation);
    },
  };
  if (options.onUnrouted !== undefined) watchUnroutedCalls(server, options.onUnrouted, logger);
  if (options.onSecureConnection !== undefined) watchSecureConnections(server, options.onSecureConnection, logger);

  const otp = bindService(
    OtpEmailService,
    createOtpHandlers({
      otp: options.otp,
      identify: options.identify,
      traceIdOf: options.traceIdOf,
      spanIdOf: options.spanIdOf,
      onRefused: options.onRefused,
    }),
    {
      logger,
      // Only OtpEmailService's handlers are bound here: its local method names are OtpMethod's.
      onMalformed: (method, error) => options.onRefused?.(method as OtpMethod, "", error),
    },
  );
  registry.addService(otp.definition, otp.implementation);

  const healthService = createHealthService({ health: options.health });
  const health = bindService(Health, healthService.impl, { logger });
  registry.addService(health.definition, health.implementation);

  addReflection(registry, {
    files: [
      file_otp_v1_otp_email,
      file_health_v1_health,
      file_grpc_reflection_v1_reflection,
      file_grpc_reflection_v1alpha_reflection,
      // The error details every error carries (grpc-status-details-bin): without their descriptors,
      // grpcurl and buf curl show them as opaque bytes.
      file_google_rpc_status,
      file_google_rpc_error_details,
    ],
  });

  let shuttingDown: Promise<void> | undefined;

  return {
    server,
    methods,

    listen(address) {
      const host = hostOf(address);
      return new Promise((resolve, reject) => {
        server.bindAsync(address, credentials, (error, port) => {
          if (error) {
            reject(error);
            return;
          }
          logger.info({ address: hostPort(host, port) }, "gRPC server listening");
          resolve({ host, port });
        });
      });
    },

    shutdown(graceMs) {
      shuttingDown ??= new Promise<void>((resolve) => {
        healthService.close();
        const force = setTimeout(() => {
          logger.warn({ grace_ms: graceMs }, "calls still running after the grace period; cancelling them");
          server.forceShutdown();
        }, graceMs);
        server.tryShutdown((error) => {
          clearTimeout(force);
          if (error) logger.warn({ err: error }, "gRPC server shutdown reported an error");
          resolve();
        });
      });
      return shuttingDown;
    },
  };
}

/** The two steps of grpc-js's routing of a new stream, which its typings keep private. */
interface GrpcJsRouting {
  _verifyContentType: (this: unknown, stream: unknown, headers: IncomingHttpHeaders) => boolean;
  _retrieveHandler: (this: unknown, path: string) => unknown;
}

/**
 * Tells `onUnrouted` of the calls grpc-js refuses while routing a stream:
 * it answers them (HTTP 415, or UNIMPLEMENTED) before building the call
 * that interceptors see, and offers no hook for them. Its two routing steps
 * are wrapped on this instance; a grpc-js without them (a future version)
 * is logged and leaves those calls uncounted, as they were.
 */
function watchUnroutedCalls(server: Server, onUnrouted: OnUnrouted, logger: Logger): void {
  const routing = server as unknown as Partial<GrpcJsRouting>;
  const verifyContentType = routing._verifyContentType;
  const retrieveHandler = routing._retrieveHandler;
  if (typeof verifyContentType !== "function" || typeof retrieveHandler !== "function") {
    logger.warn("this grpc-js routes calls differently: calls to unknown methods and non-gRPC requests are not counted in the metrics");
    return;
  }
  routing._verifyContentType = function (stream, headers) {
    const grpc = verifyContentType.call(this, stream, headers);
    if (!grpc) onUnrouted("not_grpc");
    return grpc;
  };
  routing._retrieveHandler = function (path) {
    const handler = retrieveHandler.call(this, path);
    // grpc-js's "no handler" is null.
    if (handler === null || handler === undefined) onUnrouted("unimplemented");
    return handler;
  };
}

/** The step of grpc-js's binding that is given each HTTP/2 server it makes, which its typings keep private. */
interface GrpcJsServerSetup {
  _setupHandlers: (this: unknown, http2Server: unknown, ...rest: unknown[]) => void;
}

/**
 * Tells `onSecureConnection` of each TLS connection: grpc-js makes its
 * HTTP/2 servers inside `bindAsync` and offers no hook for their
 * connections, but hands each to its handler setup, wrapped here on this
 * instance (before any bind, so no connection is missed). A grpc-js
 * without that step (a future version) is logged, and calls refused for
 * an unverified certificate are told only that it counts as none: the
 * mTLS tests (callers-and-limits, client-crl) then fail on the message.
 */
function watchSecureConnections(server: Server, onSecureConnection: (socket: TLSSocket) => void, logger: Logger): void {
  const setup = server as unknown as Partial<GrpcJsServerSetup>;
  const setupHandlers = setup._setupHandlers;
  if (typeof setupHandlers !== "function") {
    logger.warn("this grpc-js sets up its servers differently: a call refused for a client certificate that did not verify is not told why, nor is the log");
    return;
  }
  setup._setupHandlers = function (http2Server, ...rest) {
    // An Http2SecureServer is a tls.Server; a plaintext one has no TLS connections.
    if (http2Server instanceof TlsServer) http2Server.on("secureConnection", onSecureConnection);
    setupHandlers.call(this, http2Server, ...rest);
  };
}

/** `127.0.0.1:0` -> `127.0.0.1`; `[::1]:0` -> `::1`. */
function hostOf(address: string): string {
  const colon = address.lastIndexOf(":");
  const host = colon === -1 ? address : address.slice(0, colon);
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}
