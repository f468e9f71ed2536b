/**
 * The gRPC server's TLS credentials keep what grpc-js's own TLS credentials
 * do with GRPC_SSL_CIPHER_SUITES: an operator who narrowed the TLS 1.2
 * cipher suites with it gets only those. (Ours replaced grpc-js's
 * certificate-provider credentials to carry CRLs; those passed the
 * variable on.) The variable reaches the credentials through the config.
 */
import { connect, type TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createServerCredentials } from "../../src/auth/server-credentials.js";
import { loadConfig } from "../../src/config.js";
import { openCertificateWorkshop, type CertificateWorkshop, type KeyPair } from "../support/certs.js";

let workshop: CertificateWorkshop;
let server: KeyPair;

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  const ca = await workshop.newCa("server credentials test CA");
  server = await ca.issue({ cn: "localhost", san: "DNS:localhost,IP:127.0.0.1", server: true });
});

afterAll(async () => {
  await workshop.cleanup();
});

const running: grpc.Server[] = [];
afterEach(() => {
  for (const made of running.splice(0)) made.forceShutdown();
});

/** A server with the TLS settings the config makes of these variables. */
async function serve(env: Record<string, string> = {}): Promise<number> {
  const tls = loadConfig({ NODE_ENV: "test", TLS_CERT: server.cert, TLS_KEY: server.key, ...env }).tls;
  if (tls === undefined) throw new Error("the config made no TLS settings");
  const { credentials } = createServerCredentials({ ...tls, clientCrl: undefined });
  const made = new grpc.Server();
  running.push(made);
  return new Promise((resolve, reject) => {
    made.bindAsync("127.0.0.1:0", credentials, (error, port) => (error === null ? resolve(port) : reject(error)));
  });
}

/** The TLS 1.2 cipher the server agrees to when the client offers only `cipher`, or the handshake's error. */
function handshake(port: number, cipher: string): Promise<string> {
  return new Promise((resolve) => {
    const socket: TLSSocket = connect({ host: "127.0.0.1", port, maxVersion: "TLSv1.2", ciphers: cipher, ALPNProtocols: ["h2"], rejectUnauthorized: false });
    socket.once("secureConnect", () => {
      resolve(socket.getCipher().standardName);
      socket.destroy();
    });
    socket.once("error", (error: Error) => resolve(`error: ${error.message}`));
  });
}

describe("gRPC server TLS credentials", () => {
  it("narrowed by GRPC_SSL_CIPHER_SUITES: a client offering another TLS 1.2 cipher is refused, one offering the named cipher gets it", async () => {
    const port = await serve({ GRPC_SSL_CIPHER_SUITES: "ECDHE-ECDSA-AES256-GCM-SHA384" });
    expect(await handshake(port, "ECDHE-ECDSA-AES128-GCM-SHA256")).toMatch(/^error: .*handshake failure/);
    expect(await handshake(port, "ECDHE-ECDSA-AES256-GCM-SHA384")).toBe("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
  });

  it("without it, Node's default suites: both are taken", async () => {
    const port = await serve();
    expect(await handshake(port, "ECDHE-ECDSA-AES128-GCM-SHA256")).toBe("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
    expect(await handshake(port, "ECDHE-ECDSA-AES256-GCM-SHA384")).toBe("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
  });
});
