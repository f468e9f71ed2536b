/**
 * RPC metrics for every call the grpc-js server handles (OtpEmailService,
 * health, reflection), as a server interceptor, with the names and labels of
 * grpc-ecosystem's go-grpc-middleware Prometheus provider so existing
 * dashboards and alerts work unchanged:
 *
 *   grpc_server_started_total{grpc_type,grpc_service,grpc_method}
 *   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
 *   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}
 *   grpc_server_msg_received_total / grpc_server_msg_sent_total
 *
 * `grpc_code` is Go's spelling of the status (`OK`, `InvalidArgument`,
 * `ResourceExhausted`...), as those dashboards expect.
 *
 * Calls grpc-js refuses before any interceptor runs are counted too
 * (`countUnroutedCalls`), under one `unknown` method whatever the path: a
 * method not served, and a request that is not gRPC (HTTP 415).
 */
import { ServerInterceptingCall, status as Status, type ServerInterceptor } from "@grpc/grpc-js";
import type { OnUnrouted } from "../rpc/server.js";
import { observeWithTrace, type Metrics } from "./metrics.js";

/** grpc-go's `codes.Code.String()`, indexed by the numeric code. */
const goCodeNames = [
  "OK",
  "Canceled",
  "Unknown",
  "InvalidArgument",
  "DeadlineExceeded",
  "NotFound",
  "AlreadyExists",
  "PermissionDenied",
  "ResourceExhausted",
  "FailedPrecondition",
  "Aborted",
  "OutOfRange",
  "Unimplemented",
  "Internal",
  "Unavailable",
  "DataLoss",
  "Unauthenticated",
] as const;

/** `InvalidArgument` for 3; `Code(99)` for a number outside the set, as grpc-go prints it. */
export function grpcCodeName(code: number): string {
  return goCodeNames[code] ?? `Code(${code})`;
}

/** unary, client_stream, server_stream or bidi_stream. */
function grpcType(requestStream: boolean, responseStream: boolean): string {
  if (requestStream) return responseStream ? "bidi_stream" : "client_stream";
  return responseStream ? "server_stream" : "unary";
}

type RpcLabels = Readonly<Record<"grpc_type" | "grpc_service" | "grpc_method", string>>;
type HandledLabels = RpcLabels & Readonly<Record<"grpc_code", string>>;

/** A method the server serves, as grpc-js describes it. */
export interface RpcMethod {
  /** `/otp.v1.OtpEmailService/SendOtp` */
  readonly path: string;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
}

function rpcLabels(method: RpcMethod): RpcLabels {
  // `/otp.v1.OtpEmailService/SendOtp` -> `otp.v1.OtpEmailService`, `SendOtp`.
  const slash = method.path.lastIndexOf("/");
  return {
    grpc_type: grpcType(method.requestStream, method.responseStream),
    grpc_service: method.path.slice(1, slash),
    grpc_method: method.path.slice(slash + 1),
  };
}

/**
 * The labels of a call refused before routing: one series for all of them,
 * since the path is whatever the caller sent. A request that is not gRPC is
 * counted here even when it names a served method: that method's series add
 * up to what its handler answered (otp_sends_total's outcomes to SendOtp's).
 */
const unknownMethod: RpcLabels = { grpc_type: "unknown", grpc_service: "unknown", grpc_method: "unknown" };

/**
 * `grpc_code` of a request refused with HTTP 415 (not gRPC): it has no gRPC
 * status, and the gRPC spec's HTTP-to-status mapping makes a 415 UNKNOWN at
 * the client.
 */
const notGrpcCode = grpcCodeName(Status.UNKNOWN);

/**
 * Makes every series of `methods` at 0 (started, messages, handled for each
 * of the 17 codes, the latency histogram), as go-grpc-middleware's
 * InitializeMetrics does: a method's first call, or its first error of a
 * kind, is then an increase that rate() and increase() see, not the birth of
 * a series they miss.
 */
export function zeroGrpcSeries(metrics: Pick<Metrics, "grpc">, methods: readonly RpcMethod[]): void {
  const { grpc } = metrics;
  for (const method of methods) {
    const labels = rpcLabels(method);
    grpc.started.inc(labels, 0);
    grpc.msgReceived.inc(labels, 0);
    grpc.msgSent.inc(labels, 0);
    for (const code of goCodeNames) grpc.handled.inc({ ...labels, grpc_code: code }, 0);
    grpc.handlingSeconds.zero(labels);
  }
  // What countUnroutedCalls counts for an unknown method (never handled, so no messages or latency).
  grpc.started.inc(unknownMethod, 0);
  for (const code of [grpcCodeName(Status.UNIMPLEMENTED), notGrpcCode]) grpc.handled.inc({ ...unknownMethod, grpc_code: code }, 0);
}

