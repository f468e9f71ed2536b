/**
 * vitest globalSetup: one Redis for the whole run, handed to test files with
 * `provide("redisUrl")`; tests read it with `redisUrlForTests()` from
 * ./redis.ts (which declares the typed ProvidedContext).
 *
 * It first compiles the service (dist/), for the tests that spawn it.
 *
 * REDIS_URL wins when set; otherwise a private redis-server is started here
 * and stopped at the end. No Redis means a failed run, never skipped tests.
 */
import { execFileSync } from "node:child_process";
import type { TestProject } from "vitest/node";
import { pingRedis, startRedisServer } from "./redis.js";

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Some tests run the compiled service as a separate process, exactly as
  // `npm start` does: compile once for the whole run. tsc emits even when a
  // type is wrong; type errors are `npm run typecheck`'s to report (CI runs
  // it first), so here they are only shown.
  try {
    execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });
  } catch {
    console.warn("global-setup: tsc reported errors (see above); tests run against what it emitted");
  }
  const fromEnvironment = process.env["REDIS_URL"];
  if (fromEnvironment !== undefined && fromEnvironment !== "") {
    try {
      await pingRedis(fromEnvironment, 5000);
    } catch (error) {
      throw new Error(
        `REDIS_URL is set but no Redis answers there (${String(error)}). ` +
          "Start that Redis, or unset REDIS_URL to let the tests start a private redis-server.",
        { cause: error },
      );
    }
    project.provide("redisUrl", fromEnvironment);
    return () => Promise.resolve();
  }
  const server = await startRedisServer();
  project.provide("redisUrl", server.url);
  return () => server.stop();
}
