// `npm run bench`: compiles the service (as `npm start` does) and the
// benchmark when they are stale, then runs dist/bench/run.js with the same
// arguments. The benchmark always runs compiled: the service it measures is
// `node dist/src/main.js`, and its helper processes are plain Node children.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const entry = join(root, "dist", "bench", "run.js");

/** The newest mtime of the files under `dir` whose names end with `suffix`. */
function newest(dir, suffix = "") {
  let latest = 0;
  for (const item of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, item.name);
    if (!item.isDirectory() && !item.name.endsWith(suffix)) continue;
    const time = item.isDirectory() ? newest(path, suffix) : statSync(path).mtimeMs;
    if (time > latest) latest = time;
  }
  return latest;
}

execFileSync(process.execPath, [join(root, "scripts", "build-if-needed.mjs")], { cwd: root, stdio: "inherit" });
const sources = Math.max(
  // Only sources: the results the benchmark writes into bench/ do not count.
  newest(join(root, "bench"), ".ts"),
  statSync(join(root, "bench", "tsconfig.build.json")).mtimeMs,
  newest(join(root, "src")),
  newest(join(root, "gen")),
  statSync(join(root, "package.json")).mtimeMs,
);
if (!existsSync(entry) || sources > statSync(entry).mtimeMs) {
  console.error("otp-email bench: compiling the benchmark (tsc -p bench/tsconfig.build.json)...");
  execFileSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "bench/tsconfig.build.json"], {
    cwd: root,
    stdio: "inherit",
  });
}

const { main } = await import(pathToFileURL(entry).href);
process.exitCode = await main(process.argv.slice(2));
