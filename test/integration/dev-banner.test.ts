/**
 * The commands `npm start` prints for a developer to try the service: the
 * compiled service as a separate process with nothing configured (as `npm
 * start` runs it), and the `buf curl` line run by a shell exactly as the
 * terminal shows it, over a real socket. (grpcurl is not installed here;
 * buf curl stands in, as in the README.)
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../support/ports.js";
import { killServiceProcesses, startServiceProcess, type ServiceProcess } from "../support/service-process.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const outboxes: string[] = [];

afterEach(async () => {
  killServiceProcesses();
  await Promise.all(outboxes.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A zero-config service (only its address and outbox chosen, so that tests can run side by side), once it listens. */
async function startZeroConfig(grpcAddr: (port: number) => string): Promise<ServiceProcess> {
  const outbox = await mkdtemp(join(tmpdir(), "otp-banner-"));
  outboxes.push(outbox);
  const service = startServiceProcess({ GRPC_ADDR: grpcAddr(await freePort()), OUTBOX_DIR: outbox, METRICS_ADDR: "off", BOUNCE_SMTP_ADDR: "off" });
  await service.waitForLine((line) => /DEVELOPMENT MODE/.test(String(line["msg"])));
  return service;
}

/** The line of the service's terminal output that starts with `start`, as a developer would copy it. */
async function printedLine(service: ServiceProcess, start: string): Promise<string> {
  // stderr and the log (stdout) are separate pipes: the line may arrive a moment after the log line.
  for (let waited = 0; waited < 5000; waited += 50) {
    const line = service.stderr.join("").split("\n").map((text) => text.trim()).find((text) => text.startsWith(start));
    if (line !== undefined) return line;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`no line starting with "${start}" in the service's output: ${service.stderr.join("")}`);
}

/** Runs a copied line in a shell in the checkout, as a developer would paste it (npx finds buf in node_modules, offline). */
async function runAsPasted(line: string): Promise<string> {
  const { stdout } = await promisify(execFile)("sh", ["-c", line], {
    cwd: root,
    env: { ...process.env, npm_config_offline: "true", npm_config_update_notifier: "false" },
    timeout: 20_000,
  });
  return stdout;
}

describe("npm start prints commands to try it that work when copied from the terminal", () => {
  it("the buf curl line, pasted into a shell, sends a code", async () => {
    const service = await startZeroConfig((port) => `127.0.0.1:${port}`);
    const bufCurl = await printedLine(service, "npx buf curl");
    expect(await printedLine(service, "grpcurl")).toMatch(/^grpcurl -plaintext -d '\{"recipient":"you@example\.com","purpose":"PURPOSE_LOGIN"\}' 127\.0\.0\.1:\d+ /);

    const answer = JSON.parse(await runAsPasted(bufCurl)) as Record<string, unknown>;
    expect(answer).toMatchObject({ state: "DELIVERY_STATE_ACCEPTED", messageId: expect.stringMatching(/^[0-9a-z]{26}$/) as unknown });
  });

  it("on an IPv6 address, the commands and the log lines bracket it, and the buf curl line works", async () => {
    const service = await startZeroConfig((port) => `[::1]:${port}`);
    expect(await printedLine(service, "grpcurl")).toMatch(/ \[::1\]:\d+ otp\.v1\.OtpEmailService\/SendOtp$/);
    // As GRPC_ADDR and URLs write it: "::1:50051" reads as another address.
    expect(service.lines.find((line) => line["msg"] === "otp-email listening")?.["grpc"]).toMatch(/^\[::1\]:\d+$/);
    expect(service.lines.find((line) => line["msg"] === "gRPC server listening")?.["address"]).toMatch(/^\[::1\]:\d+$/);

    const answer = JSON.parse(await runAsPasted(await printedLine(service, "npx buf curl"))) as Record<string, unknown>;
    expect(answer).toMatchObject({ state: "DELIVERY_STATE_ACCEPTED" });
  });
});
