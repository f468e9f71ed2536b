/**
 * deploy/kubernetes, checked without a cluster (none runs on our machines):
 *
 * - The manifests parse strictly; kustomization.yaml lists every one of them
 *   and sets the image tag of this release.
 * - The Deployment's environment, with the Image's ENV under it and test
 *   values for the Secret's keys, names only variables the service reads and
 *   loads as a production config; its container ports are where the service
 *   listens, and the Services and the PodDisruptionBudget select its pods.
 * - It runs the image's CMD as the image's non-root user, on a read-only root,
 *   with probes that are the image's health check (liveness: `--alive`), a
 *   grace period that covers preStop, SHUTDOWN_GRACE and what follows it, and
 *   a memory limit above the heap cap of the CMD's flags.
 * - monitoring/ is a kustomize Component that one commented line of
 *   kustomization.yaml enables: a PodMonitor that scrapes the pods' `metrics`
 *   port as deploy/prometheus/prometheus.yml scrapes the compose service
 *   (path, interval, the job name the alerts match), and a PrometheusRule
 *   whose groups are exactly deploy/prometheus/alerts.yml's, as
 *   scripts/prometheus-rule.mjs writes it, passing `promtool check rules`.
 * - The compiled service, started with exactly that environment (addresses
 *   swapped for loopback ones, the TLS Secret's files from a temporary
 *   directory) in a mount namespace whose root is read-only, as
 *   `readOnlyRootFilesystem` makes it: it answers the startup and readiness
 *   probes' command, sends over TLS, takes its pod out of rotation while Redis
 *   is down without failing liveness (a restart would not bring Redis back),
 *   and exits 0 on SIGTERM well within the grace period.
 *
 * The read-only root needs `unshare` (util-linux) and unprivileged user
 * namespaces, or root: without them the run fails with what to install.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseDocument, stringify } from "yaml";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { loadConfig, type Config } from "../../src/config.js";
import {
  at,
  dict,
  execForm,
  finalStageEnv,
  isDict,
  list,
  otelSdkVariables,
  promtool,
  readDockerfile,
  readYaml,
  readYamlDocuments,
  root,
  splitAddress,
  str,
  text,
  variablesReadByConfig,
  type Dict,
} from "../support/deploy-files.js";
import { GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { freePort } from "../support/ports.js";
import { startRedisServer, type RedisServer } from "../support/redis.js";
import { makeSelfSigned } from "../support/self-signed.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const dir = "deploy/kubernetes";

// ---------------------------------------------------------------------------
// The manifests

const manifestFiles = readdirSync(at(dir)).filter((name) => name.endsWith(".yaml") && name !== "kustomization.yaml");
const objects = manifestFiles.flatMap((file) =>
  readYamlDocuments(posix.join(dir, file))
    .filter((document) => document !== null)
    .map((document, index) => dict(document, `${file} document ${index + 1}`)),
);

function objectsOf(kind: string): Dict[] {
  return objects.filter((object) => object["kind"] === kind);
}

function one(kind: string, name: string): Dict {
  const found = objectsOf(kind).filter((object) => dict(object["metadata"], kind)["name"] === name);
  if (found.length !== 1) throw new Error(`${dir}: expected one ${kind} named ${name}, found ${found.length}`);
  return found[0];
}

/** `a.b.c` of a nested mapping, failing with the path when a step is missing. */
function path(object: Dict, dotted: string): unknown {
  let value: unknown = object;
  for (const key of dotted.split(".")) {
    value = dict(value, dotted)[key];
    if (value === undefined) throw new Error(`no ${dotted} (missing ${key})`);
  }
  return value;
}

const deployment = one("Deployment", "otp-email");
const podSpec = dict(path(deployment, "spec.template.spec"), "pod spec");
const podLabels = dict(path(deployment, "spec.template.metadata.labels"), "pod labels");
const containers = list(podSpec["containers"], "containers").map((c, index) => dict(c, `containers[${index}]`));
const container = containers.find((c) => c["name"] === "otp-email") ?? dict(undefined, "container otp-email");

/** The Secret the README tells the operator to create, with a test value for each key. */
const secretName = "otp-email";
const tlsSecretName = "otp-email-tls";
const testToken = `k8s-${randomBytes(12).toString("hex")}`;
const secretValues: Record<string, string> = {
  OTP_SECRET: randomBytes(32).toString("base64"),
  AUTH_TOKENS: `checkout:${createHash("sha256").update(testToken).digest("hex")}`,
  REDIS_URL: "rediss://:password@redis.example.internal:6380",
  SMTP_URL: "smtp://otp:password@smtp.example.internal:587",
};

