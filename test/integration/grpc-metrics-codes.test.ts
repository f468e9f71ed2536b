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
