// Builds the otp-email-client package in place (`npm pack` runs it as `prepack`):
// compiles the repository's src/client.ts and what it imports into dist/ with
// the repository's TypeScript, and copies in the contract (proto/) and LICENSE,
// which npm can only pack from inside the package directory.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const packageDir = import.meta.dirname;
const repository = join(packageDir, "../..");

let tsc;
try {
  tsc = createRequire(join(repository, "package.json")).resolve("typescript/bin/tsc");
} catch (error) {
  throw new Error(
    `otp-email-client is built with the repository's TypeScript, which is not installed: run \`npm ci\` in ${repository}, then pack again`,
    { cause: error },
  );
}

// Start clean: a file left from an older build must not be packed.
for (const stale of ["dist", "proto", "LICENSE"]) rmSync(join(packageDir, stale), { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", join(packageDir, "tsconfig.json")], { stdio: "inherit" });
cpSync(join(repository, "proto"), join(packageDir, "proto"), { recursive: true });
cpSync(join(repository, "LICENSE"), join(packageDir, "LICENSE"));
if (!existsSync(join(packageDir, "dist/src/client.js"))) {
  throw new Error("otp-email-client: tsc wrote no dist/src/client.js; see its output above");
}