interface EnvEntry {
  readonly name: string;
  readonly value: string | undefined;
  readonly secret: { readonly name: string; readonly key: string } | undefined;
  /** `secretKeyRef.optional`: without the key in the Secret, the kubelet leaves the variable unset. */
  readonly optional: boolean;
}

const envEntries: EnvEntry[] = list(container["env"], "env").map((entry, index) => {
  const e = dict(entry, `env[${index}]`);
  const name = str(e["name"], `env[${index}].name`);
  const from = isDict(e["valueFrom"]) ? e["valueFrom"] : undefined;
  const ref = from === undefined ? undefined : dict(from["secretKeyRef"], `env ${name}: only secretKeyRef is used`);
  return {
    name,
    value: e["value"] === undefined ? undefined : str(e["value"], `env ${name}`),
    secret: ref === undefined ? undefined : { name: str(ref["name"], `${name}.secretKeyRef.name`), key: str(ref["key"], `${name}.secretKeyRef.key`) },
    optional: ref?.["optional"] === true,
  };
});

/** The TLS Secret's mount: where its tls.crt and tls.key appear in the container. */
function tlsMountPath(): string {
  const volume = list(podSpec["volumes"], "volumes")
    .map((v, index) => dict(v, `volumes[${index}]`))
    .find((v) => isDict(v["secret"]) && v["secret"]["secretName"] === tlsSecretName);
  if (volume === undefined) throw new Error(`no volume from the Secret ${tlsSecretName}`);
  const mount = list(container["volumeMounts"], "volumeMounts")
    .map((m, index) => dict(m, `volumeMounts[${index}]`))
    .find((m) => m["name"] === volume["name"]);
  if (mount === undefined) throw new Error(`the volume ${str(volume["name"], "volume name")} is not mounted`);
  expect(mount["readOnly"], "the key is mounted read-only").toBe(true);
  return str(mount["mountPath"], "mountPath");
}

const dockerfile = readDockerfile();
const finalStage = dockerfile.stages.length - 1;
const imageEnv = finalStageEnv(dockerfile);
const imageCmd = execForm(dockerfile.instructions.filter((i) => i.keyword === "CMD" && i.stage === finalStage).at(-1)?.args ?? "", "CMD");

/**
 * The container's environment as the kubelet builds it: the image's ENV, then
 * the manifest's entries (Secret keys resolved to `secrets`), with `replace`
 * applied to file paths (the TLS mount) and addresses.
 */
function containerEnv(secrets: Record<string, string>, replace: (name: string, value: string) => string = (_, value) => value): Record<string, string> {
  const env: Record<string, string> = { ...imageEnv };
  for (const entry of envEntries) {
    const value = entry.secret === undefined ? entry.value : secrets[entry.secret.key];
    if (value === undefined && entry.optional) continue;
    if (value === undefined) throw new Error(`env ${entry.name}: no value`);
    env[entry.name] = replace(entry.name, value);
  }
  return env;
}

function probe(name: string): { path: string; port: string; periodSeconds: number; timeoutSeconds: number; failureThreshold: number } {
  const spec = dict(container[name], name);
  const httpGet = dict(spec["httpGet"], `${name}.httpGet`);
  return {
    path: str(httpGet["path"], `${name}.httpGet.path`),
    port: str(httpGet["port"], `${name}.httpGet.port`),
    periodSeconds: Number(spec["periodSeconds"] ?? 10),
    timeoutSeconds: Number(spec["timeoutSeconds"] ?? 1),
    failureThreshold: Number(spec["failureThreshold"] ?? 3),
  };
}

function preStopSleepSeconds(): number {
  const command = list(path(container, "lifecycle.preStop.exec.command"), "preStop command").map((part, index) => str(part, `preStop[${index}]`));
  expect(command[0]).toBe("sleep");
  return Number(command[1]);
}

/** Kubernetes quantities as MiB: `1536Mi`, `2Gi`, `512M`. */
function mebibytes(quantity: string): number {
  const match = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$/.exec(quantity);
  if (match === null) throw new Error(`not a memory quantity: ${quantity}`);
  const factor: Record<string, number> = { Ki: 1 / 1024, Mi: 1, Gi: 1024, K: 1000 / 1048576, M: 1e6 / 1048576, G: 1e9 / 1048576 };
  return Number(match[1]) * (factor[match[2] ?? ""] ?? 1 / 1048576);
}

function selects(selector: unknown, where: string): void {
  const labels = dict(selector, where);
  expect(Object.keys(labels).length, `${where} selects something`).toBeGreaterThan(0);
  for (const [key, value] of Object.entries(labels)) expect(podLabels[key], `${where}: ${key}`).toBe(value);
}

