/**
 * The load generator, a child process of the orchestrator. It runs one job at
 * a time: gRPC calls through a grpc-js client built from the same
 * ServiceDefinition the server uses, or SMTP sends through nodemailer straight
 * to the sink. Fixed concurrency, a warm-up, then a measured period; every run
 * is bounded in count and in time.
 */
import { randomBytes, randomInt } from "node:crypto";
import { performance } from "node:perf_hooks";
import { create, toBinary, type DescMessage } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  DeliveryState,
  GetDeliveryStatusRequestSchema,
  OtpEmailService,
  Purpose,
  SendOtpRequestSchema,
  VerifyOtpRequestSchema,
  VerifyResult,
  type GetDeliveryStatusResponse,
  type SendOtpResponse,
  type VerifyOtpResponse,
} from "../gen/otp/v1/otp_email_pb.js";
import { serviceDefinition } from "../src/rpc/service-adapter.js";
import { onParentCommand, sendToParent } from "./ipc.js";
import { benchRecipient, createBenchSmtpSender, newSenderRunId } from "./smtp-sender.js";
import type {
  GrpcJob,
  Job,
  LatencySummary,
  LoadBounds,
  LoadgenCommand,
  LoadgenEvent,
  RpcMethod,
  RunResult,
  SmtpJob,
  VerifyItem,
} from "./protocol.js";

/** What one request came to. */
type Outcome =
  | { readonly ok: true; readonly unexpected?: string }
  | { readonly ok: false; readonly code: string; readonly message: string };

const emit = (event: LoadgenEvent): void => sendToParent(event);

/**
 * Runs `issue` over indexes 0.. with `concurrency` workers: `warmup`
 * requests unmeasured, and for at least `warmupMinMs` (or fewer, when they
 * take longer than a third of `maxMs`: a slow scenario still gets measured), then up to `count`
 * measured, never issuing more than `maxMs` after measuring began.
 * Measured latencies are kept whole for exact percentiles.
 */
async function drive(
  bounds: LoadBounds,
  milestones: readonly number[],
  issue: (index: number) => Promise<Outcome>,
): Promise<Omit<RunResult, "messageIds" | "verifyItems" | "sampleResponse">> {
  const latencies = new Float64Array(bounds.count);
  const errors: Record<string, number> = {};
  const unexpected: Record<string, number> = {};
  const pendingMilestones = [...milestones].sort((a, b) => a - b);
  let errorSample: string | undefined;
  let next = 0;
  let measured = 0;
  let ok = 0;
  let totalCompleted = 0;
  let measureStart: number | undefined;
  let measureEnd = 0;
  let stoppedBy: "count" | "time" = "count";
  const warmupStart = performance.now();
  const warmupDeadline = warmupStart + bounds.maxMs / 3;
  const warmupUntil = warmupStart + Math.min(bounds.warmupMinMs ?? 0, bounds.maxMs / 3);
  /** Index of the first measured request, once known. */
  let firstMeasured: number | undefined;
  let deadline = Infinity;

  async function worker(): Promise<void> {
    for (;;) {
      const started = performance.now();
      if (firstMeasured === undefined && ((next >= bounds.warmup && started >= warmupUntil) || started >= warmupDeadline)) {
        firstMeasured = next;
        measureStart = started;
        deadline = started + bounds.maxMs;
        emit({ type: "measuring" });
      }
      if (firstMeasured !== undefined && next >= firstMeasured + bounds.count) return;
      if (started >= deadline) {
        stoppedBy = "time";
        return;
      }
      const index = next++;
      const outcome = await issue(index);
      const finished = performance.now();
      totalCompleted++;
      while (pendingMilestones.length > 0 && totalCompleted >= (pendingMilestones[0] ?? Infinity)) {
        emit({ type: "milestone", completed: pendingMilestones.shift() ?? totalCompleted });
      }
      if (firstMeasured === undefined || index < firstMeasured) continue;
      latencies[measured++] = finished - started;
      measureEnd = finished;
      if (!outcome.ok) {
        errors[outcome.code] = (errors[outcome.code] ?? 0) + 1;
        errorSample ??= `${outcome.code}: ${outcome.message}`;
      } else if (outcome.unexpected !== undefined) {
        unexpected[outcome.unexpected] = (unexpected[outcome.unexpected] ?? 0) + 1;
      } else {
        ok++;
      }
    }
  }

  await Promise.all(Array.from({ length: bounds.concurrency }, () => worker()));
  const windowMs = measureStart === undefined ? 0 : measureEnd - measureStart;
  return {
    measured,
    ok,
    errors,
    unexpected,
    errorSample,
    windowMs,
    throughput: windowMs > 0 ? (measured / windowMs) * 1000 : 0,
    latencyMs: summarize(latencies.subarray(0, measured)),
    stoppedBy,
    totalCompleted,
  };
}

