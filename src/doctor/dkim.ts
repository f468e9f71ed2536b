/**
 * DKIM: is the selector's key published, and does it match our private key?
 * The proof is the one receivers use: a probe message signed with our key
 * (mailauth's signer) verifies against the published record (mailauth's
 * verifier, through our resolver).
 */
import { createPublicKey, randomBytes } from "node:crypto";
import { dkimSign, dkimVerify } from "mailauth";
import { txtRecords, type DnsResolver } from "./resolver.js";
import { mailauthResolver } from "./spf.js";
import { check, domainOf, type CheckResult } from "./types.js";

/** Options of {@link checkDkim}. */
export interface DkimCheckOptions {
  readonly fromAddress: string;
  /** DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY; undefined when we do not sign. */
  readonly dkim: { readonly domain: string; readonly selector: string; readonly privateKey: string } | undefined;
  readonly resolver: DnsResolver;
}

export interface DkimCheck {
  readonly result: CheckResult;
  /** The d= domain when a signature of ours verifies, for the DMARC check. */
  readonly verifiedDomain: string | undefined;
}

export async function checkDkim(options: DkimCheckOptions): Promise<DkimCheck> {
  const { dkim, resolver } = options;
  if (dkim === undefined) {
    return {
      result: check(
        "dkim",
        domainOf(options.fromAddress),
        "warn",
        "mail is not DKIM-signed, so DMARC can pass through SPF alignment only",
        "set DKIM_SELECTOR and DKIM_PRIVATE_KEY (DKIM_DOMAIN defaults to the From domain) and publish the public key",
      ),
      verifiedDomain: undefined,
    };
  }

  const name = `${dkim.selector}._domainkey.${dkim.domain}`;
  const expected = expectedRecord(dkim.privateKey);
  const publish = `publish TXT at ${name}: "${expected}" (split into 255-byte strings)`;
  const failed = (status: "warn" | "fail", summary: string, fix: string, details: Record<string, unknown> = {}): DkimCheck => ({
    result: check("dkim", name, status, summary, fix, { expected, ...details }),
    verifiedDomain: undefined,
  });

  let records: string[];
  try {
    records = (await txtRecords(resolver, name)).filter((record) => /(^|;)\s*(v=DKIM1|p=)/i.test(record));
  } catch (error) {
    return failed("warn", `the DKIM key could not be looked up: ${(error as Error).message}`, "check that DNS answers and run the doctor again");
  }
  if (records.length === 0) return failed("fail", `no DKIM key is published at ${name}`, publish);
  if (records.some((record) => /(^|;)\s*p=\s*(;|$)/i.test(record))) {
    return failed("fail", `the DKIM key at ${name} is revoked (empty p=)`, publish, { records });
  }

  const probe = probeMessage(options.fromAddress, dkim.domain);
  // mailauth signs what `signatureData` lists; top-level key options alone produce nothing.
  const signed = await dkimSign(probe, {
    signingDomain: dkim.domain,
    selector: dkim.selector,
    privateKey: dkim.privateKey,
    signatureData: [{ signingDomain: dkim.domain, selector: dkim.selector, privateKey: dkim.privateKey, canonicalization: "relaxed/relaxed" }],
  });
  const signError = signed.errors[0];
  if (signed.signatures === "" || signError !== undefined) {
    return failed("fail", `our key cannot sign: ${signError?.err.message ?? "no signature produced"}`, "set DKIM_PRIVATE_KEY to an RSA key of at least 1024 bits (2048 recommended): the service signs rsa-sha256 only", { records });
  }

  const verified = await dkimVerify(Buffer.concat([Buffer.from(signed.signatures), probe]), {
    resolver: mailauthResolver(resolver),
  });
  const outcome = verified.results[0];
  const status = outcome?.status;
  const details = {
    records,
    result: status?.result ?? "none",
    comment: status?.comment ?? null,
    algorithm: outcome?.algo ?? null,
    keyBits: outcome?.modulusLength ?? null,
    testing: status?.testing === true,
  };

  const verdict = status?.result ?? "none";
  if (verdict === "pass") {
    if (status?.testing === true) {
      return {
        result: check("dkim", name, "warn", "our signature verifies, but the key has t=y (testing): receivers may treat mail as unsigned", `remove t=y from the record at ${name}`, details),
        verifiedDomain: dkim.domain,
      };
    }
    return {
      result: check("dkim", name, "pass", `a probe signed with DKIM_PRIVATE_KEY verifies against the published key (d=${dkim.domain})`, "", details),
      verifiedDomain: dkim.domain,
    };
  }
  if (verdict === "fail") {
    return failed("fail", `the published key does not match DKIM_PRIVATE_KEY (${String(status?.comment ?? "bad signature")})`, `replace the record: ${publish}`, details);
  }
  if (verdict === "policy") {
    return failed("fail", `receivers refuse the published key (${status?.policy?.["dkim-rules"] ?? "policy"}: too short or weak)`, "use a 2048-bit RSA key: generate one, set DKIM_PRIVATE_KEY and publish its public key", details);
  }
  if (verdict === "temperror" || verdict === "temperr") {
    return failed("warn", `the DKIM key could not be looked up (${String(status?.comment ?? "DNS error")})`, "check that DNS answers and run the doctor again", details);
  }
  // neutral and the like: a record that is there but cannot be used (bad syntax, wrong key type).
  return failed("fail", `the published record at ${name} is unusable (${String(status?.comment ?? verdict)})`, publish, details);
}

/** The TXT record that publishes the public half of `privateKeyPem`, an RSA key (the only kind the service signs with). */
export function expectedRecord(privateKeyPem: string): string {
  const der = createPublicKey(privateKeyPem).export({ type: "spki", format: "der" });
  return `v=DKIM1; k=rsa; p=${der.toString("base64")}`;
}

function probeMessage(fromAddress: string, domain: string): Buffer {
  const id = randomBytes(8).toString("hex");
  return Buffer.from(
    [
      `From: <${fromAddress}>`,
      `To: <doctor@${domain}>`,
      "Subject: otp-email doctor DKIM probe",
      `Date: ${new Date().toUTCString()}`,
      `Message-ID: <doctor-${id}@${domain}>`,
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "",
      "This message is never sent; it proves that our key matches the published one.",
      "",
    ].join("\r\n"),
  );
}
