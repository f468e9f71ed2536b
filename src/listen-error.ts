/**
 * A listener that could not open (the gRPC port, /metrics, the bounce
 * intake), told the way a configuration error is: the variable that chose
 * the address, the address, and what to do. A second `npm start` on the same
 * machine meets this first.
 */

/** Why a listen failed, from Node's code (metrics, intake) or grpc-js's message, which carries it in its text. */
function listenErrorCode(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === "string") return code;
  return /\b(EADDRINUSE|EADDRNOTAVAIL|EACCES)\b/.exec(error instanceof Error ? error.message : String(error))?.[1];
}

/**
 * The error to stop start-up with when the listener `variable` chose
 * (`GRPC_ADDR`...) could not listen on `address`.
 */
export function listenFailure(variable: string, address: string, error: unknown): Error {
  const code = listenErrorCode(error);
  const advice: Readonly<Record<string, string>> = {
    EADDRINUSE: `the port is taken (another otp-email, or npm start already running?): stop that, or set ${variable} to a free port`,
    EADDRNOTAVAIL: "no interface of this machine has that address: use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
    EACCES: "not allowed to listen there (a port under 1024 needs privileges): use a port from 1024 up",
  };
  const why = (code === undefined ? undefined : advice[code]) ?? `cannot listen there: ${error instanceof Error ? error.message : String(error)}`;
  return new Error(`${variable}=${address}: ${why}`, { cause: error });
}
