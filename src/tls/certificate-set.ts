/**
 * The checks a listener's certificate, key, client CA and client CRL pass
 * before they are used: at start-up (config.ts, where a failure stops the
 * start with exit 78) and again whenever their files change
 * (certificate-reloader.ts, where a failure keeps the set in use). One
 * function, so that what starts the service and what a reload applies can
 * never disagree.
 *
 * A reason names what is wrong and where (the file), never the content: a
 * private key's text appears in no message.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from "node:crypto";
import { createSecureContext } from "node:tls";
import { checkClientCrl, type ClientCrlCheckOptions, type ClientCrls } from "./client-crl.js";

/** What a TLS listener presents, and (gRPC with mTLS callers) whom it trusts. */
export interface CertificateSet {
  /** PEM certificate chain, leaf first. */
  readonly cert: string;
  /** PEM private key of the leaf, unencrypted. */
  readonly key: string;
  /** PEM CA certificate(s) that sign client certificates; undefined: none asked for. */
  readonly ca?: string | undefined;
  /** The CRLs client certificates are checked against (TLS_CLIENT_CRL); undefined: none. */
  readonly crl?: ClientCrls | undefined;
}

/** One part of a set: the variable it comes from, its text, and how to name where the text came from in a message. */
export interface CertificatePart {
  readonly variable: string;
  readonly pem: string;
  /** `/etc/tls/cert.pem`, `the value` (PEM text), `the file it names` (a key's value that is no plain path). */
  readonly origin: string;
}

export interface CertificateSetParts {
  readonly cert: CertificatePart;
  readonly key: CertificatePart;
  readonly ca?: CertificatePart | undefined;
  /** Only with `ca`. */
  readonly crl?: CertificatePart | undefined;
}

export type CertificateSetCheck =
  | { readonly ok: true; readonly set: CertificateSet; readonly leaf: X509Certificate }
  | { readonly ok: false; readonly variable: string; readonly reason: string };

/**
 * Checks a set: each part holds its PEM block, the certificate and the CA
 * parse, the key is an unencrypted private key that belongs to the first
 * certificate, and Node builds a TLS context from them (the last guard: a
 * set that got this far cannot make the listener's context update throw).
 * With a CRL, also the checks of tls/client-crl.ts at `now` (ms): a CRL
 * past its nextUpdate is refused here, so it depends on the time; `crl`
 * tells those checks what start-up and a reload do differently about a CRL
 * still to come (the CRLs in force, the bound on how early it may be).
 */
export function checkCertificateSet(parts: CertificateSetParts, now: number, crl: ClientCrlCheckOptions = {}): CertificateSetCheck {
  const refuse = (variable: string, reason: string): CertificateSetCheck => ({ ok: false, variable, reason });

  const noBlock = pemBlockMissing(parts.cert, "CERTIFICATE");
  if (noBlock !== undefined) return refuse(parts.cert.variable, noBlock);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(parts.cert.pem);
  } catch (error) {
    return refuse(parts.cert.variable, `not a usable PEM certificate (${(error as Error).message})`);
  }

  const noKey = pemBlockMissing(parts.key, "PRIVATE KEY");
  if (noKey !== undefined) return refuse(parts.key.variable, noKey);
  let key: KeyObject;
  try {
    key = createPrivateKey(parts.key.pem);
  } catch (error) {
    return refuse(parts.key.variable, `not a usable unencrypted PEM private key (${(error as Error).message})`);
  }
  if (!leaf.checkPrivateKey(key)) {
    return refuse(
      parts.key.variable,
      `does not match ${parts.cert.variable} (the certificate for ${subjectOf(leaf)}; the first certificate of the file must be the one the key belongs to)`,
    );
  }

  if (parts.ca !== undefined) {
    const noCa = pemBlockMissing(parts.ca, "CERTIFICATE");
    if (noCa !== undefined) return refuse(parts.ca.variable, noCa);
    try {
      new X509Certificate(parts.ca.pem);
    } catch (error) {
      return refuse(parts.ca.variable, `not a usable PEM certificate (${(error as Error).message})`);
    }
  }

  let crls: ClientCrls | undefined;
  if (parts.crl !== undefined) {
    if (parts.ca === undefined) return refuse(parts.crl.variable, "a CRL needs the CA whose certificates it revokes (TLS_CLIENT_CA)");
    const checked = checkClientCrl(parts.crl.pem, parts.ca.pem, parts.crl.origin, now, crl);
    if (!checked.ok) return refuse(parts.crl.variable, checked.reason);
    crls = checked.crls;
  }

  const set: CertificateSet = { cert: parts.cert.pem, key: parts.key.pem, ca: parts.ca?.pem, crl: crls };
  try {
    createSecureContext({ cert: set.cert, key: set.key, ...(set.ca === undefined ? {} : { ca: set.ca }) });
  } catch (error) {
    // OpenSSL's words (a key too small for its security level, a CA bundle it cannot load): no key text in them.
    return refuse(parts.cert.variable, `TLS cannot use this certificate and key (${(error as Error).message})`);
  }
  if (set.crl !== undefined) {
    try {
      createSecureContext({ ca: set.ca, crl: [...set.crl.pems] });
    } catch (error) {
      return refuse(parts.crl?.variable ?? "TLS_CLIENT_CRL", `TLS cannot use this CRL (${(error as Error).message})`);
    }
  }
  return { ok: true, set, leaf };
}

/** `CN=127.0.0.1, O=Acme`: a certificate's subject on one line. */
export function subjectOf(certificate: X509Certificate): string {
  return certificate.subject.replace(/\n/g, ", ");
}

/** Why a file or value cannot be read, in words, from its errno code. */
export function unreadableReason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code ?? "error";
  const reasons: Readonly<Record<string, string>> = {
    ENOENT: "no such file",
    EACCES: "permission denied",
    EISDIR: "a directory, not a file",
    ENAMETOOLONG: "not a file name (too long)",
  };
  return `${reasons[code] ?? "unreadable"} (${code})`;
}

/** A reason when `part` holds no `-----BEGIN ...<label>-----` block, else undefined. */
function pemBlockMissing(part: CertificatePart, label: string): string | undefined {
  if (new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(part.pem)) return undefined;
  return `${part.origin} holds no PEM ${label.toLowerCase()} (a -----BEGIN ...${label}----- block)`;
}
