/**
 * The benchmark's results: their shape, the targets (ratios within one run),
 * the printed table and the SVG chart of latency percentiles.
 */
import type { LatencySummary, RpcMethod, RunResult } from "./protocol.js";

/** Which process the CPU and memory columns describe. */
/** floor: the echo server sending mail (the gRPC floor). */
export type ProcessRole = "service" | "sender" | "echo" | "floor";

export interface ProcessUsage {
  readonly role: ProcessRole;
  /** CPU time over wall time during the measured window, % of one core. */
  readonly cpuPercent: number;
  /** CPU time per measured request, ms. */
  readonly cpuMsPerOp: number;
  readonly peakRssMb: number;
  /** VmHWM at the end of the run: the process's peak since it started. */
  readonly hwmMb: number;
  /** CPU used meanwhile by processes outside the benchmark, % of one core (a shared machine's noise). */
  readonly othersPercent: number;
  /**
   * CPU ms per request of every process that did the work on this machine:
   * the watched one (under its role), the load generator, the sink, Redis.
   */
  readonly cpuMsPerOpByProcess?: Readonly<Record<string, number>>;
}

export type RunSummary = Omit<RunResult, "messageIds" | "verifyItems" | "sampleResponse">;

export interface ScenarioResult {
  readonly id: string;
  readonly title: string;
  readonly concurrency: number;
  /** n/a: the feature is not built yet; skipped: left out of this run. */
  readonly status: "ok" | "n/a" | "skipped" | "failed";
  readonly note?: string;
  readonly run?: RunSummary;
  readonly usage?: ProcessUsage;
  /** What the sink saw during the run. */
  readonly sink?: { readonly messages: number; readonly signed: number; readonly connections: number };
}

export interface RoundTrips {
  readonly method: RpcMethod;
  readonly calls: number;
  /** Commands clients sent to Redis per call (MONITOR; commands inside Lua scripts excluded). */
  readonly commandsPerCall: number;
  readonly byCommand: Readonly<Record<string, number>>;
  /**
   * Times per call the service sent Redis something and waited (INFO stats
   * total_reads_processed at concurrency 1): pipelined commands share one.
   */
  readonly roundTripsPerCall: number;
}

export interface SoakPoint {
  readonly sends: number;
  readonly elapsedS: number;
  readonly rssMb: number;
  readonly redisUsedMb: number;
}

export interface Machine {
  readonly cpuModel: string;
  readonly cores: number;
  readonly memoryGb: number;
  readonly node: string;
  readonly redis: string;
  readonly kernel: string;
}

/** info: a ratio shown for context, with no target in the issue. */
export type TargetResult = "pass" | "miss" | "n/a" | "info";

export interface Target {
  readonly id: string;
  readonly text: string;
  readonly measured: string;
  readonly threshold: string;
  readonly result: TargetResult;
  readonly value?: number;
  readonly note?: string;
}

export interface BenchReport {
  readonly startedAt: string;
  readonly durationS: number;
  readonly machine: Machine;
  readonly options: Readonly<Record<string, unknown>>;
  /** How the service was started (`npm start`'s command at that moment). */
  readonly serviceCommand: string;
  readonly features: Readonly<Record<string, string>>;
  readonly scenarios: readonly ScenarioResult[];
  readonly roundTrips: readonly RoundTrips[];
  readonly soak: readonly SoakPoint[];
  readonly targets: readonly Target[];
}

// ---------------------------------------------------------------------------
// Targets

const clean = (scenario: ScenarioResult | undefined): scenario is ScenarioResult & { run: RunSummary } =>
  scenario?.status === "ok" && scenario.run !== undefined && scenario.run.measured > 0;

function hadErrors(scenario: ScenarioResult & { run: RunSummary }): boolean {
  return scenario.run.ok < scenario.run.measured;
}

