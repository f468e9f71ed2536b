/**
 * A listener on this machine's own address that is not loopback, for the
 * clients' "never the token in the clear across a network" tests: it counts
 * the connections that reach it and, when asked, pipes each to a loopback
 * service, so a call that is let through gets a real answer.
 */
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";
import { networkInterfaces } from "node:os";

/**
 * The first IPv4 address of this machine outside 127.0.0.0/8. Fails (never
 * skips) when there is none: the tests that need one cannot prove anything
 * on loopback alone.
 */
export function nonLoopbackIPv4(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) {
      if (address.family === "IPv4" && !address.internal && !address.address.startsWith("127.")) return address.address;
    }
  }
  throw new Error(
    "this machine has no IPv4 address outside 127.0.0.0/8 (os.networkInterfaces()): the test of a token refused " +
      "for a target that is not loopback needs one; run it on a machine (or container) with a network interface",
  );
}

export interface WatchedListener {
  /** `ADDRESS:PORT`, on the machine's non-loopback address. */
  readonly target: string;
  /** How many TCP connections arrived so far. */
  connections(): number;
  close(): Promise<void>;
}

/** Listens on `host` (port chosen by the OS); each connection is counted, then piped to `forwardTo` or closed. */
export async function watchListener(host: string, forwardTo?: string): Promise<WatchedListener> {
  let count = 0;
  const sockets = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  const server = createServer((socket) => {
    count += 1;
    track(socket);
    if (forwardTo === undefined) {
      socket.destroy();
      return;
    }
    const separator = forwardTo.lastIndexOf(":");
    const upstream = connect({ host: forwardTo.slice(0, separator), port: Number(forwardTo.slice(separator + 1)) });
    track(upstream);
    socket.pipe(upstream).pipe(socket);
    upstream.on("close", () => socket.destroy());
    socket.on("close", () => upstream.destroy());
  });
  server.listen(0, host);
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error(`could not listen on ${host}`);
  return {
    target: `${host}:${address.port}`,
    connections: () => count,
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, "close");
    },
  };
}
