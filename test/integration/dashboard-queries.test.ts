/**
 * The Grafana dashboard's send-success queries, evaluated by Prometheus's own
 * engine (`promtool test rules`) on series recorded from real runs of the
 * service (real Redis, a real SMTP sink, real gRPC): one where the relay
 * accepts every message, one where it hangs (SendOtp answers pending after
 * SEND_WAIT_BUDGET), one of each. The success ratio counts only sends whose
 * outcome is known, so a hung relay reads "no verdict", never 100 %; the
 * pending share says what is going on, and the final verdict per purpose
 * (otp_smtp_send_duration_seconds_count by purpose) what became of the sends
 * SendOtp answered pending. The spam complaint ratio panel is checked on
 * synthetic series: which feedback types count, over which window; the read
 * latency panel on the service's own histogram buckets.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { unlimited } from "../../src/limits/types.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { behave, type SinkBehaviour } from "../support/smtp-sink.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const { sendOtp } = OtpEmailService.method;

/** What Prometheus would have scraped: `name{labels}` -> value, for otp_sends_total and the sends' final verdicts. */
type Scrape = Map<string, number>;

/** A recorded run: the scrape before the first call and the one after the last. */
interface Run {
  readonly before: Scrape;
  readonly after: Scrape;
}

async function scrape(service: ObservedService): Promise<Scrape> {
  const text = await service.metrics.render("text");
  const samples = new Map<string, number>();
  for (const match of text.matchAll(/^(otp_sends_total|otp_smtp_send_duration_seconds_count)\{([^}]*)\} (\S+)$/gm)) {
    samples.set(`${match[1]}{${match[2]}}`, Number(match[3]));
  }
  return samples;
}

/** How many sends have a final verdict in `scrape`. */
function finished(samples: Scrape): number {
  return [...samples].filter(([key]) => key.startsWith("otp_smtp_send_duration_seconds_count")).reduce((sum, [, value]) => sum + value, 0);
}

/**
 * Runs the service with the relay behaving as `relay` says for each send, in
 * order, and records the series before and after. With `settle`, the second
 * scrape waits until every send has its final verdict.
 */
async function record(
  sends: readonly { purpose: Purpose; relay: SinkBehaviour; answered: DeliveryState }[],
  options: { readonly env?: Record<string, string>; readonly settle?: boolean } = {},
): Promise<Run> {
  const service = await startObservedService({
    limiter: unlimited,
    // Pending after 1 s (at 300 ms a send the relay accepted at once was once answered pending on a loaded
    // machine); a stalled send stays in flight until the service stops.
    env: { SEND_WAIT_BUDGET: "1s", SMTP_SOCKET_TIMEOUT: "60s", ...options.env },
  });
  try {
    const before = await scrape(service);
    service.sink.respondWith(...sends.map((send) => send.relay));
    for (const [index, send] of sends.entries()) {
      const answer = await grpcUnary(service.grpcClient, sendOtp, { recipient: `user${index}@example.com`, purpose: send.purpose });
      expect(answer.state, `send ${index}`).toBe(send.answered);
    }
    let after = await scrape(service);
    for (const deadline = Date.now() + 15_000; options.settle === true && finished(after) < sends.length; after = await scrape(service)) {
      if (Date.now() > deadline) throw new Error(`only ${finished(after)} of ${sends.length} sends finished`);
      await sleep(50);
    }
    return { before, after };
  } finally {
    await service.stop();
  }
}

interface Panel {
  readonly title: string;
  readonly targets: readonly { readonly refId: string; readonly expr: string }[];
}

const dashboard = JSON.parse(await readFile(join(root, "deploy", "grafana", "dashboards", "otp-email.json"), "utf8")) as { panels: Panel[] };

/** The panel's query `refId`, with the dashboard's variables as Grafana would fill them for this instance. */
function query(title: string, refId = "A"): string {
  const expr = dashboard.panels.find((panel) => panel.title === title)?.targets.find((target) => target.refId === refId)?.expr;
  if (expr === undefined) throw new Error(`the dashboard has no panel "${title}" with query ${refId}`);
  return expr.replaceAll("$instance", instance).replaceAll("$__rate_interval", "5m");
}

const instance = "otp-email:9464";
const job = "otp-email";

/**
 * A promtool case: the run's series as Prometheus would store them (the
 * first scrape up to 4m, the second from 5m on, one scrape a minute) and
 * what each query must give at 7m (its 5m window holds both).
 */
