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

/** `/otp.v1.OtpEmailService/SendOtp` -> `otp.v1.OtpEmailService`, `SendOtp`. */
function splitPath(path: string): { service: string; method: string } {
  const slash = path.lastIndexOf("/");
  return { service: path.slice(1, slash), method: path.slice(slash + 1) };
}

/** The interceptor; pass it first so it also times and counts what later interceptors refuse. */
export function createGrpcMetricsInterceptor(metrics: Pick<Metrics, "grpc">): ServerInterceptor {
  const { grpc } = metrics;
  return (method, call) => {
    const { service, method: name } = splitPath(method.path);
    const labels = { grpc_type: grpcType(method.requestStream, method.responseStream), grpc_service: service, grpc_method: name };
    const startedAt = performance.now();
    grpc.started.inc(labels);

    let finished = false;
    const finish = (code: number): void => {
      if (finished) return;
      finished = true;
      grpc.handled.inc({ ...labels, grpc_code: grpcCodeName(code) });
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
