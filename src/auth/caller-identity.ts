/**
 * Who is calling: the `identify` function the gRPC handlers run before every
 * OtpEmailService call (health and reflection do not ask).
 *
 * Two credentials, either or both:
 * - `authorization: Bearer <token>` metadata. Only SHA-256 hashes of tokens
 *   are configured; the presented token's hash is compared with every one of
 *   them in constant time.
 * - a client certificate that the TLS layer verified against TLS_CLIENT_CA
 *   and, with TLS_CLIENT_CRL, found not revoked (grpc-js shows a
 *   certificate only when it verified: a revoked one reads as none). The
 *   caller is its first URI SAN (a SPIFFE id), else its first DNS SAN,
 *   else its CN.
 *
 * Both present must name the same caller. Nothing valid: UNAUTHENTICATED,
 * unless anonymous calls are allowed (development with no caller configured).
 * When the call's connection brought a certificate that did not verify, the
 * message says why (certificate-refusals.ts learns it from the TLS socket),
 * under the same reason, CREDENTIALS_MISSING, so callers handle it as
 * before; ErrorInfo's `certificate_refusal` gives the why to programs.
 */
import { hash, timingSafeEqual } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import { OtpError } from "../errors.js";
import type { IdentifyCaller } from "../rpc/otp-handlers.js";
import type { ServerCall } from "../rpc/service-adapter.js";
import type { CertificateRefusal } from "./certificate-refusals.js";

export interface TokenCaller {
  readonly caller: string;
  /** SHA-256 of the token (32 bytes). */
  readonly sha256: Buffer;
}

export interface CallerIdentityOptions {
  /**
   * The token callers, or where to find the list in use when each call
   * comes (a token file re-read while the service runs): a call is judged
   * by the list of its own moment, even on a connection opened before.
   */
  readonly tokens: readonly TokenCaller[] | (() => readonly TokenCaller[]);
  /** The server verifies client certificates (TLS_CLIENT_CA): a verified one names the caller. */
  readonly clientCertificates: boolean;
  /** Every call is this caller, credentials or not (development with no caller configured). */
  readonly anonymousCaller?: string | undefined;
  /** Why the certificate of a call's connection did not verify, when it brought one that did not (certificate-refusals.ts). */
  readonly certificateRefusalOf?: ((call: ServerCall) => CertificateRefusal | undefined) | undefined;
}

/** The name anonymous development calls go by. */
export const anonymousDevCaller = "dev";

export function createCallerIdentity(options: CallerIdentityOptions): IdentifyCaller {
  const { tokens, clientCertificates, anonymousCaller, certificateRefusalOf } = options;
  if (anonymousCaller !== undefined) return () => anonymousCaller;
  const current = typeof tokens === "function" ? tokens : () => tokens;
  for (const token of current()) {
    if (token.sha256.length !== 32) throw new TypeError(`token hash of ${token.caller} is not 32 bytes`);
  }
  const missing = clientCertificates
    ? "no credentials: send the metadata `authorization: Bearer <token>` or a client certificate signed by the configured CA " +
      "(an expired, revoked or otherwise unverified one counts as none)"
    : "no credentials: send the metadata `authorization: Bearer <token>`";
  const refused = (refusal: CertificateRefusal): OtpError =>
    new OtpError(
      "unauthenticated",
      `no credentials: ${refusal.description}, so it counts as none; ` +
        "send the metadata `authorization: Bearer <token>` or a valid client certificate signed by the configured CA",
      { reason: "CREDENTIALS_MISSING", metadata: { certificate_refusal: refusal.reason } },
    );

  return (call) => {
    const byCertificate = clientCertificates ? callerOfCertificate(call) : undefined;
    const byToken = callerOfToken(call, current());
    if (byCertificate !== undefined && byToken !== undefined && byCertificate !== byToken) {
      throw unauthenticated("the bearer token and the client certificate name different callers", "CREDENTIALS_DISAGREE");
    }
    const caller = byCertificate ?? byToken;
    if (caller === undefined) {
      const refusal = clientCertificates ? certificateRefusalOf?.(call) : undefined;
      throw refusal === undefined ? unauthenticated(missing, "CREDENTIALS_MISSING") : refused(refusal);
    }
    return caller;
  };
}

/** The token's caller; undefined without `authorization` metadata; throws for a bad one. */
function callerOfToken(call: ServerCall, tokens: readonly TokenCaller[]): string | undefined {
  const values = call.metadata.get("authorization");
  if (values.length === 0) return undefined;
  const match = values.length === 1 && typeof values[0] === "string" ? /^Bearer +([\x21-\x7E]+)$/i.exec(values[0]) : null;
  if (match?.[1] === undefined) {
    throw unauthenticated("authorization metadata must be one `Bearer <token>`", "AUTHORIZATION_MALFORMED");
  }
  const presented = hash("sha256", match[1], "buffer");
  // Every configured hash is compared, match or not: the time taken does not
  // depend on which token (if any) matched.
  let caller: string | undefined;
  for (const token of tokens) {
    if (timingSafeEqual(presented, token.sha256) && caller === undefined) caller = token.caller;
  }
  if (caller === undefined) throw unauthenticated("the bearer token is not valid", "TOKEN_INVALID");
  return caller;
}

/** The caller named by a verified client certificate, or undefined when there is none. */
function callerOfCertificate(call: ServerCall): string | undefined {
  const peer = call.getAuthContext().sslPeerCertificate;
  if (peer === undefined) return undefined;
  const name = certificateCallerName(peer);
  if (name === undefined) {
    throw unauthenticated("the client certificate names no caller (no URI or DNS SAN, no CN)", "CERTIFICATE_UNNAMED");
  }
  return name;
}

/** First URI SAN, else first DNS SAN, else CN; undefined when none is usable. */
export function certificateCallerName(peer: Pick<PeerCertificate, "subjectaltname" | "subject">): string | undefined {
  const sans = subjectAltNames(peer.subjectaltname ?? "");
  const cn = peer.subject.CN;
  const candidates = [
    sans.find((s) => s.type === "URI")?.value,
    sans.find((s) => s.type === "DNS")?.value,
    Array.isArray(cn) ? cn[0] : cn,
  ];
  return candidates.find((name) => name !== undefined && name !== "" && name.length <= 256 && !/[\p{Cc}\s]/u.test(name));
}

/**
 * Node's `subjectaltname` text: `DNS:a.example, URI:spiffe://acme/billing`;
 * a value with special characters comes JSON-quoted (`URI:"a,b"`).
 */
function subjectAltNames(text: string): { type: string; value: string }[] {
  const entries: { type: string; value: string }[] = [];
  const pattern = /([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/y;
  let match: RegExpExecArray | null;
  while (pattern.lastIndex < text.length && (match = pattern.exec(text)) !== null) {
    const [, type = "", raw = ""] = match;
    let value = raw;
    if (raw.startsWith('"')) {
      try {
        value = JSON.parse(raw) as string;
      } catch {
        value = "";
      }
    }
    entries.push({ type, value });
  }
  return entries;
}

function unauthenticated(message: string, reason: string): OtpError {
  return new OtpError("unauthenticated", message, { reason });
}
