/**
 * TLS_CLIENT_CRL: the certificate revocation lists the gRPC server checks
 * client certificates against, and the checks they pass before TLS gets
 * them (tls/certificate-set.ts runs these at start-up and at every reload).
 *
 * TLS does the revocation check itself (Node's `crl` context option):
 * OpenSSL then marks a revoked client certificate unauthorized, and grpc-js
 * shows the call no certificate at all. But OpenSSL also marks unauthorized
 * every certificate it cannot check: it wants a CRL from every CA of the
 * chain, and one whose nextUpdate has not passed and whose thisUpdate has.
 * The checks here refuse what would turn every certificate caller of a CA
 * away with a bare UNAUTHENTICATED: a CRL that does not parse, one no CA of
 * TLS_CLIENT_CA signed, a CA of TLS_CLIENT_CA without a CRL, and a CA whose
 * newest CRL has expired.
 *
 * A CA whose CRLs are all still to come (thisUpdate ahead of our clock: the
 * CA's clock is ahead of ours, or a CRL published a moment ago and our
 * clock a little behind) is not refused: the CRL is right, only early, and
 * refusing it would leave the old one to expire. It is `pending` instead.
 * OpenSSL, given several CRLs of a CA, uses one within its validity period
 * and of those the newest, and decides at each handshake: so the CRL in
 * force for that CA (`inForce`) is kept beside the early one, and TLS moves
 * to the early one by itself the moment its thisUpdate passes. At start-up
 * there is no CRL in force: a little early (`aheadLimitMs`) starts, with
 * that CA's certificates refused until then; more is refused, since our
 * clock or the CA's is then wrong by more than clocks drift.
 *
 * Node reads no CRL fields, so the few we need come from the DER here
 * (RFC 5280 5.1): issuer, thisUpdate, nextUpdate, the signature.
 */
import { constants, verify, X509Certificate, type KeyObject } from "node:crypto";

/** Checked CRLs, as TLS gets them and as the expiry gauge tells them. */
export interface ClientCrls {
  /** PEM text of each CRL alone (Node's `crl` option takes one CRL per string); with the CRLs kept for a pending CA. */
  readonly pems: readonly string[];
  /** Each CA of TLS_CLIENT_CA, in TLS_CLIENT_CA's order. */
  readonly authorities: readonly ClientCrlAuthority[];
}

export interface ClientCrlAuthority {
  /** `CN=Acme CA, O=Acme`. */
  readonly subject: string;
  /**
   * When its newest CRL expires (nextUpdate, ms since the epoch; undefined:
   * none given, never): from then on TLS refuses every client certificate
   * of that CA.
   */
  readonly nextUpdate: number | undefined;
  /**
   * Set when every CRL given for this CA is still to come: `thisUpdate`,
   * the earliest of theirs (ms since the epoch), is when TLS starts using
   * them. `kept`: the CRL in force before is kept (and used) until then;
   * false: TLS refuses every certificate of this CA until then
   * (CRL_NOT_YET_VALID).
   */
  readonly pending?: { readonly thisUpdate: number; readonly kept: boolean } | undefined;
}

export type ClientCrlCheck = { readonly ok: true; readonly crls: ClientCrls } | { readonly ok: false; readonly reason: string };

export interface ClientCrlCheckOptions {
  /** The CRLs TLS uses now (a reload): a pending CA keeps its CRL from these. Undefined at start-up. */
  readonly inForce?: ClientCrls | undefined;
  /** Refuse a pending CA whose CRL starts more than this after `now` (start-up); undefined: no bound. */
  readonly aheadLimitMs?: number | undefined;
}

/**
 * How far ahead of our clock a CRL's thisUpdate may be at start-up (5
 * minutes). Clocks kept by NTP agree within a second; a host or a CA
 * without it drifts by seconds a day, and a CRL fetched the moment it is
 * published is ahead by the skew between the two: minutes cover both, and
 * the service starts (refusing that CA's certificates for those minutes,
 * and saying so) rather than stopping token callers too. Hours mean a
 * clock that is wrong (which breaks certificates' validity as well) or a
 * CRL signed for later: that stops the start. 5 minutes is also the skew
 * Kerberos tolerates by default.
 */
