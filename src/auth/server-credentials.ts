/**
 * The gRPC server's transport security: plaintext, TLS, or TLS that also
 * asks for client certificates (mTLS callers); with TLS, the certificate,
 * key and client CA can be replaced while the server runs.
 *
 * With a client CA the server *requests* a certificate but does not make the
 * handshake fail without a valid one: token callers (no certificate) must
 * still connect, and a caller with an expired or untrusted certificate gets
 * a gRPC UNAUTHENTICATED it can read rather than a TLS alert that looks like
 * UNAVAILABLE. grpc-js only exposes a certificate to the call when the TLS
 * layer verified it (`getAuthContext().sslPeerCertificate`), so an
 * unverified one is no credential at all.
 *
 * Replacing the certificate goes through grpc-js's certificate providers
 * (`experimental.createCertificateProviderServerCredentials`, the API its
 * maintainers point to for reloading, grpc-node#570): the credentials listen
 * to a provider, and each update becomes `setSecureContext` on the running
 * HTTP/2 server, so new connections get the new certificate and open ones
 * keep theirs. The provider here is our own rather than grpc-js's
 * FileWatcherCertificateProvider, which hands over whatever the files hold:
 * grpc-js answers a context it cannot build (a half-written pair, a key of
 * another certificate) by dropping every new connection until a good one
 * comes. Ours is given only sets that passed checkCertificateSet.
 */
import { experimental, ServerCredentials } from "@grpc/grpc-js";

export interface ServerTls {
  /** PEM certificate chain of the server. */
  readonly cert: string;
  /** PEM private key of the server. */
  readonly key: string;
  /** PEM CA(s) that sign client certificates; undefined: no client certificates. */
  readonly clientCa: string | undefined;
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
  const provider = new ServedCertificateProvider(tls);
  // The function's parameters are named (ca, identity) but passed on as (identity, ca), and the
  // compiled 1.14 code does exactly that: the identity provider goes first. One provider plays both
  // roles here, so only the second argument matters: a CA provider, or null for no client certificates.
  // requireClientCertificate false: ask for a certificate, decide in the call (module comment).
  const credentials = experimental.createCertificateProviderServerCredentials(provider, tls.clientCa === undefined ? null : provider, false);
  return { credentials, update: (next) => provider.serve(next) };
}

type IdentityListener = experimental.IdentityCertificateUpdateListener;
type CaListener = experimental.CaCertificateUpdateListener;

/** A grpc-js certificate provider that hands its listeners whatever it was last told to serve. */
class ServedCertificateProvider implements experimental.CertificateProvider {
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly caListeners = new Set<CaListener>();

  constructor(private current: ServerTls) {}

  serve(tls: ServerTls): void {
    this.current = tls;
    // Identity first: in between, the new certificate with the old CA is a whole context too.
    for (const listener of this.identityListeners) listener(this.identity());
    for (const listener of this.caListeners) listener(this.ca());
  }

  // grpc-js registers these while it adds its own watcher and only then keeps that watcher: an
  // answer given at once would reach nobody. A tick later it does, before the port is bound.
  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    process.nextTick(() => {
      if (this.identityListeners.has(listener)) listener(this.identity());
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    process.nextTick(() => {
      if (this.caListeners.has(listener)) listener(this.ca());
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  private identity(): experimental.IdentityCertificateUpdate {
    return { certificate: Buffer.from(this.current.cert, "utf8"), privateKey: Buffer.from(this.current.key, "utf8") };
  }

  private ca(): experimental.CaCertificateUpdate | null {
    return this.current.clientCa === undefined ? null : { caCertificate: Buffer.from(this.current.clientCa, "utf8") };
  }
}