describe("deploy/kubernetes manifests", () => {
  it("kustomization.yaml lists every manifest and sets this release's image tag, which the Deployment uses", () => {
    const kustomization = dict(readYaml(posix.join(dir, "kustomization.yaml")), "kustomization.yaml");
    const resources = list(kustomization["resources"], "resources").map((r, index) => str(r, `resources[${index}]`));
    expect(resources.sort()).toEqual([...manifestFiles].sort());
    const version = (JSON.parse(text("package.json")) as { version: string }).version;
    const images = list(kustomization["images"], "images").map((image, index) => dict(image, `images[${index}]`));
    expect(images).toEqual([expect.objectContaining({ name: "otp-email", newTag: version })]);
    expect(container["image"]).toBe(`otp-email:${version}`);
    expect(new Set(objects.map((object) => object["kind"]))).toEqual(new Set(["Deployment", "Service", "PodDisruptionBudget"]));
  });

  it("gives the service only variables it reads, and with the image's ENV and the Secret they load as a production config", async () => {
    const known = variablesReadByConfig();
    const unknown = envEntries.map((e) => e.name).filter((name) => !known.has(name) && !otelSdkVariables.has(name));
    expect(unknown, "variables the service never reads (a typo?)").toEqual([]);
    expect(new Set(envEntries.map((e) => e.name)).size, "no variable twice").toBe(envEntries.length);
    for (const entry of envEntries.filter((e) => e.secret !== undefined)) {
      expect(entry.secret, `${entry.name} comes from the Secret the README names, under its own name`).toEqual({ name: secretName, key: entry.name });
    }
    // Credentials never sit in the manifest in clear.
    for (const name of ["OTP_SECRET", "AUTH_TOKENS", "REDIS_URL", "SMTP_URL"]) {
      expect(envEntries.find((e) => e.name === name)?.secret, `${name} from the Secret`).toBeDefined();
    }

    const mount = tlsMountPath();
    const tls = makeSelfSigned();
    const files = await mkdtemp(join(tmpdir(), "otp-k8s-tls-"));
    try {
      await writeFile(join(files, "tls.crt"), tls.cert);
      await writeFile(join(files, "tls.key"), tls.key, { mode: 0o600 });
      const env = containerEnv(secretValues, (_, value) => (value.startsWith(`${mount}/`) ? join(files, value.slice(mount.length + 1)) : value));
      const config: Config = loadConfig(env);
      expect(config.env).toBe("production");
      expect(config.otp.secretGenerated).toBe(false);
      expect(config.auth.anonymous).toBe(false);
      expect(config.tls, "TLS from the Secret's kubernetes.io/tls keys").toBeDefined();
      expect(config.tls?.paths.cert).toBe(join(files, "tls.crt"));
      expect(config.tls?.paths.key).toBe(join(files, "tls.key"));
      expect(config.bounce.smtpAddr).toBeDefined();
    } finally {
      await rm(files, { recursive: true, force: true });
    }
  });

  it("reads a rotation's OTP_SECRET_PREVIOUS and OTP_SECRET_ROTATED_AT from the Secret when it has them, and only those are optional", () => {
    const optional = envEntries.filter((e) => e.optional).map((e) => e.name);
    expect(optional.sort()).toEqual(["OTP_SECRET_PREVIOUS", "OTP_SECRET_ROTATED_AT"]);
    const unrelated = (name: string, value: string) => (name === "TLS_CERT" || name === "TLS_KEY" ? "" : value);
    // Without the keys (the Secret as the README creates it): no rotation.
    expect(loadConfig(containerEnv(secretValues, unrelated)).otp.previousSecret).toBeUndefined();
    // With them, as the rotation runbook adds them: the previous secret is consulted from that time.
    const rotatedAt = new Date(Date.now() - 60_000).toISOString();
    const previous = randomBytes(32).toString("base64");
    const rotated = loadConfig(containerEnv({ ...secretValues, OTP_SECRET_PREVIOUS: previous, OTP_SECRET_ROTATED_AT: rotatedAt }, unrelated));
    expect(rotated.otp.previousSecret?.toString()).toBe(previous);
    expect(rotated.otp.rotatedAt).toBe(Date.parse(rotatedAt));
  });

  it("declares the ports the service listens on; the Services reach them by name and select its pods", () => {
    const config = loadConfig(containerEnv(secretValues, (name, value) => (name === "TLS_CERT" || name === "TLS_KEY" ? "" : value)));
    const listening = { grpc: splitAddress(config.grpcAddr), metrics: splitAddress(config.metrics.addr ?? ""), "bounce-smtp": splitAddress(config.bounce.smtpAddr ?? "") };
    const ports = new Map(list(container["ports"], "ports").map((p, index) => {
      const port = dict(p, `ports[${index}]`);
      return [str(port["name"], "port name"), Number(port["containerPort"])] as const;
    }));
    for (const [name, address] of Object.entries(listening)) {
      expect(address.host, `${name}: every interface in the pod`).toBe("0.0.0.0");
      expect(ports.get(name), `container port ${name}`).toBe(address.port);
    }
    expect(ports.size).toBe(3);
    const annotations = dict(path(deployment, "spec.template.metadata.annotations"), "annotations");
    expect(Number(annotations["prometheus.io/port"])).toBe(listening.metrics.port);
    expect(annotations["prometheus.io/path"]).toBe("/metrics");

    selects(path(deployment, "spec.selector.matchLabels"), "Deployment selector");
    for (const service of objectsOf("Service")) {
      const name = str(path(service, "metadata.name"), "Service name");
      selects(path(service, "spec.selector"), `Service ${name}`);
      for (const p of list(path(service, "spec.ports"), `${name} ports`).map((port, index) => dict(port, `${name}.ports[${index}]`))) {
        expect(ports.has(str(p["targetPort"], `${name} targetPort`)), `${name}: targetPort ${String(p["targetPort"])} is a named container port`).toBe(true);
      }
    }
    const grpcService = one("Service", "otp-email");
    // The service terminates TLS itself: a mesh told `grpc` would parse TLS bytes as plaintext HTTP/2.
    expect(list(path(grpcService, "spec.ports"), "ports").map((p) => dict(p, "port")["appProtocol"])).not.toContain("grpc");
    expect(list(path(grpcService, "spec.ports"), "ports")).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: "grpc", port: listening.grpc.port, targetPort: "grpc" })]),
    );
    // The intake limits connections per peer address: a Cluster policy would SNAT every relay to a node's.
    const bounces = one("Service", "otp-email-bounces");
    expect(path(bounces, "spec.externalTrafficPolicy")).toBe("Local");
    expect(list(path(bounces, "spec.ports"), "ports")).toEqual([expect.objectContaining({ port: 25, targetPort: "bounce-smtp" })]);

    const budget = one("PodDisruptionBudget", "otp-email");
    selects(path(budget, "spec.selector.matchLabels"), "PodDisruptionBudget");
    expect(Number(path(budget, "spec.minAvailable"))).toBeLessThan(Number(path(deployment, "spec.replicas")));
  });

  it("runs the image's CMD as the image's non-root user, read-only, with nothing added", () => {
    expect(container["command"], "the image's CMD (heap bounds included) is not overridden").toBeUndefined();
    expect(container["args"]).toBeUndefined();
    const user = dockerfile.instructions.filter((i) => i.keyword === "USER" && i.stage === finalStage).at(-1)?.args;
    expect(user, "`node` is uid 1000 in the official image").toBe("node");
    expect(path(podSpec, "securityContext.runAsNonRoot")).toBe(true);
    expect(path(podSpec, "securityContext.runAsUser")).toBe(1000);
    expect(podSpec["automountServiceAccountToken"]).toBe(false);
    const security = dict(container["securityContext"], "container securityContext");
    expect(security).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });
  });

  it("probes over HTTP on the metrics port: readiness at /readyz, startup and liveness at /livez", () => {
    const startup = probe("startupProbe");
    const readiness = probe("readinessProbe");
    const liveness = probe("livenessProbe");
    expect([startup, readiness, liveness].map((p) => `${p.port}${p.path}`)).toEqual(["metrics/livez", "metrics/readyz", "metrics/livez"]);
    // The start-up doctor and Redis's first connection get a minute at least.
    expect(startup.periodSeconds * startup.failureThreshold).toBeGreaterThanOrEqual(60);
    // A pod whose Redis is gone leaves the endpoints before the service's own ~18 s detection of a hung Redis is over.
    expect(readiness.periodSeconds * readiness.failureThreshold).toBeLessThanOrEqual(15);
    // Liveness never fires before the start-up budget is spent: the startup probe gates it.
    expect(liveness.periodSeconds * liveness.failureThreshold).toBeGreaterThanOrEqual(20);
  });

  it("gives a stopping pod preStop, SHUTDOWN_GRACE and what follows it before the kill", () => {
    const config = loadConfig(containerEnv(secretValues, (name, value) => (name === "TLS_CERT" || name === "TLS_KEY" ? "" : value)));
    const graceSeconds = Number(podSpec["terminationGracePeriodSeconds"]);
    // As docker-compose.yml's stop_grace_period: the final record writes (1 s), Redis QUIT (its
    // command timeout), the buffered spans' export (at most 5 s) and a second of slack.
    const afterGraceMs = 1000 + (config.redis?.commandTimeoutMs ?? 0) + 5000 + 1000;
    expect(graceSeconds * 1000).toBeGreaterThanOrEqual(preStopSleepSeconds() * 1000 + config.shutdownGraceMs + afterGraceMs);
    expect(path(deployment, "spec.strategy.rollingUpdate.maxUnavailable"), "a new pod is ready before an old one goes").toBe(0);
  });

  it("limits memory above the heap cap of the CMD's flags plus what is not the heap", () => {
    const flag = (name: string): number => {
      const arg = imageCmd.find((part) => part.startsWith(`--${name}=`));
      if (arg === undefined) throw new Error(`the CMD has no --${name}`);
      return Number(arg.split("=")[1]);
    };
    // Old generation cap + a young generation of three semi-spaces + ~115 MB of code, zones and malloc (README "Memory").
    const heapMiB = flag("max-old-space-size") + 3 * flag("max-semi-space-size") + 128;
    const limit = mebibytes(str(path(container, "resources.limits.memory"), "memory limit"));
    expect(limit).toBeGreaterThanOrEqual(heapMiB);
    // Under load the working size is ~250 MB (README "Performance").
    expect(mebibytes(str(path(container, "resources.requests.memory"), "memory request"))).toBeGreaterThanOrEqual(256);
  });
});

