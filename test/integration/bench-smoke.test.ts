/**
 * The benchmark must not rot: `npm run bench -- --smoke` runs one short
 * scenario through the same code paths as the full run (compile if needed, a
 * private redis-server, the SMTP sink and the load generator as processes of
 * their own, the service started exactly as `npm start` starts it, the report
 * and the chart). Nothing here is timed: the test checks that every request
 * was answered and counted, never how fast.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import type { BenchReport } from "../../bench/report.js";

const run = promisify(execFile);
const root = fileURLToPath(new URL("../..", import.meta.url));
const out = mkdtempSync(join(tmpdir(), "otp-bench-smoke-"));
let keptLogs: string | undefined;

afterAll(() => {
  rmSync(out, { recursive: true, force: true });
  if (keptLogs !== undefined) rmSync(keptLogs, { recursive: true, force: true });
});

describe("npm run bench -- --smoke", () => {
  it("sends SendOtp through the service process, counts Redis round trips and writes the results", async () => {
    // Generous bound: a cold run compiles the service and the benchmark first.
    // With a setting of the caller's own (--service-env) and a traced caller's context on every request
    // (--caller-traceparent), and the logs kept to show the service ran with both.
    const args = ["bench/bench.mjs", "--smoke", "--out", out, "--service-env=NODE_ENV=test", "--caller-traceparent", "--keep-logs"];
    const { stdout } = await run(process.execPath, args, {
      cwd: root,
      timeout: 240_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    const report = JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as BenchReport;

    expect(report.machine.cores).toBeGreaterThan(0);
    expect(report.machine.node).toBe(process.versions.node);
    expect(report.serviceCommand).toMatch(/^node .*dist\/src\/main\.js$/);

    const row = report.scenarios.find((scenario) => scenario.id === "sendotp-c4");
    expect(row?.status).toBe("ok");
    // 5 warm-up requests, then 40 measured: all answered ACCEPTED, and every one reached the sink.
    expect(row?.run?.measured).toBe(40);
    expect(row?.run?.ok).toBe(40);
    expect(row?.run?.errors).toEqual({});
    expect(row?.run?.unexpected).toEqual({});
    expect(row?.sink?.messages).toBe(45);
    const latency = row?.run?.latencyMs;
    expect(latency?.p50).toBeGreaterThan(0);
    expect(latency?.p50).toBeLessThanOrEqual(latency?.p99 ?? 0);
    expect(row?.usage?.role).toBe("service");
    expect(row?.usage?.peakRssMb).toBeGreaterThan(0);

    // The gRPC floor: the bare grpc-js server sent every message itself, as the SMTP ceiling does.
    const floor = report.scenarios.find((scenario) => scenario.id === "grpc-floor-c4");
    expect(floor?.status).toBe("ok");
    expect(floor?.run?.ok).toBe(40);
    expect(floor?.run?.errors).toEqual({});
    expect(floor?.sink?.messages).toBe(45);
    expect(floor?.usage?.role).toBe("floor");

    const sends = report.roundTrips.find((entry) => entry.method === "SendOtp");
    expect(sends?.calls).toBe(10);
    // At least the record and the code; the exact count is the benchmark's to report.
    expect(sends?.commandsPerCall).toBeGreaterThanOrEqual(2);

    expect(report.targets.map((target) => target.id)).toContain("redis-round-trips");
    expect(readFileSync(join(out, "results.svg"), "utf8")).toMatch(/^<svg [^>]*>[\s\S]*SendOtp end to end[\s\S]*<\/svg>\n$/);
    expect(stdout).toContain("SendOtp end to end");

    expect(report.features["service env"]).toBe("every service also runs with NODE_ENV=test (--service-env)");
    expect(report.features["caller trace"]).toMatch(/fresh sampled traceparent/);
    keptLogs = /service logs kept in (\S+)/.exec(stdout)?.[1];
    expect(keptLogs).toBeDefined();
    // NODE_ENV=test reached the service: the bench's own production did not apply.
    const log = readFileSync(join(keptLogs ?? "", "service-smoke.log"), "utf8");
    expect(log).toContain('"env":"test","msg":"otp-email listening"');
    // Every send ran in its caller's trace, a trace of its own.
    const queued = log
      .split("\n")
      .filter((line) => line.includes('"msg":"otp queued"'))
      .map((line) => (JSON.parse(line) as { trace_id?: string }).trace_id);
    expect(queued.length).toBeGreaterThanOrEqual(45);
    expect(queued.every((id) => id !== undefined && /^[0-9a-f]{32}$/.test(id))).toBe(true);
    expect(new Set(queued).size).toBe(queued.length);
  }, 300_000);

  it("refuses a bad option before starting anything: one line saying what is wrong, the usage, exit 2, no stack", async () => {
    for (const [option, says] of [
      ["--service-env=1BAD=x", '--service-env wants KEY=VALUE, got "1BAD=x"'],
      ["--soak=lots", "--soak must be a whole number >= 0"],
      ["--only=smtp,turbo", "--only: unknown group turbo"],
      ["--fast", "Unknown option '--fast'"],
    ] as const) {
      const failed = await run(process.execPath, ["bench/bench.mjs", "--smoke", "--out", out, option], { cwd: root, timeout: 120_000 }).then(
        () => undefined,
        (error: unknown) => error as { code?: number; stderr?: string },
      );
      expect(failed?.code, option).toBe(2);
      expect(failed?.stderr, option).toContain(`otp-email bench: ${says}`);
      expect(failed?.stderr, option).toContain("usage: npm run bench --");
      expect(failed?.stderr, option).not.toMatch(/\n\s+at /);
      expect(failed?.stderr, option).not.toContain("service logs");
    }
  }, 150_000);
});
