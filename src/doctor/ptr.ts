/**
 * Reverse DNS: does the relay's IP have a PTR record naming a host that
 * resolves back to it (forward-confirmed reverse DNS)? Gmail requires it of
 * every sender since 2024 (`550 5.7.25 The IP address sending this message
 * does not have a PTR record setup`), and others junk mail without it.
 */
import { isIP } from "node:net";
import { reverseIp } from "./dnsbl.js";
import { isNoRecord, type DnsResolver } from "./resolver.js";
import { isPrivateIp } from "./spf.js";
import { check, type CheckResult } from "./types.js";

/** Options of {@link checkPtr}. */
export interface PtrCheckOptions {
  readonly relayIp: string | undefined;
  readonly resolver: DnsResolver;
}

/** PTR names looked at; a sane IP has one. */
const maxNames = 5;

export async function checkPtr(options: PtrCheckOptions): Promise<CheckResult> {
  const { relayIp, resolver } = options;
  if (relayIp === undefined) {
    return check("ptr", "relay IP", "warn", "the relay's IP is unknown, so its reverse DNS was not checked", "set RELAY_IP to the relay's public egress IP");
  }
  if (isPrivateIp(relayIp)) {
    return check(
      "ptr",
      relayIp,
      "warn",
      `the relay's IP ${relayIp} is private, so its reverse DNS was not checked`,
      "set RELAY_IP to the relay's public egress IP",
      { relayIp },
    );
  }
  // An IPv4-mapped IPv6 address (`::ffff:192.0.2.10`, as dual-stack sockets print it) is the IPv4 address:
  // its reverse DNS lives under in-addr.arpa and its forward record is an A record.
  const ip = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(relayIp)?.[1] ?? relayIp;
  const family = isIP(ip) === 6 ? "ip6" : "in-addr";
  const query = `${reverseIp(ip)}.${family}.arpa`;
  const setPtr =
    `ask whoever runs ${relayIp} (the hosting provider or the ESP) to set its PTR record to a host name ` +
    `whose ${family === "ip6" ? "AAAA" : "A"} record is ${relayIp}`;

  let names: string[];
  try {
    names = ((await resolver.resolve(query, "PTR")) as string[]).slice(0, maxNames);
  } catch (error) {
    if (!isNoRecord(error)) {
      return check("ptr", relayIp, "warn", `reverse DNS of ${relayIp} could not be looked up: ${(error as Error).message}`, "check that DNS answers and run the doctor again", { relayIp, query });
    }
    names = [];
  }
  if (names.length === 0) {
    return check(
      "ptr",
      relayIp,
      "fail",
      `relay ${relayIp} has no reverse DNS (PTR): Gmail refuses such mail (550 5.7.25), others junk it`,
      setPtr,
      { relayIp, query, names },
    );
  }

  const forward = family === "ip6" ? (name: string) => resolver.aaaa(name) : (name: string) => resolver.a(name);
  const lookups = await Promise.all(
    names.map(async (name) => {
      try {
        return { name, addresses: await forward(name) };
      } catch (error) {
        return { name, addresses: [] as string[], error: isNoRecord(error) ? undefined : (error as Error).message };
      }
    }),
  );
  const details = { relayIp, query, names, forward: Object.fromEntries(lookups.map((lookup) => [lookup.name, lookup.addresses])) };
  const confirmed = lookups.find((lookup) => lookup.addresses.some((address) => sameIp(address, ip)));
  if (confirmed !== undefined) {
    return check("ptr", relayIp, "pass", `relay ${relayIp} reverses to ${confirmed.name}, which resolves back to it`, "", details);
  }
  const failed = lookups.find((lookup) => lookup.error !== undefined);
  if (failed !== undefined) {
    return check("ptr", relayIp, "warn", `${failed.name} (the PTR of ${relayIp}) could not be looked up: ${failed.error ?? ""}`, "check that DNS answers and run the doctor again", details);
  }
  return check(
    "ptr",
    relayIp,
    "fail",
    `relay ${relayIp} reverses to ${names.join(", ")}, which does not resolve back to it: Gmail wants forward-confirmed reverse DNS (550 5.7.25)`,
    `${setPtr}, or add ${relayIp} to the ${family === "ip6" ? "AAAA" : "A"} records of ${names[0] ?? ""}`,
    details,
  );
}

function sameIp(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase() || (isIP(a) === 6 && isIP(b) === 6 && reverseIp(a) === reverseIp(b));
}
