/**
 * Throw-away X.509 material for TLS tests, made with the system's openssl in
 * a temporary directory: a CA, a server certificate for 127.0.0.1/localhost,
 * and client certificates (valid, expired, or from another CA).
 */
import { execFile } from "node:child_process";
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

export interface CertificateWorkshop {
  /** A new self-signed CA. */
  newCa(name: string): Promise<CertificateAuthority>;
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
    async newCa(name) {
      const base = `ca-${++counter}`;
      await run(openssl, [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
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
      };
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