/** Exact percentiles (nearest rank) of the measured latencies. */
function summarize(values: Float64Array): LatencySummary {
  if (values.length === 0) return { p50: 0, p90: 0, p99: 0, max: 0, mean: 0 };
  const sorted = Float64Array.from(values).sort();
  const rank = (q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
  let sum = 0;
  for (const value of sorted) sum += value;
  return { p50: rank(0.5), p90: rank(0.9), p99: rank(0.99), max: sorted[sorted.length - 1] ?? 0, mean: sum / sorted.length };
}

// ---------------------------------------------------------------------------
// gRPC

const definition = serviceDefinition(OtpEmailService);
const outputs: Readonly<Record<RpcMethod, DescMessage>> = {
  SendOtp: OtpEmailService.method.sendOtp.output,
  GetDeliveryStatus: OtpEmailService.method.getDeliveryStatus.output,
  VerifyOtp: OtpEmailService.method.verifyOtp.output,
};

async function runGrpc(job: GrpcJob): Promise<RunResult> {
  const Client = grpc.makeGenericClientConstructor(definition, "OtpEmailService");
  // No channelz: the load generator's own bookkeeping would only add to every row's cost.
  const client = new Client(job.address, grpc.credentials.createInsecure(), { "grpc.enable_channelz": 0 });
  const method = definition[job.method];
  if (method === undefined) throw new Error(`no method ${job.method}`);
  const metadata = new grpc.Metadata();
  if (job.token !== undefined) metadata.set("authorization", `Bearer ${job.token}`);

  // A caller's span per request: a new trace id and span id, sampled.
  const callMetadata = (): grpc.Metadata => {
    if (!job.callerTraceparent) return metadata;
    const ids = randomBytes(24).toString("hex");
    const traced = metadata.clone();
    traced.set("traceparent", `00-${ids.slice(0, 32)}-${ids.slice(32)}-01`);
    return traced;
  };

  const call = (request: unknown): Promise<unknown> =>
    new Promise((resolve, reject) => {
      client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        request,
        callMetadata(),
        { deadline: Date.now() + 30_000 },
        (error, value) => (error ? reject(error) : resolve(value)),
      );
    });

  const messageIds: string[] = [];
  const verifyItems: VerifyItem[] = [];
  let sample: unknown;
  const { plan } = job;

  const request = (index: number): { message: unknown; item?: VerifyItem } => {
    switch (plan.kind) {
      case "send": {
        const recipient = benchRecipient(plan.runId, index);
        const code = plan.withCodes ? String(randomInt(1_000_000)).padStart(6, "0") : "";
        return {
          message: create(SendOtpRequestSchema, { recipient, purpose: Purpose.LOGIN, locale: "en", code }),
          item: { recipient, code },
        };
      }
      case "status":
        return { message: create(GetDeliveryStatusRequestSchema, { messageId: plan.messageIds[index % plan.messageIds.length] ?? "" }) };
      case "verify": {
        const item = plan.items[index];
        if (item === undefined) throw new Error(`verify plan has no item ${index}`);
        return { message: create(VerifyOtpRequestSchema, { recipient: item.recipient, purpose: Purpose.LOGIN, code: item.code }) };
      }
    }
  };

  const judge = (response: unknown, item: VerifyItem | undefined): string | undefined => {
    switch (job.method) {
      case "SendOtp": {
        const sent = response as SendOtpResponse;
        if (sent.state !== DeliveryState.ACCEPTED) return `state:${DeliveryState[sent.state]}`;
        if (job.collect) {
          messageIds.push(sent.messageId);
          if (item !== undefined && item.code !== "") verifyItems.push(item);
        }
        return undefined;
      }
      case "GetDeliveryStatus": {
        const state = (response as GetDeliveryStatusResponse).state;
        return state === DeliveryState.ACCEPTED ? undefined : `state:${DeliveryState[state]}`;
      }
      case "VerifyOtp": {
        const result = (response as VerifyOtpResponse).result;
        return result === VerifyResult.VERIFIED ? undefined : `result:${VerifyResult[result]}`;
      }
    }
  };

  try {
    const result = await drive(job, job.milestones, async (index) => {
      const { message, item } = request(index);
      try {
        const response = await call(message);
        const unexpected = judge(response, item);
        if (unexpected === undefined) sample = response;
        return unexpected === undefined ? { ok: true } : { ok: true, unexpected };
      } catch (error) {
        const status = (error as grpc.ServiceError).code;
        const code = typeof status === "number" ? (grpc.status[status] ?? String(status)) : "ERROR";
        return { ok: false, code, message: (error as Error).message };
      }
    });
    const sampleResponse =
      sample === undefined ? undefined : Buffer.from(toBinary(outputs[job.method], sample as never)).toString("base64");
    return { ...result, messageIds, verifyItems, sampleResponse };
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------
// SMTP

async function runSmtp(job: SmtpJob): Promise<RunResult> {
  const sender = createBenchSmtpSender(job);
  const runId = newSenderRunId();
  try {
    const result = await drive(job, [], (index) => sender.send(benchRecipient(runId, index)));
    return { ...result, messageIds: [], verifyItems: [], sampleResponse: undefined };
  } finally {
    sender.close();
  }
}

function run(job: Job): Promise<RunResult> {
  return job.kind === "grpc" ? runGrpc(job) : runSmtp(job);
}

onParentCommand<LoadgenCommand>((command) => {
  if (command.type === "exit") process.exit(0);
  run(command.job).then(
    (result) => emit({ type: "done", result }),
    (error: unknown) => emit({ type: "failed", message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
  );
});
emit({ type: "ready" });
