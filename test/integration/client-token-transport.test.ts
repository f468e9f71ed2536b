/**
 * The Node client (src/client.ts, published as otp-email-client) sends its
 * bearer token only over TLS or to a loopback target, as the examples'
 * clients do (test/support/client-contract.ts): the real service process
 * (TLS, and its plaintext twin on loopback) and a listener of this test on
 * the machine's own non-loopback address, over real sockets.
 */
import { readFile } from "node:fs/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createOtpEmailClient } from "../../src/client.js";
import { startServiceForClients, type ServiceForClients } from "../support/client-contract.js";
import { nonLoopbackIPv4, watchListener, type WatchedListener } from "../support/non-loopback.js";

const unknownId = "01kb2m7q3c5xw9p8h2g4r6t0vn";
let service: ServiceForClients | undefined;
const listeners: WatchedListener[] = [];

function started(): ServiceForClients {
  if (service === undefined) throw new Error("the service did not start (see beforeAll)");
  return service;
}

/** A listener on this machine's non-loopback address that pipes to the plaintext twin. */
async function watched(): Promise<WatchedListener> {
  const listener = await watchListener(nonLoopbackIPv4(), started().plaintextTarget);
  listeners.push(listener);
  return listener;
}

/** The code a call failed with: NOT_FOUND means the token arrived and was accepted. */
async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

beforeAll(async () => {
  service = await startServiceForClients("node-app");
}, 60_000);

afterEach(async () => {
  await Promise.all(listeners.splice(0).map((listener) => listener.close()));
});

afterAll(async () => {
  await service?.stop();
});

describe("the Node client sends its token only over TLS or to loopback", () => {
  it("a token to an http:// target that is not loopback is refused when the client is made, saying what to do, and nothing connects", async () => {
    const listener = await watched();
    const { token } = started();
    // A client made and used as any caller would: a refusal must come before the call reaches the socket.
    const refused = await (async () => {
      const client = createOtpEmailClient({ baseUrl: `http://${listener.target}`, token });
      await client.getDeliveryStatus({ messageId: unknownId });
    })().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refused).toBeInstanceOf(Error);
    expect(refused).not.toBeInstanceOf(ConnectError);
    const message = (refused as Error).message;
    expect(message).toMatch(/https:\/\//);
    expect(message).toMatch(/allowPlaintextToken/);
    expect(message).not.toContain(token);
    // A connection opened before the refusal would have been accepted by now; give the loop a turn.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(listener.connections()).toBe(0);
  });

  it("with allowPlaintextToken the token goes over plaintext to that target: the service authenticates the call", async () => {
    const listener = await watched();
    const client = createOtpEmailClient({ baseUrl: `http://${listener.target}`, token: started().token, allowPlaintextToken: true });
    expect(await codeOf(client.getDeliveryStatus({ messageId: unknownId }))).toBe(Code.NotFound);
    expect(listener.connections()).toBeGreaterThan(0);
  });

  it("without a token, http:// to that target stays allowed: the call arrives and is refused for want of credentials", async () => {
    const listener = await watched();
    const client = createOtpEmailClient({ baseUrl: `http://${listener.target}` });
    expect(await codeOf(client.getDeliveryStatus({ messageId: unknownId }))).toBe(Code.Unauthenticated);
    expect(listener.connections()).toBeGreaterThan(0);
  });

  it("a token over http:// to a loopback target is sent (development, a sidecar on this host)", async () => {
    const { plaintextTarget, token } = started();
    const port = plaintextTarget.slice(plaintextTarget.lastIndexOf(":") + 1);
    for (const baseUrl of [`http://${plaintextTarget}`, `http://localhost:${port}`, `http://[::ffff:127.0.0.1]:${port}`]) {
      const client = createOtpEmailClient({ baseUrl, token });
      expect(await codeOf(client.getDeliveryStatus({ messageId: unknownId })), baseUrl).toBe(Code.NotFound);
    }
    // ::1 and the rest of 127.0.0.0/8 are loopback too (nothing listens there: only the client's decision is checked).
    for (const baseUrl of ["http://[::1]:1", "http://127.0.0.2:1"]) {
      expect(() => createOtpEmailClient({ baseUrl, token }), baseUrl).not.toThrow();
    }
  });

  it("a token over https:// with the service's CA is sent", async () => {
    const { target, caFile, token } = started();
    const client = createOtpEmailClient({ baseUrl: `https://${target}`, token, tls: { ca: await readFile(caFile) } });
    expect(await codeOf(client.getDeliveryStatus({ messageId: unknownId }))).toBe(Code.NotFound);
  });
});