function ratioTarget(
  id: string,
  text: string,
  numerator: ScenarioResult | undefined,
  denominator: ScenarioResult | undefined,
  pick: (run: RunSummary) => number,
  check: (ratio: number) => boolean,
  threshold: string,
): Target {
  if (!clean(numerator) || !clean(denominator)) {
    const missing = [numerator, denominator].find((scenario) => !clean(scenario));
    const why = missing === undefined ? "not run" : missing.status === "n/a" ? "feature not built yet" : missing.status;
    return { id, text, measured: "-", threshold, result: "n/a", note: why };
  }
  const ratio = pick(numerator.run) / pick(denominator.run);
  const errors = hadErrors(numerator) || hadErrors(denominator);
  return {
    id,
    text,
    value: ratio,
    measured: `${ratio.toFixed(2)}x`,
    threshold,
    result: check(ratio) && !errors ? "pass" : "miss",
    ...(errors ? { note: "errors during the run" } : {}),
  };
}

/** A ratio shown for context: no target of its own. */
function context(
  id: string,
  text: string,
  numerator: ScenarioResult | undefined,
  denominator: ScenarioResult | undefined,
  pick: (run: RunSummary) => number,
  threshold: string,
): Target {
  const target = ratioTarget(id, text, numerator, denominator, pick, () => true, threshold);
  return { ...target, result: target.result === "n/a" ? "n/a" : "info" };
}

/**
 * The ratio of all processes' CPU per message, ceiling over SendOtp: what the
 * throughput ratio tends to on a machine whose cores every process shares.
 */
function cpuContext(send: ScenarioResult | undefined, ceiling: ScenarioResult | undefined): Target {
  const text = "(context) CPU per message of all processes, ceiling / SendOtp c64";
  const sendMs = totalCpuMsPerOp(send);
  const ceilingMs = totalCpuMsPerOp(ceiling);
  if (sendMs === undefined || ceilingMs === undefined || sendMs === 0) {
    return { id: "sendotp-cpu-context", text, measured: "-", threshold: "-", result: "n/a", note: "not run" };
  }
  return {
    id: "sendotp-cpu-context",
    text,
    value: ceilingMs / sendMs,
    measured: `${(ceilingMs / sendMs).toFixed(2)}x (${ceilingMs.toFixed(2)} / ${sendMs.toFixed(2)} ms)`,
    threshold: "-",
    result: "info",
  };
}