export const crlAheadLimitMs = 5 * 60_000;

/**
 * Checks `crlPem` (one or more PEM CRLs) against `caPem` (TLS_CLIENT_CA,
 * one or more PEM certificates) at `now`. `origin` names where the CRLs
 * came from in a reason (`/etc/tls/crl.pem`, `the value`).
 */
export function checkClientCrl(crlPem: string, caPem: string, origin: string, now: number, options: ClientCrlCheckOptions = {}): ClientCrlCheck {
  const refuse = (reason: string): ClientCrlCheck => ({ ok: false, reason });
  const blocks = pemBlocks(crlPem, "X509 CRL");
  if (blocks.length === 0) return refuse(`${origin} holds no PEM CRL (a -----BEGIN X509 CRL----- block)`);
  let cas: CaCertificate[];
  try {
    cas = pemBlocks(caPem, "CERTIFICATE").map((pem) => caCertificate(new X509Certificate(pem)));
  } catch (error) {
    // checkCertificateSet has parsed TLS_CLIENT_CA already; only a bundle with a broken later block gets here.
    return refuse(`cannot read the CAs of TLS_CLIENT_CA (${(error as Error).message})`);
  }

  const crls: CaCrl[] = [];
  for (const [index, pem] of blocks.entries()) {
    const which = blocks.length > 1 ? `CRL ${index + 1} of ${origin}` : `the CRL of ${origin}`;
    let crl: ParsedCrl;
    try {
      crl = parseCrl(pem);
    } catch (error) {
      return refuse(`${which} is not a usable CRL (${(error as Error).message})`);
    }
    if (crl.delta) return refuse(`${which} is a delta CRL, which TLS does not use: give the full CRL of ${crl.issuer}`);
    const named = cas.filter((ca) => ca.subjectDer.equals(crl.issuerDer));
    if (named.length === 0) return refuse(`${which} comes from ${crl.issuer}, which is not a CA of TLS_CLIENT_CA`);
    const signer = named.find((ca) => signedBy(crl, ca.publicKey));
    if (signer === undefined) return refuse(`${which} names ${crl.issuer} as its issuer but that CA of TLS_CLIENT_CA did not sign it`);
    crls.push({ pem, thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate, ca: signer });
  }

  const pems = crls.map((crl) => crl.pem);
  const authorities: ClientCrlAuthority[] = [];
  for (const ca of cas) {
    const own = crls.filter((crl) => crl.ca === ca);
    if (own.length === 0) {
      return refuse(`no CRL from ${ca.subject} (a CA of TLS_CLIENT_CA): TLS would refuse every client certificate it signs; add its CRL`);
    }
    // OpenSSL uses a CA's current CRL when it has several: only when none is current is the CA cut off.
    if (own.some((crl) => current(crl, now))) {
      authorities.push({ subject: ca.subject, nextUpdate: newestNextUpdate(own) });
      continue;
    }
    const early = own.filter((crl) => crl.thisUpdate > now);
    if (early.length === 0) {
      return refuse(
        `the CRL from ${ca.subject} expired at ${new Date(newestNextUpdate(own) ?? now).toISOString()} (its nextUpdate): ` +
          "TLS refuses every client certificate of that CA until a current CRL is given; publish a new one",
      );
    }
    const thisUpdate = Math.min(...early.map((crl) => crl.thisUpdate));
    if (options.aheadLimitMs !== undefined && thisUpdate - now > options.aheadLimitMs) {
      return refuse(
        `the CRL from ${ca.subject} is not valid until ${new Date(thisUpdate).toISOString()} (its thisUpdate), ` +
          `${durationText(thisUpdate - now)} ahead of this host's clock (${new Date(now).toISOString()}): ` +
          "TLS would refuse every client certificate of that CA until then. Check this host's clock and the CA's (clock skew?), " +
          "or give the CA's current CRL as well (one file may hold both)",
      );
    }
    // The CRLs of this CA that TLS uses now and that are still current: TLS goes on using them until the early one starts.
    const kept = inForceCrls(options.inForce, ca).filter((crl) => current(crl, now));
    pems.push(...kept.map((crl) => crl.pem));
    authorities.push({ subject: ca.subject, nextUpdate: newestNextUpdate([...own, ...kept]), pending: { thisUpdate, kept: kept.length > 0 } });
  }
  return { ok: true, crls: { pems, authorities } };
}

