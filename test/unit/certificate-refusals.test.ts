/**
 * The verdict on a connection's client certificate, over real TLS
 * handshakes (node:tls, the certificate workshop's CA): the log's bound of
 * one line a minute per certificate and reason, on an injected clock, and a
 * closed connection's verdict forgotten (no verdict outlives its
 * connection, none is found for a call on another).
 */
import { once } from "node:events";
import { connect, createServer, type Server, type TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCertificateRefusals, type CertificateRefusalReason } from "../../src/auth/certificate-refusals.js";
import { createLogger } from "../../src/logger.js";
import { openCertificateWorkshop, type CertificateWorkshop, type KeyPair } from "../support/certs.js";

let workshop: CertificateWorkshop;
let caPem: string;
let server: KeyPair;
let expired: KeyPair;
let valid: KeyPair;
/** Four more expired certificates, each of its own caller: a client making a new one per connection. */
let others: KeyPair[];

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  const ca = await workshop.newCa("refusals test CA");
  caPem = ca.cert;
  server = await ca.issue({ cn: "localhost", san: "DNS:localhost", server: true });
  expired = await ca.issue({ cn: "old", san: "URI:spiffe://test/old", days: -1 });
  valid = await ca.issue({ cn: "fine", san: "URI:spiffe://test/fine" });
  others = [];
  for (let i = 0; i < 4; i++) others.push(await ca.issue({ cn: `made-${i}`, san: `URI:spiffe://test/made-${i}`, days: -1 }));
});

afterAll(async () => {
  await workshop.cleanup();
});

/** A TLS server asking for client certificates as the gRPC server does, every connection watched. */
async function watchedServer(maxLinesPerInterval?: number) {
  let time = 0;
  const lines: Record<string, unknown>[] = [];
  const counted: CertificateRefusalReason[] = [];
  const refusals = createCertificateRefusals({
    logger: createLogger({ level: "info", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } }),
    clock: { now: () => time, monotonic: () => time },
    onRefused: (reason) => counted.push(reason),
    maxLinesPerInterval,
  });
  const tls: Server = createServer({ cert: server.cert, key: server.key, ca: caPem, requestCert: true, rejectUnauthorized: false });
  /** The server's end of each connection, once watched. */
  const served: TLSSocket[] = [];
  tls.on("secureConnection", (socket: TLSSocket) => {
    // The test ends connections by destroying the client's end: a reset here is expected, not an uncaught error.
    socket.on("error", () => undefined);
    refusals.watch(socket);
    served.push(socket);
  });
  tls.listen(0, "127.0.0.1");
  await once(tls, "listening");
  const { port } = tls.address() as { port: number };

  /**
   * A connection with `identity`, open once the server has watched it; its
   * peer as grpc-js's `getPeer()` spells it, and the server's end.
   */
  async function open(identity: KeyPair | undefined): Promise<{ socket: TLSSocket; peer: string; served: TLSSocket }> {
    const before = served.length;
    const socket = connect({ host: "127.0.0.1", port, servername: "localhost", ca: caPem, ...(identity ?? {}) });
    socket.on("error", () => undefined);
    await once(socket, "secureConnect");
    while (served.length === before) await new Promise((resolve) => setImmediate(resolve));
    const end = served[before];
    return { socket, peer: `${end.remoteAddress}:${end.remotePort}`, served: end };
  }
  return {
    refusals,
    lines,
    counted,
    open,
    advance: (ms: number) => void (time += ms),
    close: () => new Promise((resolve) => tls.close(resolve)),
  };
}

describe("client certificate refusals", () => {
  it("a refused certificate is logged once a minute at most, however often it connects; every connection is counted", async () => {
    const watched = await watchedServer();
    const sockets: TLSSocket[] = [];
    for (let i = 0; i < 3; i++) sockets.push((await watched.open(expired)).socket);
    expect(watched.counted).toEqual(["expired", "expired", "expired"]);
    expect(watched.lines).toHaveLength(1);
    expect(watched.lines[0]).toMatchObject({ reason: "expired", openssl_error: "CERT_HAS_EXPIRED", client_certificate: { name: "spiffe://test/old" } });

    watched.advance(59_999);
    sockets.push((await watched.open(expired)).socket);
    expect(watched.lines).toHaveLength(1);
    watched.advance(1);
    sockets.push((await watched.open(expired)).socket);
    expect(watched.lines).toHaveLength(2);
    expect(watched.counted).toHaveLength(5);

    for (const socket of sockets) socket.destroy();
    await watched.close();
  });

  it("all certificates together are logged a bounded number of times a minute; the next line says how many were left out", async () => {
    const watched = await watchedServer(2);
    const sockets: TLSSocket[] = [];
    for (const identity of others) sockets.push((await watched.open(identity)).socket);
    expect(watched.counted).toEqual(["expired", "expired", "expired", "expired"]);
    expect(watched.lines.map((line) => (line["client_certificate"] as { name: string }).name)).toEqual(["spiffe://test/made-0", "spiffe://test/made-1"]);
    expect(watched.lines.every((line) => !("refusals_not_logged" in line))).toBe(true);

    watched.advance(60_000);
    sockets.push((await watched.open(expired)).socket);
    expect(watched.lines).toHaveLength(3);
    expect(watched.lines[2]).toMatchObject({ client_certificate: { name: "spiffe://test/old" }, refusals_not_logged: 2 });
    expect(String(watched.lines[2]?.["msg"])).toContain("(2 other refused certificates were not logged before it: at most 2 lines a minute;");
    // Left out once: the count starts again.
    sockets.push((await watched.open(others[3])).socket);
    expect(watched.lines[3]).not.toHaveProperty("refusals_not_logged");

    for (const socket of sockets) socket.destroy();
    await watched.close();
  });

  it("a connection's verdict is found by its peer while it is open, and forgotten when it closes", async () => {
    const watched = await watchedServer();
    const refused = await watched.open(expired);
    const fine = await watched.open(valid);
    const none = await watched.open(undefined);
    expect(watched.refusals.refusalOf(refused.peer)).toMatchObject({
      reason: "expired",
      code: "CERT_HAS_EXPIRED",
      name: "spiffe://test/old",
      description: "the client certificate (spiffe://test/old) has expired (it, or a CA certificate of its chain)",
    });
    expect(watched.refusals.refusalOf(fine.peer)).toBeUndefined();
    // No certificate at all is not a refused one (OpenSSL calls it unverified too).
    expect(watched.refusals.refusalOf(none.peer)).toBeUndefined();
    expect(watched.counted).toEqual(["expired"]);

    const closed = once(refused.served, "close");
    refused.socket.destroy();
    await closed;
    expect(watched.refusals.refusalOf(refused.peer)).toBeUndefined();

    fine.socket.destroy();
    none.socket.destroy();
    await watched.close();
  });
});
