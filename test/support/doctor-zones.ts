/**
 * Fixture zones for the doctor tests, one domain per story:
 *
 * - good.test: passes everything (SPF with the relay IP, DKIM key matching
 *   ours, DMARC p=reject aligned, bounces.good.test with SPF and MX).
 * - nospf.test: no SPF record (DKIM and DMARC p=none otherwise fine).
 * - badkey.test: the DKIM record holds another key than ours.
 * - misaligned.test: p=reject, but we sign as esp.test and bounce to
 *   esp.test: both pass, neither aligns, so DMARC fails.
 * - listed.test: fine, but its relay IP is listed in the fixture DNSBL.
 * - plusall.test: SPF "+all" (every host passes), otherwise fine.
 * - redirplus.test: SPF redirects to "+all", otherwise fine.
 * - neutral.test: SPF "?all" without the relay IP, otherwise fine.
 *
 * Relay IPs: relayIp reverses to relay.good.test, which resolves back to
 * it; listedRelayIp has no PTR; unconfirmedRelayIp reverses to a name that
 * resolves elsewhere.
 *
 * Keys are generated per run (no private key lives in the repository).
 */
import { generateKeyPairSync } from "node:crypto";
import { expectedRecord } from "../../src/doctor/dkim.js";
import { a, mx, ptr, txt, type FixtureRecord } from "./dns-server.js";

export const relayIp = "192.0.2.10";
export const listedRelayIp = "192.0.2.66";
export const unconfirmedRelayIp = "192.0.2.77";
export const dnsblZone = "dnsbl.test";
/** A working DNSBL that lists none of the fixture relays. */
export const cleanDnsblZone = "clean-bl.test";
export const selector = "s1";

export interface DoctorFixtures {
  /** Our DKIM private key (PEM), the one the service would sign with. */
  readonly privateKey: string;
  readonly records: readonly FixtureRecord[];
}

export function buildDoctorFixtures(): DoctorFixtures {
  const ours = rsaPrivateKeyPem();
  const other = rsaPrivateKeyPem();
  const ourKey = expectedRecord(ours);
  const spf = `v=spf1 ip4:${relayIp} -all`;

  const records: FixtureRecord[] = [
    // The relays' reverse DNS.
    ptr(relayIp, "relay.good.test"),
    a("relay.good.test", relayIp),
    ptr(unconfirmedRelayIp, "static.unconfirmed.test"),
    a("static.unconfirmed.test", "198.51.100.200"),

    // good.test
    txt("good.test", spf),
    txt("good.test", "google-site-verification=unrelated"),
    txt(`${selector}._domainkey.good.test`, ourKey),
    txt("_dmarc.good.test", "v=DMARC1; p=reject; adkim=s; aspf=r; rua=mailto:dmarc@good.test"),
    txt("bounces.good.test", spf),
    mx("bounces.good.test", "mx.good.test"),
    a("mx.good.test", "192.0.2.25"),

    // nospf.test
    txt(`${selector}._domainkey.nospf.test`, ourKey),
    txt("_dmarc.nospf.test", "v=DMARC1; p=none"),
    mx("nospf.test", "mx.nospf.test"),
    a("mx.nospf.test", "192.0.2.26"),

    // badkey.test
    txt("badkey.test", spf),
    txt(`${selector}._domainkey.badkey.test`, expectedRecord(other)),
    txt("_dmarc.badkey.test", "v=DMARC1; p=quarantine"),
    mx("badkey.test", "mx.badkey.test"),
    a("mx.badkey.test", "192.0.2.27"),

    // misaligned.test, sending through esp.test
    txt("misaligned.test", spf),
    txt("_dmarc.misaligned.test", "v=DMARC1; p=reject"),
    txt("esp.test", spf),
    txt(`${selector}._domainkey.esp.test`, ourKey),
    mx("esp.test", "mx.esp.test"),
    a("mx.esp.test", "192.0.2.28"),

    // plusall.test, whose SPF lets every host pass
    txt("plusall.test", "v=spf1 +all"),
    txt(`${selector}._domainkey.plusall.test`, ourKey),
    txt("_dmarc.plusall.test", "v=DMARC1; p=reject"),
    mx("plusall.test", "mx.plusall.test"),
    a("mx.plusall.test", "192.0.2.30"),

    // redirplus.test, whose SPF redirects to a record that lets every host pass
    txt("redirplus.test", "v=spf1 redirect=_spf.redirplus.test"),
    txt("_spf.redirplus.test", "v=spf1 +all"),
    txt(`${selector}._domainkey.redirplus.test`, ourKey),
    txt("_dmarc.redirplus.test", "v=DMARC1; p=reject"),
    mx("redirplus.test", "mx.plusall.test"),

    // neutral.test, whose SPF says nothing about the relay ("?all")
    txt("neutral.test", "v=spf1 ip4:198.51.100.1 ?all"),
    txt(`${selector}._domainkey.neutral.test`, ourKey),
    txt("_dmarc.neutral.test", "v=DMARC1; p=reject"),
    mx("neutral.test", "mx.plusall.test"),

    // baddmarc.test (p= misspelled) and twodmarc.test (two records), otherwise fine
    txt("baddmarc.test", spf),
    txt("_dmarc.baddmarc.test", "v=DMARC1; p=rejekt"),
    txt("twodmarc.test", spf),
    txt("_dmarc.twodmarc.test", "v=DMARC1; p=reject"),
    txt("_dmarc.twodmarc.test", "v=DMARC1; p=none"),

    // incnx.test includes a domain without SPF; void.test names three domains that do not exist
    txt("incnx.test", `v=spf1 include:nonexistent.test ip4:${relayIp} -all`),
    txt("void.test", `v=spf1 a:n1.nonexistent.test a:n2.nonexistent.test a:n3.nonexistent.test ip4:${relayIp} -all`),

    // pctzero.test: p=reject, pct=0 (misaligned in the tests, through esp.test)
    txt("_dmarc.pctzero.test", "v=DMARC1; p=reject; pct=0"),

    // ipmx.test, whose MX names an IP address
    txt("ipmx.test", spf),
    mx("ipmx.test", "192.0.2.25"),

    // mxstall.test, whose MX host is in stall.test (never answered in doctor.test)
    txt("mxstall.test", spf),
    mx("mxstall.test", "mx.stall.test"),

    // listed.test, whose relay is on the fixture blocklist
    txt("listed.test", `v=spf1 ip4:${listedRelayIp} -all`),
    txt(`${selector}._domainkey.listed.test`, ourKey),
    txt("_dmarc.listed.test", "v=DMARC1; p=reject"),
    mx("listed.test", "mx.listed.test"),
    a("mx.listed.test", "192.0.2.29"),
    a(`${listedRelayIp.split(".").reverse().join(".")}.${dnsblZone}`, "127.0.0.2"),
    // Working DNSBLs list their test address 127.0.0.2 (RFC 5782).
    a(`2.0.0.127.${dnsblZone}`, "127.0.0.2"),
    a(`2.0.0.127.${cleanDnsblZone}`, "127.0.0.2"),
    txt(`${listedRelayIp.split(".").reverse().join(".")}.${dnsblZone}`, "listed in the fixture blocklist"),
  ];
  return { privateKey: ours, records };
}

function rsaPrivateKeyPem(): string {
  return generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  }).privateKey;
}
