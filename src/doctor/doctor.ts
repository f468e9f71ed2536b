/**
 * The sender-domain doctor: runs every check (SPF, DKIM, DMARC, the bounce
 * domain's MX, the relay, its reverse DNS, DNSBLs) and gathers them into one report. Used by
 * `npm run doctor` and, as warnings, at start-up.
 */
import { isIP } from "node:net";
import type { Config } from "../config.js";
import { checkDkim } from "./dkim.js";
import { checkDmarc } from "./dmarc.js";
import { checkDnsbl } from "./dnsbl.js";
import { checkMx } from "./mx.js";
import { checkPtr } from "./ptr.js";
import { checkRelay, parseRelayUrl } from "./relay.js";
import { createDnsResolver, type DnsResolver } from "./resolver.js";
import { checkSpf } from "./spf.js";
import { check, domainOf, type CheckId, type CheckResult, type CheckStatus, type DoctorReport } from "./types.js";

/** Options of {@link runDoctor}; {@link doctorOptionsFromConfig} builds them from the service's config. */
export interface DoctorOptions {
  /** The address our mail is From (MAIL_FROM's address). */
  readonly fromAddress: string;
  /** BOUNCE_DOMAIN; undefined: the envelope sender is at the From domain. */
  readonly bounceDomain?: string | undefined;
  /** DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY (PEM); undefined when we do not sign. */
  readonly dkim?: { readonly domain: string; readonly selector: string; readonly privateKey: string } | undefined;
  /** SMTP_URL; undefined (the development capture sink) skips the relay checks. */
  readonly smtpUrl?: string | undefined;
  /** SMTP_TLS_CA (PEM). */
  readonly tlsCa?: string | undefined;
  /** RELAY_IP; undefined: the SMTP host's address. */
  readonly relayIp?: string | undefined;
  /** DNSBL_ZONES; default none. */
  readonly dnsblZones?: readonly string[] | undefined;
  /** DNS_SERVERS (`ip[:port]`); default: the system's resolvers. Ignored when `resolver` is given. */
  readonly dnsServers?: readonly string[] | undefined;
  /** DOCTOR_TIMEOUT: bound on each lookup and each SMTP step; default 5 s. */
  readonly timeoutMs?: number | undefined;
  /** A resolver to use instead of one built from dnsServers; the caller closes it. */
  readonly resolver?: DnsResolver | undefined;
}

/** Runs every check; never throws for what it finds (a check that crashes reports a warning). */
export async function runDoctor(options: DoctorOptions): Promise<DoctorReport> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const resolver = options.resolver ?? createDnsResolver({ servers: options.dnsServers, timeoutMs });
  try {
    return await diagnose(options, resolver, timeoutMs);
  } finally {
    if (options.resolver === undefined) resolver.close();
  }
}

async function diagnose(options: DoctorOptions, resolver: DnsResolver, timeoutMs: number): Promise<DoctorReport> {
  const fromAddress = options.fromAddress;
  const fromDomain = domainOf(fromAddress);
  const envelopeDomain = options.bounceDomain ?? fromDomain;
  const relay = options.smtpUrl === undefined ? undefined : parseRelayUrl(options.smtpUrl);
  const { relayIp, relayIpSource } = await findRelayIp(options.relayIp, relay?.host, resolver);

  const spfFrom = guard("spf.from", fromDomain, () =>
    checkSpf({ id: "spf.from", domain: fromDomain, relayIp, envelope: envelopeDomain === fromDomain, resolver }),
  );
  const spfBounce =
    envelopeDomain === fromDomain
      ? undefined
      : guard("spf.bounce", envelopeDomain, () => checkSpf({ id: "spf.bounce", domain: envelopeDomain, relayIp, envelope: true, resolver }));
  const dkim = checkDkim({ fromAddress, dkim: options.dkim, resolver }).catch((error: unknown) => ({
    result: crashed("dkim", options.dkim?.domain ?? fromDomain, error),
    verifiedDomain: undefined,
  }));
  const mx = guard("mx.bounce", envelopeDomain, () => checkMx({ domain: envelopeDomain, resolver }));
  const relayChecks =
    options.smtpUrl === undefined
      ? Promise.resolve([
          check(
            "relay.connect",
            "capture sink",
            "warn",
            "SMTP_URL is not set: mail goes to the development capture sink, no relay to check",
            "set SMTP_URL to the relay (smtp://user:pass@host:587)",
          ),
        ])
      : checkRelay({ url: options.smtpUrl, tlsCa: options.tlsCa, timeoutMs }).catch((error: unknown) => [
          crashed("relay.connect", relay?.relay ?? "relay", error),
        ]);
  const ptr = guard("ptr", relayIp ?? "relay IP", () => checkPtr({ relayIp, resolver }));
  const dnsbl = checkDnsbl({ relayIp, zones: options.dnsblZones ?? [], resolver }).catch((error: unknown) => [
    crashed("dnsbl", (options.dnsblZones ?? []).join(","), error),
  ]);

  // DMARC needs to know what really passed.
  const envelopeSpf = await (spfBounce ?? spfFrom);
  const dkimCheck = await dkim;
  const dmarc = await guard("dmarc", `_dmarc.${fromDomain}`, () =>
    checkDmarc({
      fromAddress,
      envelopeDomain,
      // The SPF result, not the check's status: a record that lets every host pass warns, yet passes.
      spfPasses: envelopeSpf.details["result"] === "pass",
      dkimDomain: options.dkim?.domain,
      dkimPasses: dkimCheck.verifiedDomain !== undefined,
      // No SPF verdict (temperror, relay IP unknown or private, a crash) / a DKIM key that could not be looked up.
      spfUnknown: !["pass", "fail", "softfail", "neutral", "none", "permerror"].includes(String(envelopeSpf.details["result"])),
      dkimUnknown: options.dkim !== undefined && dkimCheck.verifiedDomain === undefined && dkimCheck.result.status === "warn",
      resolver,
    }),
  );

  const checks: CheckResult[] = [
    await spfFrom,
    ...(spfBounce === undefined ? [] : [await spfBounce]),
    dkimCheck.result,
    dmarc,
    await mx,
    ...(await relayChecks),
    await ptr,
    ...(await dnsbl),
  ];
  const counts: Record<CheckStatus, number> = { pass: 0, warn: 0, fail: 0 };
  for (const { status } of checks) counts[status]++;
  return {
    domain: fromDomain,
    checkedAt: new Date().toISOString(),
    context: {
      fromAddress,
      envelopeDomain,
      dkimDomain: options.dkim?.domain ?? null,
      relay: relay?.relay ?? null,
      relayIp: relayIp ?? null,
      relayIpSource,
    },
    ok: counts.fail === 0,
    counts,
    checks,
  };
}

