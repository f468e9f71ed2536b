/**
 * DKIM signing for outgoing mail. nodemailer signs (its `dkim` transport
 * option, rsa-sha256, relaxed/relaxed); this module decides whether the
 * configured key may be used at all, before the first message goes out:
 *
 * - the key is RSA (config.ts refuses any other first): both signers sign
 *   rsa-sha256 only, and nodemailer, with any other key, sends the message
 *   unsigned without a word;
 * - the d= domain aligns with the From domain (DMARC relaxed alignment), or
 *   a perfect signature would still fail DMARC;
 * - a probe message signed exactly as real mail is verifies against the
 *   public key derived from the private key (mailauth's verifier).
 *
 * Any failure throws, so the service refuses to start rather than send mail
 * that receivers will junk.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { dkimVerify } from "mailauth";
import DKIM from "nodemailer/lib/dkim/index.js";
import { createDkimSigner } from "./dkim-sign.js";

/** What nodemailer's `dkim` option takes for one key. */
export interface DkimSigningOptions {
  readonly domainName: string;
  readonly keySelector: string;
  readonly privateKey: string;
}

export interface DkimKeyConfig {
  /** The d= domain. */
  readonly domain: string;
  readonly selector: string;
  /** PEM text of the private key. */
  readonly privateKey: string;
}

/** Smallest RSA modulus accepted; receivers treat shorter keys as no signature (RFC 8301). */
const minRsaBits = 1024;

/**
 * Checks the key, the alignment and a probe signature, then returns the
 * options for nodemailer. Throws an Error that says what to fix.
 */
export async function prepareDkim(config: DkimKeyConfig, fromAddress: string): Promise<DkimSigningOptions> {
  const domain = config.domain.toLowerCase();
  const fromDomain = fromAddress.slice(fromAddress.lastIndexOf("@") + 1).toLowerCase();
  if (!alignsRelaxed(domain, fromDomain)) {
    throw new Error(
      `DKIM_DOMAIN=${domain} does not align with the From domain ${fromDomain}: DMARC needs d= to be the From ` +
        `domain or share its organizational domain; use DKIM_DOMAIN=${fromDomain} (or unset it)`,
    );
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(config.privateKey);
  } catch (error) {
    throw new Error(`DKIM_PRIVATE_KEY is not a usable PEM private key (${(error as Error).message})`, { cause: error });
  }
  // loadConfig refuses such a key first (exit 78); this guards callers that did not come through it.
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (key.asymmetricKeyType !== "rsa" || bits < minRsaBits) {
    throw new Error(
      `DKIM_PRIVATE_KEY must be an RSA key of at least ${minRsaBits} bits (2048 recommended: ` +
        `\`openssl genrsa -out dkim.pem 2048\`); got ${key.asymmetricKeyType ?? "an unknown key type"}` +
        `${bits > 0 ? ` of ${bits} bits` : ""}. The service signs rsa-sha256 only`,
    );
  }
  const options: DkimSigningOptions = { domainName: domain, keySelector: config.selector, privateKey: config.privateKey };
  await assertProbeVerifies(options, fromAddress, key);
  return options;
}

/** The TXT record to publish at `<selector>._domainkey.<domain>`: `v=DKIM1; k=rsa; p=...`. */
export function dkimTxtRecord(privateKey: string): string {
  const spki = createPublicKey(createPrivateKey(privateKey)).export({ type: "spki", format: "der" });
  return `v=DKIM1; k=rsa; p=${spki.toString("base64")}`;
}

/**
 * DMARC relaxed alignment, without a public-suffix list: equal domains, or
 * one a subdomain of the other (`mail.acme.example` and `acme.example`).
 */
export function alignsRelaxed(a: string, b: string): boolean {
  return a === b || a.endsWith(`.${b}`) || b.endsWith(`.${a}`);
}

async function assertProbeVerifies(options: DkimSigningOptions, fromAddress: string, key: KeyObject): Promise<void> {
  const probe = Buffer.from(
    [
      `From: <${fromAddress}>`,
      `To: <probe@${options.domainName}>`,
      "Subject: DKIM start-up probe",
      `Message-ID: <dkim-probe@${options.domainName}>`,
      "Date: Thu, 01 Jan 2026 00:00:00 +0000",
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "",
      "probe",
      "",
    ].join("\r\n"),
  );
  // Both signers the service uses: ours for the mail it builds (dkim-sign.ts), nodemailer's for the rest.
  const signed: Buffer[] = [];
  try {
    const chunks: Buffer[] = [];
    for await (const chunk of new DKIM({ ...options }).sign(probe)) chunks.push(chunk as Buffer);
    signed.push(Buffer.concat(chunks), await createDkimSigner(options).sign(probe));
  } catch (error) {
    throw new Error(`DKIM_PRIVATE_KEY cannot sign: ${(error as Error).message}`, { cause: error });
  }
  const publicRecord = dkimTxtRecord(key.export({ type: "pkcs8", format: "pem" }).toString());
  const name = `${options.keySelector}._domainkey.${options.domainName}`;
  for (const message of signed) {
    if (!/^DKIM-Signature:/im.test(message.toString("latin1"))) {
      throw new Error("DKIM_PRIVATE_KEY cannot sign: the signer produced no DKIM-Signature (is it an RSA private key?)");
    }
    const result = await dkimVerify(message, {
      resolver: (domain: string, type: string) =>
        domain.toLowerCase() === name && type === "TXT"
          ? Promise.resolve([[publicRecord]])
          : Promise.reject(Object.assign(new Error(`no ${type} record for ${domain}`), { code: "ENOTFOUND" })),
    });
    const verdict = result.results[0]?.status;
    if (verdict?.result !== "pass") {
      throw new Error(
        `DKIM start-up probe did not verify (${verdict?.result ?? "no signature"}${verdict?.comment ? `: ${verdict.comment}` : ""})`,
      );
    }
  }
}
