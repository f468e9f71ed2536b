// Preloaded with `node --import` by module-loading.test.ts: records the URL
// of every module the main thread loads (ESM and CommonJS alike) and writes
// them, one a line, to $RECORD_MODULES_TO when the process exits.
import { writeFileSync } from "node:fs";
import { registerHooks } from "node:module";

const loaded = new Set();
registerHooks({
  load(url, context, nextLoad) {
    loaded.add(url);
    return nextLoad(url, context);
  },
});
process.on("exit", () => writeFileSync(process.env["RECORD_MODULES_TO"] ?? "/dev/null", [...loaded].join("\n")));