export function evaluateTargets(
  scenarios: readonly ScenarioResult[],
  roundTrips: readonly RoundTrips[],
  soak: readonly SoakPoint[],
): Target[] {
  const byId = (id: string): ScenarioResult | undefined => scenarios.find((scenario) => scenario.id === id);
  const throughput = (run: RunSummary): number => run.throughput;
  const p99 = (run: RunSummary): number => run.latencyMs.p99;
  const targets: Target[] = [
    ratioTarget(
      "sendotp-vs-ceiling",
      "SendOtp c64 throughput vs SMTP ceiling c64",
      byId("sendotp-c64"),
      byId("smtp-ceiling-c64"),
      throughput,
      (ratio) => ratio >= 0.75,
      ">= 0.75x",
    ),
    context("sendotp-vs-ceiling-relay", "(context) the same, with a relay taking 20 ms per message", byId("sendotp-relay-c64"), byId("smtp-ceiling-relay-c64"), throughput, "(>= 0.75x)"),
    context(
      "floor-vs-ceiling",
      "(context) gRPC floor c64 (bare grpc-js server that only sends) vs SMTP ceiling c64",
      byId("grpc-floor-c64"),
      byId("smtp-ceiling-c64"),
      throughput,
      "(>= 0.75x)",
    ),
    context("sendotp-vs-floor", "(context) SendOtp c64 vs the gRPC floor c64", byId("sendotp-c64"), byId("grpc-floor-c64"), throughput, "-"),
    cpuContext(byId("sendotp-c64"), byId("smtp-ceiling-c64")),
    ratioTarget(
      "sendotp-vs-naive",
      "SendOtp c64 throughput vs naive design c64",
      byId("sendotp-c64"),
      byId("smtp-naive-c64"),
      throughput,
      (ratio) => ratio >= 2,
      ">= 2x",
    ),
    context("sendotp-vs-service-naive", "(context) SendOtp c64 pooled vs the service with a connection per message", byId("sendotp-c64"), byId("sendotp-naive-c64"), throughput, "-"),
    ratioTarget(
      "sendotp-p99",
      "SendOtp p99 c16 vs SMTP ceiling p99 c16",
      byId("sendotp-c16"),
      byId("smtp-ceiling-c16"),
      p99,
      (ratio) => ratio <= 3,
      "<= 3x",
    ),
    context("floor-p99", "(context) gRPC floor p99 c16 vs SMTP ceiling p99 c16", byId("grpc-floor-c16"), byId("smtp-ceiling-c16"), p99, "(<= 3x)"),
    context("sendotp-p99-vs-floor", "(context) SendOtp p99 c16 vs the gRPC floor p99 c16", byId("sendotp-c16"), byId("grpc-floor-c16"), p99, "-"),
    context("sendotp-p99-relay", "(context) p99 c64 with a relay taking 20 ms per message", byId("sendotp-relay-c64"), byId("smtp-ceiling-relay-c64"), p99, "(<= 3x)"),
    ratioTarget(
      "tracing-overhead",
      "SendOtp c64 tracing+metrics on vs off (fresh services, median pair)",
      byId("sendotp-traced-c64"),
      byId("sendotp-untraced-c64"),
      throughput,
      (ratio) => ratio >= 0.9,
      ">= 0.9x",
    ),
    ratioTarget(
      "status-vs-echo",
      "GetDeliveryStatus c64 throughput vs bare grpc-js echo",
      byId("status-c64"),
      byId("echo-status-c64"),
      throughput,
      (ratio) => ratio >= 0.6,
      ">= 0.6x",
    ),
    ratioTarget(
      "verify-vs-echo",
      "VerifyOtp c64 throughput vs bare grpc-js echo",
      byId("verify-c64"),
      byId("echo-verify-c64"),
      throughput,
      (ratio) => ratio >= 0.6,
      ">= 0.6x",
    ),
  ];

  const servicePeaks = scenarios.filter((scenario) => scenario.usage?.role === "service").map((scenario) => scenario.usage?.peakRssMb ?? 0);
  const peak = Math.max(0, ...servicePeaks, ...soak.map((point) => point.rssMb));
  targets.push(
    servicePeaks.length === 0
      ? { id: "peak-rss", text: "Service peak RSS under load", measured: "-", threshold: "<= 250 MB", result: "n/a" }
      : {
          id: "peak-rss",
          text: "Service peak RSS under load",
          value: peak,
          measured: `${peak.toFixed(0)} MB`,
          threshold: "<= 250 MB",
          result: peak <= 250 ? "pass" : "miss",
        },
  );

  const first = soak.find((point) => point.sends === 10_000) ?? soak[0];
  const last = soak.at(-1);
  if (first === undefined || last === undefined || last === first) {
    targets.push({ id: "soak-rss", text: "Service RSS at the soak's end vs at 10k sends", measured: "-", threshold: "within 10 %", result: "n/a" });
  } else {
    const growth = (last.rssMb - first.rssMb) / first.rssMb;
    targets.push({
      id: "soak-rss",
      text: `Service RSS at ${formatCount(last.sends)} sends vs at ${formatCount(first.sends)}`,
      value: growth,
      measured: `${first.rssMb.toFixed(0)} -> ${last.rssMb.toFixed(0)} MB (${growth >= 0 ? "+" : ""}${(growth * 100).toFixed(1)} %)`,
      threshold: "within 10 %",
      result: Math.abs(growth) <= 0.1 ? "pass" : "miss",
    });
  }

  const sends = roundTrips.find((entry) => entry.method === "SendOtp");
  targets.push(
    sends === undefined
      ? { id: "redis-round-trips", text: "Redis round trips per SendOtp", measured: "-", threshold: "<= 3", result: "n/a" }
      : {
          id: "redis-round-trips",
          text: "Redis round trips per SendOtp",
          value: sends.roundTripsPerCall,
          measured: `${sends.roundTripsPerCall.toFixed(2)} (commands ${sends.commandsPerCall.toFixed(2)}: ${describeCommands(sends)})`,
          threshold: "<= 3",
          result: sends.roundTripsPerCall <= 3 ? "pass" : "miss",
        },
  );
  return targets;
}

