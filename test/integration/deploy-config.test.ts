/**
 * The docker-compose stack, checked without Docker (no engine runs on our
 * machines, so nothing here builds an image or starts a container):
 *
 * - docker-compose.yml parses; every file it mounts exists; every variable it
 *   gives the service is one the service reads, and the whole environment
 *   loads with src/config.ts (production mode); ports, hosts and URLs agree
 *   with GRPC_ADDR, METRICS_ADDR, BOUNCE_SMTP_ADDR, the Dockerfile, the
 *   Prometheus scrape target and the Grafana data sources.
 * - The Dockerfile is multi-stage Node 24 slim, non-root, runs what
 *   `npm start` runs, and its health check is scripts/healthcheck.mjs.
 * - `promtool check config`, `promtool check rules` and `promtool test rules`
 *   pass (Debian package `prometheus`; missing promtool fails the run).
 * - The compiled service, started with the compose environment (only the
 *   hosts swapped for loopback servers), is healthy by the health-check
 *   script, and after a few calls its /metrics has every metric, label and
 *   label value that the alert rules and the dashboard's PromQL name.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { cp, mkdir, mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer } from "node:net";
import { join, posix } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { createTransport } from "nodemailer";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { loadConfig, loadTracingConfig, parseDuration, type Config } from "../../src/config.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { GrpcOtpClient, grpcError, grpcUnary } from "../support/grpc.js";
import {
  at,
  dict,
  execForm,
  finalStageEnv,
  isDict,
  list,
  otelSdkVariables,
  promtool as promtoolIn,
  readDockerfile,
  readYaml,
  root,
  splitAddress,
  str,
  text,
  variablesReadByConfig,
  type Dict,
  type Run,
} from "../support/deploy-files.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";


/** The bearer token whose SHA-256 docker-compose.yml puts in AUTH_TOKENS (README "Run with Docker"). */
const demoToken = "demo-token-change-me";

// ---------------------------------------------------------------------------
// Reading the files

/**
 * Compose's variable substitution as a user without a .env file gets it:
 * `${NAME:-default}` / `${NAME-default}` give the default, `$$` is a `$`.
 * A variable without a default would need setting before `docker compose up`,
 * which the README's one command does not do: that fails.
 */
function interpolate(value: unknown, where: string): unknown {
  if (typeof value === "string") {
    return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}|\$\{[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (match, ...groups) => {
      if (match === "$$") return "$";
      const fallback = groups[2] as string | undefined;
      if (groups[0] === undefined || fallback === undefined) {
        throw new Error(`${where}: ${match} has no default (use \${NAME:-default}); \`docker compose up\` would need it set`);
      }
      return fallback;
    });
  }
  if (Array.isArray(value)) return value.map((item, index) => interpolate(item, `${where}[${index}]`));
  if (isDict(value)) return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, interpolate(item, `${where}.${key}`)]));
  return value;
}

interface Port {
  readonly hostIp: string | undefined;
  readonly published: number | undefined;
  readonly target: number;
}

interface Mount {
  readonly source: string;
  readonly target: string;
  readonly readOnly: boolean;
  readonly bind: boolean;
}

interface Service {
  readonly name: string;
  readonly raw: Dict;
  readonly image: string | undefined;
  readonly environment: Record<string, string>;
  readonly ports: Port[];
  readonly mounts: Mount[];
  readonly dependsOn: Record<string, string>;
  readonly healthcheck: string[] | undefined;
  readonly command: string[];
}

function parsePort(entry: unknown, where: string): Port {
  if (isDict(entry)) {
    const published = entry["published"];
    return {
      hostIp: entry["host_ip"] === undefined ? undefined : str(entry["host_ip"], where),
      published: published === undefined ? undefined : Number(published),
      target: Number(entry["target"]),
    };
  }
  const spec = str(entry, where).replace(/\/(tcp|udp)$/, "");
  const parts = spec.split(":");
  const target = Number(parts.at(-1));
  if (!Number.isInteger(target)) throw new Error(`${where}: cannot read port ${spec}`);
  if (parts.length === 1) return { hostIp: undefined, published: undefined, target };
  return { hostIp: parts.length === 3 ? parts[0] : undefined, published: Number(parts.at(-2)), target };
}

function parseMount(entry: unknown, where: string): Mount {
  if (isDict(entry)) {
    return {
      source: str(entry["source"], where),
      target: str(entry["target"], where),
      readOnly: entry["read_only"] === true,
      bind: entry["type"] === "bind",
    };
  }
  const [source = "", target = "", mode = ""] = str(entry, where).split(":");
  return { source, target, readOnly: mode.split(",").includes("ro"), bind: /^[./~]/.test(source) };
}

function parseEnvironment(value: unknown, where: string): Record<string, string> {
  if (Array.isArray(value)) {
    return Object.fromEntries(
      value.map((entry, index) => {
        const line = str(entry, `${where}[${index}]`);
        const equals = line.indexOf("=");
        if (equals < 1) throw new Error(`${where}: ${line} has no value`);
        return [line.slice(0, equals), line.slice(equals + 1)];
      }),
    );
  }
  if (value === undefined) return {};
  return Object.fromEntries(Object.entries(dict(value, where)).map(([key, item]) => [key, str(item, `${where}.${key}`)]));
}

function parseCommand(value: unknown, where: string): string[] {
  if (value === undefined) return [];
  if (typeof value === "string") return value.split(/\s+/).filter((part) => part !== "");
  return list(value, where).map((part, index) => str(part, `${where}[${index}]`));
}

function readCompose(): { services: Map<string, Service>; top: Dict } {
  const top = dict(interpolate(readYaml("docker-compose.yml"), "docker-compose.yml"), "docker-compose.yml");
  const services = new Map<string, Service>();
  for (const [name, value] of Object.entries(dict(top["services"], "services"))) {
    const where = `services.${name}`;
    const raw = dict(value, where);
    const dependsRaw = raw["depends_on"];
    const dependsOn: Record<string, string> = Array.isArray(dependsRaw)
      ? Object.fromEntries(dependsRaw.map((dep) => [str(dep, `${where}.depends_on`), "service_started"]))
      : Object.fromEntries(
          Object.entries(dependsRaw === undefined ? {} : dict(dependsRaw, `${where}.depends_on`)).map(([dep, spec]) => [
            dep,
            str(dict(spec, `${where}.depends_on.${dep}`)["condition"] ?? "service_started", `${where}.depends_on.${dep}.condition`),
          ]),
        );
    const health = raw["healthcheck"] === undefined ? undefined : dict(raw["healthcheck"], `${where}.healthcheck`);
    services.set(name, {
      name,
      raw,
      image: raw["image"] === undefined ? undefined : str(raw["image"], `${where}.image`),
      environment: parseEnvironment(raw["environment"], `${where}.environment`),
      ports: list(raw["ports"], `${where}.ports`).map((port, index) => parsePort(port, `${where}.ports[${index}]`)),
      mounts: list(raw["volumes"], `${where}.volumes`).map((mount, index) => parseMount(mount, `${where}.volumes[${index}]`)),
      dependsOn,
      healthcheck: health === undefined ? undefined : parseCommand(health["test"], `${where}.healthcheck.test`),
      command: parseCommand(raw["command"], `${where}.command`),
    });
  }
  return { services, top };
}

