/**
 * The gRPC metrics interceptor keeps per-method tallies that reach the
 * counters when they are read. Status codes are bounded: past the bound a code
 * is counted straight into `grpc_server_handled_total`, so a handler making up
 * codes can neither grow the tallies without end nor lose a count. A real
 * grpc-js server on loopback with the interceptor, a Health service whose
 * handler answers the status code named in the request.
 */
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, type HealthCheckRequest } from "../../gen/health/v1/health_pb.js";
import { serviceDefinition } from "../../src/rpc/service-adapter.js";
import { createGrpcMetricsInterceptor } from "../../src/telemetry/grpc-metrics.js";
import { createMetrics, type Metrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { GrpcHealthClient, grpcError, grpcUnary } from "../support/grpc.js";

let server: grpc.Server;
let client: grpc.Client;
let metrics: Metrics;

beforeAll(async () => {
  metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
  server = new grpc.Server({ interceptors: [createGrpcMetricsInterceptor(metrics)] });
  server.addService(serviceDefinition(Health), {
    Check: (call: grpc.ServerUnaryCall<HealthCheckRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      callback({ code: Number(call.request.service), details: "made-up status" });
    },
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  client = new GrpcHealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
});

afterAll(() => {
  client.close();
  server.forceShutdown();
});

const check = { grpc_type: "unary", grpc_service: "grpc.health.v1.Health", grpc_method: "Check" };

async function handled(): Promise<Map<string, number>> {
  const metric = (await metrics.registry.getSingleMetric("grpc_server_handled_total")?.get())?.values ?? [];
  return new Map(
    metric.filter((value) => value.labels["grpc_method"] === check.grpc_method).map((value) => [String(value.labels["grpc_code"]), value.value]),
  );
}

describe("grpc metrics: status codes", () => {
  it("counts every call exactly, whatever codes a handler makes up, past the tallies' bound too", async () => {
    // Codes 1..60: 16 real ones and 44 made up, more than the 32 tallied per method; twice each.
    const codes = Array.from({ length: 60 }, (_, index) => index + 1);
    for (const round of [1, 2]) {
      for (const code of codes) {
        const error = await grpcError(grpcUnary(client, Health.method.check, { service: String(code) }));
        expect(error.code).toBe(code);
      }
      const counts = await handled();
      expect(counts.size).toBe(60);
      for (const [, count] of counts) expect(count).toBe(round);
    }
    const started = (await metrics.registry.getSingleMetric("grpc_server_started_total")?.get())?.values ?? [];
    expect(started.find((value) => value.labels["grpc_method"] === check.grpc_method)?.value).toBe(120);
  });
});

describe("grpc metrics: latency buckets", () => {
  /** The cumulative bucket counts of one method's histogram, by `le`. */
  async function buckets(registry: Metrics, method: string): Promise<Map<string, number>> {
    const values = (await registry.registry.getSingleMetric("grpc_server_handling_seconds")?.get())?.values ?? [];
    return new Map(
      values
        .filter((value) => value.labels["grpc_method"] === method && (value as { metricName?: string }).metricName?.endsWith("_bucket"))
        .map((value) => [String(value.labels["le"]), value.value]),
    );
  }

  it("tell a call of a fraction of a millisecond from one of 4 ms, and a SendOtp that waited a long SEND_WAIT_BUDGET from one of 10 s", async () => {
    const fresh = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const labels = { grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: "GetDeliveryStatus" };
    // A health check, a GetDeliveryStatus on loopback, a slower one, a 4 ms one; SendOtps answered after 20 s and 55 s.
    for (const seconds of [0.00008, 0.0003, 0.0008, 0.004, 20, 55]) fresh.grpc.handlingSeconds.observe({ labels, value: seconds });
    const counts = await buckets(fresh, "GetDeliveryStatus");
    expect(Object.fromEntries(counts)).toEqual({
      "0.0001": 1,
      "0.00025": 1,
      "0.0005": 2,
      "0.001": 3,
      "0.0025": 3,
      "0.005": 4,
      "0.01": 4,
      "0.025": 4,
      "0.05": 4,
      "0.1": 4,
      "0.25": 4,
      "0.5": 4,
      "1": 4,
      // OtpSendLatencyP99High's threshold is a boundary.
      "2.5": 4,
      "5": 4,
      "10": 4,
      "30": 5,
      "60": 6,
      "+Inf": 6,
    });
  });

  it("every call through the interceptor is one observation, in those buckets", async () => {
    const before = (await buckets(metrics, check.grpc_method)).get("+Inf") ?? 0;
    for (let i = 0; i < 3; i++) await grpcError(grpcUnary(client, Health.method.check, { service: "5" }));
    const after = await buckets(metrics, check.grpc_method);
    expect(after.get("+Inf")).toBe(before + 3);
    expect([...after.keys()].slice(0, 3)).toEqual(["0.0001", "0.00025", "0.0005"]);
  });
});
