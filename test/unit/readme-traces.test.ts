/**
 * The README's "Traces" section is what an SRE searches Jaeger or Tempo with:
 * it must name every span, event and attribute the service writes
 * (src/telemetry/semconv.ts, the one place they live), and name no other.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { attributes, eventNames, spanNames } from "../../src/telemetry/semconv.js";

const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");

/** The "### Traces" section, up to the next heading. */
function tracesSection(): string {
  const start = readme.indexOf("\n### Traces\n");
  if (start < 0) throw new Error('README has no "### Traces" section');
  return readme.slice(start + 1, readme.indexOf("\n#", start + 1));
}

/** Every `code span` of the section. */
function codeSpans(section: string): Set<string> {
  return new Set([...section.matchAll(/`([^`\n]+)`/g)].map((match) => match[1] ?? ""));
}

describe("the README's Traces section", () => {
  const named = codeSpans(tracesSection());

  it("names every span, event and attribute the service writes", () => {
    const written = [...Object.values(spanNames), ...Object.values(eventNames), ...Object.values(attributes)];
    // The gRPC server span's rpc.* attributes are named together, as instrumentation-grpc's.
    const missing = written.filter((name) => !named.has(name) && !(name.startsWith("rpc.") && named.has("rpc.*")));
    expect(missing, "written by the service, not named in the README").toEqual([]);
  });

  it("names no otp.* or smtp.* span, event or attribute the service does not write", () => {
    const known = new Set<string>([...Object.values(spanNames), ...Object.values(eventNames), ...Object.values(attributes)]);
    const unknown = [...named].filter((name) => /^(?:otp|smtp)\.[a-z_.]+$/.test(name) && !known.has(name));
    expect(unknown, "named in the README, never written").toEqual([]);
  });
});
