/**
 * DMARC: the From domain's policy, and whether our mail can pass it. DMARC
 * passes when SPF passes for an envelope domain aligned with From, or a DKIM
 * signature verifies for a d= aligned with From. mailauth evaluates it twice:
 * once with what really passed (the verdict), once as if SPF and DKIM both
 * passed (can alignment work at all with these domains?), so the fix names
 * the right thing to change.
 */
import { dmarc, type DMARCResult } from "mailauth";
import { txtRecords, type DnsResolver } from "./resolver.js";
import { mailauthResolver } from "./spf.js";
import { check, domainOf, type CheckResult } from "./types.js";

/** Options of {@link checkDmarc}. */
export interface DmarcCheckOptions {
  readonly fromAddress: string;
  /** Domain of our envelope sender (BOUNCE_DOMAIN, else the From domain). */
  readonly envelopeDomain: string;
  /** True when the relay passes SPF for envelopeDomain. */
  readonly spfPasses: boolean;
  /** DKIM_DOMAIN when we sign, else undefined. */
  readonly dkimDomain: string | undefined;
  /** True when our signature verifies against the published key. */
  readonly dkimPasses: boolean;
  /** True when SPF for envelopeDomain could not be evaluated (DNS error, relay IP unknown): not passing is no verdict. */
  readonly spfUnknown?: boolean | undefined;
  /** True when our DKIM signature could not be checked (DNS error): not passing is no verdict. */
  readonly dkimUnknown?: boolean | undefined;
  readonly resolver: DnsResolver;
}