/** The earliest thisUpdate among pending CAs (when TLS starts using a CRL it does not use yet), or undefined. */
export function pendingUntil(crls: ClientCrls | undefined): number | undefined {
  const times = (crls?.authorities ?? []).flatMap((authority) => (authority.pending === undefined ? [] : [authority.pending.thisUpdate]));
  return times.length === 0 ? undefined : Math.min(...times);
}

/** `45 s`, `4 min`, `3.5 hours`, `2 days`: how far ahead, for a message. */
export function durationText(ms: number): string {
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 2 * 3_600_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 2 * 86_400_000) return `${Math.round(ms / 360_000) / 10} hours`;
  return `${Math.round(ms / 8_640_000) / 10} days`;
}

/** A CRL and the CA of TLS_CLIENT_CA that signed it. */
interface CaCrl {
  readonly pem: string;
  readonly thisUpdate: number;
  readonly nextUpdate: number | undefined;
  readonly ca: CaCertificate;
}

/** Whether OpenSSL takes `crl` at `now`: its thisUpdate has passed and its nextUpdate has not. */
function current(crl: CaCrl, now: number): boolean {
  return crl.thisUpdate <= now && (crl.nextUpdate === undefined || crl.nextUpdate > now);
}

/** The latest nextUpdate of a CA's CRLs; undefined when one has none (it never expires). */
function newestNextUpdate(crls: readonly CaCrl[]): number | undefined {
  return crls.some((crl) => crl.nextUpdate === undefined) ? undefined : Math.max(...crls.map((crl) => crl.nextUpdate ?? 0));
}

/** The CRLs in force that `ca` issued and signed (they passed these checks once; any that no longer parses is skipped). */
function inForceCrls(inForce: ClientCrls | undefined, ca: CaCertificate): CaCrl[] {
  const found: CaCrl[] = [];
  for (const pem of inForce?.pems ?? []) {
    try {
      const crl = parseCrl(pem);
      if (crl.issuerDer.equals(ca.subjectDer) && signedBy(crl, ca.publicKey)) found.push({ pem, thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate, ca });
    } catch {
      continue;
    }
  }
  return found;
}

/** The PEM blocks of one label in `text`, each with its BEGIN and END lines. */
function pemBlocks(text: string, label: string): string[] {
  return text.match(new RegExp(`-----BEGIN ${label}-----[^-]*-----END ${label}-----`, "g")) ?? [];
}

interface CaCertificate {
  readonly subject: string;
  readonly subjectDer: Buffer;
  readonly publicKey: KeyObject;
}

function caCertificate(certificate: X509Certificate): CaCertificate {
  // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature, issuer, validity, subject, ... }, ... }
  const tbs = children(certificate.raw, element(certificate.raw, 0))[0];
  if (tbs === undefined) throw new Error("no tbsCertificate");
  const fields = children(certificate.raw, tbs);
  const subject = fields[fields[0]?.tag === 0xa0 ? 5 : 4];
  if (subject === undefined) throw new Error("no subject");
  return { subject: certificate.subject.replace(/\n/g, ", "), subjectDer: certificate.raw.subarray(subject.offset, subject.end), publicKey: certificate.publicKey };
}

interface ParsedCrl {
  readonly issuer: string;
  readonly issuerDer: Buffer;
  readonly thisUpdate: number;
  readonly nextUpdate: number | undefined;
  readonly delta: boolean;
  readonly tbs: Buffer;
  readonly algorithm: string;
  /** The signature algorithm's parameters (RSASSA-PSS names its hash there). */
  readonly parameters: Buffer | undefined;
  readonly signature: Buffer;
}