/** The host file or directory behind `containerPath` in `service`, through its bind mounts. */
function hostPathOf(service: Service, containerPath: string): string | undefined {
  const mount = service.mounts
    .filter((m) => m.bind && (containerPath === m.target || containerPath.startsWith(`${m.target}/`)))
    .sort((a, b) => b.target.length - a.target.length)[0];
  if (mount === undefined) return undefined;
  return at(mount.source, posix.relative(mount.target, containerPath));
}

/** `host:port` -> its parts (`[v6]:port` too). */
// ---------------------------------------------------------------------------
// PromQL: the metrics, labels and values a query names

interface Matcher {
  readonly label: string;
  readonly op: string;
  readonly value: string;
}
interface Selector {
  readonly metric: string;
  readonly matchers: Matcher[];
}
interface QueryParts {
  readonly selectors: Selector[];
  /** Labels of by / without / on / ignoring / group_left / group_right clauses. */
  readonly grouping: string[];
}

interface Token {
  readonly kind: "ident" | "string" | "number" | "punct" | "var";
  readonly text: string;
}

function lexPromql(expr: string): Token[] {
  const rules: [Token["kind"] | "skip", RegExp][] = [
    ["skip", /^(?:\s+|#[^\n]*)/],
    ["string", /^(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)/],
    ["var", /^\$(?:\{[A-Za-z_][A-Za-z0-9_:]*\}|[A-Za-z_][A-Za-z0-9_]*)/],
    ["number", /^(?:\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-zA-Z]*|\.\d+)/],
    ["ident", /^[A-Za-z_:][A-Za-z0-9_:]*/],
    ["punct", /^(?:=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}[\],@])/],
  ];
  const tokens: Token[] = [];
  let rest = expr;
  outer: while (rest !== "") {
    for (const [kind, pattern] of rules) {
      const match = pattern.exec(rest);
      if (match === null) continue;
      if (kind !== "skip") tokens.push({ kind, text: kind === "string" ? match[0].slice(1, -1) : match[0] });
      rest = rest.slice(match[0].length);
      continue outer;
    }
    throw new Error(`PromQL: cannot read "${rest.slice(0, 30)}" in ${expr}`);
  }
  return tokens;
}

const aggregations = new Set(["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"]);
const groupingKeywords = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
const otherKeywords = new Set(["bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"]);

/** The selectors (metric name and matchers) and grouping labels of a PromQL expression. */
function parsePromql(expr: string): QueryParts {
  const tokens = lexPromql(expr);
  const selectors: Selector[] = [];
  const grouping: string[] = [];
  let bracketDepth = 0;
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (token.text === "[") bracketDepth++;
    if (token.text === "]") bracketDepth--;
    if (bracketDepth > 0 || token.kind === "string") continue;
    if (token.kind === "punct" && token.text === "{") throw new Error(`PromQL: a selector without a metric name in ${expr}`);
    if (token.kind !== "ident") continue;
    const next = tokens[i + 1];
    const keyword = token.text.toLowerCase();
    if (groupingKeywords.has(keyword)) {
      if (next?.text === "(") {
        let j = i + 2;
        for (; j < tokens.length && tokens[j]?.text !== ")"; j++) {
          const label = tokens[j];
          if (label.kind === "ident") grouping.push(label.text);
        }
        i = j;
      }
      continue;
    }
    if (otherKeywords.has(keyword) || aggregations.has(keyword) || next?.text === "(") continue; // a function or operator
    const matchers: Matcher[] = [];
    if (next?.text === "{") {
      let j = i + 2;
      while (j < tokens.length && tokens[j]?.text !== "}") {
        const [label, op, value] = [tokens[j], tokens[j + 1], tokens[j + 2]];
        if (label?.kind !== "ident" || op?.kind !== "punct" || value?.kind !== "string") {
          throw new Error(`PromQL: cannot read the matchers of ${token.text} in ${expr}`);
        }
        matchers.push({ label: label.text, op: op.text, value: value.text });
        j += 3;
        if (tokens[j]?.text === ",") j++;
      }
      i = j;
    }
    selectors.push({ metric: token.text, matchers });
  }
  return { selectors, grouping };
}

// ---------------------------------------------------------------------------
// The Prometheus text format, as scraped

interface Family {
  readonly name: string;
  readonly type: string;
  readonly samples: { readonly name: string; readonly labels: Record<string, string>; readonly value: number }[];
}

function parseExposition(body: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: Family | undefined;
  for (const line of body.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type !== null) {
      current = { name: type[1] ?? "", type: type[2] ?? "", samples: [] };
      families.set(current.name, current);
      continue;
    }
    if (line.startsWith("#") || line.trim() === "") continue;
    const sample = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (sample === null || current === undefined) throw new Error(`/metrics: cannot read "${line}"`);
    const labels: Record<string, string> = {};
    for (const match of (sample[2] ?? "").matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[match[1] ?? ""] = match[2] ?? "";
    }
    current.samples.push({ name: sample[1] ?? "", labels, value: Number(sample[3]) });
  }
  return families;
}

/** The series names a family exposes: `x_bucket`, `x_sum`, `x_count` for a histogram, its own name otherwise. */
function seriesNames(family: Family): string[] {
  switch (family.type) {
    case "histogram":
      return [`${family.name}_bucket`, `${family.name}_sum`, `${family.name}_count`];
    case "summary":
      return [family.name, `${family.name}_sum`, `${family.name}_count`];
    default:
      return [family.name];
  }
}

// ---------------------------------------------------------------------------
// Processes and ports

/** `count` distinct loopback ports nothing listens on now (all held open together, so no two are the same). */
async function freePorts(count: number): Promise<number[]> {
  const servers = Array.from({ length: count }, () => createServer());
  await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))));
  const ports = servers.map((server) => {
    const address = server.address();
    if (typeof address !== "object" || address === null) throw new Error("no free port");
    return address.port;
  });
  await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  return ports;
}

/** promtool in deploy/prometheus, where prometheus.yml names alerts.yml. */
function promtool(args: readonly string[]): Promise<Run> {
  return promtoolIn(args, at("deploy", "prometheus"));
}

function healthcheck(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["scripts/healthcheck.mjs", ...args],
      { cwd: root, timeout: 15_000, env: { PATH: process.env["PATH"] ?? "", ...env } },
      (error, stdout, stderr) => resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stdout, stderr }),
    );
  });
}

// ---------------------------------------------------------------------------

