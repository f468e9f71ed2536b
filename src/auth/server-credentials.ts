/**
 * The gRPC server's transport security: plaintext, TLS, or TLS that also
 * asks for client certificates (mTLS callers); with TLS, the certificate,
 * key, client CA and client CRL can be replaced while the server runs.
 *
 * With a client CA the server *requests* a certificate but does not make the
 * handshake fail without a valid one: token callers (no certificate) must
 * still connect, and a caller with an expired, untrusted or revoked
 * certificate gets a gRPC UNAUTHENTICATED it can read rather than a TLS
 * alert that looks like UNAVAILABLE. grpc-js only exposes a certificate to
 * the call when the TLS layer verified it (`getAuthContext().sslPeerCertificate`),
 * so an unverified one is no credential at all; why it did not verify,
 * auth/certificate-refusals.ts reads from the connection's TLS socket.
 *
 * Revocation is left to TLS too: with CRLs (TLS_CLIENT_CRL) the context
 * gets Node's `crl` option, and OpenSSL marks a revoked certificate (and
 * one it cannot check, see tls/client-crl.ts) unverified.
 *
 * Replacing the set goes through grpc-js's secure context watchers: each
 * `updateSecureContextOptions` becomes `setSecureContext` on the running
 * HTTP/2 server, so new connections get the new set and open ones keep
 * theirs. grpc-js's certificate-provider credentials do the same, but build
 * the context options themselves, from a certificate, a key and a CA only:
 * no CRL. And grpc-js answers a context it cannot build (a half-written
 * pair, a key of another certificate) by dropping every new connection
 * until a good one comes, so `update` is given only sets that passed
 * checkCertificateSet.
 */
import type { SecureContextOptions } from "node:tls";
import { ServerCredentials } from "@grpc/grpc-js";
import type { ClientCrls } from "../tls/client-crl.js";

export interface ServerTls {
  /** PEM certificate chain of the server. */
  readonly cert: string;
  /** PEM private key of the server. */
  readonly key: string;
  /** PEM CA(s) that sign client certificates; undefined: no client certificates. */
  readonly clientCa: string | undefined;
  /** CRLs of the client CA(s), checked (tls/client-crl.ts); undefined: no revocation check. Only with `clientCa`. */
  readonly clientCrl?: ClientCrls | undefined;
  /** An OpenSSL cipher list narrowing the TLS 1.2 suites (GRPC_SSL_CIPHER_SUITES); undefined: Node's default. */
  readonly cipherSuites?: string | undefined;
}

export interface GrpcServerCredentials {
  /** For `createGrpcServer`. */
  readonly credentials: ServerCredentials;
  /**
   * Serves `tls` to new connections from now on; open connections keep what
   * they negotiated. Give only a checked set (see the module comment), with
   * a client CA exactly when the credentials were made with one.
   * Undefined for plaintext.
   */
  readonly update: ((tls: ServerTls) => void) | undefined;
}

/** Credentials for `createGrpcServer`; undefined `tls` means plaintext. */
export function createServerCredentials(tls: ServerTls | undefined): GrpcServerCredentials {
  if (tls === undefined) return { credentials: ServerCredentials.createInsecure(), update: undefined };
  const credentials = new ReloadableServerCredentials(tls);
  return { credentials, update: (next) => credentials.serve(next) };
}

/** TLS credentials whose context options can be replaced: the latest reach every server bound with them. */
class ReloadableServerCredentials extends ServerCredentials {
  constructor(tls: ServerTls) {
    // rejectUnauthorized false: ask for a certificate, decide in the call (module comment). Node's
    // default for a server that requests certificates is to end the handshake instead.
    // ciphers: grpc-js's own TLS credentials take GRPC_SSL_CIPHER_SUITES (undefined: Node's default); so do these.
    super({ requestCert: tls.clientCa !== undefined, rejectUnauthorized: false, ciphers: tls.cipherSuites }, contextOptions(tls));
  }

  serve(tls: ServerTls): void {
    this.updateSecureContextOptions(contextOptions(tls));
  }

  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

function contextOptions(tls: ServerTls): SecureContextOptions {
  return {
    cert: tls.cert,
    key: tls.key,
    ...(tls.clientCa === undefined ? {} : { ca: tls.clientCa }),
    // One entry per CRL: Node takes one CRL per string, and refuses a string holding several.
    ...(tls.clientCa === undefined || tls.clientCrl === undefined ? {} : { crl: [...tls.clientCrl.pems] }),
  };
}
