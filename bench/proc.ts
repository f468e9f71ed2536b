/**
 * What Linux says about a process: CPU time from /proc/<pid>/stat, resident
 * memory (now and peak) from /proc/<pid>/status, and a sampler that keeps the
 * peak RSS seen while a scenario runs.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

export interface ProcSnapshot {
  /** user + system CPU time, milliseconds. */
  readonly cpuMs: number;
  readonly rssBytes: number;
  /** VmHWM: the highest RSS of the process's whole life. */
  readonly hwmBytes: number;
}

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** Reads /proc for `pid`; undefined when the process is gone. */
export function readProc(pid: number): ProcSnapshot | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of stat(5) (utime, stime) are 11 and 12 here, counted from field 3.
    const ticks = Number(fields[11]) + Number(fields[12]);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0) * 1024;
    return { cpuMs: (ticks / clockTicks()) * 1000, rssBytes: kb("VmRSS"), hwmBytes: kb("VmHWM") };
  } catch {
    return undefined;
  }
}

/** CPU time the whole machine spent busy (all cores, every process), ms, from /proc/stat. */
export function readMachineBusyMs(): number {
  try {
    const [first = ""] = readFileSync("/proc/stat", "utf8").split("\n");
    // cpu user nice system idle iowait irq softirq steal ...
    const ticks = first.trim().split(/\s+/).slice(1, 9).map(Number);
    const busy = ticks.reduce((sum, value, index) => (index === 3 || index === 4 ? sum : sum + value), 0);
    return (busy / clockTicks()) * 1000;
  } catch {
    return 0;
  }
}

export interface ProcWindow {
  /** CPU time used during the window, ms. */
  readonly cpuMs: number;
  /** CPU time over wall time, in percent of one core. */
  readonly cpuPercent: number;
  readonly peakRssBytes: number;
  readonly endRssBytes: number;
  readonly hwmBytes: number;
  /**
   * CPU the rest of the machine used meanwhile (processes that are not the
   * benchmark's), % of one core: other work on a shared machine disturbs
   * the run when this is high.
   */
  readonly othersPercent: number;
  /** CPU time each of `ownPids` used during the window, ms, in the same order. */
  readonly ownCpuMs: readonly number[];
}

/**
 * Watches `pid` from now until `stop()`: CPU used in between, the highest
 * RSS among samples taken every `intervalMs`, and how busy processes other
 * than `ownPids` kept the machine.
 */
export function watchProcess(pid: number, ownPids: readonly number[], intervalMs = 100): { stop(): ProcWindow } {
  const first = readProc(pid);
  const ownFirst = ownPids.map((own) => readProc(own)?.cpuMs ?? 0);
  const machineFirst = readMachineBusyMs();
  const startedAt = performance.now();
  let peak = first?.rssBytes ?? 0;
  const timer = setInterval(() => {
    peak = Math.max(peak, readProc(pid)?.rssBytes ?? 0);
  }, intervalMs);
  return {
    stop(): ProcWindow {
      clearInterval(timer);
      const last = readProc(pid);
      const wallMs = performance.now() - startedAt;
      const cpuMs = first !== undefined && last !== undefined ? last.cpuMs - first.cpuMs : 0;
      peak = Math.max(peak, last?.rssBytes ?? 0);
      const ownCpuMs = ownPids.map((own, index) => Math.max(0, (readProc(own)?.cpuMs ?? 0) - (ownFirst[index] ?? 0)));
      const ownMs = ownCpuMs.reduce((sum, ms) => sum + ms, 0);
      const othersMs = Math.max(0, readMachineBusyMs() - machineFirst - ownMs);
      return {
        cpuMs,
        cpuPercent: wallMs > 0 ? (cpuMs / wallMs) * 100 : 0,
        peakRssBytes: peak,
        endRssBytes: last?.rssBytes ?? 0,
        hwmBytes: last?.hwmBytes ?? 0,
        othersPercent: wallMs > 0 ? (othersMs / wallMs) * 100 : 0,
        ownCpuMs,
      };
    },
  };
}
