/**
 * MX of the bounce domain: where will the relay's bounces (DSNs) for our
 * envelope sender go? Without a usable MX they are lost, and a message the
 * relay accepted stays ACCEPTED forever even when it bounced.
 */
import { isIP } from "node:net";
import { isNoRecord, type DnsResolver } from "./resolver.js";
import { check, type CheckResult } from "./types.js";

/** Options of {@link checkMx}. */
export interface MxCheckOptions {
  /** The envelope sender's domain (BOUNCE_DOMAIN, else the From domain). */
  readonly domain: string;
  readonly resolver: DnsResolver;
}

export async function checkMx(options: MxCheckOptions): Promise<CheckResult> {
  const { domain, resolver } = options;
  const fix = `publish MX at ${domain} pointing at the host that receives bounces (the bounce intake, BOUNCE_SMTP_ADDR)`;
  let records;
  try {
    records = await resolver.mx(domain);
  } catch (error) {
    if (isNoRecord(error)) {
      const missing = (error as { code: string }).code === "ENOTFOUND" ? `${domain} does not exist in DNS` : `no MX at ${domain}`;
      return check("mx.bounce", domain, "fail", `${missing}: bounces to our envelope sender have nowhere reliable to go`, fix);
    }
    return check("mx.bounce", domain, "warn", `the MX could not be looked up: ${(error as Error).message}`, "check that DNS answers and run the doctor again");
  }

  const hosts = [...records].sort((a, b) => a.priority - b.priority);
  const details = { mx: hosts.map((record) => ({ priority: record.priority, exchange: record.exchange })) };
  // RFC 7505: a single "." MX says the domain accepts no mail.
  if (hosts.length === 0 || hosts.every((record) => record.exchange === "" || record.exchange === ".")) {
    return check("mx.bounce", domain, "fail", `${domain} has a null MX: it accepts no mail, so bounces are refused`, fix, details);
  }

  // An MX names a host (RFC 5321 5.1, RFC 1035 3.3.9), never an address; mail servers do not look an address up.
  const literals = hosts.filter((record) => isIP(record.exchange.replace(/^\[|\]$/g, "")) !== 0).map((record) => record.exchange);
  if (literals.length > 0) {
    return check(
      "mx.bounce",
      domain,
      literals.length === hosts.length ? "fail" : "warn",
      `MX of ${domain} names an IP address (${literals.join(", ")}) instead of a host name: senders cannot deliver bounces there`,
      `point the MX at a host name whose A/AAAA record is ${literals.join(", ")} (such as bounces-mx.${domain})`,
      details,
    );
  }

  const unresolved: string[] = [];
  // Hosts whose lookups failed (timeout, SERVFAIL): not "no address", unknown.
  const unknown: string[] = [];
  for (const { exchange } of hosts) {
    const [v4, v6] = await Promise.allSettled([resolver.a(exchange), resolver.aaaa(exchange)]);
    const addresses = [v4, v6].flatMap((settled) => (settled.status === "fulfilled" ? settled.value : []));
    if (addresses.length > 0) continue;
    const failed = [v4, v6].find((settled): settled is PromiseRejectedResult => settled.status === "rejected" && !isNoRecord(settled.reason));
    if (failed === undefined) unresolved.push(exchange);
    else unknown.push(`${exchange} (${(failed.reason as Error).message})`);
  }
  const list = hosts.map((record) => `${record.exchange} (${record.priority})`).join(", ");
  if (unknown.length > 0 && unresolved.length + unknown.length === hosts.length) {
    return check("mx.bounce", domain, "warn", `MX ${list}: the address of ${unknown.join(", ")} could not be looked up`, "check that DNS answers and run the doctor again", details);
  }
  if (unresolved.length === hosts.length) {
    return check("mx.bounce", domain, "fail", `MX ${list}: no MX host has an address`, `publish A/AAAA records for ${unresolved.join(", ")}`, details);
  }
  if (unresolved.length > 0) {
    return check("mx.bounce", domain, "warn", `MX ${list}: ${unresolved.join(", ")} has no address`, `publish A/AAAA records for ${unresolved.join(", ")} or remove it from the MX`, details);
  }
  if (unknown.length > 0) {
    return check("mx.bounce", domain, "warn", `MX ${list}: the address of ${unknown.join(", ")} could not be looked up`, "check that DNS answers and run the doctor again", details);
  }
  return check("mx.bounce", domain, "pass", `bounces go to ${list}`, "", details);
}