function describeCommands(entry: RoundTrips): string {
  return Object.entries(entry.byCommand)
    .sort((a, b) => b[1] - a[1])
    .map(([name, count]) => `${name} ${(count / entry.calls).toFixed(2).replace(/\.00$/, "")}`)
    .join(", ");
}

function formatCount(n: number): string {
  return n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n);
}

// ---------------------------------------------------------------------------
// Text

function table(header: readonly string[], rows: readonly (readonly string[])[], alignLeft: ReadonlySet<number>): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, column) => (alignLeft.has(column) ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(header), widths.map((width) => "-".repeat(width)).join("  "), ...rows.map(line)].join("\n");
}

const ms = (value: number): string => (value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2));

export function formatScenarioTable(scenarios: readonly ScenarioResult[]): string {
  const rows = scenarios.map((scenario) => {
    const name = scenario.title;
    const concurrency = String(scenario.concurrency);
    if (scenario.status !== "ok" || scenario.run === undefined) {
      const why =
        scenario.status === "n/a"
          ? "n/a (feature not built yet)"
          : scenario.status === "skipped"
            ? `skipped (${scenario.note ?? ""})`
            : `FAILED: ${scenario.note ?? ""}`;
      return [name, concurrency, why];
    }
    const { run, usage } = scenario;
    const errors = run.measured - run.ok;
    return [
      name,
      concurrency,
      String(run.measured),
      run.throughput.toFixed(0),
      ms(run.latencyMs.p50),
      ms(run.latencyMs.p90),
      ms(run.latencyMs.p99),
      String(errors),
      usage === undefined ? "" : `${usage.role} ${usage.cpuPercent.toFixed(0)}%`,
      usage === undefined ? "" : usage.cpuMsPerOp.toFixed(3),
      usage === undefined ? "" : usage.peakRssMb.toFixed(0),
      usage === undefined ? "" : `${usage.othersPercent.toFixed(0)}%`,
    ];
  });
  return table(
    ["scenario", "conc", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "CPU (1 core = 100%)", "CPU ms/req", "peak RSS MB", "other procs CPU"],
    rows,
    new Set([0, 8]),
  );
}

/** Total CPU ms per request over every process that did the work, or undefined when not measured. */
export function totalCpuMsPerOp(scenario: ScenarioResult | undefined): number | undefined {
  const by = scenario?.status === "ok" ? scenario.usage?.cpuMsPerOpByProcess : undefined;
  return by === undefined ? undefined : Object.values(by).reduce((sum, ms) => sum + ms, 0);
}

/**
 * Where each request's CPU went, process by process: on one machine every
 * process shares the same cores, so the ceiling's advantage is what it does
 * not have to run (gRPC, Redis, the load generator's client side).
 */
export function formatCpuBreakdown(scenarios: readonly ScenarioResult[]): string {
  const measured = scenarios.filter((row) => row.status === "ok" && row.usage?.cpuMsPerOpByProcess !== undefined);
  const roles = ["sender", "service", "echo", "floor", "load generator", "sink", "redis"];
  const fmt = (value: number | undefined): string => (value === undefined ? "" : value.toFixed(3));
  return table(
    ["scenario", "conc", ...roles, "total", "cores / total (req/s)"],
    measured.map((row) => {
      const by = row.usage?.cpuMsPerOpByProcess ?? {};
      const total = totalCpuMsPerOp(row) ?? 0;
      return [row.title, String(row.concurrency), ...roles.map((role) => fmt(by[role])), fmt(total), total > 0 ? (cores() * 1000 / total).toFixed(0) : ""];
    }),
    new Set([0]),
  );
}

let machineCores = 1;
/** The core count the breakdown's "cores / total" column divides (set once from the machine). */
export function setCores(count: number): void {
  machineCores = Math.max(1, count);
}
const cores = (): number => machineCores;

