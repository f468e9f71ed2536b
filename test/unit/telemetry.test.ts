import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, loadTracingConfig } from "../../src/config.js";
import { createHealthState } from "../../src/health.js";
import { createLogger } from "../../src/logger.js";
import { grpcCodeName } from "../../src/telemetry/grpc-metrics.js";
import { startMetricsServer } from "../../src/telemetry/metrics-server.js";
import { createMetrics, negotiateFormat, traceExemplar } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { instrumentOtpService } from "../../src/telemetry/otp-metrics.js";
import { OtpError } from "../../src/errors.js";
import type { OtpService } from "../../src/otp/types.js";
import { INVALID_SPAN_CONTEXT, ROOT_CONTEXT, TraceFlags, createContextKey } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager, parseTraceparent } from "../../src/telemetry/trace-context.js";
import { describeSdkError, SdkDiagnostics } from "../../src/telemetry/sdk-diagnostics.js";

describe("provider classes", () => {
  const classifier = createProviderClassifier();

  it("maps the big providers and their aliases, any case, subdomains included", () => {
    const cases: [string, string][] = [
      ["gmail.com", "gmail"],
      ["GoogleMail.com.", "gmail"],
      ["outlook.com", "microsoft"],
      ["hotmail.com", "microsoft"],
      ["live.com", "microsoft"],
      ["yahoo.co.jp", "yahoo"],
      ["icloud.com", "apple"],
      ["me.com", "apple"],
      ["naver.com", "naver"],
      ["mail.naver.com", "naver"],
      ["daum.net", "kakao"],
      ["hanmail.net", "kakao"],
      ["kakao.com", "kakao"],
      ["proton.me", "proton"],
      ["pm.me", "proton"],
    ];
    for (const [domain, providerClass] of cases) expect(classifier.classify(domain), domain).toBe(providerClass);
  });

  it("puts everything else, look-alikes too, in `other`", () => {
    for (const domain of ["notgmail.com", "gmail.com.evil.test", "example.com", "co.uk", "com", ""]) {
      expect(classifier.classify(domain), domain).toBe("other");
    }
  });

  it("takes operator rules over and beside the built-in ones, and lists every class", () => {
    const custom = createProviderClassifier({ "acme.example": "corp", "daum.net": "daum" });
    expect(custom.classify("mx.acme.example")).toBe("corp");
    expect(custom.classify("daum.net")).toBe("daum");
    expect(custom.classify("hanmail.net")).toBe("kakao");
    expect(custom.classes).toEqual(["gmail", "microsoft", "yahoo", "apple", "naver", "kakao", "proton", "daum", "corp", "other"]);
  });
});

describe("metrics configuration", () => {
  it("METRICS_ADDR defaults to 127.0.0.1:9464; off disables the endpoint", () => {
    expect(loadConfig({}).metrics.addr).toBe("127.0.0.1:9464");
    expect(loadConfig({ METRICS_ADDR: "0.0.0.0:9100" }).metrics.addr).toBe("0.0.0.0:9100");
    expect(loadConfig({ METRICS_ADDR: "off" }).metrics.addr).toBeUndefined();
    expect(() => loadConfig({ METRICS_ADDR: "9464" })).toThrow(/METRICS_ADDR=9464: must be host:port/);
  });

  it("METRICS_PROVIDER_DOMAINS: class=domain,domain;class=domain", () => {
    expect(loadConfig({ METRICS_PROVIDER_DOMAINS: "corp=Acme.example,acme.test.; gmail=gmail.example" }).metrics.providerDomains).toEqual({
      "acme.example": "corp",
      "acme.test": "corp",
      "gmail.example": "gmail",
    });
    expect(() => loadConfig({ METRICS_PROVIDER_DOMAINS: "Corp=acme.example" })).toThrow(ConfigError);
    expect(() => loadConfig({ METRICS_PROVIDER_DOMAINS: "corp=not a domain" })).toThrow(/is not a domain name/);
    const many = Array.from({ length: 17 }, (_, i) => `c${i}=d${i}.example`).join(";");
    expect(() => loadConfig({ METRICS_PROVIDER_DOMAINS: many })).toThrow(/at most 16 classes/);
  });
});

