/**
 * The messages the benchmark's processes exchange over their IPC channels:
 * jobs for the load generator and what it reports back. Plain JSON only.
 */

/** The three RPCs of otp.v1.OtpEmailService, by their proto names. */
export type RpcMethod = "SendOtp" | "GetDeliveryStatus" | "VerifyOtp";

/** Every load loop is bounded in count and in time. */
export interface LoadBounds {
  /** Requests kept in flight at once. */
  readonly concurrency: number;
  /** Requests sent first and not measured. */
  readonly warmup: number;
  /**
   * The warm-up also lasts at least this long (ms), however fast the requests:
   * a fresh process needs time, not only calls, before its JIT has settled.
   */
  readonly warmupMinMs?: number;
  /** Requests measured after the warm-up. */
  readonly count: number;
  /** The whole run, warm-up included, stops issuing requests after this long. */
  readonly maxMs: number;
}

/** A code the bench chose itself, so VerifyOtp can later verify it. */
export interface VerifyItem {
  readonly recipient: string;
  readonly code: string;
}

export type RequestPlan =
  /** SendOtp to a fresh recipient per request; with `withCodes` the bench chooses each code. */
  | { readonly kind: "send"; readonly runId: string; readonly withCodes: boolean }
  /** GetDeliveryStatus of these message ids, round robin. */
  | { readonly kind: "status"; readonly messageIds: readonly string[] }
  /** VerifyOtp of each item once, in order (the correct code: VERIFIED is expected). */
  | { readonly kind: "verify"; readonly items: readonly VerifyItem[] };

/** gRPC load against the service or the echo server. */
export interface GrpcJob extends LoadBounds {
  readonly kind: "grpc";
  /** `127.0.0.1:PORT`. */
  readonly address: string;
  readonly method: RpcMethod;
  readonly plan: RequestPlan;
  /** Completed-request counts (warm-up included) at which a `milestone` event is sent. */
  readonly milestones: readonly number[];
  /** Sent as `authorization: Bearer <token>` when set. */
  readonly token: string | undefined;
  /** Each request carries a fresh sampled W3C `traceparent`, as a traced caller's would (--caller-traceparent). */
  readonly callerTraceparent: boolean;
  /** Return the message ids (and verify items) of successful SendOtp calls. */
  readonly collect: boolean;
}

/** Where and how the bench's own sender sends: pooled (the ceiling) or a connection per message (naive). */
export interface SmtpTarget {
  readonly host: string;
  readonly port: number;
  readonly pooled: boolean;
  readonly poolSize: number;
  readonly maxMessagesPerConnection: number;
  /** The sink's certificate: STARTTLS is required and verified against it. Undefined: plaintext. */
  readonly tlsCa: string | undefined;
}

/** SMTP load straight at the sink: the ceiling (pooled) or the naive design (a connection per message). */
export interface SmtpJob extends LoadBounds, SmtpTarget {
  readonly kind: "smtp";
}

export type Job = GrpcJob | SmtpJob;

export interface LatencySummary {
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
}

export interface RunResult {
  /** Measured requests that completed (successfully or not). */
  readonly measured: number;
  /** Measured requests that succeeded with the expected answer. */
  readonly ok: number;
  /** Failures by gRPC status name (or error code), measured requests only. */
  readonly errors: Readonly<Record<string, number>>;
  /** Successful calls whose answer was not the expected one (`state:SENDING`...). */
  readonly unexpected: Readonly<Record<string, number>>;
  /** One error message, to say what went wrong. */
  readonly errorSample: string | undefined;
  /** From the first measured request issued to the last measured one answered. */
  readonly windowMs: number;
  /** Measured completions per second over the window. */
  readonly throughput: number;
  /** Milliseconds, measured requests only. */
  readonly latencyMs: LatencySummary;
  /** Why issuing stopped: the count was reached or the time ran out. */
  readonly stoppedBy: "count" | "time";
  readonly totalCompleted: number;
  readonly messageIds: readonly string[];
  readonly verifyItems: readonly VerifyItem[];
  /** The last successful response, protobuf binary in base64 (for the echo server's canned answers). */
  readonly sampleResponse: string | undefined;
}

/** Parent -> load generator. */
export type LoadgenCommand = { readonly type: "run"; readonly job: Job } | { readonly type: "exit" };

/** Load generator -> parent. */
export type LoadgenEvent =
  | { readonly type: "ready" }
  | { readonly type: "measuring" }
  | { readonly type: "milestone"; readonly completed: number }
  | { readonly type: "done"; readonly result: RunResult }
  | { readonly type: "failed"; readonly message: string };

/** Parent -> SMTP sink. `delay`: answer each message's final reply after `ms` (a relay queueing it). */
export type SinkCommand = { readonly type: "count" } | { readonly type: "delay"; readonly ms: number } | { readonly type: "exit" };

/** SMTP sink -> parent. */
export type SinkEvent =
  | { readonly type: "listening"; readonly port: number }
  | { readonly type: "delay-set"; readonly ms: number }
  | { readonly type: "count"; readonly accepted: number; readonly signed: number; readonly connections: number };

/**
 * Parent -> echo server: the canned responses, protobuf binary in base64, by
 * method; with `smtp`, SendOtp first sends the message there (the gRPC floor).
 */
export type EchoCommand =
  | { readonly type: "start"; readonly responses: Readonly<Partial<Record<RpcMethod, string>>>; readonly smtp?: SmtpTarget }
  | { readonly type: "exit" };

/** Echo server or OTLP receiver -> parent. */
export type ListeningEvent = { readonly type: "listening"; readonly port: number };

/** Parent -> OTLP receiver, and its answer. */
export type ReceiverCommand = { readonly type: "count" } | { readonly type: "exit" };
export type ReceiverEvent =
  | ListeningEvent
  | { readonly type: "count"; readonly requests: number; readonly bytes: number; readonly paths: Readonly<Record<string, number>> };
