/**
 * The /metrics endpoint: a plain HTTP server on its own address
 * (METRICS_ADDR), separate from gRPC so scrapes never compete with calls and
 * the port can stay private. Text format unless the scraper asks for
 * OpenMetrics (see negotiateFormat).
 *
 * With the instance's health, it also answers an orchestrator's HTTP probes,
 * which cost it a request where a probe command costs a process:
 *   /readyz  200 while the instance serves (what grpc.health.v1 says), else
 *            503 naming each component that is down and why;
 *   /livez   200 whenever the process answers at all: restarting a process
 *            whose Redis is down would not bring Redis back.
 */
import { createServer, type ServerResponse, type Server } from "node:http";
import type { HealthState } from "../health.js";
import { hostPort } from "../host-port.js";
import type { Logger } from "../logger.js";
import { contentTypes, negotiateFormat, type Metrics } from "./metrics.js";

export interface MetricsServerOptions {
  readonly metrics: Pick<Metrics, "render">;
  /** `host:port`; port 0 picks a free one. */
  readonly address: string;
  readonly logger: Logger;
  /** When the port is taken, listen on a free one instead of failing (for the default address outside production). */
  readonly fallbackToFreePort?: boolean;
  /** The instance's health, for /readyz and /livez; without it those paths are not served. */
  readonly health?: Pick<HealthState, "isServing" | "components">;
}

export interface MetricsServer {
  /** Where it listens (the port actually bound). */
  readonly address: { readonly host: string; readonly port: number };
  /** The URL of the endpoint, `http://host:port/metrics`. */
  readonly url: string;
  close(): Promise<void>;
}

/** Starts serving GET /metrics; rejects when the address cannot be bound. */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { metrics, logger } = options;
  const { host, port } = splitHostPort(options.address);

  const { health } = options;
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    const probe = health !== undefined && (path === "/readyz" || path === "/livez");
    if (path !== "/metrics" && !probe) {
      const served = health === undefined ? "the metrics are at /metrics" : "the metrics are at /metrics, the probes at /readyz and /livez";
      response.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end(`not found: ${served}\n`);
      return;
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" }).end("use GET\n");
      return;
    }
    if (probe) {
      if (path === "/livez") plain(response, 200, "alive\n", request.method === "HEAD");
      else plain(response, health.isServing() ? 200 : 503, readiness(health), request.method === "HEAD");
      return;
    }
    const format = negotiateFormat(request.headers.accept);
    metrics.render(format).then(
      (body) => {
        response.writeHead(200, { "content-type": contentTypes[format], "cache-control": "no-store" });
        response.end(request.method === "HEAD" ? undefined : body);
      },
      (error: unknown) => {
        logger.error({ err: error }, "could not render metrics");
        response.writeHead(500, { "content-type": "text/plain; charset=utf-8" }).end("could not render metrics\n");
      },
    );
  });
  // Scrapers keep connections alive; shutdown must not wait for them.
  server.keepAliveTimeout = 65_000;

  const listen = (onPort: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(onPort, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  try {
    await listen(port);
  } catch (error) {
    if (!(options.fallbackToFreePort === true && (error as NodeJS.ErrnoException).code === "EADDRINUSE")) throw error;
    logger.warn({ address: options.address }, "the metrics port is taken (another instance?): serving /metrics on a free port instead");
    await listen(0);
  }
  const bound = server.address();
  const boundPort = typeof bound === "object" && bound !== null ? bound.port : port;
  const url = `http://${hostPort(host, boundPort)}/metrics`;
  logger.info({ address: hostPort(host, boundPort) }, "metrics listening");

  let closing: Promise<void> | undefined;
  return {
    address: { host, port: boundPort },
    url,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

function plain(response: ServerResponse, status: number, body: string, head: boolean): void {
  response.writeHead(status, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
  response.end(head ? undefined : body);
}

/** `SERVING`, or `NOT_SERVING` and a line per component that is down: `storage: down (storage is unreachable)`. */
function readiness(health: Pick<HealthState, "isServing" | "components">): string {
  if (health.isServing()) return "SERVING\n";
  const down = [...health.components()].filter(([, component]) => !component.up);
  return `NOT_SERVING\n${down.map(([name, component]) => `${name}: down${component.reason === "" ? "" : ` (${component.reason})`}\n`).join("")}`;
}

/** `127.0.0.1:9464` -> 127.0.0.1, 9464; `[::1]:9464` -> ::1, 9464. */
function splitHostPort(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(":");
  const rawHost = address.slice(0, colon);
  const host = rawHost.startsWith("[") && rawHost.endsWith("]") ? rawHost.slice(1, -1) : rawHost;
  const port = Number(address.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new Error(`metrics: address must be host:port, not ${address}`);
  }
  return { host, port };
}