export async function checkDmarc(options: DmarcCheckOptions): Promise<CheckResult> {
  const { fromAddress, envelopeDomain, dkimDomain, resolver } = options;
  const fromDomain = domainOf(fromAddress);
  const evaluate = (spfDomains: string[], dkimDomains: string[]): Promise<DMARCResult | false> =>
    dmarc({
      headerFrom: fromAddress,
      spfDomains,
      dkimDomains: dkimDomains.map((domain) => ({ domain })),
      resolver: mailauthResolver(resolver),
    });

  const actual = await evaluate(
    options.spfPasses ? [envelopeDomain] : [],
    options.dkimPasses && dkimDomain !== undefined ? [dkimDomain] : [],
  );
  if (actual === false) {
    return check("dmarc", fromDomain, "fail", `the From address ${fromAddress} has no usable domain`, "set MAIL_FROM to an address at your domain");
  }
  const subject = `_dmarc.${actual.policyDomain ?? actual.domain ?? fromDomain}`;
  const verdict = actual.status.result;
  const baseDetails = { result: verdict, record: actual.rr ?? null, policy: actual.policy ?? null, testMode: actual.testMode ?? false };

  if (verdict === "none") {
    // A record may be there and still count as none (RFC 7489 6.6.3): say which, or the fix reads "publish one".
    const published = await txtRecords(resolver, `_dmarc.${fromDomain}`).then(
      (records) => records.filter((record) => /^\s*v\s*=\s*DMARC1\s*(;|$)/i.test(record)),
      () => [],
    );
    if (published.length > 1) {
      return check(
        "dmarc",
        `_dmarc.${fromDomain}`,
        "warn",
        `${published.length} DMARC records at _dmarc.${fromDomain}: receivers ignore them all (RFC 7489 6.6.3), as if there were none`,
        `keep exactly one v=DMARC1 record at _dmarc.${fromDomain}`,
        { ...baseDetails, records: published },
      );
    }
    if (published.length === 1) {
      return check(
        "dmarc",
        `_dmarc.${fromDomain}`,
        "warn",
        `the DMARC record at _dmarc.${fromDomain} is not valid, so receivers ignore it, as if there were none: "${published[0] ?? ""}"`,
        `fix the record at _dmarc.${fromDomain}: it starts with "v=DMARC1; p=" and p= is none, quarantine or reject`,
        { ...baseDetails, records: published },
      );
    }
    return check(
      "dmarc",
      `_dmarc.${fromDomain}`,
      "warn",
      `no DMARC record for ${fromDomain}: Gmail and Yahoo require one from bulk senders`,
      `publish TXT at _dmarc.${actual.domain ?? fromDomain}: "v=DMARC1; p=none; rua=mailto:dmarc-reports@${actual.domain ?? fromDomain}", then tighten p= once reports are clean`,
      baseDetails,
    );
  }
  if (verdict !== "pass" && verdict !== "fail") {
    return check(
      "dmarc",
      subject,
      "warn",
      `DMARC could not be evaluated (${verdict}${actual.error === undefined ? "" : `: ${actual.error}`})`,
      "check that DNS answers and run the doctor again",
      baseDetails,
    );
  }

  // As if SPF and DKIM both passed: which of our domains can align at all?
  const possible = await evaluate([envelopeDomain], dkimDomain === undefined ? [] : [dkimDomain]);
  const spfAligns = possible !== false && possible.alignment.spf.result !== undefined && possible.alignment.spf.result !== "";
  const dkimAligns = possible !== false && possible.alignment.dkim.result !== undefined && possible.alignment.dkim.result !== "";
  const aspf = actual.alignment.spf.strict ? "strict" : "relaxed";
  const adkim = actual.alignment.dkim.strict ? "strict" : "relaxed";
  const details = { ...baseDetails, envelopeDomain, dkimDomain: dkimDomain ?? null, spfAligns, dkimAligns, aspf, adkim };
  const policy = actual.policy;

  if (verdict === "pass") {
    const via = [
      actual.alignment.spf.result ? `SPF (${envelopeDomain})` : "",
      actual.alignment.dkim.result ? `DKIM (d=${dkimDomain ?? ""})` : "",
    ].filter((part) => part !== "");
    const monitoring = policy === "none" ? "; p=none only monitors, consider quarantine or reject" : "";
    return check("dmarc", subject, "pass", `DMARC p=${policy} passes through ${via.join(" and ")}${monitoring}`, "", details);
  }

  // A failure built on what could not be checked is no verdict: alignment
  // itself needs DNS (the organizational domain), and an SPF or DKIM that
  // would align may pass once it can be checked.
  const unknown: string[] = [];
  if (possible === false || (possible.status.result !== "pass" && possible.status.result !== "fail")) {
    unknown.push(`alignment (${possible === false ? "no result" : possible.status.result})`);
  } else {
    if (spfAligns && !options.spfPasses && options.spfUnknown === true) unknown.push(`SPF for ${envelopeDomain}`);
    if (dkimAligns && !options.dkimPasses && options.dkimUnknown === true) unknown.push(`DKIM for d=${dkimDomain ?? ""}`);
  }
  if (unknown.length > 0) {
    return check(
      "dmarc",
      subject,
      "warn",
      `DMARC p=${policy} could not be evaluated: ${unknown.join(" and ")} could not be checked`,
      "fix what the SPF and DKIM checks report (DNS_SERVERS, DOCTOR_TIMEOUT, RELAY_IP) and run the doctor again",
      details,
    );
  }

  const reasons: string[] = [];
  if (!spfAligns) reasons.push(`envelope domain ${envelopeDomain} does not align with ${fromDomain} (aspf ${aspf})`);
  else if (!options.spfPasses) reasons.push(`SPF does not pass for ${envelopeDomain}`);
  if (dkimDomain === undefined) reasons.push("mail is not DKIM-signed");
  else if (!dkimAligns) reasons.push(`DKIM d=${dkimDomain} does not align with ${fromDomain} (adkim ${adkim})`);
  else if (!options.dkimPasses) reasons.push(`our DKIM signature does not verify`);

  const fixes: string[] = [];
  if (dkimDomain === undefined || !dkimAligns) {
    fixes.push(`sign with DKIM_DOMAIN=${fromDomain} and publish its key`);
  } else if (!options.dkimPasses) {
    fixes.push("fix the DKIM check");
  }
  if (!spfAligns) {
    const target = actual.alignment.spf.strict ? fromDomain : `${fromDomain} or a subdomain of it`;
    fixes.push(`or set BOUNCE_DOMAIN to ${target}, with SPF for the relay`);
  }
  else if (!options.spfPasses) fixes.push("or fix the SPF check of the envelope domain");

  // pct=N (RFC 7489 6.6.4) applies the policy to N% of failing mail and the next lower one to the rest;
  // t=y (DMARCbis) applies the next lower one to all of it.
  const pct = Math.min(100, Number(/(?:^|;)\s*pct\s*=\s*(\d+)/i.exec(actual.rr ?? "")?.[1] ?? 100));
  const share = actual.testMode === true ? 0 : pct;
  const consequence =
    policy === "reject"
      ? share >= 100
        ? "receivers will reject our mail (550 5.7.26)"
        : share > 0
          ? `receivers will reject ${share}% of our mail (550 5.7.26) and junk the rest (pct=${pct})`
          : `receivers will junk our mail (${actual.testMode === true ? "t=y" : "pct=0"}: one step below reject)`
      : policy === "quarantine"
        ? share >= 100
          ? "receivers will junk our mail"
          : share > 0
            ? `receivers will junk ${share}% of our mail (pct=${pct})`
            : `receivers only report it for now (${actual.testMode === true ? "t=y" : "pct=0"}), but Gmail and Yahoo treat such mail as unauthenticated`
        : "p=none, so receivers only report it, but Gmail and Yahoo treat such mail as unauthenticated";
  return check(
    "dmarc",
    subject,
    policy === "none" ? "warn" : "fail",
    `DMARC p=${policy} fails: ${reasons.join("; ")}; ${consequence}`,
    fixes.join(", "),
    details,
  );
}
