/**
 * TLS_CLIENT_CRL at start-up: what would make TLS refuse every client
 * certificate of a CA stops the start (ConfigError: exit 78) with a message
 * naming TLS_CLIENT_CRL and why; a CRL a few minutes early (clock skew)
 * starts, its CA marked pending. CRLs made with `openssl ca -gencrl`.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";
import { openCertificateWorkshop, type CertificateAuthority, type CertificateWorkshop, type KeyPair } from "../support/certs.js";

let workshop: CertificateWorkshop;
let dir: string;
let caA: CertificateAuthority;
let caB: CertificateAuthority;
/** Another CA with CA A's name (and another key). */
let impostor: CertificateAuthority;
let server: KeyPair;
const nextUpdate = new Date(Date.now() + 2 * 86_400_000);

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  dir = await mkdtemp(join(tmpdir(), "otp-client-crl-config-"));
  caA = await workshop.newCa("config CA A");
  caB = await workshop.newCa("config CA B");
  impostor = await workshop.newCa("config CA A");
  server = await caA.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1", server: true });
});

afterAll(async () => {
  await workshop?.cleanup();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

async function file(name: string, content: string): Promise<string> {
  await writeFile(join(dir, name), content);
  return join(dir, name);
}

const env = (ca: string, crl: string) => ({ TLS_CERT: server.cert, TLS_KEY: server.key, TLS_CLIENT_CA: ca, TLS_CLIENT_CRL: crl });

function refusal(values: Record<string, string>, now?: number): string {
  try {
    loadConfig(values, now);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("loadConfig accepted the CRL");
}

describe("TLS_CLIENT_CRL", () => {
  it("is read from a file or PEM text, with a CRL for each client CA, and kept with its path for reloading", async () => {
    const crlFile = await file("both.pem", (await caA.crl({ nextUpdate })) + (await caB.crl()));
    const tls = loadConfig(env(caA.cert + caB.cert, crlFile)).tls;
    expect(tls?.paths.clientCrl).toBe(crlFile);
    expect(tls?.clientCrl?.checked.pems).toHaveLength(2);
    expect(tls?.clientCrl?.checked.authorities).toEqual([
      { subject: "CN=config CA A", nextUpdate: Math.floor(nextUpdate.getTime() / 1000) * 1000 },
      { subject: "CN=config CA B", nextUpdate: expect.any(Number) as number },
    ]);
    expect(loadConfig(env(caA.cert, await caA.crl())).tls?.paths.clientCrl).toBeUndefined();
  });

  it.each(["rsa", "rsa-pss", "ed25519"] as const)("takes the CRL of a CA with an %s key, and refuses one its namesake signed", async (key) => {
    const ca = await workshop.newCa(`config ${key} CA`, { key });
    const namesake = await workshop.newCa(`config ${key} CA`, { key });
    expect(loadConfig(env(ca.cert, await ca.crl({ nextUpdate }))).tls?.clientCrl?.checked.authorities).toEqual([
      { subject: `CN=config ${key} CA`, nextUpdate: Math.floor(nextUpdate.getTime() / 1000) * 1000 },
    ]);
    expect(refusal(env(ca.cert, await namesake.crl()))).toMatch(/did not sign it$/);
  });

  it("needs TLS_CLIENT_CA", async () => {
    expect(refusal({ TLS_CERT: server.cert, TLS_KEY: server.key, TLS_CLIENT_CRL: await caA.crl() })).toBe(
      "TLS_CLIENT_CRL: revokes client certificates, which need TLS_CLIENT_CA (the CA that signs them and the CRL)",
    );
  });

  it("refuses what is no CRL: no PEM CRL block, or one that does not parse", async () => {
    const certificateFile = await file("not-a-crl.pem", caA.cert);
    expect(refusal(env(caA.cert, certificateFile))).toBe(`TLS_CLIENT_CRL: ${certificateFile} holds no PEM CRL (a -----BEGIN X509 CRL----- block)`);
    const garbage = "-----BEGIN X509 CRL-----\nTm90IGEgQ1JMIGF0IGFsbA==\n-----END X509 CRL-----\n";
    expect(refusal(env(caA.cert, garbage))).toMatch(/^TLS_CLIENT_CRL: the CRL of the value is not a usable CRL \(/);
  });

  it("refuses a CRL of a CA that is not a client CA, and one in a client CA's name that the CA did not sign", async () => {
    expect(refusal(env(caA.cert, (await caA.crl()) + (await caB.crl())))).toBe(
      "TLS_CLIENT_CRL: CRL 2 of the value comes from CN=config CA B, which is not a CA of TLS_CLIENT_CA",
    );
    expect(refusal(env(caA.cert, await impostor.crl()))).toBe(
      "TLS_CLIENT_CRL: the CRL of the value names CN=config CA A as its issuer but that CA of TLS_CLIENT_CA did not sign it",
    );
  });

  it("refuses CRLs that leave a client CA without one: TLS would refuse all its certificates", async () => {
    expect(refusal(env(caA.cert + caB.cert, await caA.crl()))).toBe(
      "TLS_CLIENT_CRL: no CRL from CN=config CA B (a CA of TLS_CLIENT_CA): TLS would refuse every client certificate it signs; add its CRL",
    );
  });

  it("refuses an expired CRL (nextUpdate passed), unless a newer one of the same CA is there", async () => {
    const expiredAt = new Date(Date.now() - 3_600_000);
    const expired = await caA.crl({ lastUpdate: new Date(Date.now() - 86_400_000), nextUpdate: expiredAt });
    expect(refusal(env(caA.cert, expired))).toBe(
      `TLS_CLIENT_CRL: the CRL from CN=config CA A expired at ${new Date(Math.floor(expiredAt.getTime() / 1000) * 1000).toISOString()} (its nextUpdate): ` +
        "TLS refuses every client certificate of that CA until a current CRL is given; publish a new one",
    );
    expect(loadConfig(env(caA.cert, expired + (await caA.crl()))).tls?.clientCrl?.checked.pems).toHaveLength(2);
    // Checked against the time given: the same CRL was fine two hours before.
    expect(loadConfig(env(caA.cert, expired), Date.now() - 2 * 3_600_000).tls?.clientCrl).toBeDefined();
  });

  it("takes a CRL at most 5 minutes early (clock skew): its CA is pending until its thisUpdate, with no CRL in force", async () => {
    const now = Date.now();
    const thisUpdate = new Date(now + 4 * 60_000);
    const early = await caA.crl({ lastUpdate: thisUpdate, nextUpdate });
    expect(loadConfig(env(caA.cert, early), now).tls?.clientCrl?.checked.authorities).toEqual([
      { subject: "CN=config CA A", nextUpdate: Math.floor(nextUpdate.getTime() / 1000) * 1000, pending: { thisUpdate: Math.floor(thisUpdate.getTime() / 1000) * 1000, kept: false } },
    ]);
    // With the CA's current CRL beside it, TLS uses that one until then: nothing is pending.
    const both = loadConfig(env(caA.cert, (await caA.crl()) + early), now).tls?.clientCrl?.checked;
    expect(both?.pems).toHaveLength(2);
    expect(both?.authorities[0]?.pending).toBeUndefined();
    // Beside an expired one it is pending, not an expired CRL.
    const expired = await caA.crl({ lastUpdate: new Date(now - 86_400_000), nextUpdate: new Date(now - 3_600_000) });
    expect(loadConfig(env(caA.cert, expired + early), now).tls?.clientCrl?.checked.authorities[0]?.pending?.kept).toBe(false);
  });

  it("refuses a CRL hours early, naming the CA, its thisUpdate and this host's clock", async () => {
    const now = Date.now();
    const thisUpdate = new Date(Math.floor((now + 3 * 3_600_000) / 1000) * 1000);
    expect(refusal(env(caA.cert + caB.cert, (await caA.crl()) + (await caB.crl({ lastUpdate: thisUpdate, nextUpdate }))), now)).toBe(
      `TLS_CLIENT_CRL: the CRL from CN=config CA B is not valid until ${thisUpdate.toISOString()} (its thisUpdate), 3 hours ahead of this host's clock ` +
        `(${new Date(now).toISOString()}): TLS would refuse every client certificate of that CA until then. Check this host's clock and the CA's ` +
        "(clock skew?), or give the CA's current CRL as well (one file may hold both)",
    );
  });
});