function parseCrl(pem: string): ParsedCrl {
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
  // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }
  const list = element(der, 0);
  if (list.tag !== 0x30 || list.end !== der.length) throw new Error("not one DER SEQUENCE");
  const [tbs, algorithm, signature] = children(der, list);
  if (tbs?.tag !== 0x30 || algorithm?.tag !== 0x30 || signature?.tag !== 0x03) throw new Error("not a CertificateList");
  // TBSCertList ::= SEQUENCE { version?, signature, issuer, thisUpdate, nextUpdate?, revokedCertificates?, [0] crlExtensions? }
  const fields = children(der, tbs);
  let at = fields[0]?.tag === 0x02 ? 1 : 0;
  const issuer = fields[at + 1];
  const thisUpdate = fields[at + 2];
  if (issuer?.tag !== 0x30 || thisUpdate === undefined) throw new Error("no issuer or thisUpdate");
  const thisUpdateMs = time(der, thisUpdate);
  at += 3;
  let nextUpdate: number | undefined;
  const next = fields[at];
  if (next !== undefined && (next.tag === 0x17 || next.tag === 0x18)) {
    nextUpdate = time(der, next);
    at += 1;
  }
  const extensions = fields.find((field, index) => index >= at && field.tag === 0xa0);
  const delta =
    extensions !== undefined &&
    children(der, children(der, extensions)[0] ?? extensions).some((extension) => {
      const id = children(der, extension)[0];
      return id !== undefined && oid(der, id) === "2.5.29.27";
    });
  const [algorithmId, parameters] = children(der, algorithm);
  if (algorithmId?.tag !== 0x06) throw new Error("no signature algorithm");
  if (der[signature.start] !== 0) throw new Error("a signature that is not whole bytes");
  return {
    issuer: nameText(der, issuer),
    issuerDer: der.subarray(issuer.offset, issuer.end),
    thisUpdate: thisUpdateMs,
    nextUpdate,
    delta,
    tbs: der.subarray(tbs.offset, tbs.end),
    algorithm: oid(der, algorithmId),
    parameters: parameters === undefined ? undefined : der.subarray(parameters.offset, parameters.end),
    signature: der.subarray(signature.start + 1, signature.end),
  };
}

const hashes: Readonly<Record<string, string>> = {
  "1.3.14.3.2.26": "sha1",
  "2.16.840.1.101.3.4.2.1": "sha256",
  "2.16.840.1.101.3.4.2.2": "sha384",
  "2.16.840.1.101.3.4.2.3": "sha512",
  "2.16.840.1.101.3.4.2.4": "sha224",
};

/** The hash of each signature algorithm (null: the algorithm hashes itself, EdDSA). */
const signatureHashes: Readonly<Record<string, string | null>> = {
  "1.2.840.113549.1.1.5": "sha1",
  "1.2.840.113549.1.1.11": "sha256",
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
  "1.2.840.113549.1.1.14": "sha224",
  "1.2.840.10045.4.1": "sha1",
  "1.2.840.10045.4.3.1": "sha224",
  "1.2.840.10045.4.3.2": "sha256",
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.3.101.112": null,
  "1.3.101.113": null,
};

const rsaPss = "1.2.840.113549.1.1.10";

function signedBy(crl: ParsedCrl, key: KeyObject): boolean {
  try {
    if (crl.algorithm === rsaPss) {
      // RSASSA-PSS-params ::= SEQUENCE { [0] hashAlgorithm (default SHA-1), ... }; the salt length is found from the signature.
      let hash = "sha1";
      if (crl.parameters !== undefined) {
        const params = element(crl.parameters, 0);
        const hashField = children(crl.parameters, params).find((field) => field.tag === 0xa0);
        const hashAlgorithm = hashField === undefined ? undefined : children(crl.parameters, hashField)[0];
        const id = hashAlgorithm === undefined ? undefined : children(crl.parameters, hashAlgorithm)[0];
        if (id !== undefined) hash = hashes[oid(crl.parameters, id)] ?? "";
      }
      const options = { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO };
      return hash !== "" && verify(hash, crl.tbs, options, crl.signature);
    }
    const hash = signatureHashes[crl.algorithm];
    return hash !== undefined && verify(hash, crl.tbs, key, crl.signature);
  } catch {
    // A key of another type than the signature (an RSA CA, an ECDSA-signed CRL): not this CA's signature.
    return false;
  }
}

