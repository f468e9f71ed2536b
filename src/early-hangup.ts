/**
 * SIGHUP's default action ends the process, and main.ts installs its own
 * handler (read the certificate files again) only once the service's
 * modules are loaded, most of a second after the start. Imported first by
 * the tracing bootstrap (and by main.ts, for `node dist/src/main.js`), this
 * module holds a SIGHUP that comes before then, for main.ts to act on: a
 * renewal hook that signals a starting service must not stop it.
 */
let received = false;
const hold = (): void => {
  received = true;
};
process.on("SIGHUP", hold);

/** Stops holding SIGHUP (install the real handler first); answers whether one came meanwhile. */
export function releaseEarlyHangup(): boolean {
  process.removeListener("SIGHUP", hold);
  return received;
}
