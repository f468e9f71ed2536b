/**
 * Reading the deployment files the way their tools would, for the tests that
 * check them without those tools (no Docker engine or Kubernetes cluster runs
 * on our machines): strict YAML, the Dockerfile's instructions, and the names
 * of the environment variables the service reads; and promtool, which checks
 * the Prometheus rules and config.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments, parseDocument } from "yaml";

export const root = fileURLToPath(new URL("../..", import.meta.url));
export const at = (...parts: string[]): string => join(root, ...parts);
export const text = (...parts: string[]): string => readFileSync(at(...parts), "utf8");

export type Dict = Record<string, unknown>;

export function isDict(value: unknown): value is Dict {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function dict(value: unknown, where: string): Dict {
  if (!isDict(value)) throw new Error(`${where}: expected a mapping`);
  return value;
}

export function list(value: unknown, where: string): unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new Error(`${where}: expected a list`);
  return value as unknown[];
}

export function str(value: unknown, where: string): string {
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  throw new Error(`${where}: expected a string`);
}

/** Parses YAML strictly: syntax errors, duplicate keys and warnings all fail. */
export function readYaml(relative: string): unknown {
  const document = parseDocument(text(relative), { uniqueKeys: true, prettyErrors: true });
  const problems = [...document.errors, ...document.warnings].map((problem) => problem.message);
  if (problems.length > 0) throw new Error(`${relative} does not parse:\n${problems.join("\n")}`);
  const data: unknown = document.toJS();
  return data;
}

export function splitAddress(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(":");
  return { host: address.slice(0, colon).replace(/^\[|\]$/g, ""), port: Number(address.slice(colon + 1)) };
}

export interface Dockerfile {
  readonly stages: { readonly image: string; readonly name: string | undefined }[];
  readonly instructions: { readonly keyword: string; readonly args: string; readonly stage: number }[];
  readonly args: Record<string, string>;
}

export function readDockerfile(): Dockerfile {
  const logical = text("Dockerfile")
    .replace(/\\\r?\n/g, " ")
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
  const args: Record<string, string> = {};
  const stages: { image: string; name: string | undefined }[] = [];
  const instructions: { keyword: string; args: string; stage: number }[] = [];
  for (const line of logical) {
    const [keyword = "", ...rest] = line.split(/\s+/);
    const upper = keyword.toUpperCase();
    const argsText = rest.join(" ");
    if (upper === "ARG" && stages.length === 0) {
      const [name = "", value = ""] = argsText.split("=");
      args[name] = value;
    }
    if (upper === "FROM") {
      const image = (rest[0] ?? "").replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string | undefined, b: string | undefined) => args[a ?? b ?? ""] ?? "");
      stages.push({ image, name: rest[1]?.toUpperCase() === "AS" ? rest[2] : undefined });
    }
    instructions.push({ keyword: upper, args: argsText, stage: stages.length - 1 });
  }
  return { stages, instructions, args };
}

/** `ENV A=1 B="x y"` pairs of the final stage. */
export function finalStageEnv(dockerfile: Dockerfile): Record<string, string> {
  const last = dockerfile.stages.length - 1;
  const env: Record<string, string> = {};
  for (const instruction of dockerfile.instructions.filter((i) => i.keyword === "ENV" && i.stage === last)) {
    for (const match of instruction.args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
      env[match[1] ?? ""] = (match[2] ?? "").replace(/^"|"$/g, "");
    }
  }
  return env;
}

/** The JSON (exec) form of an instruction such as CMD ["node", "x.js"]. */
export function execForm(args: string, where: string): string[] {
  const start = args.indexOf("[");
  if (start === -1) throw new Error(`${where} must use the exec form ["..."] (signals reach node directly)`);
  const parsed = JSON.parse(args.slice(start)) as unknown;
  return list(parsed, where).map((part, index) => str(part, `${where}[${index}]`));
}

// ---------------------------------------------------------------------------
// Environment variables the service reads

/** Every variable name src/config.ts mentions (it is the only reader of the environment). */
export function variablesReadByConfig(): Set<string> {
  return new Set([...text("src", "config.ts").matchAll(/"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"/g)].map((match) => match[1] ?? ""));
}

/**
 * The OpenTelemetry SDK's own variables (the specification's, read by
 * the tracing SDK start-up (tracing-sdk.ts) and the OTLP exporters, not by config.ts).
 */
export const otelSdkVariables = new Set([
  "OTEL_SDK_DISABLED",
  "OTEL_SERVICE_NAME",
  "OTEL_RESOURCE_ATTRIBUTES",
  "OTEL_PROPAGATORS",
  "OTEL_TRACES_SAMPLER",
  "OTEL_TRACES_SAMPLER_ARG",
  "OTEL_TRACES_EXPORTER",
  "OTEL_LOG_LEVEL",
  "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
  "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
  "OTEL_SPAN_EVENT_COUNT_LIMIT",
  "OTEL_SPAN_LINK_COUNT_LIMIT",
  ...["", "TRACES_"].flatMap((signal) =>
    ["ENDPOINT", "PROTOCOL", "HEADERS", "TIMEOUT", "COMPRESSION", "CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE", "INSECURE"].map(
      (name) => `OTEL_EXPORTER_OTLP_${signal}${name}`,
    ),
  ),
]);

/** Parses a multi-document YAML file strictly (`---` separated, as Kubernetes manifests are). */
export function readYamlDocuments(relative: string): unknown[] {
  const documents = parseAllDocuments(text(relative), { uniqueKeys: true, prettyErrors: true });
  if (!Array.isArray(documents)) throw new Error(`${relative}: no YAML documents`);
  return documents.map((document, index) => {
    const problems = [...document.errors, ...document.warnings].map((problem) => problem.message);
    if (problems.length > 0) throw new Error(`${relative} document ${index + 1} does not parse:\n${problems.join("\n")}`);
    const data: unknown = document.toJS();
    return data;
  });
}

// ---------------------------------------------------------------------------
// promtool

/** How a command exited and what it printed. */
export interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

const promtoolHelp =
  "promtool was not found on PATH: it checks the Prometheus config and alert rules in this test. Install the Debian " +
  "package `prometheus` (`apt-get update && apt-get install -y prometheus`; .ci/run does) or put a promtool from " +
  "https://prometheus.io/download/ on PATH.";

/** `promtool ...args` in `cwd`. A missing promtool fails the test with how to get it: these checks never skip. */
export function promtool(args: readonly string[], cwd: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile("promtool", args, { cwd, timeout: 30_000 }, (error, stdout, stderr) => {
      if (error !== null && error.code === "ENOENT") {
        reject(new Error(promtoolHelp, { cause: error }));
        return;
      }
      resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stdout, stderr });
    });
  });
}
