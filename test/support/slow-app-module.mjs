// Preloaded with `node --import` by process.test.ts: holds the loading of
// dist/src/app.js (and so everything main.js imports) for a while, writing
// "loading app.js" to stderr first, so a test can signal the service while
// its modules are still loading, as a SIGHUP in its first second would.
import { writeSync } from "node:fs";
import { registerHooks } from "node:module";

registerHooks({
  load(url, context, nextLoad) {
    if (url.endsWith("/dist/src/app.js")) {
      writeSync(2, "loading app.js\n");
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
    }
    return nextLoad(url, context);
  },
});