describe("tracing configuration (OTEL_*)", () => {
  it("exports nothing unless an endpoint or an exporter is named", () => {
    expect(loadTracingConfig({}).exporters).toEqual([]);
    expect(loadTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }).exporters).toEqual(["otlp"]);
    expect(loadTracingConfig({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://collector:4318/v1/traces" }).exporters).toEqual(["otlp"]);
    expect(loadTracingConfig({ OTEL_TRACES_EXPORTER: "otlp,console" }).exporters).toEqual(["otlp", "console"]);
    expect(loadTracingConfig({ OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }).exporters).toEqual([]);
    expect(() => loadTracingConfig({ OTEL_TRACES_EXPORTER: "zipkin" })).toThrow(/OTEL_TRACES_EXPORTER=zipkin/);
  });

  it("http/protobuf by default, grpc or http/json when asked; the service name and SDK switch", () => {
    expect(loadTracingConfig({}).protocol).toBe("http/protobuf");
    expect(loadTracingConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }).protocol).toBe("grpc");
    expect(loadTracingConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: "grpc", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json" }).protocol).toBe("http/json");
    expect(() => loadTracingConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: "thrift" })).toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL=thrift/);
    expect(loadTracingConfig({}).serviceName).toBe("otp-email");
    expect(loadTracingConfig({ OTEL_SERVICE_NAME: "otp-eu" }).serviceName).toBe("otp-eu");
    expect(loadTracingConfig({ OTEL_SDK_DISABLED: "TRUE" }).disabled).toBe(true);
    expect(loadTracingConfig({ OTEL_BSP_SCHEDULE_DELAY: "200" }).batch.scheduledDelayMillis).toBe(200);
  });

  it("the service name: OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES, else otp-email", () => {
    expect(loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: "a=b,service.name=otp%20eu" }).serviceName).toBe("otp eu");
    expect(loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: "service.name=x", OTEL_SERVICE_NAME: "otp-eu" }).serviceName).toBe("otp-eu");
    expect(loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: "deployment.environment.name=prod" }).serviceName).toBe("otp-email");
    expect(loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: " service.name = otp%3Deu , ,a=" }).serviceName).toBe("otp=eu");
    expect(loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: "service.name=" }).serviceName).toBe("otp-email");
  });

  it("an OTEL_RESOURCE_ATTRIBUTES the SDK would drop whole is refused, naming the entry", () => {
    for (const [value, why] of [
      ["service.name=%E0%A4%A", "is not valid percent-encoding"],
      ["service.name=otp-eu,region", "has no ="],
      ["team=a=b", "has more than one ="],
      ["=eu", "has an empty key"],
      [`note=${"x".repeat(256)}`, "is longer than 255 characters"],
    ]) {
      expect(() => loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: value }), value).toThrow(`OTEL_RESOURCE_ATTRIBUTES=${value}: "`);
      expect(() => loadTracingConfig({ OTEL_RESOURCE_ATTRIBUTES: value }), value).toThrow(why);
    }
  });

  it("samplers: parentbased_always_on by default; the ratio samplers take OTEL_TRACES_SAMPLER_ARG from 0 to 1", () => {
    expect(loadTracingConfig({}).sampler).toEqual({ name: "parentbased_always_on", ratio: 1 });
    expect(loadTracingConfig({ OTEL_TRACES_SAMPLER: "Always_Off" }).sampler.name).toBe("always_off");
    expect(loadTracingConfig({ OTEL_TRACES_SAMPLER: "traceidratio" }).sampler).toEqual({ name: "traceidratio", ratio: 1 });
    expect(loadTracingConfig({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: " 0.1 " }).sampler).toEqual({
      name: "parentbased_traceidratio",
      ratio: 0.1,
    });
    // The argument belongs to the ratio samplers only.
    expect(loadTracingConfig({ OTEL_TRACES_SAMPLER: "always_on", OTEL_TRACES_SAMPLER_ARG: "junk" }).sampler.ratio).toBe(1);
    expect(() => loadTracingConfig({ OTEL_TRACES_SAMPLER: "jaeger_remote" })).toThrow(/OTEL_TRACES_SAMPLER=jaeger_remote: must be one of/);
    for (const arg of ["1.5", "-0.1", "ten", "NaN"]) {
      expect(() => loadTracingConfig({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: arg }), arg).toThrow(
        `OTEL_TRACES_SAMPLER_ARG=${arg}: the share of traces to sample`,
      );
    }
  });

  it("propagators and resource detectors: known names in order, none, all; anything else refused", () => {
    expect(loadTracingConfig({}).propagators).toEqual(["tracecontext", "baggage"]);
    expect(loadTracingConfig({ OTEL_PROPAGATORS: "b3multi, tracecontext,b3multi" }).propagators).toEqual(["b3multi", "tracecontext"]);
    expect(loadTracingConfig({ OTEL_PROPAGATORS: "none" }).propagators).toEqual([]);
    expect(() => loadTracingConfig({ OTEL_PROPAGATORS: "tracecontext,xray" })).toThrow(/OTEL_PROPAGATORS=tracecontext,xray: "xray" is not one of/);
    expect(() => loadTracingConfig({ OTEL_PROPAGATORS: "none,b3" })).toThrow(/none cannot be combined/);
    expect(() => loadTracingConfig({ OTEL_PROPAGATORS: "," })).toThrow(/OTEL_PROPAGATORS=,: name one of/);
    expect(loadTracingConfig({}).resourceDetectors).toEqual(["serviceinstance", "process", "host", "os", "env"]);
    expect(loadTracingConfig({ OTEL_NODE_RESOURCE_DETECTORS: "all" }).resourceDetectors).toHaveLength(5);
    expect(loadTracingConfig({ OTEL_NODE_RESOURCE_DETECTORS: "env,host" }).resourceDetectors).toEqual(["env", "host"]);
    expect(loadTracingConfig({ OTEL_NODE_RESOURCE_DETECTORS: "none" }).resourceDetectors).toEqual([]);
    expect(() => loadTracingConfig({ OTEL_NODE_RESOURCE_DETECTORS: "gcp" })).toThrow(/OTEL_NODE_RESOURCE_DETECTORS=gcp/);
  });

  it("OTEL_LOG_LEVEL (default warn) and the OTLP endpoints are checked at start-up", () => {
    expect(loadTracingConfig({}).sdkLogLevel).toBe("warn");
    expect(loadTracingConfig({ OTEL_LOG_LEVEL: "DEBUG" }).sdkLogLevel).toBe("debug");
    expect(() => loadTracingConfig({ OTEL_LOG_LEVEL: "loud" })).toThrow(/OTEL_LOG_LEVEL=loud: must be one of none, error, warn/);
    for (const endpoint of ["http://otel-collector:4318", "https://otlp.example.com/", "http://[::1]:4317"]) {
      expect(loadTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint }).exporters, endpoint).toEqual(["otlp"]);
    }
    expect(() => loadTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "otel-collector:4318" })).toThrow(
      /OTEL_EXPORTER_OTLP_ENDPOINT=otel-collector:4318: must be an http:\/\/ or https:\/\/ URL/,
    );
    expect(() => loadTracingConfig({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "grpc://c:4317" })).toThrow(/OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=grpc/);
    // A key in the URL's user part is not repeated in the error.
    expect(() => loadTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "ftp://user:s3cret@c:21" })).toThrow("OTEL_EXPORTER_OTLP_ENDPOINT=ftp://***@c:21:");
  });

  it("a span per Redis command only with TRACE_REDIS_COMMANDS=true", () => {
    expect(loadTracingConfig({}).redisCommandSpans).toBe(false);
    expect(loadTracingConfig({ TRACE_REDIS_COMMANDS: "true" }).redisCommandSpans).toBe(true);
    expect(() => loadTracingConfig({ TRACE_REDIS_COMMANDS: "yes" })).toThrow(/TRACE_REDIS_COMMANDS=yes/);
  });
});