/** A DER element: its tag, where it starts (`offset`), where its content starts and where it ends. */
interface Element {
  readonly tag: number;
  readonly offset: number;
  readonly start: number;
  readonly end: number;
}

function element(der: Buffer, offset: number): Element {
  const tag = der[offset];
  const first = der[offset + 1];
  if (tag === undefined || first === undefined) throw new Error("truncated DER");
  if ((tag & 0x1f) === 0x1f) throw new Error("a DER tag this reader does not know");
  let length = first;
  let start = offset + 2;
  if (first & 0x80) {
    const bytes = first & 0x7f;
    if (bytes === 0 || bytes > 4) throw new Error("a DER length this reader does not take");
    length = 0;
    for (let i = 0; i < bytes; i++) length = length * 256 + (der[start + i] ?? Number.NaN);
    start += bytes;
  }
  const end = start + length;
  if (!Number.isFinite(end) || end > der.length) throw new Error("truncated DER");
  return { tag, offset, start, end };
}

function children(der: Buffer, parent: Element): Element[] {
  const list: Element[] = [];
  for (let offset = parent.start; offset < parent.end; ) {
    const child = element(der, offset);
    if (child.end > parent.end) throw new Error("truncated DER");
    list.push(child);
    offset = child.end;
  }
  return list;
}

function oid(der: Buffer, id: Element): string {
  const bytes = der.subarray(id.start, id.end);
  const first = bytes[0] ?? 0;
  const arcs = [Math.min(2, Math.floor(first / 40)), first - Math.min(2, Math.floor(first / 40)) * 40];
  let value = 0;
  for (const byte of bytes.subarray(1)) {
    value = value * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) {
      arcs.push(value);
      value = 0;
    }
  }
  return arcs.join(".");
}

/** UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), as ms since the epoch. */
function time(der: Buffer, field: Element): number {
  if (field.tag !== 0x17 && field.tag !== 0x18) throw new Error("a time that is neither UTCTime nor GeneralizedTime");
  const text = der.toString("latin1", field.start, field.end);
  const match = field.tag === 0x17 ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text) : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (match === null) throw new Error(`a time that is not YYMMDDHHMMSSZ: ${JSON.stringify(text)}`);
  const [, y = "", mo = "", d = "", h = "", mi = "", s = ""] = match;
  const year = field.tag === 0x17 ? (Number(y) < 50 ? 2000 : 1900) + Number(y) : Number(y);
  return Date.UTC(year, Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
}

const attributeNames: Readonly<Record<string, string>> = {
  "2.5.4.3": "CN",
  "2.5.4.6": "C",
  "2.5.4.7": "L",
  "2.5.4.8": "ST",
  "2.5.4.10": "O",
  "2.5.4.11": "OU",
  "0.9.2342.19200300.100.1.25": "DC",
};

/** `CN=Acme CA, O=Acme`: a Name for messages, in the order X509Certificate.subject gives. */
function nameText(der: Buffer, name: Element): string {
  const parts: string[] = [];
  for (const set of children(der, name)) {
    for (const attribute of children(der, set)) {
      const [type, value] = children(der, attribute);
      if (type === undefined || value === undefined) continue;
      const id = oid(der, type);
      const text = value.tag === 0x1e ? Buffer.from(der.subarray(value.start, value.end)).swap16().toString("utf16le") : der.toString("utf8", value.start, value.end);
      parts.push(`${attributeNames[id] ?? id}=${text}`);
    }
  }
  return parts.join(", ");
}