// ---------------------------------------------------------------------------
// The Prometheus Operator component

const monitoringDir = posix.join(dir, "monitoring");

/** The one object in a file of monitoring/. */
function monitoringObject(file: string): Dict {
  const documents = readYamlDocuments(posix.join(monitoringDir, file)).filter((document) => document !== null);
  expect(documents, `${file} holds one object`).toHaveLength(1);
  return dict(documents[0], file);
}

describe("deploy/kubernetes/monitoring (Prometheus Operator)", () => {
  it("is a kustomize Component listing exactly the files beside it, enabled by a commented line of kustomization.yaml", () => {
    const component = dict(readYaml(posix.join(monitoringDir, "kustomization.yaml")), "monitoring/kustomization.yaml");
    expect(component["apiVersion"]).toBe("kustomize.config.k8s.io/v1alpha1");
    expect(component["kind"]).toBe("Component");
    const resources = list(component["resources"], "resources").map((r, index) => str(r, `resources[${index}]`));
    expect([...resources].sort()).toEqual(readdirSync(at(monitoringDir)).filter((name) => name !== "kustomization.yaml").sort());
    const objectKinds = resources.map((file) => monitoringObject(file)).map((object) => `${str(object["apiVersion"], "apiVersion")} ${str(object["kind"], "kind")}`);
    expect(objectKinds.sort()).toEqual(["monitoring.coreos.com/v1 PodMonitor", "monitoring.coreos.com/v1 PrometheusRule"]);

    // Off by default (clusters without the Operator's CRDs refuse the objects); uncommenting the line turns it on.
    const kustomizationFile = posix.join(dir, "kustomization.yaml");
    expect(dict(readYaml(kustomizationFile), "kustomization.yaml")["components"]).toBeUndefined();
    const lines = text(kustomizationFile).split("\n");
    const commented = lines.flatMap((line, index) => (/^#\s*components:/.test(line) ? [index] : []));
    expect(commented, "one commented `components:` line").toHaveLength(1);
    const index = commented[0] ?? 0;
    expect(lines[index - 1], "a comment above it saying what it adds").toMatch(/^# \S/);
    const enabled = parseDocument(lines.map((line, i) => (i === index ? line.replace(/^#\s*/, "") : line)).join("\n"), { uniqueKeys: true });
    expect(enabled.errors).toEqual([]);
    expect(dict(enabled.toJS(), "kustomization.yaml, uncommented")["components"]).toEqual(["monitoring"]);
  });

  it("the PodMonitor scrapes the Deployment's pods on the `metrics` port, /metrics every 15 s, as job otp-email like the compose Prometheus", () => {
    const monitor = monitoringObject("pod-monitor.yaml");
    expect(monitor["kind"]).toBe("PodMonitor");
    expect(monitor["apiVersion"]).toBe("monitoring.coreos.com/v1");
    expect(Object.keys(dict(path(monitor, "spec.selector"), "selector"))).toEqual(["matchLabels"]);
    selects(path(monitor, "spec.selector.matchLabels"), "PodMonitor selector");

    const endpoints = list(path(monitor, "spec.podMetricsEndpoints"), "podMetricsEndpoints").map((e, index) => dict(e, `podMetricsEndpoints[${index}]`));
    expect(endpoints).toHaveLength(1);
    const endpoint = endpoints[0] ?? {};
    const portNames = list(container["ports"], "ports").map((p, index) => str(dict(p, `ports[${index}]`)["name"], "port name"));
    expect(portNames, "a named container port").toContain(endpoint["port"]);
    expect(endpoint["port"]).toBe("metrics");
    expect(endpoint["scheme"] ?? "http", "the metrics port speaks plain HTTP").toBe("http");

    const compose = dict(readYaml("deploy/prometheus/prometheus.yml"), "prometheus.yml");
    const job = list(compose["scrape_configs"], "scrape_configs")
      .map((j, index) => dict(j, `scrape_configs[${index}]`))
      .find((j) => j["job_name"] === "otp-email");
    expect(job).toBeDefined();
    expect(endpoint["path"]).toBe(job?.["metrics_path"]);
    expect(endpoint["path"]).toBe("/metrics");
    expect(endpoint["interval"]).toBe(job?.["scrape_interval"] ?? path(compose, "global.scrape_interval"));
    expect(endpoint["interval"]).toBe("15s");

    // The Operator names the job <namespace>/<PodMonitor> unless jobLabel names a pod label to take it from;
    // alerts.yml's OtpEmailDown matches job="otp-email", the compose job's name.
    const jobLabel = str(path(monitor, "spec.jobLabel"), "jobLabel");
    expect(podLabels[jobLabel], `the pods' ${jobLabel} label`).toBe(job?.["job_name"]);
    const alertJobs = [...text("deploy/prometheus/alerts.yml").matchAll(/\bjob\s*=~?\s*"([^"]*)"/g)].map((match) => match[1]);
    expect(alertJobs.length).toBeGreaterThan(0);
    for (const alertJob of alertJobs) expect(alertJob).toBe(podLabels[jobLabel]);

    // Exemplars (trace ids on the latency histograms) travel only with OpenMetrics, which Prometheus asks for
    // first unless a scrape's protocols say otherwise.
    const protocols = list(dict(monitor["spec"], "spec")["scrapeProtocols"], "scrapeProtocols");
    expect(protocols[0] ?? "OpenMetricsText1.0.0").toMatch(/^OpenMetrics/);
  });

  it("the PrometheusRule's groups are exactly deploy/prometheus/alerts.yml's", () => {
    const rule = monitoringObject("prometheus-rule.yaml");
    expect(rule["kind"]).toBe("PrometheusRule");
    expect(rule["apiVersion"]).toBe("monitoring.coreos.com/v1");
    const alerts = dict(readYaml("deploy/prometheus/alerts.yml"), "alerts.yml");
    expect(Object.keys(alerts)).toEqual(["groups"]);
    expect(dict(rule["spec"], "spec")).toStrictEqual({ groups: alerts["groups"] });
  });

  it("the PrometheusRule is what scripts/prometheus-rule.mjs writes from alerts.yml", () => {
    const written = spawnSync(process.execPath, ["scripts/prometheus-rule.mjs", "--stdout"], { cwd: root, encoding: "utf8" });
    expect(written.status, written.stderr).toBe(0);
    expect(text(monitoringDir, "prometheus-rule.yaml"), "run `node scripts/prometheus-rule.mjs` after changing deploy/prometheus/alerts.yml").toBe(
      written.stdout,
    );
  });

  it("promtool check rules passes on the PrometheusRule's groups", async () => {
    const groups = list(path(monitoringObject("prometheus-rule.yaml"), "spec.groups"), "spec.groups");
    const rules = groups.flatMap((group, g) => list(dict(group, `groups[${g}]`)["rules"], `groups[${g}].rules`));
    const files = await mkdtemp(join(tmpdir(), "otp-k8s-rules-"));
    try {
      await writeFile(join(files, "rules.yml"), stringify({ groups }));
      const result = await promtool(["check", "rules", "rules.yml"], files);
      expect(result.code, result.stdout + result.stderr).toBe(0);
      expect(result.stdout).toContain(`SUCCESS: ${rules.length} rules found`);
    } finally {
      await rm(files, { recursive: true, force: true });
    }
  });

  it("labels both objects, so the README's patch can add the `release` label the Operator's selectors want", () => {
    for (const file of ["pod-monitor.yaml", "prometheus-rule.yaml"]) {
      const labels = dict(path(monitoringObject(file), "metadata.labels"), `${file} labels`);
      expect(labels["app.kubernetes.io/name"], file).toBe("otp-email");
      expect(labels["release"], `${file}: no Helm release's name hard-coded`).toBeUndefined();
    }
  });
});

// ---------------------------------------------------------------------------
// The service as the manifest runs it

const unshareHelp =
  "this test runs the service under a read-only root file system, as the manifest's readOnlyRootFilesystem does, " +
  "with `unshare -Urm` (util-linux) and a read-only remount of /. Install util-linux (`apt-get install util-linux`) " +
  "and run as root or allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`).";

/** `command` in a new mount namespace where / is read-only (what the container's root is). */
function readOnlyRoot(command: string[]): string[] {
  return ["unshare", "-Urm", "--propagation", "private", "sh", "-c", 'mount -o remount,bind,ro / && exec "$@"', "read-only-root", ...command];
}

function requireReadOnlyRoot(): void {
  const [cmd = "", ...args] = readOnlyRoot(["sh", "-c", `touch ${join(tmpdir(), `otp-k8s-ro-${process.pid}`)} 2>/dev/null && exit 3 || exit 0`]);
  const result = spawnSync(cmd, args, { stdio: "pipe" });
  if (result.error !== undefined || result.status !== 0) {
    throw new Error(`${unshareHelp} (got: ${result.error?.message ?? `exit ${String(result.status)}: ${String(result.stderr)}`})`);
  }
}

/** An HTTP probe as the kubelet makes it: GET on the named container port, success on 200-399, bounded by timeoutSeconds. */
async function httpProbe(name: string, ports: Record<string, number>): Promise<{ ok: boolean; status: number; body: string }> {
  const spec = probe(name);
  const port = ports[spec.port];
  if (port === undefined) throw new Error(`${name}: no port ${spec.port}`);
  try {
    const response = await fetch(`http://127.0.0.1:${port}${spec.path}`, { signal: AbortSignal.timeout(spec.timeoutSeconds * 1000) });
    const body = await response.text();
    return { ok: response.status >= 200 && response.status < 400, status: response.status, body };
  } catch (error) {
    return { ok: false, status: 0, body: String(error) };
  }
}

describe("the service with the manifest's environment, under a read-only root", () => {
  let redis: RedisServer | undefined;
  let sink: SmtpSink | undefined;
  let child: ChildProcess | undefined;
  let files = "";
  let grpcAddress = "";
  let ca = "";
  /** Container port name -> the loopback port the service listens on here. */
  const ports: Record<string, number> = {};
  const output: string[] = [];
  let exited: Promise<number | null> = Promise.resolve(null);
  let startedInMs = Number.POSITIVE_INFINITY;

  beforeAll(async () => {
    requireReadOnlyRoot();
    for (const file of imageCmd.filter((arg) => arg.endsWith(".js"))) {
      expect(existsSync(at(file)), `${file} (compiled by the test run's global setup)`).toBe(true);
    }
    redis = await startRedisServer();
    sink = await startSmtpSink();
    const tls = makeSelfSigned();
    ca = tls.cert;
    files = await mkdtemp(join(tmpdir(), "otp-k8s-"));
    await writeFile(join(files, "tls.crt"), tls.cert);
    await writeFile(join(files, "tls.key"), tls.key, { mode: 0o600 });
    const mount = tlsMountPath();
    ports["grpc"] = await freePort();
    ports["metrics"] = await freePort();
    ports["bounce-smtp"] = await freePort();
    grpcAddress = `127.0.0.1:${ports["grpc"]}`;
    const env = {
      ...containerEnv({ ...secretValues, REDIS_URL: redis.url, SMTP_URL: sink.url }, (_, value) =>
        value.startsWith(`${mount}/`) ? join(files, value.slice(mount.length + 1)) : value,
      ),
      GRPC_ADDR: grpcAddress,
      METRICS_ADDR: `127.0.0.1:${ports["metrics"]}`,
      BOUNCE_SMTP_ADDR: `127.0.0.1:${ports["bounce-smtp"]}`,
    };

    const [node, ...args] = imageCmd;
    expect(node).toBe("node");
    const [cmd = "", ...rest] = readOnlyRoot([process.execPath, ...args]);
    const started = spawn(cmd, rest, { cwd: root, env: { PATH: process.env["PATH"] ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    child = started;
    started.stdout.on("data", (chunk: Buffer) => output.push(chunk.toString("utf8")));
    started.stderr.on("data", (chunk: Buffer) => output.push(chunk.toString("utf8")));
    exited = new Promise((resolve) => started.once("exit", (code) => resolve(code)));

    // The kubelet's startup probe, every 100 ms rather than every periodSeconds, until it passes.
    const startup = probe("startupProbe");
    const budgetMs = startup.periodSeconds * startup.failureThreshold * 1000;
    const since = Date.now();
    for (let attempt = 1; ; attempt++) {
      const result = await httpProbe("startupProbe", ports);
      if (result.ok) break;
      if (started.exitCode !== null || Date.now() - since > budgetMs) {
        throw new Error(`the startup probe never passed (${attempt} tries): ${result.status} ${result.body}\nservice output: ${output.join("").slice(-3000)}`);
      }
      await sleep(100);
    }
    startedInMs = Date.now() - since;
  });

  afterAll(async () => {
    if (child !== undefined && child.exitCode === null) child.kill("SIGKILL");
    await redis?.stop();
    await sink?.close();
    if (files !== "") await rm(files, { recursive: true, force: true });
  });

  it("passes the startup probe within its budget, then readiness and liveness", async () => {
    const startup = probe("startupProbe");
    expect(startedInMs, "the startup probe passed (beforeAll)").toBeLessThan(startup.periodSeconds * startup.failureThreshold * 1000);
    // The metrics port opens before the relay's first check has answered: readiness follows within the
    // kubelet's next few tries (every 100 ms here), never before that check.
    const readiness = probe("readinessProbe");
    let ready = await httpProbe("readinessProbe", ports);
    for (const since = Date.now(); !ready.ok && Date.now() - since < readiness.periodSeconds * 1000; ready = await httpProbe("readinessProbe", ports)) {
      expect(ready.body).toMatch(/^NOT_SERVING\n/);
      await sleep(100);
    }
    expect(ready).toEqual({ ok: true, status: 200, body: "SERVING\n" });
    expect(await httpProbe("livenessProbe", ports)).toEqual({ ok: true, status: 200, body: "alive\n" });
  });

  it("sends over TLS with a caller's token: nothing it does needs a writable file system", async () => {
    const client = new GrpcOtpClient(grpcAddress, grpc.credentials.createSsl(Buffer.from(ca)));
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${testToken}`);
    try {
      const sent = await grpcUnary(client, OtpEmailService.method.sendOtp, { recipient: "ana@example.com", purpose: Purpose.LOGIN }, { metadata });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      const status = await grpcUnary(client, OtpEmailService.method.getDeliveryStatus, { messageId: sent.messageId }, { metadata });
      expect(status.state).toBe(DeliveryState.ACCEPTED);
    } finally {
      client.close();
    }
    expect(sink?.messages.length).toBe(1);
    expect(output.join(""), "no write was attempted").not.toMatch(/EROFS|read-only file system/i);
  });

  it("while Redis is down: out of rotation (readiness fails, naming storage) but alive (no restart)", async () => {
    await redis?.stop();
    const deadline = Date.now() + 20_000;
    let notReady = await httpProbe("readinessProbe", ports);
    while (notReady.ok && Date.now() < deadline) {
      await sleep(100);
      notReady = await httpProbe("readinessProbe", ports);
    }
    expect(notReady.status).toBe(503);
    expect(notReady.body).toMatch(/^NOT_SERVING\nstorage: down/);
    expect(await httpProbe("livenessProbe", ports)).toMatchObject({ ok: true, status: 200 });
    // A pod that starts now, its Redis down, is started all the same: failing the startup probe would have the kubelet
    // kill it and start it again every 2 minutes, which brings no Redis back.
    expect(await httpProbe("startupProbe", ports)).toMatchObject({ ok: true, status: 200 });

    await redis?.start();
    const back = Date.now() + 20_000;
    let ready = await httpProbe("readinessProbe", ports);
    while (!ready.ok && Date.now() < back) {
      await sleep(100);
      ready = await httpProbe("readinessProbe", ports);
    }
    expect(ready).toMatchObject({ ok: true, status: 200 });
  });

  it("exits 0 on SIGTERM within the grace period the manifest gives after preStop", async () => {
    const budgetMs = (Number(podSpec["terminationGracePeriodSeconds"]) - preStopSleepSeconds()) * 1000;
    const started = Date.now();
    child?.kill("SIGTERM");
    const code = await Promise.race([exited, sleep(budgetMs).then(() => "timeout" as const)]);
    expect(code, output.join("").slice(-2000)).toBe(0);
    expect(Date.now() - started).toBeLessThan(budgetMs);
    // Nothing answers once the process is gone: liveness fails.
    expect((await httpProbe("livenessProbe", ports)).ok).toBe(false);
  });
});