export function formatTargets(targets: readonly Target[]): string {
  return table(
    ["target", "measured", "wanted", "result"],
    targets.map((target) => [
      target.text,
      target.measured,
      target.threshold,
      target.result === "miss"
        ? "MISS"
        : target.result === "n/a"
          ? `n/a${target.note ? ` (${target.note})` : ""}`
          : target.result,
    ]),
    new Set([0, 1, 3]),
  );
}

export function formatMachine(machine: Machine): string {
  return `${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGb} GB RAM, Linux ${machine.kernel}, Node ${machine.node}, Redis ${machine.redis}`;
}

// ---------------------------------------------------------------------------
// SVG chart: p50 / p90 / p99 per scenario, log scale

const escapeXml = (text: string): string =>
  text.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c] ?? c);

export function renderSvg(report: Pick<BenchReport, "scenarios" | "machine" | "startedAt">): string {
  const rows = report.scenarios;
  const measured = rows.filter((row): row is ScenarioResult & { run: RunSummary } => clean(row));
  const values = measured.flatMap((row) => [row.run.latencyMs.p50, row.run.latencyMs.p99]).filter((value) => value > 0);
  const low = 10 ** Math.floor(Math.log10(Math.min(...values, 1)));
  const high = 10 ** Math.ceil(Math.log10(Math.max(...values, 1)));
  const labelWidth = 340;
  const plotWidth = 560;
  const rowHeight = 30;
  const top = 64;
  const height = top + rows.length * rowHeight + 44;
  const width = labelWidth + plotWidth + 60;
  const x = (value: number): number =>
    labelWidth + (plotWidth * (Math.log10(Math.max(value, low)) - Math.log10(low))) / (Math.log10(high) - Math.log10(low));
  const colors: Record<keyof Pick<LatencySummary, "p50" | "p90" | "p99">, string> = { p50: "#4e79a7", p90: "#f28e2b", p99: "#e15759" };
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">OtpEmail benchmark: latency percentiles per scenario (ms, log scale)</text>`,
    `<text x="10" y="38" fill="#555">${escapeXml(`${formatMachine(report.machine)}; ${report.startedAt.slice(0, 10)}`)}</text>`,
  ];
  let legendX = labelWidth;
  for (const [name, color] of Object.entries(colors)) {
    parts.push(`<rect x="${legendX}" y="46" width="12" height="8" fill="${color}"/><text x="${legendX + 16}" y="54">${name}</text>`);
    legendX += 60;
  }
  for (let decade = low; decade <= high * 1.0001; decade *= 10) {
    const gx = x(decade).toFixed(1);
    parts.push(`<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${height - 36}" stroke="#ddd"/>`);
    parts.push(`<text x="${gx}" y="${height - 22}" text-anchor="middle" fill="#555">${decade >= 1 ? decade.toFixed(0) : String(Number(decade.toPrecision(1)))}</text>`);
  }
  rows.forEach((row, index) => {
    const y = top + index * rowHeight;
    parts.push(`<text x="${labelWidth - 8}" y="${y + 16}" text-anchor="end">${escapeXml(`${row.title} (c=${row.concurrency})`)}</text>`);
    if (!clean(row)) {
      const why = row.status === "n/a" ? "n/a (feature not built yet)" : row.status;
      parts.push(`<text x="${labelWidth + 4}" y="${y + 16}" fill="#999">${why}</text>`);
      return;
    }
    (["p50", "p90", "p99"] as const).forEach((name, bar) => {
      const value = row.run.latencyMs[name];
      const barWidth = Math.max(1, x(value) - labelWidth).toFixed(1);
      parts.push(`<rect x="${labelWidth}" y="${y + 4 + bar * 8}" width="${barWidth}" height="7" fill="${colors[name]}"><title>${name} ${ms(value)} ms</title></rect>`);
    });
    parts.push(`<text x="${(x(row.run.latencyMs.p99) + 4).toFixed(1)}" y="${y + 24}" fill="#333" font-size="10">${ms(row.run.latencyMs.p99)}</text>`);
  });
  parts.push(`<text x="${labelWidth + plotWidth / 2}" y="${height - 6}" text-anchor="middle" fill="#555">milliseconds</text>`);
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
