/**
 * Throw-away X.509 material for TLS tests, made with the system's openssl in
 * a temporary directory: a CA, a server certificate for 127.0.0.1/localhost,
 * client certificates (valid, expired, or from another CA), and the CA's
 * certificate revocation lists.
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
const openssl = "/usr/bin/openssl";

export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

export interface CertificateAuthority extends KeyPair {
  /** Issues a certificate signed by this CA. */
  issue(options: IssueOptions): Promise<KeyPair>;
  /** A PEM CRL signed by this CA (`openssl ca -gencrl`). */
  crl(options?: CrlOptions): Promise<string>;
}

export interface CrlOptions {
  /** Certificates of this CA that the CRL revokes. */
  readonly revoked?: readonly KeyPair[];
  /** thisUpdate; default now. */
  readonly lastUpdate?: Date;
  /** nextUpdate; default a day from now. In the past: an expired CRL. */
  readonly nextUpdate?: Date;
}

export interface IssueOptions {
  readonly cn: string;
  /** subjectAltName value, such as `URI:spiffe://test/alpha,DNS:alpha.test`. */
  readonly san?: string;
  /** Negative: already expired. Default 1. */
  readonly days?: number;
  /** Adds serverAuth instead of clientAuth. */
  readonly server?: boolean;
  /** With `server`, adds clientAuth too: a Redis Cluster node also presents its certificate as a client, on the cluster bus. */
  readonly alsoClient?: boolean;
}

export interface CaOptions {
  /** The CA's key, and so how it signs: ECDSA P-256 (default), RSA (PKCS#1 v1.5), RSA-PSS, Ed25519. */
  readonly key?: "ec" | "rsa" | "rsa-pss" | "ed25519";
}

export interface CertificateWorkshop {
  /** A new self-signed CA, with a P-256 key unless told otherwise. */
  newCa(name: string, options?: CaOptions): Promise<CertificateAuthority>;
  /** Deletes the temporary directory. */
  cleanup(): Promise<void>;
}

export async function openCertificateWorkshop(): Promise<CertificateWorkshop> {
  const dir = await mkdtemp(join(tmpdir(), "otp-certs-"));
  let counter = 0;
  const path = (name: string): string => join(dir, name);

  async function keyAndCsr(base: string, cn: string, san: string | undefined): Promise<void> {
    await run(openssl, [
      "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", path(`${base}.key`), "-out", path(`${base}.csr`), "-subj", `/CN=${cn}`,
      ...(san === undefined ? [] : ["-addext", `subjectAltName=${san}`]),
    ]);
  }

  return {
    async newCa(name, caOptions = {}) {
      const base = `ca-${++counter}`;
      const key = caOptions.key ?? "ec";
      const newKey = { ec: ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"], rsa: ["rsa:2048"], "rsa-pss": ["rsa:2048"], ed25519: ["ed25519"] }[key];
      // How `openssl ca` signs with that key: Ed25519 takes no separate digest, PSS is asked for.
      const signing = { ec: ["-md", "sha256"], rsa: ["-md", "sha256"], "rsa-pss": ["-md", "sha256", "-sigopt", "rsa_padding_mode:pss"], ed25519: [] }[key];
      await run(openssl, [
        "req", "-x509", "-newkey", ...newKey, "-nodes",
        "-keyout", path(`${base}.key`), "-out", path(`${base}.pem`), "-subj", `/CN=${name}`, "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
      ]);
      const ca = { cert: await readFile(path(`${base}.pem`), "utf8"), key: await readFile(path(`${base}.key`), "utf8") };
      return {
        ...ca,
        async issue(options) {
          const leaf = `leaf-${++counter}`;
          await keyAndCsr(leaf, options.cn, options.san);
          const extensions = [
            "basicConstraints=CA:FALSE",
            `extendedKeyUsage=${options.server === true ? (options.alsoClient === true ? "serverAuth,clientAuth" : "serverAuth") : "clientAuth"}`,
            ...(options.san === undefined ? [] : [`subjectAltName=${options.san}`]),
          ];
          await writeFile(path(`${leaf}.ext`), `${extensions.join("\n")}\n`);
          await run(openssl, [
            "x509", "-req", "-in", path(`${leaf}.csr`), "-CA", path(`${base}.pem`), "-CAkey", path(`${base}.key`),
            "-CAcreateserial", "-out", path(`${leaf}.pem`), "-days", String(options.days ?? 1), "-extfile", path(`${leaf}.ext`),
          ]);
          return { cert: await readFile(path(`${leaf}.pem`), "utf8"), key: await readFile(path(`${leaf}.key`), "utf8") };
        },
        async crl(options = {}) {
          const list = `crl-${++counter}`;
          // `openssl ca` keeps its revocations in an index file: one R line per revoked certificate.
          const time = (date: Date): string => date.toISOString().replace(/[-:T]/g, "").slice(2, 14) + "Z";
          const revoked = (options.revoked ?? []).map((pair) => {
            const certificate = new X509Certificate(pair.cert);
            const subject = certificate.subject.split("\n").map((rdn) => `/${rdn}`).join("");
            return ["R", time(certificate.validToDate), time(new Date(Date.now() - 60_000)), certificate.serialNumber, "unknown", subject].join("\t");
          });
          await writeFile(path(`${list}.index`), revoked.map((line) => `${line}\n`).join(""));
          await writeFile(path(`${list}.number`), "01\n");
          await writeFile(
            path(`${list}.cnf`),
            ["[ca]", "default_ca = crl", "[crl]", `database = ${path(`${list}.index`)}`, `crlnumber = ${path(`${list}.number`)}`, "default_md = default", ""].join("\n"),
          );
          const lastUpdate = options.lastUpdate ?? new Date();
          const nextUpdate = options.nextUpdate ?? new Date(Date.now() + 86_400_000);
          await run(openssl, [
            "ca", "-gencrl", "-batch", "-config", path(`${list}.cnf`), "-keyfile", path(`${base}.key`), "-cert", path(`${base}.pem`), ...signing,
            "-crl_lastupdate", time(lastUpdate), "-crl_nextupdate", time(nextUpdate), "-out", path(`${list}.pem`),
          ]);
          return readFile(path(`${list}.pem`), "utf8");
        },
      };
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
