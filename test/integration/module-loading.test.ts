/**
 * What a production process loads: the compiled service started as `npm
 * start` starts it (tracing bootstrap included), in production mode with a
 * relay and no bounce intake, must not carry the modules of modes it does not
 * run. smtp-server, mailparser and mailauth stay out of the main thread; the
 * start-up doctor still runs (in a worker thread) and logs its summary. With
 * traces exported, only the trace SDK is loaded: not sdk-node with every
 * exporter, nor the metrics and logs SDKs.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { freePort } from "../support/ports.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { startSmtpSink } from "../support/smtp-sink.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const recorder = fileURLToPath(new URL("../support/record-modules.mjs", import.meta.url));

describe("a production process with a relay and no bounce intake", () => {
  it("loads neither the capture sink, the bounce intake nor the doctor's checks, yet logs the start-up checks", async () => {
    const sink = await startSmtpSink();
    const dir = await mkdtemp(join(tmpdir(), "otp-modules-"));
    const modulesFile = join(dir, "modules.txt");
    const child = spawn(
      process.execPath,
      ["--import", recorder, "--import", "./dist/src/telemetry/bootstrap.js", "dist/src/main.js"],
      {
        cwd: root,
        env: {
          PATH: process.env["PATH"] ?? "",
          RECORD_MODULES_TO: modulesFile,
          NODE_ENV: "production",
          GRPC_ADDR: `127.0.0.1:${await freePort()}`,
          METRICS_ADDR: `127.0.0.1:${await freePort()}`,
          REDIS_URL: redisUrlForTests(),
          REDIS_PREFIX: randomPrefix(),
          SMTP_URL: sink.url,
          OTP_SECRET: "module-loading-test-secret-0123456789",
          MAIL_FROM: '"Example" <no-reply@example.com>',
          AUTH_TOKENS: `tester:${"0".repeat(64)}`,
          // The start-up checks stay on this machine: no DNSBL, DNS where nothing answers.
          DNSBL_ZONES: "none",
          DNS_SERVERS: `127.0.0.1:${await freePort()}`,
          DOCTOR_TIMEOUT: "500ms",
          // Traces exported (nowhere: no call is made, so nothing is sent).
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await freePort()}`,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    try {
      await expect
        .poll(() => /"msg":"sender-domain checks done/.test(output), { timeout: 20_000, interval: 100 })
        .toBe(true);
      child.kill("SIGTERM");
      expect(await exited).toBe(0);

      const modules = (await readFile(modulesFile, "utf8")).split("\n");
      const loaded = (pattern: RegExp): string[] => modules.filter((url) => pattern.test(url));
      // The recorder works: the relay's client and the service's wiring are there.
      expect(loaded(/\/node_modules\/nodemailer\//).length).toBeGreaterThan(0);
      expect(loaded(/\/dist\/src\/app\.js$/)).toHaveLength(1);
      // What this configuration does not run is not loaded.
      expect(loaded(/\/node_modules\/(smtp-server|mailparser|mailauth)\//)).toEqual([]);
      // The trace SDK, and none of what a traced process does not use.
      expect(loaded(/\/node_modules\/@opentelemetry\/sdk-trace\//).length).toBeGreaterThan(0);
      expect(loaded(/\/node_modules\/@opentelemetry\/(sdk-node|sdk-metrics|sdk-logs|otlp-transformer|instrumentation|exporter-[^/]+)\//)).toEqual([]);
      expect(loaded(/\/dist\/src\/(bounce\/intake-server|bounce\/bounce-processor|bounce\/dsn|delivery\/capture-sink|delivery\/dkim|doctor\/doctor)\.js$/)).toEqual([]);
    } finally {
      child.kill("SIGKILL");
      await sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