describe("the OpenTelemetry SDK's own diagnostics in the service's log", () => {
  function capture(): { lines: Record<string, unknown>[]; logger: ReturnType<typeof createLogger> } {
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger({ level: "trace", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
    return { lines, logger };
  }

  it("keeps what came before the logger, up to 50 lines, and says how many it dropped", () => {
    const diagnostics = new SdkDiagnostics();
    for (let index = 0; index < 55; index++) diagnostics.warn(`early ${index}`);
    const { lines, logger } = capture();
    diagnostics.attach(logger);
    expect(lines.map((line) => line["msg"])).toEqual([
      ...Array.from({ length: 50 }, (_, index) => `early ${index}`),
      "OpenTelemetry diagnostics written before the logger started were dropped",
    ]);
    expect(lines.at(-1)?.["dropped"]).toBe(5);
  });

  it("logs the same message once a minute and then says how often it came meanwhile; levels map to pino's", () => {
    let now = 0;
    const diagnostics = new SdkDiagnostics({ now: () => now });
    const { lines, logger } = capture();
    diagnostics.attach(logger);
    for (let index = 0; index < 10; index++) diagnostics.error("export failed", new Error("connect ECONNREFUSED 127.0.0.1:4318"));
    diagnostics.warn("Dropped 3 spans because maxQueueSize reached");
    diagnostics.verbose("detail", { spans: 2 });
    now = 59_999;
    diagnostics.error("export failed", new Error("connect ECONNREFUSED 127.0.0.1:4318"));
    now = 60_000;
    diagnostics.error("export failed", new Error("connect ECONNREFUSED 127.0.0.1:4318"));
    expect(lines.map((line) => [line["level"], line["msg"], line["repeated"]])).toEqual([
      ["error", "export failed Error: connect ECONNREFUSED 127.0.0.1:4318", undefined],
      ["warn", "Dropped 3 spans because maxQueueSize reached", undefined],
      ["trace", 'detail {"spans":2}', undefined],
      ["error", "export failed Error: connect ECONNREFUSED 127.0.0.1:4318", 10],
    ]);
  });

  it("names an exporter's error by name, message, code and the collector's answer, without the stack", () => {
    const refused = Object.assign(new Error("Bad Request"), { name: "OTLPExporterError", code: 400, data: " no such tenant \n" });
    expect(describeSdkError(refused)).toBe("OTLPExporterError: Bad Request (code 400): no such tenant");
    expect(describeSdkError(new Error("Timeout"))).toBe("Error: Timeout");
    expect(describeSdkError("plain")).toBe("plain");
    expect(describeSdkError({ message: "odd" })).toBe("Error: odd");
  });
});

describe("the caller's traceparent, without an SDK", () => {
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const spanId = "00f067aa0ba902b7";

  it("reads version 00 and keeps only the sampled flag", () => {
    expect(parseTraceparent(`00-${traceId}-${spanId}-01`)).toEqual({ traceId, spanId, traceFlags: 1, isRemote: true });
    expect(parseTraceparent(` 00-${traceId}-${spanId}-00 `)?.traceFlags).toBe(0);
    expect(parseTraceparent(`00-${traceId}-${spanId}-03`)?.traceFlags).toBe(1);
  });

  it("reads a later version's first four fields, as the W3C specification asks", () => {
    expect(parseTraceparent(`01-${traceId}-${spanId}-01-what-comes-next`)?.traceId).toBe(traceId);
  });

  it("refuses malformed, upper-case, all-zero, version ff and version 00 with extra fields", () => {
    for (const value of [
      "",
      "garbage",
      `00-${traceId.toUpperCase()}-${spanId}-01`,
      `00-${"0".repeat(32)}-${spanId}-01`,
      `00-${traceId}-${"0".repeat(16)}-01`,
      `ff-${traceId}-${spanId}-01`,
      `00-${traceId}-${spanId}-01-extra`,
      `00-${traceId.slice(1)}-${spanId}-01`,
    ]) {
      expect(parseTraceparent(value), value).toBeUndefined();
    }
  });
});

describe("exemplars", () => {
  const ids = { traceId: "4bf92f3577b34da6a3ce929d0e0e4736", spanId: "00f067aa0ba902b7" };

  it("name the trace of a sampled, valid span context", () => {
    expect(traceExemplar({ ...ids, traceFlags: TraceFlags.SAMPLED })).toEqual({ trace_id: ids.traceId });
  });

  it("name nothing for an unsampled trace (it leads nowhere in Jaeger), an invalid context or none", () => {
    expect(traceExemplar({ ...ids, traceFlags: TraceFlags.NONE })).toBeUndefined();
    expect(traceExemplar({ ...INVALID_SPAN_CONTEXT, traceFlags: TraceFlags.SAMPLED })).toBeUndefined();
    expect(traceExemplar({ traceId: "not-hex", spanId: ids.spanId, traceFlags: TraceFlags.SAMPLED })).toBeUndefined();
    // Outside any context: nothing active.
    expect(traceExemplar()).toBeUndefined();
  });
});

describe("the AsyncLocalStorage context manager", () => {
  const key = createContextKey("test");
  const manager = new AsyncLocalStorageContextManager();
  const ctx = ROOT_CONTEXT.setValue(key, "inside");

  it("keeps the context across awaits inside with(), and only there", async () => {
    expect(manager.active()).toBe(ROOT_CONTEXT);
    const seen = await manager.with(ctx, async () => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return manager.active().getValue(key);
    });
    expect(seen).toBe("inside");
    expect(manager.active()).toBe(ROOT_CONTEXT);
  });

  it("binds a function to a context, keeping its this and arguments; anything else is returned as is", () => {
    function read(this: { name: string }, suffix: string): string {
      return `${this.name}:${String(manager.active().getValue(key))}:${suffix}`;
    }
    const target = { name: "t", read: manager.bind(ctx, read) };
    expect(target.read("x")).toBe("t:inside:x");
    const emitter = { on: () => undefined };
    expect(manager.bind(ctx, emitter)).toBe(emitter);
  });
});

describe("exposition", () => {
  it("negotiates OpenMetrics only when the scraper prefers it", () => {
    expect(negotiateFormat(undefined)).toBe("text");
    expect(negotiateFormat("*/*")).toBe("text");
    expect(negotiateFormat("text/plain;version=0.0.4")).toBe("text");
    expect(negotiateFormat("application/openmetrics-text; version=1.0.0")).toBe("openmetrics");
    expect(
      negotiateFormat("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
    ).toBe("openmetrics");
    expect(negotiateFormat("text/plain;q=0.9,application/openmetrics-text;q=0.5")).toBe("text");
    expect(negotiateFormat("application/openmetrics-text;q=0")).toBe("text");
  });

  it("renders both formats from one registry, counters keeping their names in each", async () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    metrics.sends.inc({ purpose: "login", outcome: "accepted" });
    for (let round = 0; round < 2; round++) {
      const openMetrics = await metrics.render("openmetrics");
      expect(openMetrics).toContain("# TYPE otp_sends counter");
      expect(openMetrics).toContain('otp_sends_total{purpose="login",outcome="accepted"} 1');
      expect(openMetrics.endsWith("# EOF\n")).toBe(true);
      const text = await metrics.render("text");
      expect(text).toContain("# TYPE otp_sends_total counter");
      expect(text).toContain('otp_sends_total{purpose="login",outcome="accepted"} 1');
      expect(text).not.toContain("# EOF");
    }
  });

  it("caps the number of distinct limit labels", () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false, maxLimitLabels: 2 });
    expect(metrics.limitLabel("recipient:15m")).toBe("recipient:15m");
    expect(metrics.limitLabel("Caller Quota!")).toBe("caller_quota_");
    expect(metrics.limitLabel("global:1d")).toBe("other");
    expect(metrics.limitLabel("recipient:15m")).toBe("recipient:15m");
  });

  it("names gRPC codes as grpc-go does", () => {
    expect([0, 3, 4, 8, 14, 16, 99].map(grpcCodeName)).toEqual([
      "OK",
      "InvalidArgument",
      "DeadlineExceeded",
      "ResourceExhausted",
      "Unavailable",
      "Unauthenticated",
      "Code(99)",
    ]);
  });
});

