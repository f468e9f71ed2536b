/**
 * The doctor's relay probe against real SMTP servers on loopback that do or
 * do not advertise STARTTLS, AUTH and DSN, with trusted and untrusted
 * certificates, and against a port that refuses or a server that never greets.
 */
import { createServer, type Server, type Socket } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { checkRelay } from "../../src/doctor/relay.js";
import type { CheckId, CheckResult } from "../../src/doctor/types.js";
import { startRelayServer, type RelayServer } from "../support/relay-server.js";
import { makeSelfSigned, type SelfSigned } from "../support/self-signed.js";

let pki: SelfSigned;
const servers: RelayServer[] = [];

beforeAll(() => {
  pki = makeSelfSigned();
});

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

async function relay(options: Parameters<typeof startRelayServer>[0]): Promise<RelayServer> {
  const server = await startRelayServer(options);
  servers.push(server);
  return server;
}

function statuses(results: readonly CheckResult[]): Partial<Record<CheckId, string>> {
  return Object.fromEntries(results.map((result) => [result.id, result.status]));
}

function find(results: readonly CheckResult[], id: CheckId): CheckResult {
  const found = results.find((result) => result.id === id);
  if (found === undefined) throw new Error(`no ${id} in ${results.map((result) => result.id).join(", ")}`);
  return found;
}

describe("the relay probe", () => {
  it("passes a relay with STARTTLS (certificate trusted through SMTP_TLS_CA), AUTH and DSN", async () => {
    const server = await relay({ tls: pki, auth: true, dsn: true });
    const results = await checkRelay({ url: `smtp://svc:secret@127.0.0.1:${server.port}`, tlsCa: pki.cert, timeoutMs: 2000 });
    expect(statuses(results)).toEqual({ "relay.connect": "pass", "relay.starttls": "pass", "relay.auth": "pass", "relay.dsn": "pass" });
    expect(find(results, "relay.starttls").summary).toMatch(/^STARTTLS \(TLSv1\.[23]\), certificate verified$/);
    expect(find(results, "relay.auth").summary).toContain("AUTH LOGIN PLAIN");
    expect(find(results, "relay.connect").summary).toMatch(/^connected: 220 /);
  });

  it("fails STARTTLS when an smtp:// relay does not offer it, and does not judge AUTH or DSN from the plaintext EHLO", async () => {
    const server = await relay({ auth: true, dsn: true });
    const results = await checkRelay({ url: `smtp://svc:secret@127.0.0.1:${server.port}`, timeoutMs: 2000 });
    expect(statuses(results)).toEqual({ "relay.connect": "pass", "relay.starttls": "fail", "relay.auth": "warn", "relay.dsn": "warn" });
    expect(find(results, "relay.starttls").summary).toContain("does not offer STARTTLS, which an smtp:// URL requires");
  });

  it("fails STARTTLS when the relay's certificate is not trusted (no SMTP_TLS_CA)", async () => {
    const server = await relay({ tls: pki, auth: true, dsn: true });
    const results = await checkRelay({ url: `smtp://127.0.0.1:${server.port}`, timeoutMs: 2000 });
    const starttls = find(results, "relay.starttls");
    expect(starttls.status).toBe("fail");
    expect(starttls.summary).toMatch(/self[- ]signed/i);
    expect(starttls.fix).toContain("SMTP_TLS_CA");
  });

  it("warns when the relay does not advertise DSN", async () => {
    const server = await relay({ tls: pki, auth: true });
    const results = await checkRelay({ url: `smtp://svc:secret@127.0.0.1:${server.port}`, tlsCa: pki.cert, timeoutMs: 2000 });
    expect(statuses(results)).toEqual({ "relay.connect": "pass", "relay.starttls": "pass", "relay.auth": "pass", "relay.dsn": "warn" });
    expect(find(results, "relay.dsn").summary).toContain("NOTIFY/ENVID are dropped");
  });

  it("fails AUTH when SMTP_URL has credentials and the relay offers no AUTH", async () => {
    const server = await relay({ tls: pki, dsn: true });
    const results = await checkRelay({ url: `smtp://svc:secret@127.0.0.1:${server.port}`, tlsCa: pki.cert, timeoutMs: 2000 });
    expect(find(results, "relay.auth")).toMatchObject({ status: "fail", summary: expect.stringContaining("does not offer AUTH") as unknown });
  });

  it("warns when the relay offers AUTH and SMTP_URL has no credentials", async () => {
    const server = await relay({ tls: pki, auth: true, dsn: true });
    const results = await checkRelay({ url: `smtp://127.0.0.1:${server.port}`, tlsCa: pki.cert, timeoutMs: 2000 });
    expect(find(results, "relay.auth")).toMatchObject({ status: "warn", fix: expect.stringContaining("user:pass") as unknown });
  });

  it("passes an smtps:// relay (implicit TLS) with AUTH and DSN", async () => {
    const server = await relay({ tls: pki, implicitTls: true, auth: true, dsn: true });
    const results = await checkRelay({ url: `smtps://svc:secret@127.0.0.1:${server.port}`, tlsCa: pki.cert, timeoutMs: 2000 });
    expect(statuses(results)).toEqual({ "relay.connect": "pass", "relay.starttls": "pass", "relay.auth": "pass", "relay.dsn": "pass" });
    expect(find(results, "relay.starttls").summary).toMatch(/^implicit TLS \(TLSv1\.[23]\), certificate verified$/);
  });

  it("fails relay.connect for an smtps:// relay whose certificate is not trusted", async () => {
    const server = await relay({ tls: pki, implicitTls: true });
    const results = await checkRelay({ url: `smtps://127.0.0.1:${server.port}`, timeoutMs: 2000 });
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({ id: "relay.connect", status: "fail", fix: expect.stringContaining("SMTP_TLS_CA") as unknown });
  });

  it("accepts plaintext to a loopback relay with ?starttls=off", async () => {
    const server = await relay({ dsn: true });
    const results = await checkRelay({ url: `smtp://127.0.0.1:${server.port}?starttls=off`, timeoutMs: 2000 });
    expect(statuses(results)).toEqual({ "relay.connect": "pass", "relay.starttls": "pass", "relay.auth": "pass", "relay.dsn": "pass" });
  });
});

describe("a relay that cannot be used", () => {
  let silent: Server;
  const sockets = new Set<Socket>();
  beforeAll(async () => {
    // Accepts the connection and never greets.
    silent = createServer((socket) => {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
  });

  it("fails relay.connect alone when nothing listens", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const address = closed.address();
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    if (address === null || typeof address === "string") throw new Error("no port");
    const results = await checkRelay({ url: `smtp://127.0.0.1:${address.port}`, timeoutMs: 2000 });
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({ id: "relay.connect", status: "fail", summary: expect.stringContaining("ECONNREFUSED") as unknown });
  });

  it("fails relay.connect when the relay never greets, after the timeout", async () => {
    const address = silent.address();
    if (address === null || typeof address === "string") throw new Error("no port");
    const results = await checkRelay({ url: `smtp://127.0.0.1:${address.port}`, timeoutMs: 300 });
    expect(results).toEqual([
      expect.objectContaining({ id: "relay.connect", status: "fail", summary: "cannot talk to the relay: the relay did not answer within 300 ms" }),
    ]);
  });
});
