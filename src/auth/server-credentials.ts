/**
 * The gRPC server's transport security: plaintext, TLS, or TLS that also
 * asks for client certificates (mTLS callers).
 *
 * With a client CA the server *requests* a certificate but does not make the
 * handshake fail without a valid one: token callers (no certificate) must
 * still connect, and a caller with an expired or untrusted certificate gets
 * a gRPC UNAUTHENTICATED it can read rather than a TLS alert that looks like
 * UNAVAILABLE. grpc-js only exposes a certificate to the call when the TLS
 * layer verified it (`getAuthContext().sslPeerCertificate`), so an
 * unverified one is no credential at all.
 */
import { ServerCredentials } from "@grpc/grpc-js";

export interface ServerTls {
  /** PEM certificate chain of the server. */
  readonly cert: string;
  /** PEM private key of the server. */
  readonly key: string;
  /** PEM CA(s) that sign client certificates; undefined: no client certificates. */
  readonly clientCa: string | undefined;
}

/** Credentials for `createGrpcServer`; undefined `tls` means plaintext. */
export function createServerCredentials(tls: ServerTls | undefined): ServerCredentials {
  if (tls === undefined) return ServerCredentials.createInsecure();
  const cert = Buffer.from(tls.cert, "utf8");
  const key = Buffer.from(tls.key, "utf8");
  if (tls.clientCa === undefined) return ServerCredentials.createSsl(null, [{ cert_chain: cert, private_key: key }], false);
  return new OptionalClientCertificateCredentials(cert, key, Buffer.from(tls.clientCa, "utf8"));
}

/**
 * `ServerCredentials.createSsl(ca, pairs, true)` would reject every
 * connection without a verified certificate at the handshake; this asks for
 * one and lets the call decide (see the module comment).
 */
class OptionalClientCertificateCredentials extends ServerCredentials {
  constructor(cert: Buffer, key: Buffer, ca: Buffer) {
    super({ requestCert: true, rejectUnauthorized: false }, { ca, cert, key });
  }

  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}