const { services } = readCompose();
const service = (name: string): Service => {
  const found = services.get(name);
  if (found === undefined) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
};
const otpEmail = service("otp-email");
const composeEnv = otpEmail.environment;

interface AlertRule {
  readonly alert: string;
  readonly expr: string;
  readonly labels: Dict;
  readonly annotations: Dict;
}

function readAlertRules(): AlertRule[] {
  const rules = dict(readYaml("deploy/prometheus/alerts.yml"), "alerts.yml");
  return list(rules["groups"], "groups").flatMap((group, g) =>
    list(dict(group, `groups[${g}]`)["rules"], `groups[${g}].rules`).map((rule, r) => {
      const where = `groups[${g}].rules[${r}]`;
      const entry = dict(rule, where);
      return {
        alert: str(entry["alert"], `${where}.alert`),
        expr: str(entry["expr"], `${where}.expr`),
        labels: dict(entry["labels"] ?? {}, `${where}.labels`),
        annotations: dict(entry["annotations"] ?? {}, `${where}.annotations`),
      };
    }),
  );
}

interface DashboardQuery {
  readonly panel: string;
  readonly expr: string;
  readonly datasourceUid: string;
}

const dashboard = dict(JSON.parse(text("deploy", "grafana", "dashboards", "otp-email.json")) as unknown, "otp-email.json");
const panels = list(dashboard["panels"], "panels").map((panel, index) => dict(panel, `panels[${index}]`));
const dataPanels = panels.filter((panel) => panel["type"] !== "row");

function dashboardQueries(): DashboardQuery[] {
  return dataPanels.flatMap((panel) => {
    const title = str(panel["title"], "panel.title");
    return list(panel["targets"], `${title}.targets`).map((target) => {
      const entry = dict(target, `${title}.targets[]`);
      const datasource = dict(entry["datasource"] ?? panel["datasource"], `${title}.datasource`);
      return { panel: title, expr: str(entry["expr"], `${title}.expr`), datasourceUid: str(datasource["uid"], `${title}.datasource.uid`) };
    });
  });
}

/** The template variables' `label_values(metric, label)` queries. */
function templateQueries(): { name: string; metric: string; label: string }[] {
  const templating = dict(dashboard["templating"] ?? { list: [] }, "templating");
  return list(templating["list"], "templating.list").flatMap((variable) => {
    const entry = dict(variable, "templating.list[]");
    if (entry["type"] !== "query") return [];
    const query = entry["query"];
    const definition = isDict(query) ? str(query["query"], "query.query") : str(query, "query");
    const match = /^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$/.exec(definition);
    if (match === null) throw new Error(`template variable ${String(entry["name"])}: only label_values(metric, label) is checked, not ${definition}`);
    return [{ name: str(entry["name"], "name"), metric: match[1] ?? "", label: match[2] ?? "" }];
  });
}

function readDatasources(): Dict[] {
  const dir = at("deploy", "grafana", "provisioning", "datasources");
  return readdirSync(dir)
    .filter((file) => /\.ya?ml$/.test(file))
    .flatMap((file) => list(dict(readYaml(`deploy/grafana/provisioning/datasources/${file}`), file)["datasources"], `${file}.datasources`))
    .map((entry, index) => dict(entry, `datasources[${index}]`));
}

/** A `http://host:port` URL in the compose network: the host is a service that listens on that port. */
function expectServiceUrl(url: string, serviceName: string, where: string): void {
  const parsed = new URL(url);
  expect(parsed.hostname, `${where}: host`).toBe(serviceName);
  const port = Number(parsed.port === "" ? (parsed.protocol === "https:" ? 443 : 80) : parsed.port);
  const target = service(serviceName);
  const listens = [...target.ports.map((p) => p.target), ...list(target.raw["expose"], "expose").map(Number)];
  expect(listens, `${where}: ${serviceName} must publish or expose port ${port}`).toContain(port);
}

