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
 */
import { ServerInterceptingCall, status as Status, type ServerInterceptor } from "@grpc/grpc-js";
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

/** A method's label sets, worked out on its first call rather than on every one. */
class MethodSeries {
  readonly labels: RpcLabels;
  private readonly handled = new Map<number, HandledLabels>();

  constructor(path: string, requestStream: boolean, responseStream: boolean) {
    // `/otp.v1.OtpEmailService/SendOtp` -> `otp.v1.OtpEmailService`, `SendOtp`.
    const slash = path.lastIndexOf("/");
    this.labels = {
      grpc_type: grpcType(requestStream, responseStream),
      grpc_service: path.slice(1, slash),
      grpc_method: path.slice(slash + 1),
    };
  }

  /** The labels of `grpc_server_handled_total` for a status code (one object per code seen). */
  handledLabels(code: number): HandledLabels {
    let labels = this.handled.get(code);
    if (labels === undefined) {
      labels = { ...this.labels, grpc_code: grpcCodeName(code) };
      if (this.handled.size < maxCachedCodes) this.handled.set(code, labels);
    }
    return labels;
  }
}

/** grpc-js calls interceptors only for the server's registered methods; the bounds are a guard all the same. */
const maxCachedMethods = 256;
/** 17 codes exist; anything a handler makes up beyond them is labelled but not kept. */
const maxCachedCodes = 32;

/** The interceptor; pass it first so it also times and counts what later interceptors refuse. */
export function createGrpcMetricsInterceptor(metrics: Pick<Metrics, "grpc">): ServerInterceptor {
  const { grpc } = metrics;
  const methods = new Map<string, MethodSeries>();
  return (method, call) => {
    let series = methods.get(method.path);
    if (series === undefined) {
      series = new MethodSeries(method.path, method.requestStream, method.responseStream);
      if (methods.size < maxCachedMethods) methods.set(method.path, series);
    }
    const { labels } = series;
    const startedAt = performance.now();
    grpc.started.inc(labels);

    let finished = false;
    const finish = (code: number): void => {
      if (finished) return;
      finished = true;
      grpc.handled.inc(series.handledLabels(code));
      // In the handler's context: the exemplar is the server span's trace.
      observeWithTrace(grpc.handlingSeconds, labels, (performance.now() - startedAt) / 1000);
    };

    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMessage(message, nextMessage) {
            grpc.msgReceived.inc(labels);
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
        grpc.msgSent.inc(labels);
        next(message);
      },
      sendStatus(status, next) {
        finish(status.code);
        next(status);
      },
    });
  };
}
