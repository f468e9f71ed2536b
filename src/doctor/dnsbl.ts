/**
 * DNSBL: is the relay's IP listed in the configured blocklists? A listing
 * answers `127.0.0.x` at `<reversed ip>.<zone>`; no such name means not
 * listed. Spamhaus answers 127.255.255.x when it refuses the query (public
 * resolvers, rate limits): that is "could not check", not a listing.
 */
import { isIP } from "node:net";
import { isNoRecord, txtRecords, type DnsResolver } from "./resolver.js";
import { isPrivateIp } from "./spf.js";
import { check, type CheckResult } from "./types.js";

/** Options of {@link checkDnsbl}. */
export interface DnsblCheckOptions {
  readonly relayIp: string | undefined;
  readonly zones: readonly string[];
  readonly resolver: DnsResolver;
}

/** One result per zone; none when no zone is configured. */
export async function checkDnsbl(options: DnsblCheckOptions): Promise<CheckResult[]> {
  const { relayIp, zones, resolver } = options;
  if (zones.length === 0) return [];
  const subject = zones.join(",");
  if (relayIp === undefined) {
    return [check("dnsbl", subject, "warn", "the relay's IP is unknown, so blocklists were not checked", "set RELAY_IP to the relay's public egress IP")];
  }
  if (isPrivateIp(relayIp)) {
    return [check("dnsbl", subject, "warn", `the relay's IP ${relayIp} is private, so blocklists were not checked`, "set RELAY_IP to the relay's public egress IP", { relayIp })];
  }
  const reversed = reverseIp(relayIp);
  return Promise.all(zones.map((zone) => checkZone(relayIp, `${reversed}.${zone}`, zone, resolver)));
}

async function checkZone(relayIp: string, name: string, zone: string, resolver: DnsResolver): Promise<CheckResult> {
  let answers: string[];
  try {
    answers = await resolver.a(name);
  } catch (error) {
    if (isNoRecord(error)) return notListed(relayIp, name, zone, resolver);
    return check("dnsbl", zone, "warn", `${zone} could not be asked: ${(error as Error).message}`, "check that DNS answers and run the doctor again", { relayIp, query: name });
  }
  const details = { relayIp, query: name, answers };
  const refused = refusedQuery(zone, answers, details);
  if (refused !== undefined) return refused;
  const listings = answers.filter((answer) => answer.startsWith("127."));
  if (listings.length === 0) {
    return check("dnsbl", zone, "warn", `${zone} answered ${answers.join(", ")}, which is not a listing code`, `check that ${zone} is a DNSBL zone (DNSBL_ZONES)`, details);
  }
  let reason = "";
  try {
    reason = (await txtRecords(resolver, name)).join(" ");
  } catch {
    // The reason is a courtesy; the A answer is the listing.
  }
  return check(
    "dnsbl",
    zone,
    "fail",
    `relay ${relayIp} is listed in ${zone} (${listings.join(", ")})${reason === "" ? "" : `: ${reason}`}`,
    `find why (compromised account, open relay, shared IP), fix it, then request delisting from ${zone}`,
    { ...details, reason },
  );
}

/**
 * "Not listed" means something only if the zone answers at all: a DNSBL
 * lists its test address (RFC 5782 5: 127.0.0.2, for IPv6 ::ffff:7f00:2).
 * A mistyped or retired zone answers NXDOMAIN for every IP, a "not listed"
 * that would pass forever.
 */
async function notListed(relayIp: string, name: string, zone: string, resolver: DnsResolver): Promise<CheckResult> {
  const testQuery = `${reverseIp(isIP(relayIp) === 6 ? "::ffff:7f00:2" : "127.0.0.2")}.${zone}`;
  const details = { relayIp, query: name, testQuery };
  let answers: string[];
  try {
    answers = await resolver.a(testQuery);
  } catch (error) {
    if (isNoRecord(error)) {
      return check(
        "dnsbl",
        zone,
        "warn",
        `${zone} does not list its test address (${testQuery}), so it is not a working DNSBL: that it does not list relay ${relayIp} says nothing`,
        `check the zone name in DNSBL_ZONES (such as zen.spamhaus.org), or remove ${zone}`,
        details,
      );
    }
    return check("dnsbl", zone, "warn", `${zone} could not be asked: ${(error as Error).message}`, "check that DNS answers and run the doctor again", details);
  }
  return refusedQuery(zone, answers, { ...details, answers }) ?? check("dnsbl", zone, "pass", `relay ${relayIp} is not listed in ${zone}`, "", details);
}

/** A zone's refusal code (127.255.255.x: Spamhaus and others answer it to public or busy resolvers), as a warning. */
function refusedQuery(zone: string, answers: readonly string[], details: Record<string, unknown>): CheckResult | undefined {
  if (!answers.some((answer) => answer.startsWith("127.255.255."))) return undefined;
  return check(
    "dnsbl",
    zone,
    "warn",
    `${zone} refused the query (${answers.join(", ")}): it does not answer public or busy resolvers`,
    "set DNS_SERVERS to a resolver of your own (not a public one) and run the doctor again",
    details,
  );
}

/** `192.0.2.1` -> `1.2.0.192`; IPv6 as reversed nibbles (RFC 5782). */
export function reverseIp(ip: string): string {
  if (isIP(ip) === 4) return ip.split(".").reverse().join(".");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped?.[1] !== undefined) return reverseIp(mapped[1]);
  const [head = "", tail = ""] = ip.toLowerCase().split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === "" ? [] : tail.split(":");
  const groups = ip.includes("::") ? [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill("0"), ...tailGroups] : headGroups;
  return groups
    .map((group) => group.padStart(4, "0"))
    .join("")
    .split("")
    .reverse()
    .join(".");
}