describe("docker-compose.yml", () => {
  it("defines the whole stack, with pinned images and a build for the service", () => {
    expect([...services.keys()].sort()).toEqual(["grafana", "jaeger", "mailpit", "otp-email", "prometheus", "redis"]);
    expect(otpEmail.raw["build"]).toBe(".");
    expect(existsSync(at("Dockerfile"))).toBe(true);
    for (const { name, image } of services.values()) {
      if (name === "otp-email") continue;
      expect(image, `${name}: pin an image tag`).toMatch(/^[\w./-]+:[\w.-]+$/);
      expect(image, `${name}: pin a version, not latest`).not.toMatch(/:latest$/);
    }
  });

  it("mounts only files and directories that exist, read-only", () => {
    const mounts = [...services.values()].flatMap((s) => s.mounts.map((m) => ({ ...m, service: s.name })));
    expect(mounts.length).toBeGreaterThan(0);
    for (const mount of mounts) {
      expect(mount.bind, `${mount.service}: ${mount.source} should be a bind mount of a repository path`).toBe(true);
      expect(existsSync(at(mount.source)), `${mount.service}: ${mount.source} does not exist`).toBe(true);
      expect(mount.readOnly, `${mount.service}: mount ${mount.source} read-only (:ro)`).toBe(true);
    }
  });

  it("points Prometheus and Grafana at files their mounts provide", () => {
    const prometheus = service("prometheus");
    const configFlag = prometheus.command.find((arg) => arg.startsWith("--config.file="));
    expect(configFlag).toBeDefined();
    const configPath = hostPathOf(prometheus, (configFlag ?? "").slice("--config.file=".length));
    expect(configPath).toBe(at("deploy", "prometheus", "prometheus.yml"));
    const config = dict(readYaml("deploy/prometheus/prometheus.yml"), "prometheus.yml");
    for (const ruleFile of list(config["rule_files"], "rule_files")) {
      expect(existsSync(join(at("deploy", "prometheus"), str(ruleFile, "rule_files[]"))), `rule file ${String(ruleFile)}`).toBe(true);
    }

    const grafana = service("grafana");
    expect(hostPathOf(grafana, "/etc/grafana/provisioning/datasources")).toBe(at("deploy", "grafana", "provisioning", "datasources"));
    expect(hostPathOf(grafana, "/etc/grafana/provisioning/dashboards")).toBe(at("deploy", "grafana", "provisioning", "dashboards"));
    const providers = dict(readYaml("deploy/grafana/provisioning/dashboards/dashboards.yml"), "dashboards.yml");
    for (const provider of list(providers["providers"], "providers")) {
      const path = str(dict(dict(provider, "provider")["options"], "options")["path"], "options.path");
      const hostDir = hostPathOf(grafana, path);
      expect(hostDir, `dashboard provider path ${path} is not mounted`).toBeDefined();
      expect(readdirSync(hostDir ?? "").filter((file) => file.endsWith(".json")).length).toBeGreaterThan(0);
    }
    const home = grafana.environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    if (home !== undefined) expect(existsSync(hostPathOf(grafana, home) ?? ""), `home dashboard ${home}`).toBe(true);
  });

  it("orders start-up on health: every dependency exists, and service_healthy ones have a health check", () => {
    const conditions = new Set(["service_started", "service_healthy", "service_completed_successfully"]);
    for (const s of services.values()) {
      expect(s.healthcheck, `${s.name}: health check`).toBeDefined();
      for (const [dependency, condition] of Object.entries(s.dependsOn)) {
        expect(services.has(dependency), `${s.name} depends on unknown ${dependency}`).toBe(true);
        expect(conditions.has(condition), `${s.name} -> ${dependency}: condition ${condition}`).toBe(true);
        if (condition === "service_healthy") expect(service(dependency).healthcheck, `${dependency} needs a health check`).toBeDefined();
      }
    }
    expect(otpEmail.dependsOn).toMatchObject({ redis: "service_healthy", mailpit: "service_healthy" });
  });

  it("gives the service only variables it reads, and they load as a production config", () => {
    const known = variablesReadByConfig();
    expect(known.has("GRPC_ADDR") && known.has("AUTH_TOKENS")).toBe(true); // the scan itself works
    const unknown = Object.keys(composeEnv).filter((name) => !known.has(name) && !otelSdkVariables.has(name));
    expect(unknown, "variables the service never reads (a typo?)").toEqual([]);

    const config: Config = loadConfig(composeEnv);
    expect(config.env).toBe("production");
    expect(config.redis?.url).toBe("redis://redis:6379");
    expect(config.smtp.url).toBe("smtp://mailpit:1025?starttls=off");
    expect(config.otp.secretGenerated).toBe(false);
    expect(config.auth.anonymous).toBe(false);
    const demoHash = createHash("sha256").update(demoToken).digest();
    expect(config.auth.tokens.some((token) => token.sha256.equals(demoHash)), "AUTH_TOKENS holds the demo token's hash").toBe(true);

    const tracing = loadTracingConfig(composeEnv);
    expect(tracing).toMatchObject({ disabled: false, exporters: ["otlp"], protocol: "http/protobuf", serviceName: "otp-email" });
  });

  it("reaches Redis, Mailpit and Jaeger at hosts and ports those services have", () => {
    const config = loadConfig(composeEnv);
    const redis = new URL(config.redis?.url ?? "");
    expect(redis.hostname).toBe("redis");
    expect(service("redis").ports.map((p) => p.target)).toContain(Number(redis.port || 6379));
    const smtp = new URL(config.smtp.url ?? "");
    expect(smtp.hostname).toBe("mailpit");
    expect(service("mailpit").ports.map((p) => p.target)).toContain(Number(smtp.port));
    expectServiceUrl(composeEnv["OTEL_EXPORTER_OTLP_ENDPOINT"] ?? "", "jaeger", "OTEL_EXPORTER_OTLP_ENDPOINT");
    expect(composeEnv["OTEL_EXPORTER_OTLP_ENDPOINT"]).toMatch(/:4318$/); // http/protobuf is the OTLP/HTTP port
  });

  it("publishes exactly the service's listening ports, on loopback only", () => {
    const config = loadConfig(composeEnv);
    const listening = [config.grpcAddr, config.metrics.addr ?? "", config.bounce.smtpAddr ?? ""].map(splitAddress);
    for (const { host } of listening) expect(host, "listen on every interface inside the container").toBe("0.0.0.0");
    expect(otpEmail.ports.map((p) => p.target).sort()).toEqual(listening.map((l) => l.port).sort());
    for (const s of services.values()) {
      for (const port of s.ports) {
        expect(port.hostIp, `${s.name}:${port.target} is published beyond this machine`).toBe("127.0.0.1");
        expect(port.published, `${s.name}: same port on the host`).toBe(port.target);
      }
    }
  });

  it("lets a stopping service finish before docker kills it: stop_grace_period covers SHUTDOWN_GRACE and what follows it", () => {
    const config = loadConfig(composeEnv);
    const stopGraceMs = parseDuration(str(otpEmail.raw["stop_grace_period"], "otp-email.stop_grace_period")) ?? 0;
    // After the grace period: the final record writes (1 s), Redis QUIT (its command timeout) and the
    // buffered spans' export (at most 5 s), plus a second of slack.
    const afterGraceMs = 1000 + (config.redis?.commandTimeoutMs ?? 0) + 5000 + 1000;
    expect(stopGraceMs).toBeGreaterThanOrEqual(config.shutdownGraceMs + afterGraceMs);
  });

  it("checks the service's health with the script the image carries", () => {
    expect(otpEmail.healthcheck).toEqual(["CMD", "node", "scripts/healthcheck.mjs", "--timeout", "3000"]);
    expect(existsSync(at("scripts", "healthcheck.mjs"))).toBe(true);
  });
});

describe("README configuration table", () => {
  it("names exactly the variables config.ts reads (OTEL_* in one row)", () => {
    const readme = text("README.md");
    const section = readme.slice(readme.indexOf("## Configuration"), readme.indexOf("## Delivery truth"));
    const documented = new Set(
      [...section.matchAll(/^\| (`[A-Z_*]+`(?: \/ `[A-Z_*]+`)*) \|/gm)].flatMap((row) => [...(row[1] ?? "").matchAll(/`([A-Z_*]+)`/g)].map((m) => m[1] ?? "")),
    );
    expect(documented.has("OTEL_*"), "the OTEL_* row").toBe(true);
    const read = [...variablesReadByConfig()].filter((name) => !name.startsWith("OTEL_"));
    expect(read.filter((name) => !documented.has(name)), "read by config.ts, missing from the table").toEqual([]);
    expect(
      [...documented].filter((name) => name !== "OTEL_*" && !variablesReadByConfig().has(name)),
      "in the table, never read",
    ).toEqual([]);
  });
});

