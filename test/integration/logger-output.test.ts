/**
 * The service's log destination (src/logger.ts): standard output through
 * sonic-boom in buffer mode. Every line arrives whole and in order, through a
 * pipe and into a file, including a burst written just before the process
 * exits (pino's flush at exit), and multi-byte characters survive.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const lines = 20_000;
const script = `
  const { createLogger } = await import(${JSON.stringify(new URL("../../dist/src/logger.js", import.meta.url).href)});
  const logger = createLogger({ level: "info" });
  for (let i = 0; i < ${lines}; i++) logger.info({ i, note: "é ü 한국 🙂" }, "burst");
  logger.info("last");
  process.exit(0);
`;

function run(stdout: "pipe" | number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", stdout, "inherit"] });
    let out = "";
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}`))));
  });
}

function check(output: string): void {
  const parsed = output.trimEnd().split("\n").map((line) => JSON.parse(line) as { i?: number; note?: string; msg: string });
  expect(parsed).toHaveLength(lines + 1);
  parsed.slice(0, lines).forEach((line, index) => {
    expect(line.i).toBe(index);
    expect(line.note).toBe("é ü 한국 🙂");
  });
  expect(parsed.at(-1)?.msg).toBe("last");
}

describe("log output", () => {
  const dir = mkdtempSync(join(tmpdir(), "otp-log-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("writes every line whole through a pipe, even when the process exits right after", async () => {
    check(await run("pipe"));
  });

  it("writes every line whole into a file", async () => {
    const path = join(dir, "out.log");
    const fd = openSync(path, "w");
    try {
      await run(fd);
    } finally {
      closeSync(fd);
    }
    check(readFileSync(path, "utf8"));
  });
});
