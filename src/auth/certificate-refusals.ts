/**
 * Why a client certificate counted as none: the reason OpenSSL gave for not
 * verifying it (revoked, expired, another CA...), for the call's
 * UNAUTHENTICATED message, the log and a counter.
 *
 * grpc-js shows a call only a certificate that verified
 * (`getAuthContext().sslPeerCertificate`), and nothing of why another did
 * not. The TLS socket knows (`authorizationError`: the server asks for a
 * certificate with `rejectUnauthorized` false, see server-credentials.ts),
 * so each gRPC connection is watched once its handshake is done
 * (`watch`, from rpc/server.ts) and a call finds its connection's verdict
 * by its peer address (`call.getPeer()`, the remote address and port
 * grpc-js reads from the same socket).
 *
 * A refused certificate is logged once per connection, at the handshake
 * (a caller retrying on its connection adds no line), and the same
 * certificate refused for the same reason at most once a minute (a caller
 * that reconnects for every try adds one line a minute; the counter counts
 * every refused connection). The log names the certificate (subject, SANs'
 * caller name, issuer, serial), never the peer's address. A client making a
 * new certificate for every connection would escape that bound, so all
 * certificates together get at most 20 lines a minute; the first line after
 * says how many were left out (the counter has them all).
 */
import type { PeerCertificate, TLSSocket } from "node:tls";
import { monotonicOf, systemClock, type Clock } from "../clock.js";
import type { Logger } from "../logger.js";
import { certificateCallerName } from "./caller-identity.js";

/** Why a certificate did not verify, as `otp_tls_client_certificate_refusals_total{reason}` and ErrorInfo `certificate_refusal`. */
export const certificateRefusalReasons = ["revoked", "expired", "not_yet_valid", "untrusted", "crl_expired", "crl_not_yet_valid", "other"] as const;
export type CertificateRefusalReason = (typeof certificateRefusalReasons)[number];

/** OpenSSL's verify errors (as Node names them) by reason; any other is `other`. */
const reasonOfCode: Readonly<Record<string, CertificateRefusalReason>> = {
  CERT_REVOKED: "revoked",
  CERT_HAS_EXPIRED: "expired",
  CERT_NOT_YET_VALID: "not_yet_valid",
  // No chain to a CA of TLS_CLIENT_CA: the certificate came alone (UNABLE_TO_VERIFY_LEAF_SIGNATURE) or with
  // CAs of its own, or a CA of that name that holds another key signed it.
  UNABLE_TO_GET_ISSUER_CERT: "untrusted",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "untrusted",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "untrusted",
  DEPTH_ZERO_SELF_SIGNED_CERT: "untrusted",
  SELF_SIGNED_CERT_IN_CHAIN: "untrusted",
  CERT_SIGNATURE_FAILURE: "untrusted",
  CERT_UNTRUSTED: "untrusted",
  CRL_HAS_EXPIRED: "crl_expired",
  // The CA's CRL starts later than our clock says (clock skew): tls/client-crl.ts keeps the CRL in force meanwhile
  // at a reload, so this is a start-up with a CRL a few minutes early, or a CA that had none in force.
  CRL_NOT_YET_VALID: "crl_not_yet_valid",
};

/** What the caller is told its certificate is (after "the client certificate"). */
const phrases: Readonly<Record<CertificateRefusalReason, (code: string) => string>> = {
  revoked: () => "is revoked (TLS_CLIENT_CRL)",
  expired: () => "has expired (it, or a CA certificate of its chain)",
  not_yet_valid: () => "is not valid yet (its notBefore is still to come)",
  untrusted: () => "is not signed by a client CA of this service (TLS_CLIENT_CA)",
  // The service's side: the caller can only tell its operator.
  crl_expired: () => "cannot be checked: the CRL of its CA has expired (TLS_CLIENT_CRL; the service's operator must publish a current one)",
  // Clears itself when the CRL's thisUpdate passes, minutes at most at start-up: retrying is what the caller can do.
  crl_not_yet_valid: () =>
    "cannot be checked: the CRL of its CA is not valid yet (TLS_CLIENT_CRL; its thisUpdate is ahead of the service's clock: retry in a few minutes, or tell the service's operator)",
  other: (code) => `did not verify (OpenSSL: ${code})`,
};

/** A client certificate that TLS did not verify, on one connection. */
export interface CertificateRefusal {
  readonly reason: CertificateRefusalReason;
  /** OpenSSL's verify error as Node names it: `CERT_REVOKED`, `INVALID_PURPOSE`... */
  readonly code: string;
  /** The caller the certificate names (URI SAN, else DNS SAN, else CN), if any. */
  readonly name: string | undefined;
  /** For the call's message: "the client certificate (spiffe://acme/billing) is revoked (TLS_CLIENT_CRL)". */
  readonly description: string;
}

export interface CertificateRefusalsOptions {
  readonly logger: Logger;
  /** For the once-a-minute bound on lines about one certificate. */
  readonly clock?: Clock | undefined;
  /** Told of every refused connection (the counter), logged or not. */
  readonly onRefused?: ((reason: CertificateRefusalReason) => void) | undefined;
  /** How long a certificate refused for one reason stays out of the log after a line about it; default a minute. */
  readonly logIntervalMs?: number | undefined;
  /** Lines about all certificates together per `logIntervalMs`; default 20. */
  readonly maxLinesPerInterval?: number | undefined;
}