describe("the SMTP pool gauges", () => {
  /** The value of gauge `name` in `text`. */
  const gauge = (text: string, name: string): number => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);

  it("read the connections in use from the watched transport at each scrape, never above the pool size; 0 with none watched", async () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    expect(gauge(await metrics.render("text"), "otp_smtp_pool_connections_in_use")).toBe(0);

    let onConnection = 2;
    metrics.watchPool({ onConnection: () => onConnection }, 3);
    let text = await metrics.render("text");
    expect(gauge(text, "otp_smtp_pool_connections_in_use")).toBe(2);
    expect(gauge(text, "otp_smtp_pool_size")).toBe(3);
    onConnection = 0;
    expect(gauge(await metrics.render("text"), "otp_smtp_pool_connections_in_use")).toBe(0);
    // Sends only nodemailer's own builder can make count from when they are handed over, queued out of sight.
    onConnection = 5;
    text = await metrics.render("openmetrics");
    expect(gauge(text, "otp_smtp_pool_connections_in_use")).toBe(3);
  });
});

describe("the /metrics server", () => {
  it("serves GET /metrics only, and falls back to a free port only when told to", async () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const logger = createLogger({ level: "silent" });
    const first = await startMetricsServer({ address: "127.0.0.1:0", metrics, logger });
    try {
      expect((await fetch(first.url)).status).toBe(200);
      expect((await fetch(first.url.replace("/metrics", "/"))).status).toBe(404);
      expect((await fetch(first.url, { method: "POST" })).status).toBe(405);
      const taken = `127.0.0.1:${first.address.port}`;
      await expect(startMetricsServer({ address: taken, metrics, logger })).rejects.toThrow(/EADDRINUSE/);
      const second = await startMetricsServer({ address: taken, metrics, logger, fallbackToFreePort: true });
      expect(second.address.port).not.toBe(first.address.port);
      await second.close();
    } finally {
      await first.close();
    }
  });

  it("answers /readyz from the instance's health (503 naming what is down) and /livez whenever it answers", async () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const logger = createLogger({ level: "silent" });
    const health = createHealthState({ components: ["storage", "relay"] });
    const server = await startMetricsServer({ address: "127.0.0.1:0", metrics, logger, health });
    const at = (path: string, init?: RequestInit) => fetch(server.url.replace("/metrics", path), init);
    try {
      let ready = await at("/readyz");
      expect(ready.status).toBe(503);
      expect(await ready.text()).toBe("NOT_SERVING\nstorage: down (not yet probed)\nrelay: down (not yet probed)\n");
      health.set("storage", true);
      health.set("relay", true);
      ready = await at("/readyz");
      expect([ready.status, await ready.text()]).toEqual([200, "SERVING\n"]);
      expect(ready.headers.get("cache-control")).toBe("no-store");
      health.set("storage", false, "storage is unreachable");
      ready = await at("/readyz?verbose");
      expect([ready.status, await ready.text()]).toEqual([503, "NOT_SERVING\nstorage: down (storage is unreachable)\n"]);
      expect((await at("/readyz", { method: "HEAD" })).status).toBe(503);

      // Down or not, the process answers: alive.
      const live = await at("/livez");
      expect([live.status, await live.text()]).toEqual([200, "alive\n"]);
      expect((await at("/livez", { method: "POST" })).status).toBe(405);
      expect(await (await at("/nope")).text()).toContain("/readyz and /livez");
    } finally {
      await server.close();
    }
    // Without the health, only /metrics.
    const bare = await startMetricsServer({ address: "127.0.0.1:0", metrics, logger });
    try {
      expect((await fetch(bare.url.replace("/metrics", "/readyz"))).status).toBe(404);
    } finally {
      await bare.close();
    }
  });
});

describe("SendOtp outcomes", () => {
  it("counts a send refused for a suppressed recipient as suppressed, not as an error", async () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const refusing = {
      sendOtp: () =>
        Promise.reject(new OtpError("failed_precondition", "email not sent: suppressed", { reason: "RECIPIENT_SUPPRESSED" })),
      getDeliveryStatus: () => Promise.reject(new Error("unused")),
      verifyOtp: () => Promise.reject(new Error("unused")),
    } as unknown as OtpService;
    const otp = instrumentOtpService(refusing, metrics);
    await expect(otp.sendOtp({} as never, { purpose: "login" } as never)).rejects.toThrow("suppressed");
    const text = await metrics.render("text");
    expect(text).toContain('otp_sends_total{purpose="login",outcome="suppressed"} 1');
    expect(text).toContain('otp_sends_total{purpose="login",outcome="error"} 0');
  });
});