async function findRelayIp(
  configured: string | undefined,
  host: string | undefined,
  resolver: DnsResolver,
): Promise<{ relayIp: string | undefined; relayIpSource: string }> {
  // Receivers see an IPv4-mapped address (::ffff:192.0.2.10, as dual-stack sockets print it) as the IPv4 address:
  // SPF's ip4: (not ip6:), in-addr.arpa, the IPv4 blocklists.
  if (configured !== undefined) return { relayIp: /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(configured)?.[1] ?? configured, relayIpSource: "RELAY_IP" };
  if (host === undefined) return { relayIp: undefined, relayIpSource: "unknown: no SMTP_URL and no RELAY_IP" };
  if (isIP(host) !== 0) return { relayIp: host, relayIpSource: "SMTP_URL host" };
  if (host === "localhost") return { relayIp: "127.0.0.1", relayIpSource: "SMTP_URL host" };
  for (const lookup of [(name: string) => resolver.a(name), (name: string) => resolver.aaaa(name)]) {
    try {
      const [address] = await lookup(host);
      if (address !== undefined) return { relayIp: address, relayIpSource: `SMTP_URL host ${host}` };
    } catch {
      // Try the other family; the checks say the IP is unknown if both fail.
    }
  }
  return { relayIp: undefined, relayIpSource: `unknown: ${host} did not resolve and RELAY_IP is not set` };
}

function guard(id: CheckId, subject: string, run: () => Promise<CheckResult>): Promise<CheckResult> {
  return run().catch((error: unknown) => crashed(id, subject, error));
}

function crashed(id: CheckId, subject: string, error: unknown): CheckResult {
  return check(id, subject, "warn", `the check could not run: ${error instanceof Error ? error.message : String(error)}`, "run the doctor again; report a bug if it persists");
}

/**
 * DoctorOptions from the service's config. `domain` (the doctor's argument)
 * replaces the From address's domain, keeping its local part, and the DKIM
 * d= domain when that is the From domain (DKIM_DOMAIN unset defaults to it):
 * the service sending From `domain` would sign as `domain`.
 */
export function doctorOptionsFromConfig(config: Config, domain?: string): DoctorOptions {
  const from = config.mail.fromAddress;
  const fromAddress = domain === undefined ? from : `${from.slice(0, from.lastIndexOf("@"))}@${domain.toLowerCase()}`;
  const dkim =
    config.dkim !== undefined && domain !== undefined && config.dkim.domain.toLowerCase() === domainOf(from)
      ? { ...config.dkim, domain: domain.toLowerCase() }
      : config.dkim;
  return {
    fromAddress,
    bounceDomain: config.bounce.domain,
    dkim,
    smtpUrl: config.smtp.url,
    tlsCa: config.smtp.tlsCa,
    relayIp: config.doctor.relayIp,
    dnsblZones: config.doctor.dnsblZones,
    dnsServers: config.doctor.dnsServers,
    timeoutMs: config.doctor.timeoutMs,
  };
}

export { logDoctorReport } from "./report.js";
