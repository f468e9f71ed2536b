/**
 * What one end user's IP address counts as for the per-IP limit.
 *
 * An IPv4 address is one subject. An IPv6 user usually holds a whole /64
 * (SLAAC, privacy addresses) and can pick a fresh address per request, so
 * the /64 prefix is the subject. IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is
 * the IPv4 address it maps, and so is an address under the NAT64 well-known
 * prefix 64:ff9b::/96 (RFC 6052): a service behind IPv4-to-IPv6 translation
 * (SIIT-DC, NAT46 ingress) sees every IPv4 user as `64:ff9b::<their IPv4>`,
 * and as one /64 they would all share one limit.
 */
import { isIP } from "node:net";

/** The limit subject of a valid IP address (`192.0.2.1`, `2001:db8:0:1::/64`); "" for anything else. */
export function endUserIpSubject(ip: string): string {
  const version = isIP(ip);
  if (version === 4) return ip;
  if (version !== 6) return "";
  const groups = expandIpv6(ip);
  const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
  const nat64 = groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every((g) => g === 0);
  if (mapped || nat64) {
    const [high = 0, low = 0] = groups.slice(6);
    return [high >> 8, high & 0xff, low >> 8, low & 0xff].join(".");
  }
  return `${groups.slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address (zone ids dropped, embedded IPv4 allowed). */
function expandIpv6(ip: string): number[] {
  let text = ip.split("%")[0] ?? "";
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted !== null) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const parse = (part: string): number[] => (part === "" ? [] : part.split(":").map((g) => parseInt(g, 16)));
  const left = parse(head);
  const right = tail === undefined ? [] : parse(tail);
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}
