// `npm start` runs the compiled service; this builds it first when dist/ is
// missing or older than any source file, so a fresh clone needs one command.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const entry = "dist/src/main.js";

function newest(dir) {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const time = entry.isDirectory() ? newest(path) : statSync(path).mtimeMs;
    if (time > latest) latest = time;
  }
  return latest;
}

// A built image has dist/ and no sources: nothing to compile (and nothing to compile with).
if (!existsSync("src") && existsSync(entry)) process.exit(0);

const stale =
  !existsSync(entry) ||
  Math.max(newest("src"), newest("gen"), statSync("package.json").mtimeMs) > statSync(entry).mtimeMs;
if (stale) {
  console.error("otp-email: compiling TypeScript (npm run build)...");
  execFileSync("npm", ["run", "--silent", "build"], { stdio: "inherit" });
}