function promtoolCase(name: string, run: Run, expectations: readonly { expr: string; samples: readonly { labels: string; value: number }[] }[]) {
  const series = [...run.after.keys()].map((key) => {
    const [, metric = "", labels = ""] = /^([^{]+)\{(.*)\}$/.exec(key) ?? [];
    return {
      series: `${metric}{job="${job}", instance="${instance}", ${labels}}`,
      values: `${run.before.get(key) ?? 0}x4 ${run.after.get(key) ?? 0}x10`,
    };
  });
  return {
    name,
    interval: "1m",
    input_series: series,
    promql_expr_test: expectations.map((expectation) => ({
      expr: expectation.expr,
      eval_time: "7m",
      exp_samples: expectation.samples.map((sample) => ({ labels: sample.labels, value: sample.value })),
    })),
  };
}

function promtool(args: readonly string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    execFile("promtool", args, { cwd, timeout: 30_000 }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== "number") {
        reject(new Error(`promtool did not run (${error.message}): install the Debian package "prometheus"`));
        return;
      }
      resolve({ code: error === null ? 0 : Number(error.code), output: stdout + stderr });
    });
  });
}

describe("the dashboard's send success queries on series from real runs", () => {
  let accepting: Run;
  let hung: Run;
  let mixed: Run;
  let late: Run;
  let dir: string;

  beforeAll(async () => {
    const accept = behave.accept();
    const stall = behave.stall();
    accepting = await record([
      { purpose: Purpose.LOGIN, relay: accept, answered: DeliveryState.ACCEPTED },
      { purpose: Purpose.LOGIN, relay: accept, answered: DeliveryState.ACCEPTED },
      { purpose: Purpose.SIGNUP, relay: accept, answered: DeliveryState.ACCEPTED },
    ]);
    hung = await record([
      { purpose: Purpose.LOGIN, relay: stall, answered: DeliveryState.SENDING },
      { purpose: Purpose.LOGIN, relay: stall, answered: DeliveryState.SENDING },
    ]);
    mixed = await record([
      { purpose: Purpose.LOGIN, relay: accept, answered: DeliveryState.ACCEPTED },
      { purpose: Purpose.LOGIN, relay: stall, answered: DeliveryState.SENDING },
      { purpose: Purpose.SIGNUP, relay: stall, answered: DeliveryState.SENDING },
      { purpose: Purpose.SIGNUP, relay: stall, answered: DeliveryState.SENDING },
    ]);
    // SendOtp answers two sends pending; the relay then takes the login one and never answers the
    // signup one (its one attempt times out): the final verdicts the per-purpose panel must show.
    late = await record(
      [
        { purpose: Purpose.LOGIN, relay: behave.accept({ delayMs: 1600 }), answered: DeliveryState.SENDING },
        { purpose: Purpose.SIGNUP, relay: stall, answered: DeliveryState.SENDING },
        { purpose: Purpose.PASSWORD_RESET, relay: accept, answered: DeliveryState.ACCEPTED },
      ],
      { env: { SMTP_SOCKET_TIMEOUT: "3s", SMTP_MAX_ATTEMPTS: "1" }, settle: true },
    );
    dir = await mkdtemp(join(tmpdir(), "otp-dashboard-"));
  }, 60_000);

  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("recorded what each run did (otp_sends_total)", () => {
    const value = (run: Run, labels: string): number => run.after.get(`otp_sends_total{${labels}}`) ?? Number.NaN;
    expect(value(accepting, 'purpose="login",outcome="accepted"')).toBe(2);
    expect(value(hung, 'purpose="login",outcome="pending"')).toBe(2);
    expect(value(hung, 'purpose="login",outcome="accepted"')).toBe(0);
    expect(value(mixed, 'purpose="signup",outcome="pending"')).toBe(2);
    const verdicts = (run: Run, labels: string): number => run.after.get(`otp_smtp_send_duration_seconds_count{${labels}}`) ?? Number.NaN;
    expect(verdicts(late, 'purpose="login",outcome="accepted"')).toBe(1);
    expect(verdicts(late, 'purpose="signup",outcome="failed"')).toBe(1);
    expect(verdicts(late, 'purpose="password_reset",outcome="accepted"')).toBe(1);
    expect(verdicts(hung, 'purpose="login",outcome="accepted"') + verdicts(hung, 'purpose="login",outcome="failed"')).toBe(0);
  });

  it("success: 100 % when the relay accepts, no value (not 100 %) when it hangs; pending shown on its own", async () => {
    const success = query("Send success ratio");
    const pending = query("Sends pending at answer");
    const successByPurpose = query("Send success ratio by purpose", "A");
    const pendingByPurpose = query("Send success ratio by purpose", "B");
    const finalByPurpose = query("Send success ratio by purpose", "C");
    const tests = {
      rule_files: [],
      evaluation_interval: "1m",
      tests: [
        promtoolCase("the relay accepts every send", accepting, [
          { expr: success, samples: [{ labels: "{}", value: 1 }] },
          { expr: pending, samples: [{ labels: "{}", value: 0 }] },
          { expr: successByPurpose, samples: [{ labels: '{purpose="login"}', value: 1 }, { labels: '{purpose="signup"}', value: 1 }] },
          { expr: pendingByPurpose, samples: [{ labels: '{purpose="login"}', value: 0 }, { labels: '{purpose="signup"}', value: 0 }] },
          { expr: finalByPurpose, samples: [{ labels: '{purpose="login"}', value: 1 }, { labels: '{purpose="signup"}', value: 1 }] },
        ]),
        promtoolCase("the relay hangs: every SendOtp answered pending", hung, [
          // No send's outcome is known: no value ("no verdict" on the stat), never a success.
          { expr: success, samples: [] },
          { expr: pending, samples: [{ labels: "{}", value: 1 }] },
          { expr: successByPurpose, samples: [] },
          { expr: pendingByPurpose, samples: [{ labels: '{purpose="login"}', value: 1 }] },
          // Nothing has ended yet: no final verdict either.
          { expr: finalByPurpose, samples: [] },
        ]),
        promtoolCase("one accepted, three pending", mixed, [
          { expr: success, samples: [{ labels: "{}", value: 1 }] },
          { expr: pending, samples: [{ labels: "{}", value: 0.75 }] },
          { expr: successByPurpose, samples: [{ labels: '{purpose="login"}', value: 1 }] },
          { expr: pendingByPurpose, samples: [{ labels: '{purpose="login"}', value: 0.5 }, { labels: '{purpose="signup"}', value: 1 }] },
          { expr: finalByPurpose, samples: [{ labels: '{purpose="login"}', value: 1 }] },
        ]),
        promtoolCase("two answered pending, then one accepted and one failed; one accepted at once", late, [
          { expr: success, samples: [{ labels: "{}", value: 1 }] },
          { expr: successByPurpose, samples: [{ labels: '{purpose="password_reset"}', value: 1 }] },
          {
            expr: pendingByPurpose,
            samples: [
              { labels: '{purpose="login"}', value: 1 },
              { labels: '{purpose="password_reset"}', value: 0 },
              { labels: '{purpose="signup"}', value: 1 },
            ],
          },
          // What became of them: the login send was accepted late, the signup one failed.
          {
            expr: finalByPurpose,
            samples: [
              { labels: '{purpose="login"}', value: 1 },
              { labels: '{purpose="password_reset"}', value: 1 },
              { labels: '{purpose="signup"}', value: 0 },
            ],
          },
        ]),
      ],
    };
    await writeFile(join(dir, "dashboard.test.yml"), stringify(tests));
    const result = await promtool(["test", "rules", "dashboard.test.yml"], dir);
    expect(result.output).toContain("SUCCESS");
    expect(result.code, result.output).toBe(0);
  });

  it("promtool's check can fail: a wrong expectation on the same series is reported", async () => {
    const tests = {
      rule_files: [],
      evaluation_interval: "1m",
      tests: [promtoolCase("the relay hangs", hung, [{ expr: query("Send success ratio"), samples: [{ labels: "{}", value: 1 }] }])],
    };
    await writeFile(join(dir, "wrong.test.yml"), stringify(tests));
    const result = await promtool(["test", "rules", "wrong.test.yml"], dir);
    expect(result.code).not.toBe(0);
    expect(result.output).toContain("FAILED");
  });
});

