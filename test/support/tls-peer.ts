/**
 * What a TLS listener presents to a NEW connection: a raw TLS handshake with
 * the gRPC port (ALPN h2, as a gRPC client offers), or an SMTP STARTTLS
 * upgrade on the bounce intake's port, each on a fresh socket, closed at once.
 * Certificates are compared by their SHA-256 fingerprint.
 */
import { X509Certificate } from "node:crypto";
import { connect as connectTcp, type Socket } from "node:net";
import { connect as connectTls, type ConnectionOptions, type TLSSocket } from "node:tls";

export interface Presented {
  /** SHA-256 fingerprint, `AA:BB:...` (as X509Certificate#fingerprint256 spells it). */
  readonly fingerprint256: string;
  /** Whether the chain verified against the `ca` given (false without one). */
  readonly authorized: boolean;
}

export interface PeerOptions {
  /** Verify against this CA; without it nothing is verified (the fingerprint is still read). */
  readonly ca?: string;
  /** SNI and the name checked (default localhost, which the test certificates carry). */
  readonly servername?: string;
}

/** The fingerprint of the first certificate in `pem`. */
export function fingerprintOf(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** Handshakes with a TLS port (gRPC over TLS) and reports the certificate it presented. */
export function presentedByTls(port: number, options: PeerOptions = {}): Promise<Presented> {
  return handshake({ host: "127.0.0.1", port, ALPNProtocols: ["h2"] }, options);
}

/**
 * Opens an SMTP session, asks for STARTTLS, handshakes, and reports the
 * certificate presented. Fails when the server does not offer or refuses it.
 */
export async function presentedAfterStarttls(port: number, options: PeerOptions = {}): Promise<Presented> {
  const socket = connectTcp({ host: "127.0.0.1", port });
  try {
    await reply(socket, "220");
    socket.write("EHLO tls-peer.test\r\n");
    const ehlo = await reply(socket, "250");
    if (!/^250[- ]STARTTLS/m.test(ehlo)) throw new Error(`the server does not offer STARTTLS: ${ehlo}`);
    socket.write("STARTTLS\r\n");
    await reply(socket, "220");
    return await handshake({ socket }, options);
  } finally {
    socket.destroy();
  }
}

function handshake(connection: ConnectionOptions, options: PeerOptions): Promise<Presented> {
  return new Promise<Presented>((resolve, reject) => {
    const tls: TLSSocket = connectTls({
      ...connection,
      servername: options.servername ?? "localhost",
      rejectUnauthorized: false,
      ...(options.ca === undefined ? {} : { ca: [options.ca] }),
    });
    tls.setTimeout(5000, () => tls.destroy(new Error("TLS handshake timed out")));
    tls.once("error", reject);
    tls.once("secureConnect", () => {
      const certificate = tls.getPeerCertificate();
      resolve({ fingerprint256: certificate.fingerprint256, authorized: options.ca !== undefined && tls.authorized });
      tls.destroy();
    });
  });
}

/** Reads until a complete SMTP reply with `code` (its last line `code SP ...`); fails on any other code. */
function reply(socket: Socket, code: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let text = "";
    const done = (error?: Error): void => {
      socket.off("data", onData);
      socket.off("error", done);
      if (error === undefined) resolve(text);
      else reject(error);
    };
    const onData = (chunk: Buffer): void => {
      text += chunk.toString("utf8");
      const lines = text.split("\r\n").filter((line) => line !== "");
      const last = lines.at(-1) ?? "";
      if (!text.endsWith("\r\n") || !/^\d{3} /.test(last)) return;
      done(last.startsWith(`${code} `) ? undefined : new Error(`expected ${code}, got: ${text.trim()}`));
    };
    socket.on("data", onData);
    socket.once("error", done);
  });
}