/**
 * Counts the calls grpc-js refuses before any interceptor runs (the
 * server's `onUnrouted`) as started and handled under the `unknown` method:
 * a method not served as `Unimplemented`, a request that is not gRPC as
 * `Unknown`. So an operator sees callers built against another contract,
 * and browsers, curl or Connect clients pointed at the gRPC port.
 */
export function countUnroutedCalls(metrics: Pick<Metrics, "grpc">): OnUnrouted {
  const { grpc } = metrics;
  return (refusal) => {
    grpc.started.inc(unknownMethod);
    grpc.handled.inc({ ...unknownMethod, grpc_code: refusal === "not_grpc" ? notGrpcCode : grpcCodeName(Status.UNIMPLEMENTED) });
  };
}

/**
 * A method's label sets, worked out on its first call rather than on every
 * one, and its counts since the counters were last read. prom-client builds
 * and looks up a label hash string on every inc (four per call, ~3 % of what
 * a VerifyOtp allocated); here a call adds to plain numbers, which reach the
 * counters whenever they are read (`flushBeforeRead`), so every scrape and
 * every `get()` sees exactly the counts it would have.
 */
class MethodSeries {
  readonly labels: RpcLabels;
  started = 0;
  received = 0;
  sent = 0;
  private readonly handled = new Map<number, { readonly labels: HandledLabels; count: number }>();

  constructor(path: string, requestStream: boolean, responseStream: boolean) {
    this.labels = rpcLabels({ path, requestStream, responseStream });
  }

  /** One call ended with `code`; a code past the bound goes straight into the counter. */
  countHandled(code: number, grpc: Metrics["grpc"]): void {
    let series = this.handled.get(code);
    if (series === undefined) {
      const labels = { ...this.labels, grpc_code: grpcCodeName(code) };
      if (this.handled.size >= maxTalliedCodes) {
        grpc.handled.inc(labels);
        return;
      }
      series = { labels, count: 0 };
      this.handled.set(code, series);
    }
    series.count += 1;
  }

  /** Adds the counts since the last flush to the counters. */
  flush(grpc: Metrics["grpc"]): void {
    if (this.started > 0) grpc.started.inc(this.labels, this.started);
    if (this.received > 0) grpc.msgReceived.inc(this.labels, this.received);
    if (this.sent > 0) grpc.msgSent.inc(this.labels, this.sent);
    this.started = this.received = this.sent = 0;
    for (const series of this.handled.values()) {
      if (series.count > 0) grpc.handled.inc(series.labels, series.count);
      series.count = 0;
    }
  }
}

/**
 * grpc-js calls interceptors only for the server's registered methods; the
 * bound is a guard all the same: a method past it is counted straight into
 * the counters.
 */
const maxTalliedMethods = 256;
/** 17 codes exist; anything a handler makes up beyond this many is counted but not tallied. */
const maxTalliedCodes = 32;

/** The interceptor; pass it first so it also times and counts what later interceptors refuse. */
export function createGrpcMetricsInterceptor(metrics: Pick<Metrics, "grpc">): ServerInterceptor {
  const { grpc } = metrics;
  const methods = new Map<string, MethodSeries>();
  grpc.flushBeforeRead(() => {
    for (const series of methods.values()) series.flush(grpc);
  });
  return (method, call) => {
    let series = methods.get(method.path);
    let tallied = true;
    if (series === undefined) {
      series = new MethodSeries(method.path, method.requestStream, method.responseStream);
      if (methods.size < maxTalliedMethods) methods.set(method.path, series);
      else tallied = false;
    }
    const counted = series;
    const { labels } = counted;
    // Counted now for a method past the bound, at the next read otherwise.
    const flushUntallied = (): void => {
      if (!tallied) counted.flush(grpc);
    };
    const startedAt = performance.now();
    counted.started += 1;
    flushUntallied();

    let finished = false;
    const finish = (code: number): void => {
      if (finished) return;
      finished = true;
      counted.countHandled(code, grpc);
      flushUntallied();
      // In the handler's context: the exemplar is the server span's trace.
      observeWithTrace(grpc.handlingSeconds, labels, (performance.now() - startedAt) / 1000);
    };

    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMessage(message, nextMessage) {
            counted.received += 1;
            flushUntallied();
            nextMessage(message);
          },
          onCancel() {
            // No status will follow: the client went away or the deadline passed.
            const deadline = call.getDeadline();
            const expired = deadline !== Infinity && new Date(deadline).getTime() <= Date.now();
            finish(expired ? Status.DEADLINE_EXCEEDED : Status.CANCELLED);
          },
        });
      },
      sendMessage(message, next) {
        counted.sent += 1;
        flushUntallied();
        next(message);
      },
      sendStatus(status, next) {
        finish(status.code);
        next(status);
      },
    });
  };
}
