/**
 * The handler context's AbortSignal (src/rpc/service-adapter.ts), made only
 * when a handler reads it: it still aborts when the client cancels or its
 * deadline passes, for a unary and a server-streaming handler, and a handler
 * that never reads it works as before. Over a real grpc-js server and client.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { OtpError } from "../../src/errors.js";
import { createLogger } from "../../src/logger.js";
import { bindService } from "../../src/rpc/service-adapter.js";

const servers: Server[] = [];
afterEach(() => {
  for (const server of servers.splice(0)) server.forceShutdown();
});

function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves when `signal` aborts (at once if it already has). */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

async function serve(impl: Parameters<typeof bindService<typeof Health>>[1]): Promise<string> {
  const server = new Server();
  servers.push(server);
  const bound = bindService(Health, impl, { logger: createLogger({ level: "silent" }) });
  server.addService(bound.definition, bound.implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return `http://127.0.0.1:${port}`;
}

describe("handler signal", () => {
  it("aborts a unary handler that reads it when the client's deadline passes", async () => {
    const sawAbort = deferred();
    const baseUrl = await serve({
      check: async (_request, context) => {
        await aborted(context.signal);
        sawAbort.resolve();
        return { status: ServingStatus.SERVING };
      },
      list: () => Promise.resolve({ statuses: {} }),
      watch: async () => {},
    });
    const client = createClient(Health, createGrpcTransport({ baseUrl }));
    const error = await client.check({ service: "" }, { timeoutMs: 100 }).then(
      () => undefined,
      (reason: unknown) => ConnectError.from(reason),
    );
    expect(error?.code).toBe(Code.DeadlineExceeded);
    await sawAbort.promise;
  });

  it("aborts a server-streaming handler when the client cancels", async () => {
    const sawAbort = deferred();
    const baseUrl = await serve({
      check: () => Promise.resolve({ status: ServingStatus.SERVING }),
      list: () => Promise.resolve({ statuses: {} }),
      watch: async (_request, context) => {
        context.send({ status: ServingStatus.SERVING });
        await aborted(context.signal);
        sawAbort.resolve();
      },
    });
    const client = createClient(Health, createGrpcTransport({ baseUrl }));
    const abort = new AbortController();
    try {
      for await (const response of client.watch({ service: "" }, { signal: abort.signal })) {
        expect(response.status).toBe(ServingStatus.SERVING);
        abort.abort();
      }
    } catch (error) {
      expect(ConnectError.from(error).code).toBe(Code.Canceled);
    }
    await sawAbort.promise;
  });

  it("ends the call with the mapped status when a handler throws before returning a promise", async () => {
    const baseUrl = await serve({
      check: () => {
        throw new OtpError("not_found", "no such service", { reason: "SERVICE_UNKNOWN" });
      },
      list: () => {
        throw new Error("a bug, not for the caller's eyes");
      },
      watch: async () => {},
    });
    const client = createClient(Health, createGrpcTransport({ baseUrl }));
    const notFound = ConnectError.from(await client.check({ service: "x" }).catch((error: unknown) => error));
    expect(notFound.code).toBe(Code.NotFound);
    expect(notFound.rawMessage).toBe("no such service");
    const internal = ConnectError.from(await client.list({}).catch((error: unknown) => error));
    expect(internal.code).toBe(Code.Internal);
    expect(internal.rawMessage).toBe("internal error");
  });

  it("answers a handler that never reads it, many times over", async () => {
    const baseUrl = await serve({
      check: () => Promise.resolve({ status: ServingStatus.SERVING }),
      list: () => Promise.resolve({ statuses: {} }),
      watch: async () => {},
    });
    const client = createClient(Health, createGrpcTransport({ baseUrl }));
    const answers = await Promise.all(Array.from({ length: 200 }, () => client.check({ service: "" })));
    expect(answers.every((answer) => answer.status === ServingStatus.SERVING)).toBe(true);
  });
});