export interface CertificateRefusals {
  /** Learns the verdict on a TLS connection's client certificate; call once its handshake is done. */
  watch(socket: TLSSocket): void;
  /**
   * The refusal on the connection of a call, by the call's `getPeer()`;
   * undefined when its certificate verified, it sent none, or the
   * connection is not known (not watched, closed, or two open connections
   * with that peer address, through two listeners).
   */
  refusalOf(peer: string): CertificateRefusal | undefined;
}

interface Connection {
  readonly refusal: CertificateRefusal | undefined;
}

export function createCertificateRefusals(options: CertificateRefusalsOptions): CertificateRefusals {
  const { logger, onRefused } = options;
  const now = monotonicOf(options.clock ?? systemClock);
  const interval = options.logIntervalMs ?? 60_000;
  const maxLines = options.maxLinesPerInterval ?? 20;
  // Every watched connection, refused or not, by peer address: a call's peer names one connection only when it is the only one open.
  const connections = new Map<string, Connection[]>();
  // When each certificate was last logged, per reason; entries a minute old are dropped, a minute at a time.
  const logged = new Map<string, number>();
  let pruned = now();
  // The bound on all certificates together: lines in the window that began at `windowStart`, and those left out.
  let windowStart = pruned;
  let linesInWindow = 0;
  let leftOut = 0;

  function log(peer: PeerCertificate, refusal: CertificateRefusal): void {
    const at = now();
    if (at - pruned >= interval) {
      for (const [key, last] of logged) if (at - last >= interval) logged.delete(key);
      pruned = at;
    }
    const key = `${peer.fingerprint256} ${refusal.code}`;
    const last = logged.get(key);
    if (last !== undefined && at - last < interval) return;
    if (at - windowStart >= interval) {
      windowStart = at;
      linesInWindow = 0;
    }
    if (linesInWindow >= maxLines) {
      leftOut++;
      return;
    }
    linesInWindow++;
    logged.set(key, at);
    const notLogged = leftOut;
    leftOut = 0;
    logger.warn(
      {
        client_certificate: {
          name: refusal.name,
          subject: nameText(peer.subject),
          issuer: nameText(peer.issuer),
          serial: peer.serialNumber,
          not_before: isoDate(peer.valid_from),
          not_after: isoDate(peer.valid_to),
        },
        reason: refusal.reason,
        openssl_error: refusal.code,
        ...(notLogged > 0 ? { refusals_not_logged: notLogged } : {}),
      },
      `a client certificate did not verify (${refusal.reason}: ${refusal.code}): it counts as none on its connection` +
        (notLogged > 0
          ? ` (${notLogged} other refused certificate${notLogged === 1 ? " was" : "s were"} not logged before it: at most ${maxLines} lines a minute; ` +
            `otp_tls_client_certificate_refusals_total counts them all)`
          : ""),
    );
  }

  return {
    watch(socket) {
      const key = peerOf(socket);
      let refusal: CertificateRefusal | undefined;
      if (!socket.authorized) {
        // Node gives null for a socket destroyed meanwhile, though its typings do not say so.
        const peer = socket.getPeerCertificate() as PeerCertificate | null;
        // No certificate at all (a token caller) is unauthorized too, with an error about the missing issuer.
        if (peer?.raw !== undefined) {
          const code = codeOf(socket.authorizationError);
          const reason = reasonOfCode[code] ?? "other";
          const name = certificateCallerName(peer);
          const description = `the client certificate${name === undefined ? "" : ` (${name})`} ${phrases[reason](code)}`;
          refusal = { reason, code, name, description };
          onRefused?.(reason);
          log(peer, refusal);
        }
      }
      if (key === undefined) return;
      const connection: Connection = { refusal };
      const open = connections.get(key);
      if (open === undefined) connections.set(key, [connection]);
      else open.push(connection);
      socket.once("close", () => {
        const left = connections.get(key)?.filter((other) => other !== connection) ?? [];
        if (left.length === 0) connections.delete(key);
        else connections.set(key, left);
      });
    },

    refusalOf(peer) {
      const open = connections.get(peer);
      return open?.length === 1 ? open[0]?.refusal : undefined;
    },
  };
}

/** The peer as grpc-js's `getPeer()` spells it: `127.0.0.1:51234`, `::1:51234`. */
function peerOf(socket: TLSSocket): string | undefined {
  if (!socket.remoteAddress) return undefined;
  return socket.remotePort ? `${socket.remoteAddress}:${socket.remotePort}` : socket.remoteAddress;
}

/** Node gives the verify error's code as a string (typed as an Error). */
function codeOf(error: unknown): string {
  const code = typeof error === "string" ? error : (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[A-Z0-9_]{1,64}$/.test(code) ? code : "UNKNOWN";
}

/** `CN=alpha, O=Acme` from Node's parsed name, each value cut to 256 characters (the certificate is the peer's). */
function nameText(name: PeerCertificate["subject"] | undefined): string | undefined {
  if (name === undefined || name === null) return undefined;
  const parts: string[] = [];
  for (const [type, value] of Object.entries(name)) {
    for (const one of Array.isArray(value) ? value : [value]) parts.push(`${type}=${String(one).slice(0, 256)}`);
  }
  return parts.join(", ");
}

function isoDate(text: string | undefined): string | undefined {
  const time = text === undefined ? Number.NaN : Date.parse(text);
  return Number.isNaN(time) ? undefined : new Date(time).toISOString();
}