describe("Dockerfile", () => {
  const dockerfile = readDockerfile();
  const final = dockerfile.stages.length - 1;
  const finalInstructions = (keyword: string) => dockerfile.instructions.filter((i) => i.keyword === keyword && i.stage === final);

  it("builds in stages on Node 24 slim and ships production dependencies only", () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of dockerfile.stages) expect(stage.image).toMatch(/^node:24(\.\d+)*-(bookworm-|trixie-)?slim$/);
    const runs = dockerfile.instructions.filter((i) => i.keyword === "RUN").map((i) => i.args);
    expect(runs.some((r) => /\bnpm ci\b/.test(r) && !r.includes("--omit=dev")), "a build stage installs every dependency").toBe(true);
    expect(runs.some((r) => r.includes("npm run build")), "and compiles").toBe(true);
    expect(runs.some((r) => /\bnpm ci\b.*--omit=dev/.test(r)), "another installs production dependencies only").toBe(true);
    const copies = finalInstructions("COPY").map((i) => i.args);
    expect(copies.some((c) => /--from=\S+ \/app\/dist \.\/dist/.test(c)), "dist/ comes from the build stage").toBe(true);
    expect(copies.some((c) => /\bsrc\b/.test(c)), "no TypeScript sources in the final image").toBe(false);
    const ignored = text(".dockerignore").split(/\r?\n/).map((line) => line.trim());
    expect(ignored).toEqual(expect.arrayContaining(["node_modules", "dist", ".git"]));
  });

  it("runs as a non-root user what `npm start` runs, listening where compose publishes", () => {
    const user = finalInstructions("USER").at(-1)?.args ?? "root";
    expect(user).not.toMatch(/^(root|0)(:.*)?$/);
    const cmd = execForm(finalInstructions("CMD").at(-1)?.args ?? "", "CMD");
    const packageJson = JSON.parse(text("package.json")) as { scripts: Record<string, string> };
    expect(cmd.join(" ")).toBe(packageJson.scripts["start"]);
    for (const file of cmd.filter((arg) => arg.endsWith(".js"))) {
      expect(existsSync(at(file)), `${file} (compiled by the test run's global setup)`).toBe(true);
    }

    const env = finalStageEnv(dockerfile);
    expect(env["NODE_ENV"]).toBe("production");
    expect(env["GRPC_ADDR"]).toBe(composeEnv["GRPC_ADDR"]);
    expect(env["METRICS_ADDR"]).toBe(composeEnv["METRICS_ADDR"]);
    const exposed = finalInstructions("EXPOSE").flatMap((i) => i.args.split(/\s+/)).map((p) => Number(p.replace(/\/tcp$/, "")));
    expect(exposed).toEqual(expect.arrayContaining([splitAddress(env["GRPC_ADDR"] ?? "").port, splitAddress(env["METRICS_ADDR"] ?? "").port]));
    // Every port compose publishes for the service, the bounce intake's (BOUNCE_SMTP_ADDR) too: `docker run -P`
    // and tools that read the image's ports find it.
    expect(exposed).toEqual(expect.arrayContaining(otpEmail.ports.map((p) => p.target)));
  });

  it("the operator commands README gives for the image (npm run doctor, suppression, deliveries) run there without a build step", async () => {
    // The final stage's files, laid out as its COPY lines place them: dist/ from the build stage
    // (this checkout's, compiled by the global setup), node_modules from the deps stage, the rest from here.
    const image = await mkdtemp(join(tmpdir(), "otp-image-"));
    try {
      for (const { args } of finalInstructions("COPY")) {
        const words = args.split(/\s+/);
        const from = words.find((word) => word.startsWith("--from="));
        const [destination = ".", ...sourcesReversed] = words.filter((word) => !word.startsWith("--")).reverse();
        const sources = sourcesReversed.reverse();
        for (const source of sources) {
          const local = from === undefined ? source : source.replace(/^\/app\//, "");
          const target = destination.endsWith("/") ? join(image, destination, posix.basename(local)) : join(image, destination);
          await mkdir(join(target, ".."), { recursive: true });
          if (local === "node_modules") await symlink(at("node_modules"), target);
          else await cp(at(local), target, { recursive: true });
        }
      }
      expect(existsSync(join(image, "src")), "no sources in the image").toBe(false);
      const npm = (script: string, ...args: string[]) =>
        new Promise<{ code: number | null; output: string }>((resolve) => {
          execFile("npm", ["run", "--silent", script, "--", ...args], { cwd: image, env: { PATH: process.env["PATH"] ?? "", NODE_ENV: "production" } }, (error, stdout, stderr) =>
            resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, output: stdout + stderr }),
          );
        });
      // Without REDIS_URL the command stops on its configuration (78), having started: not on a missing build.
      const suppression = await npm("suppression", "show", "ana@example.com");
      expect(suppression.output).not.toMatch(/ENOENT|compiling TypeScript|Cannot find module/);
      expect(suppression.code, suppression.output).toBe(78);
      const deliveries = await npm("deliveries", "ana@example.com");
      expect(deliveries.output).not.toMatch(/ENOENT|compiling TypeScript|Cannot find module/);
      expect(deliveries.code, deliveries.output).toBe(78);
      const doctor = await npm("doctor", "--help");
      expect(doctor.output).not.toMatch(/ENOENT|compiling TypeScript|Cannot find module/);
    } finally {
      await rm(image, { recursive: true, force: true });
    }
  });

  it("health-checks with scripts/healthcheck.mjs, which it copies in", () => {
    const health = finalInstructions("HEALTHCHECK").at(-1)?.args ?? "";
    expect(execForm(health, "HEALTHCHECK")).toEqual(otpEmail.healthcheck?.slice(1));
    expect(finalInstructions("COPY").some((i) => /scripts\/healthcheck\.mjs/.test(i.args))).toBe(true);
    const ignored = text(".dockerignore").split(/\r?\n/).map((line) => line.trim());
    expect(ignored).not.toContain("scripts");
  });
});