describe("the dashboard's spam complaint ratio", () => {
  it("counts abuse and fraud complaints over a day's accepted mail per provider, and nothing else", async () => {
    const series = (metric: string, labels: string, values: string) => ({ series: `${metric}{job="${job}", instance="${instance}", ${labels}}`, values });
    const tests = {
      rule_files: [],
      evaluation_interval: "10m",
      tests: [
        {
          name: "yahoo: 1 abuse + 1 fraud per 100 accepted (virus complaints left out); gmail: none",
          interval: "10m",
          input_series: [
            series("otp_delivery_state_transitions_total", 'state="ACCEPTED", provider="yahoo"', "0+100x200"),
            series("otp_spam_complaints_total", 'feedback_type="abuse", provider="yahoo"', "0+1x200"),
            series("otp_spam_complaints_total", 'feedback_type="fraud", provider="yahoo"', "0+1x200"),
            series("otp_spam_complaints_total", 'feedback_type="virus", provider="yahoo"', "0+30x200"),
            series("otp_delivery_state_transitions_total", 'state="ACCEPTED", provider="gmail"', "0+100x200"),
            series("otp_spam_complaints_total", 'feedback_type="abuse", provider="gmail"', "0+0x200"),
          ],
          promql_expr_test: [
            {
              expr: query("Spam complaint ratio by provider class (1d)"),
              eval_time: "25h",
              exp_samples: [
                { labels: '{provider="gmail"}', value: 0 },
                { labels: '{provider="yahoo"}', value: 0.02 },
              ],
            },
          ],
        },
      ],
    };
    const dir = await mkdtemp(join(tmpdir(), "otp-dashboard-complaints-"));
    try {
      await writeFile(join(dir, "complaints.test.yml"), stringify(tests));
      const result = await promtool(["test", "rules", "complaints.test.yml"], dir);
      expect(result.output).toContain("SUCCESS");
      expect(result.code, result.output).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("the dashboard's read latency percentiles", () => {
  it("read sub-millisecond GetDeliveryStatus and VerifyOtp calls as what they took, from the service's own buckets", async () => {
    // The service's histogram, with calls of known durations: 60 GetDeliveryStatus of 0.2 ms and 40 of
    // 0.4 ms, 100 VerifyOtp of 0.8 ms. Rendered as Prometheus scrapes it, before and after.
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const method = (name: string) => ({ grpc_type: "unary", grpc_service: "otp.v1.OtpEmailService", grpc_method: name });
    const observe = (name: string, seconds: number, count: number): void => {
      for (let i = 0; i < count; i++) metrics.grpc.handlingSeconds.observe({ labels: method(name), value: seconds });
    };
    observe("GetDeliveryStatus", 0.0002, 60);
    observe("GetDeliveryStatus", 0.0004, 40);
    observe("VerifyOtp", 0.0008, 100);
    const after: Scrape = new Map();
    for (const match of (await metrics.render("text")).matchAll(/^(grpc_server_handling_seconds_bucket)\{([^}]*)\} (\S+)$/gm)) {
      after.set(`${match[1]}{${match[2]}}`, Number(match[3]));
    }
    const run: Run = { before: new Map(), after };
    // Rounded to 0.1 µs: promtool compares exactly, and the interpolation leaves float noise.
    const percentile = (refId: string) => `round(${query("GetDeliveryStatus and VerifyOtp latency percentiles", refId)}, 0.0000001)`;
    const tests = {
      rule_files: [],
      evaluation_interval: "1m",
      tests: [
        promtoolCase("p50 and p90 per method, interpolated within sub-millisecond buckets", run, [
          {
            // GetDeliveryStatus: the 50th of 100 lies in (0.1 ms, 0.25 ms], which holds 60: 0.1 + 0.15 x 50/60 ms.
            // VerifyOtp: every call lies in (0.5 ms, 1 ms]: 0.5 + 0.5 x 50/100 ms.
            expr: percentile("A"),
            samples: [
              { labels: '{grpc_method="GetDeliveryStatus"}', value: 0.000225 },
              { labels: '{grpc_method="VerifyOtp"}', value: 0.00075 },
            ],
          },
          {
            // GetDeliveryStatus: the 90th lies in (0.25 ms, 0.5 ms], which holds 40: 0.25 + 0.25 x 30/40 ms.
            // VerifyOtp: 0.5 + 0.5 x 90/100 ms.
            expr: percentile("B"),
            samples: [
              { labels: '{grpc_method="GetDeliveryStatus"}', value: 0.0004375 },
              { labels: '{grpc_method="VerifyOtp"}', value: 0.00095 },
            ],
          },
        ]),
      ],
    };
    const dir = await mkdtemp(join(tmpdir(), "otp-dashboard-latency-"));
    try {
      await writeFile(join(dir, "latency.test.yml"), stringify(tests));
      const result = await promtool(["test", "rules", "latency.test.yml"], dir);
      expect(result.output).toContain("SUCCESS");
      expect(result.code, result.output).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
