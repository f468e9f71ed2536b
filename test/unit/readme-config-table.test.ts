/**
 * The README's configuration table is where an operator learns what a
 * variable takes: every whole-number and duration variable that config.ts
 * reads with a fixed default and range must show that default and that range
 * (a value outside it stops the start with exit 78, which the table must not
 * leave as a surprise).
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseDuration } from "../../src/config.js";

const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
const configSource = readFileSync(new URL("../../src/config.ts", import.meta.url), "utf8");

/** A numeric literal as config.ts writes it: `86_400_000`, `7 * 86_400_000`; undefined for anything else. */
function literal(text: string): number | undefined {
  const factors = text.split("*").map((part) => part.trim().replace(/_/g, ""));
  if (!factors.every((factor) => /^\d+$/.test(factor))) return undefined;
  return factors.reduce((product, factor) => product * Number(factor), 1);
}

interface Read {
  readonly kind: "int" | "duration";
  readonly name: string;
  readonly fallback: number;
  readonly min: number;
  readonly max: number;
}

/** Every `read.int(...)` and `read.duration(...)` of config.ts whose default and bounds are literals. */
function readsWithLiteralBounds(): Read[] {
  const reads: Read[] = [];
  for (const match of configSource.matchAll(/read\.(int|duration)\("([A-Z0-9_]+)", ([^,()]+), ([^,()]+), ([^,()]+)\)/g)) {
    const [, kind, name, ...args] = match;
    const [fallback, min, max] = args.map((arg) => literal(arg ?? ""));
    if (fallback === undefined || min === undefined || max === undefined) continue;
    reads.push({ kind: kind as Read["kind"], name: name ?? "", fallback, min, max });
  }
  return reads;
}

/** The table's row for `name` (a row may name two variables, `A` / `B`): its default and meaning cells, split per variable. */
function row(name: string): { readonly fallback: string; readonly meaning: string } | undefined {
  const section = readme.slice(readme.indexOf("## Configuration"), readme.indexOf("## Delivery truth"));
  for (const line of section.split("\n")) {
    const cells = line.split(/(?<!\\)\|/).map((cell) => cell.trim());
    const names = [...(cells[1] ?? "").matchAll(/`([A-Z0-9_]+)`/g)].map((m) => m[1]);
    const index = names.indexOf(name);
    if (index < 0) continue;
    const fallbacks = (cells[2] ?? "").split(" / ");
    return { fallback: fallbacks[index] ?? fallbacks[0] ?? "", meaning: cells[3] ?? "" };
  }
  return undefined;
}

/** How the README writes a duration bound: `0`, `500ms`, `1m`, `365d`. */
function durationText(ms: number): string {
  if (ms === 0) return "0";
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

describe("README configuration table", () => {
  const reads = readsWithLiteralBounds();

  it("finds the variables config.ts reads with a fixed range", () => {
    // A guard on the parsing above: these are among them, so a change of form would not pass unnoticed.
    expect(reads.map((r) => r.name)).toEqual(expect.arrayContaining(["SMTP_POOL_SIZE", "SHUTDOWN_GRACE", "REDIS_COMMAND_TIMEOUT"]));
    expect(reads.length).toBeGreaterThanOrEqual(20);
  });

  it("shows each one's default as config.ts applies it", () => {
    const wrong = reads.flatMap((read) => {
      const documented = row(read.name)?.fallback.match(/`([^`]+)`/)?.[1] ?? "";
      const value = read.kind === "int" ? Number(documented) : parseDuration(documented);
      return value === read.fallback ? [] : [`${read.name}: README ${documented || "(none)"}, config.ts ${read.fallback}`];
    });
    expect(wrong).toEqual([]);
  });

  it("states each one's allowed range as config.ts enforces it", () => {
    const missing = reads.flatMap((read) => {
      const meaning = row(read.name)?.meaning ?? "";
      if (read.kind === "int") {
        return meaning.includes(`${read.min}-${read.max}`) || meaning.includes(`${read.min} to ${read.max}`)
          ? []
          : [`${read.name}: ${read.min}-${read.max}`];
      }
      const bounds = [read.min, read.max].map(durationText);
      return bounds.every((bound) => meaning.includes(`\`${bound}\``)) ? [] : [`${read.name}: ${bounds.join(" to ")}`];
    });
    expect(missing, "ranges the table does not state").toEqual([]);
  });
});
