/**
 * SPF: does the relay's IP pass the SPF record of a domain? Evaluated by
 * mailauth (RFC 7208, lookup limits included) against our resolver.
 */
import { isIP } from "node:net";
import { spf, type DNSResolver } from "mailauth";
import type { DnsResolver } from "./resolver.js";
import { check, type CheckResult, type CheckStatus } from "./types.js";

/** Options of {@link checkSpf}. */
export interface SpfCheckOptions {
  readonly id: "spf.from" | "spf.bounce";
  readonly domain: string;
  /** The IP receivers see our mail come from; undefined when it could not be determined. */
  readonly relayIp: string | undefined;
  /**
   * True when receivers evaluate SPF on this domain for our mail (it is the
   * envelope sender's domain): a failure there is a fail, elsewhere a warning.
   */
  readonly envelope: boolean;
  readonly resolver: DnsResolver;
}

export async function checkSpf(options: SpfCheckOptions): Promise<CheckResult> {
  const { id, domain, relayIp, envelope, resolver } = options;
  const role = envelope ? "envelope sender domain" : "From domain, not the envelope sender's, so receivers do not use it for our mail";
  if (relayIp === undefined) {
    return check(id, domain, "warn", "the relay's IP is unknown, so SPF could not be evaluated", "set RELAY_IP to the relay's public egress IP");
  }
  if (isPrivateIp(relayIp)) {
    return check(
      id,
      domain,
      "warn",
      `the relay's IP ${relayIp} is private; receivers see the relay's public egress IP instead`,
      "set RELAY_IP to the relay's public egress IP",
      { relayIp },
    );
  }

  const result = await spf({
    sender: `postmaster@${domain}`,
    ip: relayIp,
    helo: domain,
    mta: "otp-email-doctor",
    resolver: mailauthResolver(resolver),
    // Each lookup has its own deadline; this bounds the whole include chain.
    maxElapsedTime: resolver.timeoutMs * 4,
  });
  const verdict = result.status.result;
  const details = { relayIp, result: verdict, record: result.rr ?? null, comment: result.status.comment ?? null, envelope };
  const severe: CheckStatus = envelope ? "fail" : "warn";
  const mechanism = `${isIP(relayIp) === 6 ? "ip6" : "ip4"}:${relayIp}`;

  if (verdict === "pass") {
    // `+all` (or a bare `all`) lets every host on the Internet pass: our mail
    // passes, and so does anyone's who forges the domain, DMARC included.
    const endsInPlusAll = typeof result.rr === "string" && /(^|\s)\+?all(\s|$)/i.test(result.rr);
    if (endsInPlusAll) {
      return check(
        id,
        domain,
        "warn",
        `the SPF record of ${domain} ends in "+all": every host passes it, relay ${relayIp} and anyone forging ${domain} alike (${role})`,
        `end the SPF record of ${domain} with "-all" instead, keeping ${mechanism} and the senders you use`,
        details,
      );
    }
    // The same through an include or a redirect to such a record, or a range
    // that covers every address: an address no sender uses passes too.
    if (await passesEveryone(domain, relayIp, resolver)) {
      return check(
        id,
        domain,
        "warn",
        `the SPF record of ${domain} lets every host pass (through an include, a redirect or a range covering every address): relay ${relayIp} and anyone forging ${domain} alike (${role})`,
        `make the SPF record of ${domain}, and every record it includes or redirects to, list only your senders and end in "-all", keeping ${mechanism}`,
        details,
      );
    }
    return check(id, domain, "pass", `relay ${relayIp} passes SPF (${role})`, "", details);
  }
  if (verdict === "none") {
    return check(
      id,
      domain,
      severe,
      `no SPF record at ${domain} (${role})`,
      `publish TXT at ${domain}: "v=spf1 ${mechanism} -all" (keep the senders you already use)`,
      details,
    );
  }
  if (verdict === "fail" || verdict === "softfail" || verdict === "neutral") {
    return check(
      id,
      domain,
      // RFC 7208 8.2: neutral is treated exactly like none, which DMARC does not pass.
      severe,
      `SPF ${verdict}: the record does not authorize relay ${relayIp} (${role})`,
      `add ${mechanism} to the SPF record of ${domain}, before its "all" term`,
      details,
    );
  }
  if (verdict === "permerror") {
    return check(
      id,
      domain,
      severe,
      `the SPF record of ${domain} is broken (permerror: ${String(result.status.comment ?? "invalid record")})`,
      permerrorFix(domain, String(result.status.comment ?? "")),
      details,
    );
  }
  // temperror: a lookup failed or timed out, which says nothing about the record.
  return check(
    id,
    domain,
    "warn",
    `SPF could not be evaluated (${verdict}: ${String(result.status.comment ?? "DNS error")})`,
    "check that DNS answers (DNS_SERVERS, DOCTOR_TIMEOUT) and run the doctor again",
    details,
  );
}

/**
 * Addresses no legitimate sender uses (IPv4 240.0.0.0/4 is reserved, IPv6
 * 100::/64 is the discard prefix): a record that lets them pass lets every host pass.
 */
const nobody = { 4: "240.0.0.1", 6: "100::1" } as const;

async function passesEveryone(domain: string, relayIp: string, resolver: DnsResolver): Promise<boolean> {
  const result = await spf({
    sender: `postmaster@${domain}`,
    ip: nobody[isIP(relayIp) === 6 ? 6 : 4],
    helo: domain,
    mta: "otp-email-doctor",
    resolver: mailauthResolver(resolver),
    maxElapsedTime: resolver.timeoutMs * 4,
  });
  return result.status.result === "pass";
}

/** The fix for what mailauth's permerror comment names (RFC 7208 4.6.4, 5.2, 4.5), else the general one. */
function permerrorFix(domain: string, comment: string): string {
  const missing = /no SPF records? found for (\S+?)\.?$/i.exec(comment)?.[1]?.toLowerCase();
  if (missing !== undefined && missing !== domain.toLowerCase()) {
    return `the SPF record of ${domain} includes or redirects to ${missing}, which publishes no SPF record: fix that name or remove the term`;
  }
  if (/void/i.test(comment)) {
    return `remove the terms of the SPF record of ${domain} (a:, mx:, include:...) that name domains without records: receivers allow at most 2 such lookups`;
  }
  if (/multiple SPF records/i.test(comment)) return `merge the SPF records of ${domain} into one "v=spf1" record`;
  return `fix the SPF record of ${domain}: one "v=spf1" record, at most 10 DNS-querying terms`;
}

/** Our resolver in the shape mailauth's `resolver` option takes. */
export function mailauthResolver(resolver: DnsResolver): DNSResolver {
  return (name, rrtype) => resolver.resolve(name, rrtype) as ReturnType<DNSResolver>;
}

/** Loopback, RFC 1918, CGNAT, link-local and IPv6 unique-local addresses. */
export function isPrivateIp(ip: string): boolean {
  if (isIP(ip) === 4) {
    const [a = 0, b = 0] = ip.split(".").map(Number);
    return a === 10 || a === 127 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254) || (a === 100 && b >= 64 && b <= 127) || a === 0;
  }
  const lower = ip.toLowerCase();
  if (lower.startsWith("::ffff:") && isIP(lower.slice(7)) === 4) return isPrivateIp(lower.slice(7));
  return lower === "::1" || lower === "::" || /^f[cd]/.test(lower) || /^fe[89ab]/.test(lower);
}
