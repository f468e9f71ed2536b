/**
 * Reads a V8 .cpuprofile (`node --cpu-prof`) and says where the time went:
 * self time by package (grpc-js, ioredis, nodemailer, pino, our src/...) and
 * the hottest functions.
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly hitCount?: number;
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples?: readonly number[];
  readonly timeDeltas?: readonly number[];
  readonly startTime: number;
  readonly endTime: number;
}

export interface ProfileEntry {
  readonly name: string;
  readonly selfMs: number;
  readonly percent: number;
}

export interface ProfileSummary {
  readonly totalMs: number;
  readonly byPackage: readonly ProfileEntry[];
  /**
   * Self time with Node's own code and native calls (socket writes,
   * hashing...) charged to the nearest caller in a package or in our code:
   * who causes the work, rather than who does it.
   */
  readonly byCaller: readonly ProfileEntry[];
  readonly byFunction: readonly ProfileEntry[];
}

/** Frames that do work on someone else's behalf. */
function isRuntime(where: string): boolean {
  return where === "(native)" || where.startsWith("node:") || where === "(program)";
}

/** Where a script lives: `grpc-js`, `src/otp`, `node:internal`... */
function packageOf(url: string, functionName: string): string {
  if (url === "") return functionName === "(garbage collector)" ? "(gc)" : functionName.startsWith("(") ? functionName : "(native)";
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (modules?.[1] !== undefined) return modules[1];
  const own = /\/dist\/(?:.*\/)?((?:src|gen|bench)\/[^/]+)/.exec(url);
  if (own?.[1] !== undefined) return own[1].replace(/\.js$/, "");
  if (url.startsWith("node:")) return url.startsWith("node:internal") ? "node:internal" : url;
  return url;
}

/** The package or module of a script's URL (`grpc-js`, `src/otp`, `node:internal`...). */
export function packageOfScript(url: string): string {
  return packageOf(url, "");
}

/**
 * Summarizes the profile at `path`. With `sinceUs` (a CLOCK_MONOTONIC time in
 * microseconds, the clock of V8's timestamps on Linux: `process.hrtime`),
 * only samples from then on count: start-up is left out.
 */
export function summarizeProfile(path: string, top = 20, sinceUs = 0): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parentOf = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
  const where = (node: ProfileNode): string => packageOf(node.callFrame.url, node.callFrame.functionName);
  const callerOf = (node: ProfileNode): string => {
    let current: ProfileNode | undefined = node;
    while (current !== undefined && isRuntime(where(current))) {
      const parent = parentOf.get(current.id);
      current = parent === undefined ? undefined : byId.get(parent);
    }
    return current === undefined || where(current) === "(root)" ? where(node) : where(current);
  };
  const selfUs = new Map<number, number>();
  if (profile.samples !== undefined && profile.timeDeltas !== undefined) {
    // Each sample's time is the delta to the next sample.
    let at = profile.startTime;
    profile.samples.forEach((id, index) => {
      at += profile.timeDeltas?.[index] ?? 0;
      if (at < sinceUs) return;
      const delta = profile.timeDeltas?.[index + 1] ?? 0;
      selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, delta));
    });
  }
  const totalUs = [...selfUs.values()].reduce((sum, value) => sum + value, 0) || profile.endTime - profile.startTime;
  const packages = new Map<string, number>();
  const callers = new Map<string, number>();
  const functions = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (node === undefined) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const own = where(node);
    packages.set(own, (packages.get(own) ?? 0) + us);
    const caller = callerOf(node);
    callers.set(caller, (callers.get(caller) ?? 0) + us);
    const file = url.replace(/^.*\/(node_modules|dist)\//, "").replace(/^file:\/\//, "");
    const name = `${functionName || "(anonymous)"} ${file === "" ? "" : `${file}:${lineNumber + 1}`}`.trim();
    functions.set(name, (functions.get(name) ?? 0) + us);
  }
  const entries = (map: Map<string, number>): ProfileEntry[] =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: us / 1000, percent: (us / totalUs) * 100 }));
  return { totalMs: totalUs / 1000, byPackage: entries(packages), byCaller: entries(callers), byFunction: entries(functions) };
}

export function formatProfile(summary: ProfileSummary): string {
  const line = (entry: ProfileEntry): string =>
    `  ${entry.percent.toFixed(1).padStart(5)} %  ${entry.selfMs.toFixed(0).padStart(7)} ms  ${entry.name}`;
  return [
    `sampled ${summary.totalMs.toFixed(0)} ms; self time by package:`,
    ...summary.byPackage.map(line),
    "self time charged to the package or module that caused it (Node internals and native calls to their caller):",
    ...summary.byCaller.map(line),
    "hottest functions (self time):",
    ...summary.byFunction.map(line),
  ].join("\n");
}