describe("Prometheus config and alert rules (promtool)", () => {
  it("promtool check config passes (rule files included)", async () => {
    const result = await promtool(["check", "config", "prometheus.yml"]);
    expect(result.code, result.stdout + result.stderr).toBe(0);
  });

  it("promtool check rules passes", async () => {
    const result = await promtool(["check", "rules", "alerts.yml"]);
    expect(result.code, result.stdout + result.stderr).toBe(0);
  });

  it("promtool test rules: the alerts fire on the series that should fire them, and only those", async () => {
    const result = await promtool(["test", "rules", "alerts.test.yml"]);
    expect(result.code, result.stdout + result.stderr).toBe(0);
  });

  it("alerts.test.yml has, for every alert in alerts.yml, a case where it fires and one where it must stay quiet, and names no other", () => {
    const ruleTests = dict(readYaml("deploy/prometheus/alerts.test.yml"), "alerts.test.yml");
    const checks = list(ruleTests["tests"], "tests").flatMap((test, t) =>
      list(dict(test, `tests[${t}]`)["alert_rule_test"], `tests[${t}].alert_rule_test`).map((check, c) => {
        const where = `tests[${t}].alert_rule_test[${c}]`;
        const entry = dict(check, where);
        // promtool reads a missing exp_alerts as none expected.
        return { alert: str(entry["alertname"], `${where}.alertname`), fires: list(entry["exp_alerts"], `${where}.exp_alerts`).length > 0 };
      }),
    );
    const alerts = readAlertRules().map((rule) => rule.alert);
    const firing = new Set(checks.filter((check) => check.fires).map((check) => check.alert));
    const quiet = new Set(checks.filter((check) => !check.fires).map((check) => check.alert));
    expect(alerts.filter((alert) => !firing.has(alert)), "alerts no case expects to fire").toEqual([]);
    expect(alerts.filter((alert) => !quiet.has(alert)), "alerts no case expects to stay quiet").toEqual([]);
    // A misspelt alertname would pass its quiet check whatever the rule does.
    expect(checks.map((check) => check.alert).filter((alert) => !alerts.includes(alert)), "alertnames not in alerts.yml").toEqual([]);
  });

  it("scrapes the service at the METRICS_ADDR port, as the job the rules name", () => {
    const config = dict(readYaml("deploy/prometheus/prometheus.yml"), "prometheus.yml");
    const jobs = list(config["scrape_configs"], "scrape_configs").map((job) => dict(job, "scrape_configs[]"));
    const otpJob = jobs.find((job) => job["job_name"] === "otp-email");
    expect(otpJob).toBeDefined();
    expect(otpJob?.["metrics_path"] ?? "/metrics").toBe("/metrics");
    const targets = list(otpJob?.["static_configs"], "static_configs").flatMap((c) => list(dict(c, "static_configs[]")["targets"], "targets"));
    const metricsPort = splitAddress(loadConfig(composeEnv).metrics.addr ?? "").port;
    expect(targets).toEqual([`otp-email:${metricsPort}`]);
    expect(otpEmail.ports.map((p) => p.target)).toContain(metricsPort);
    const jobNames = new Set(jobs.map((job) => job["job_name"]));
    for (const rule of readAlertRules()) {
      for (const selector of parsePromql(rule.expr).selectors) {
        for (const matcher of selector.matchers.filter((m) => m.label === "job" && m.op === "=")) {
          expect(jobNames.has(matcher.value), `${rule.alert}: job="${matcher.value}" is no scrape job`).toBe(true);
        }
      }
    }
  });

  it("has the alerts the issue asks for, each with a severity, summary and description", () => {
    const rules = readAlertRules();
    expect(rules.map((r) => r.alert)).toEqual(
      expect.arrayContaining(["OtpSendFailureRatioHigh", "OtpSendLatencyP99High", "OtpRateLimitSurge", "OtpBounceRateHigh"]),
    );
    for (const rule of rules) {
      expect(["critical", "warning"], rule.alert).toContain(rule.labels["severity"]);
      expect(typeof rule.annotations["summary"], rule.alert).toBe("string");
      expect(typeof rule.annotations["description"], rule.alert).toBe("string");
    }
    const byName = new Map(rules.map((r) => [r.alert, r.expr]));
    expect(byName.get("OtpSendFailureRatioHigh")).toContain("otp_sends_total");
    expect(byName.get("OtpSendLatencyP99High")).toMatch(/histogram_quantile\(0\.99,[\s\S]*grpc_server_handling_seconds_bucket/);
    expect(byName.get("OtpRateLimitSurge")).toContain("otp_rate_limit_rejections_total");
    expect(byName.get("OtpBounceRateHigh")).toMatch(/otp_delivery_state_transitions_total\{state="BOUNCED"\}/);
    // An attempt our own code broke is no relay failure, so nothing else would page on it.
    expect(byName.get("OtpEmailInternalSendErrors")).toMatch(/increase\(otp_smtp_attempts_total\{result="internal"\}/);
  });

  it("the README's alerts table lists every alert in alerts.yml, and no other", () => {
    const readme = text("README.md");
    const start = readme.indexOf("| alert | fires when | severity |");
    expect(start, "README has the alerts table").toBeGreaterThan(-1);
    const table = readme.slice(start).split("\n\n")[0] ?? "";
    const documented = [...table.matchAll(/^\| `(\w+)` \|.*\| (\w+) \|$/gm)].map((match) => `${match[1]} ${match[2]}`);
    const rules = readAlertRules().map((rule) => `${rule.alert} ${str(rule.labels["severity"], `${rule.alert}.severity`)}`);
    expect(documented.toSorted()).toEqual(rules.toSorted());
  });
});

describe("Grafana provisioning", () => {
  const datasources = readDatasources();

  it("provisions Prometheus and Jaeger at the compose services, with exemplars linked to Jaeger", () => {
    const byType = new Map(datasources.map((d) => [str(d["type"], "type"), d]));
    const prometheus = byType.get("prometheus");
    const jaeger = byType.get("jaeger");
    expect(prometheus).toBeDefined();
    expect(jaeger).toBeDefined();
    expectServiceUrl(str(prometheus?.["url"], "prometheus.url"), "prometheus", "Prometheus data source");
    expectServiceUrl(str(jaeger?.["url"], "jaeger.url"), "jaeger", "Jaeger data source");
    const exemplars = list(dict(prometheus?.["jsonData"], "jsonData")["exemplarTraceIdDestinations"], "exemplarTraceIdDestinations");
    expect(exemplars).toEqual([{ name: "trace_id", datasourceUid: jaeger?.["uid"] }]);
    expect(datasources.filter((d) => d["isDefault"] === true)).toHaveLength(1);
  });

  it("has a dashboard whose every query uses a provisioned data source and whose every panel says what it shows", () => {
    const uids = new Set(datasources.map((d) => d["uid"]));
    const queries = dashboardQueries();
    expect(queries.length).toBeGreaterThan(0);
    for (const query of queries) expect(uids.has(query.datasourceUid), `${query.panel}: data source ${query.datasourceUid}`).toBe(true);
    for (const panel of dataPanels) {
      const description = panel["description"];
      expect(typeof description === "string" ? description.trim() : "", str(panel["title"], "title")).not.toBe("");
    }
    expect(new Set(dataPanels.map((p) => p["id"])).size, "panel ids are unique").toBe(dataPanels.length);
    expect(dashboard["uid"]).toBe("otp-email");
  });

  it("lays out its panels (rows included) on the 24-column grid with no two overlapping", () => {
    // Grafana does not refuse overlapping gridPos: it pushes panels down on load, so a row header lands among
    // the panels of the row above it and they read as that row's.
    const boxes = panels.map((panel) => {
      const title = str(panel["title"], "title");
      const grid = dict(panel["gridPos"], `${title}.gridPos`);
      const [x, y, w, h] = (["x", "y", "w", "h"] as const).map((key) => Number(grid[key]));
      return { title, x: x ?? 0, y: y ?? 0, w: w ?? 0, h: h ?? 0 };
    });
    for (const box of boxes) {
      expect(box.w > 0 && box.h > 0 && box.x >= 0 && box.y >= 0 && box.x + box.w <= 24, `${box.title}: ${JSON.stringify(box)}`).toBe(true);
    }
    const overlaps = boxes.flatMap((a, i) =>
      boxes
        .slice(i + 1)
        .filter((b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h)
        .map((b) => `${a.title} / ${b.title}`),
    );
    expect(overlaps).toEqual([]);
  });

  it("has the panels the issue asks for", () => {
    const exprs = (pattern: RegExp) => dashboardQueries().filter((q) => pattern.test(q.expr));
    expect(exprs(/otp_sends_total/).length, "send rate and success ratio").toBeGreaterThanOrEqual(2);
    expect(exprs(/sum by \(state\) \(rate\(otp_delivery_state_transitions_total/), "by state").not.toHaveLength(0);
    expect(exprs(/histogram_quantile\(0\.99/).length, "latency percentiles").toBeGreaterThanOrEqual(2);
    expect(exprs(/otp_smtp_attempts_total/), "SMTP attempts by result").not.toHaveLength(0);
    expect(exprs(/otp_rate_limit_rejections_total/), "rate-limit rejections").not.toHaveLength(0);
    expect(exprs(/sum by \(provider\)[\s\S]*state="ACCEPTED"/), "deliveries by provider class").not.toHaveLength(0);
    expect(exprs(/state="BOUNCED"/), "bounces").not.toHaveLength(0);
  });

  it("charts every file the service re-reads (its reload count and whether a refused change is in place), the panels side by side", () => {
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false }).registry.getMetricsAsArray();
    const reloadMetrics = metrics.map((metric) => metric.name).filter((name) => /_reloads_total$|_last_reload_successful$/.test(name));
    // Certificates, TEMPLATES_DIR and the AUTH_TOKENS file.
    expect(reloadMetrics.length).toBeGreaterThanOrEqual(6);
    const panelsOf = (name: string) => [...new Set(dashboardQueries().filter((q) => new RegExp(`\\b${name}\\b`).test(q.expr)).map((q) => q.panel))];
    expect(reloadMetrics.filter((name) => panelsOf(name).length === 0), "reload metrics no panel shows").toEqual([]);
    const rows = reloadMetrics
      .filter((name) => name.endsWith("_reloads_total"))
      .flatMap(panelsOf)
      .map((title) => dict(dataPanels.find((panel) => panel["title"] === title)?.["gridPos"], `${title}.gridPos`)["y"]);
    expect(new Set(rows).size, "the reload panels share one row").toBe(1);
  });

  it("documents every panel in the README's dashboard section", () => {
    const readme = text("README.md");
    const start = readme.indexOf("\n### Dashboard and alerts");
    expect(start, 'README has a "### Dashboard and alerts" section').toBeGreaterThan(-1);
    const next = readme.slice(start + 1).search(/\n##/);
    const section = next === -1 ? readme.slice(start) : readme.slice(start, start + 1 + next);
    const missing = dataPanels.map((panel) => str(panel["title"], "title")).filter((title) => !section.includes(`**${title}**`));
    expect(missing, "panels the README does not describe").toEqual([]);
  });
});

describe("the service as compose runs it (compiled, production mode, the compose environment)", () => {
  let child: ChildProcess | undefined;
  let sink: SmtpSink | undefined;
  let grpcAddress = "";
  let families = new Map<string, Family>();
  let bounced: { state: DeliveryState } | undefined;
  let bouncePort = 0;
  const stderr: string[] = [];
  const stdout: string[] = [];

  beforeAll(async () => {
    sink = await startSmtpSink();
    const [grpcPort = 0, metricsPort = 0, intakePort = 0] = await freePorts(3);
    bouncePort = intakePort;
    grpcAddress = `127.0.0.1:${grpcPort}`;
    // The compose environment with only the other containers' hosts and the
    // listening addresses swapped for loopback ones; OTLP export is off (no Jaeger here).
    const env = {
      ...composeEnv,
      GRPC_ADDR: grpcAddress,
      METRICS_ADDR: `127.0.0.1:${metricsPort}`,
      BOUNCE_SMTP_ADDR: `127.0.0.1:${bouncePort}`,
      REDIS_URL: redisUrlForTests(),
      REDIS_PREFIX: randomPrefix(),
      SMTP_URL: sink.url,
      OTEL_TRACES_EXPORTER: "none",
    };
    const dockerfile = readDockerfile();
    const cmd = execForm(dockerfile.instructions.filter((i) => i.keyword === "CMD").at(-1)?.args ?? "", "CMD");
    expect(cmd[0]).toBe("node");
    child = spawn(process.execPath, cmd.slice(1), { cwd: root, env: { PATH: process.env["PATH"] ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk.toString("utf8")));
    child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));

    // Healthy by the container's own check (Redis connected, relay verified).
    const deadline = Date.now() + 20_000;
    for (;;) {
      const result = await healthcheck([grpcAddress]);
      if (result.code === 0) break;
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`the service never became SERVING: ${result.stdout}\nstderr: ${stderr.join("")}\nstdout: ${stdout.join("").slice(-3000)}`);
      }
      await sleep(200);
    }

    // One send (labelled series appear), one rate-limited resend, one wrong code, and the
    // README's demo bounce (deploy/examples/bounce.eml) for that message, fed to the bounce intake.
    const client = new GrpcOtpClient(grpcAddress, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${demoToken}`);
    try {
      const { sendOtp, verifyOtp, getDeliveryStatus } = OtpEmailService.method;
      const sent = await grpcUnary(client, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN }, { metadata });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      const limited = await grpcError(grpcUnary(client, sendOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN }, { metadata }));
      expect(limited.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      await grpcUnary(client, verifyOtp, { recipient: "ana@gmail.com", purpose: Purpose.LOGIN, code: "000000" }, { metadata }).catch(() => undefined);

      const bounce = Buffer.from(text("deploy", "examples", "bounce.eml").replaceAll("MESSAGE_ID", sent.messageId).replace(/\r?\n/g, "\r\n"));
      const smtp = createTransport({ host: "127.0.0.1", port: bouncePort, secure: false, ignoreTLS: true, logger: false });
      try {
        // What the README's curl command does: null sender, the message's VERP address.
        await smtp.sendMail({ envelope: { from: "", to: `bounce+${sent.messageId}@otp-email.localhost` }, raw: bounce });
      } finally {
        smtp.close();
      }
      bounced = await grpcUnary(client, getDeliveryStatus, { messageId: sent.messageId }, { metadata });
    } finally {
      client.close();
    }
    const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(response.status).toBe(200);
    families = parseExposition(await response.text());
  });

  afterAll(async () => {
    if (child !== undefined && child.exitCode === null) {
      const exited = new Promise((resolve) => child?.once("exit", resolve));
      child.kill("SIGTERM");
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    await sink?.close();
  });

  it("the health-check script: exit 0 on SERVING for the server and for otp.v1.OtpEmailService", async () => {
    const server = await healthcheck([grpcAddress]);
    expect(server.code).toBe(0);
    expect(server.stdout).toContain("SERVING");
    const named = await healthcheck([grpcAddress, "--service", "otp.v1.OtpEmailService"]);
    expect(named.code).toBe(0);
    // The address comes from GRPC_ADDR when not given; 0.0.0.0 means this host.
    const fromEnv = await healthcheck([], { GRPC_ADDR: `0.0.0.0:${splitAddress(grpcAddress).port}` });
    expect(fromEnv.code, fromEnv.stdout).toBe(0);
  });

  it("the health-check script: exit 1 for an unknown service, a closed port and NOT_SERVING", async () => {
    const unknownService = await healthcheck([grpcAddress, "--service", "no.such.Service"]);
    expect(unknownService.code).toBe(1);
    expect(unknownService.stdout).toContain("NOT_FOUND");

    const [closedPort = 0] = await freePorts(1);
    const closed = await healthcheck([`127.0.0.1:${closedPort}`, "--timeout", "1000"]);
    expect(closed.code).toBe(1);

    const server = new grpc.Server();
    new HealthImplementation({ "": "NOT_SERVING" }).addToServer(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    try {
      const notServing = await healthcheck([`127.0.0.1:${port}`]);
      expect(notServing.code).toBe(1);
      expect(notServing.stdout).toContain("NOT_SERVING");
    } finally {
      server.forceShutdown();
    }
  });

  /** Everything the rules, their unit tests' input series and the dashboard query, with where it comes from. */
  function allQueries(): { where: string; expr: string; synthetic?: boolean }[] {
    const ruleTests = dict(readYaml("deploy/prometheus/alerts.test.yml"), "alerts.test.yml");
    const inputSeries = list(ruleTests["tests"], "tests").flatMap((test) =>
      list(dict(test, "tests[]")["input_series"], "input_series").map((series) => ({
        where: `alerts.test.yml "${str(dict(test, "tests[]")["name"], "name")}"`,
        expr: str(dict(series, "input_series[]")["series"], "series"),
        // Made-up values (other limits, other providers): only the names must be real.
        synthetic: true,
      })),
    );
    return [
      ...readAlertRules().map((rule) => ({ where: `alert ${rule.alert}`, expr: rule.expr })),
      ...inputSeries,
      ...dashboardQueries().map((query) => ({ where: `panel "${query.panel}"`, expr: query.expr })),
    ];
  }

  /** Series name -> its family, from the scrape. */
  function seriesIndex(): Map<string, Family> {
    const index = new Map<string, Family>();
    for (const family of families.values()) for (const name of seriesNames(family)) index.set(name, family);
    return index;
  }

  /** Labels Prometheus adds to every scraped series. */
  const targetLabels = new Set(["job", "instance"]);
  /** Series Prometheus itself makes for every target. */
  const synthetic = new Map([["up", new Set(["job", "instance"])]]);

  /** The label names a metric can carry: its scraped samples' and those it is declared with. */
  function labelNamesOf(family: Family, seriesName: string): Set<string> {
    const declared = createMetrics({ providers: createProviderClassifier(), processMetrics: false }).registry.getSingleMetric(family.name) as
      | { labelNames?: readonly string[] }
      | undefined;
    return new Set([
      ...family.samples.flatMap((sample) => Object.keys(sample.labels)),
      ...(declared?.labelNames ?? []),
      ...(seriesName.endsWith("_bucket") ? ["le"] : []),
      ...targetLabels,
    ]);
  }

  it("exports every metric the alert rules and the dashboard query (histograms as _bucket/_sum/_count)", () => {
    expect(families.size).toBeGreaterThan(10);
    const index = seriesIndex();
    const missing: string[] = [];
    for (const { where, expr } of allQueries()) {
      for (const { metric } of parsePromql(expr).selectors) {
        if (!index.has(metric) && !synthetic.has(metric)) missing.push(`${where}: ${metric}`);
      }
    }
    for (const variable of templateQueries()) {
      if (!index.has(variable.metric)) missing.push(`variable $${variable.name}: ${variable.metric}`);
    }
    expect(missing, "metrics the service does not export").toEqual([]);
  });

  it("has every label, and every label value, that the queries match or group by", () => {
    const index = seriesIndex();
    const problems: string[] = [];
    for (const { where, expr, synthetic: madeUp } of allQueries()) {
      const { selectors, grouping } = parsePromql(expr);
      const labelsInExpr = new Set<string>();
      for (const { metric, matchers } of selectors) {
        const family = index.get(metric);
        const names = family === undefined ? (synthetic.get(metric) ?? new Set<string>()) : labelNamesOf(family, metric);
        names.forEach((name) => labelsInExpr.add(name));
        for (const matcher of matchers) {
          if (!names.has(matcher.label)) {
            problems.push(`${where}: ${metric} has no label ${matcher.label}`);
            continue;
          }
          if (madeUp === true || family === undefined || targetLabels.has(matcher.label) || matcher.label === "le" || matcher.value.includes("$")) continue;
          // Exact values, and regexes that are plain alternations (a|b|c), must be values the service emits:
          // a typo in `outcome=~"relay_rejcted|..."` or in a negative matcher would silently match nothing (or everything).
          const literal = matcher.op === "=" || matcher.op === "!=" ? [matcher.value] : /^[\w.:-]+(\|[\w.:-]+)*$/.test(matcher.value) ? matcher.value.split("|") : [];
          const seen = new Set(family.samples.filter((s) => s.name === metric).map((s) => s.labels[matcher.label]));
          for (const value of literal) if (!seen.has(value)) problems.push(`${where}: ${metric}{${matcher.label}="${value}"} never appears`);
        }
      }
      for (const label of grouping) if (!labelsInExpr.has(label)) problems.push(`${where}: groups by ${label}, which no metric in it has`);
    }
    for (const variable of templateQueries()) {
      const family = index.get(variable.metric);
      if (family !== undefined && !labelNamesOf(family, variable.metric).has(variable.label)) problems.push(`variable $${variable.name}: no label ${variable.label}`);
    }
    expect(problems).toEqual([]);
  });

  it("counted the scenario: an accepted send to gmail, a rate-limited resend, the demo bounce", () => {
    const value = (family: string, labels: Record<string, string>): number =>
      (families.get(family)?.samples ?? [])
        .filter((s) => Object.entries(labels).every(([key, expected]) => s.labels[key] === expected))
        .reduce((sum, s) => sum + s.value, 0);
    expect(value("otp_sends_total", { outcome: "accepted", purpose: "login" })).toBe(1);
    expect(value("otp_sends_total", { outcome: "rate_limited", purpose: "login" })).toBe(1);
    expect(value("otp_delivery_state_transitions_total", { state: "ACCEPTED", provider: "gmail" })).toBe(1);
    expect(value("otp_rate_limit_rejections_total", { rpc: "send" })).toBeGreaterThanOrEqual(1);
    expect(value("grpc_server_handled_total", { grpc_service: "otp.v1.OtpEmailService", grpc_method: "SendOtp", grpc_code: "OK" })).toBe(1);
    // deploy/examples/bounce.eml, as README "Run with Docker" sends it: the message reads BOUNCED and the
    // dashboard's bounce panels and OtpBounceRateHigh see it.
    expect(bounced?.state).toBe(DeliveryState.BOUNCED);
    expect(value("otp_delivery_state_transitions_total", { state: "BOUNCED", provider: "gmail" })).toBe(1);
  });
});
