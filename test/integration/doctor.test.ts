/**
 * The doctor's DNS checks against a real DNS server on loopback serving
 * fixture zones (test/support/doctor-zones.ts), one domain per story.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { logDoctorReport, runDoctor, type DoctorOptions } from "../../src/doctor/doctor.js";
import { reverseIp } from "../../src/doctor/dnsbl.js";
import { createDnsResolver, txtRecords, type DnsResolver } from "../../src/doctor/resolver.js";
import { isPrivateIp } from "../../src/doctor/spf.js";
import { createLogger } from "../../src/logger.js";
import type { CheckId, CheckResult, DoctorReport } from "../../src/doctor/types.js";
import { startDnsServer, type DnsFixtureServer } from "../support/dns-server.js";
import { buildDoctorFixtures, cleanDnsblZone, dnsblZone, listedRelayIp, relayIp, selector, unconfirmedRelayIp, type DoctorFixtures } from "../support/doctor-zones.js";
import { startRelayServer, type RelayServer } from "../support/relay-server.js";
import { makeSelfSigned, type SelfSigned } from "../support/self-signed.js";

let dns: DnsFixtureServer;
let fixtures: DoctorFixtures;
let resolver: DnsResolver;

beforeAll(async () => {
  fixtures = buildDoctorFixtures();
  dns = await startDnsServer(fixtures.records, { stall: ["stall.test", "stallspf.good.test", "stalled._domainkey.good.test"] });
  resolver = createDnsResolver({ servers: dns.servers, timeoutMs: 2000 });
});

afterAll(async () => {
  resolver.close();
  await dns.close();
});

/** Options for a From address at `domain`, signing as `domain`, with the fixture relay IP. */
function optionsFor(domain: string, overrides: Partial<DoctorOptions> = {}): DoctorOptions {
  return {
    fromAddress: `no-reply@${domain}`,
    dkim: { domain, selector, privateKey: fixtures.privateKey },
    relayIp,
    dnsblZones: [dnsblZone],
    resolver,
    timeoutMs: 2000,
    ...overrides,
  };
}

function only(report: DoctorReport, id: CheckId): CheckResult {
  const found = report.checks.filter((result) => result.id === id);
  expect(found, `exactly one ${id} check`).toHaveLength(1);
  return found[0];
}

describe("the fixture DNS server", () => {
  it("serves a 2048-bit DKIM key as several strings of at most 255 bytes, which the doctor joins", async () => {
    const [record] = await resolver.txt(`${selector}._domainkey.good.test`);
    expect(record?.length).toBeGreaterThan(1);
    for (const chunk of record ?? []) expect(Buffer.byteLength(chunk)).toBeLessThanOrEqual(255);
    const joined = await txtRecords(resolver, `${selector}._domainkey.good.test`);
    expect(joined).toEqual([record?.join("")]);
    expect(joined[0]).toMatch(/^v=DKIM1; k=rsa; p=MII[A-Za-z0-9+/=]{300,}$/);
  });
});

describe("a domain that passes everything", () => {
  let pki: SelfSigned;
  let relay: RelayServer;
  beforeAll(async () => {
    pki = makeSelfSigned();
    relay = await startRelayServer({ tls: pki, auth: true, dsn: true });
  });
  afterAll(async () => {
    await relay.close();
  });

  it("passes every check, and the report says which identities it checked", async () => {
    const report = await runDoctor(
      optionsFor("good.test", {
        bounceDomain: "bounces.good.test",
        smtpUrl: `smtp://svc:secret@127.0.0.1:${relay.port}`,
        tlsCa: pki.cert,
      }),
    );
    const notPassing = report.checks.filter((result) => result.status !== "pass");
    expect(notPassing).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.checks.map((result) => result.id)).toEqual([
      "spf.from",
      "spf.bounce",
      "dkim",
      "dmarc",
      "mx.bounce",
      "relay.connect",
      "relay.starttls",
      "relay.auth",
      "relay.dsn",
      "ptr",
      "dnsbl",
    ]);
    expect(report.context).toEqual({
      fromAddress: "no-reply@good.test",
      envelopeDomain: "bounces.good.test",
      dkimDomain: "good.test",
      relay: `127.0.0.1:${relay.port}`,
      relayIp,
      relayIpSource: "RELAY_IP",
    });
    expect(only(report, "dmarc").summary).toMatch(/p=reject passes through SPF \(bounces\.good\.test\) and DKIM \(d=good\.test\)/);
    expect(only(report, "mx.bounce").summary).toContain("mx.good.test (10)");
    expect(report.checks.every((result) => result.fix === "")).toBe(true);
  });

  it("without DKIM, warns that mail is unsigned while DMARC still passes through aligned SPF", async () => {
    const report = await runDoctor(optionsFor("good.test", { bounceDomain: "bounces.good.test", dkim: undefined }));
    expect(only(report, "dkim")).toMatchObject({ status: "warn", fix: expect.stringContaining("DKIM_SELECTOR") as unknown });
    expect(only(report, "dmarc")).toMatchObject({ status: "pass", summary: expect.stringContaining("through SPF (bounces.good.test)") as unknown });
  });
});

describe("the relay's reverse DNS (Gmail's 2024 sender rules)", () => {
  it("passes when the relay IP reverses to a name that resolves back to it", async () => {
    const report = await runDoctor(optionsFor("good.test", { bounceDomain: "bounces.good.test" }));
    expect(only(report, "ptr")).toMatchObject({ status: "pass", subject: relayIp, summary: `relay ${relayIp} reverses to relay.good.test, which resolves back to it` });
  });

  it("fails without a PTR record, saying Gmail refuses such mail and who can set one", async () => {
    const report = await runDoctor(optionsFor("listed.test", { relayIp: listedRelayIp }));
    expect(report.ok).toBe(false);
    expect(only(report, "ptr")).toMatchObject({
      status: "fail",
      summary: expect.stringContaining("has no reverse DNS (PTR): Gmail refuses such mail (550 5.7.25)") as unknown,
      fix: expect.stringContaining(`set its PTR record to a host name whose A record is ${listedRelayIp}`) as unknown,
    });
  });

  it("fails when the PTR name does not resolve back to the relay IP (not forward-confirmed)", async () => {
    const report = await runDoctor(optionsFor("good.test", { relayIp: unconfirmedRelayIp, bounceDomain: "bounces.good.test" }));
    expect(only(report, "ptr")).toMatchObject({
      status: "fail",
      summary: expect.stringContaining("reverses to static.unconfirmed.test, which does not resolve back to it") as unknown,
      details: expect.objectContaining({ forward: { "static.unconfirmed.test": ["198.51.100.200"] } }) as unknown,
    });
  });

  it("looks up an IPv4-mapped IPv6 relay IP (::ffff:a.b.c.d) under in-addr.arpa, as the IPv4 address it is", async () => {
    const report = await runDoctor(optionsFor("good.test", { relayIp: `::ffff:${relayIp}`, bounceDomain: "bounces.good.test" }));
    expect(only(report, "ptr")).toMatchObject({ status: "pass", summary: expect.stringContaining("reverses to relay.good.test") as unknown });
  });

  it("does not look up a private relay IP", async () => {
    const report = await runDoctor(optionsFor("good.test", { relayIp: "10.1.2.3", bounceDomain: "bounces.good.test" }));
    expect(only(report, "ptr")).toMatchObject({ status: "warn", fix: "set RELAY_IP to the relay's public egress IP" });
    expect(dns.queries.some((query) => query.includes("in-addr.arpa") && query.includes("3.2.1.10"))).toBe(false);
  });
});

describe("start-up checks", () => {
  it("log every check that did not pass as a warning with its fix, then one summary line", async () => {
    const report = await runDoctor(optionsFor("good.test", { bounceDomain: "bounces.good.test", dkim: undefined }));
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger({ level: "info", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
    logDoctorReport(report, logger);
    expect(lines.map((line) => [line["level"], line["check"]])).toEqual([
      ["warn", "dkim"],
      ["warn", "relay.connect"],
      ["info", undefined],
    ]);
    expect(lines[0]).toMatchObject({ component: "doctor", status: "warn", fix: expect.stringContaining("DKIM_SELECTOR") as unknown });
    expect(lines[2]).toMatchObject({ domain: "good.test", pass: report.counts.pass, warn: 2, fail: 0 });
  });
});

describe("a domain with no SPF record", () => {
  it("fails SPF for the envelope domain, with the record to publish", async () => {
    const report = await runDoctor(optionsFor("nospf.test"));
    expect(report.ok).toBe(false);
    expect(report.checks.some((result) => result.id === "spf.bounce")).toBe(false);
    expect(only(report, "spf.from")).toMatchObject({
      status: "fail",
      summary: expect.stringContaining("no SPF record at nospf.test") as unknown,
      fix: `publish TXT at nospf.test: "v=spf1 ip4:${relayIp} -all" (keep the senders you already use)`,
    });
    // DKIM alone carries DMARC.
    expect(only(report, "dkim").status).toBe("pass");
    expect(only(report, "dmarc")).toMatchObject({ status: "pass", summary: expect.stringContaining("p=none") as unknown });
  });

  it("only warns about the From domain's SPF when the envelope sender is elsewhere", async () => {
    const report = await runDoctor(optionsFor("nospf.test", { bounceDomain: "bounces.good.test" }));
    expect(only(report, "spf.from").status).toBe("warn");
    expect(only(report, "spf.bounce").status).toBe("pass");
  });

  it("warns about an SPF record ending in +all, which every forger passes too", async () => {
    const report = await runDoctor(optionsFor("plusall.test"));
    expect(only(report, "spf.from")).toMatchObject({
      status: "warn",
      summary: expect.stringContaining('the SPF record of plusall.test ends in "+all": every host passes it') as unknown,
      fix: `end the SPF record of plusall.test with "-all" instead, keeping ip4:${relayIp} and the senders you use`,
    });
  });

  it("warns when every host passes through a redirect to +all, and DMARC still counts SPF as passing", async () => {
    const report = await runDoctor(optionsFor("redirplus.test", { dkim: undefined }));
    expect(only(report, "spf.from")).toMatchObject({
      status: "warn",
      summary: expect.stringContaining("the SPF record of redirplus.test lets every host pass") as unknown,
    });
    expect(only(report, "dmarc")).toMatchObject({ status: "pass", summary: expect.stringContaining("passes through SPF (redirplus.test)") as unknown });
  });

  it("fails a neutral (?all) SPF result for the envelope domain, as it fails none (RFC 7208 8.2)", async () => {
    const report = await runDoctor(optionsFor("neutral.test"));
    expect(only(report, "spf.from")).toMatchObject({
      status: "fail",
      summary: expect.stringContaining("SPF neutral") as unknown,
      fix: `add ip4:${relayIp} to the SPF record of neutral.test, before its "all" term`,
    });
    const elsewhere = await runDoctor(optionsFor("neutral.test", { bounceDomain: "bounces.good.test" }));
    expect(only(elsewhere, "spf.from").status).toBe("warn");
  });

  it("takes an IPv4-mapped RELAY_IP (::ffff:a.b.c.d) as the IPv4 address receivers see: the record to publish says ip4:", async () => {
    const report = await runDoctor(optionsFor("nospf.test", { relayIp: `::ffff:${relayIp}` }));
    expect(report.context.relayIp).toBe(relayIp);
    expect(only(report, "spf.from").fix).toBe(`publish TXT at nospf.test: "v=spf1 ip4:${relayIp} -all" (keep the senders you already use)`);
  });

  it("names the broken term of a permerror: an include without SPF, too many void lookups", async () => {
    const include = only(await runDoctor(optionsFor("good.test", { bounceDomain: "incnx.test" })), "spf.bounce");
    expect(include).toMatchObject({ status: "fail", fix: "the SPF record of incnx.test includes or redirects to nonexistent.test, which publishes no SPF record: fix that name or remove the term" });
    const voids = only(await runDoctor(optionsFor("good.test", { bounceDomain: "void.test" })), "spf.bounce");
    expect(voids.status).toBe("fail");
    expect(voids.fix).toContain("that name domains without records: receivers allow at most 2 such lookups");
  });

  it("fails SPF when the relay IP is not in the record", async () => {
    const report = await runDoctor(optionsFor("good.test", { relayIp: "198.51.100.7", bounceDomain: "bounces.good.test" }));
    expect(only(report, "spf.bounce")).toMatchObject({
      status: "fail",
      summary: expect.stringContaining("SPF fail") as unknown,
      fix: 'add ip4:198.51.100.7 to the SPF record of bounces.good.test, before its "all" term',
    });
  });
});

describe("a domain whose DKIM key does not match ours", () => {
  it("fails DKIM with the record to publish; DMARC passes through SPF", async () => {
    const report = await runDoctor(optionsFor("badkey.test"));
    const dkim = only(report, "dkim");
    expect(dkim).toMatchObject({ status: "fail", subject: `${selector}._domainkey.badkey.test` });
    expect(dkim.summary).toContain("does not match DKIM_PRIVATE_KEY");
    const ourRecord = (await txtRecords(resolver, `${selector}._domainkey.good.test`))[0] ?? "";
    expect(dkim.fix).toContain(ourRecord);
    expect(only(report, "dmarc").status).toBe("pass");
    expect(report.ok).toBe(false);
  });

  it("fails DKIM when no key is published at the selector", async () => {
    const report = await runDoctor(optionsFor("good.test", { dkim: { domain: "good.test", selector: "missing", privateKey: fixtures.privateKey } }));
    expect(only(report, "dkim")).toMatchObject({ status: "fail", summary: "no DKIM key is published at missing._domainkey.good.test" });
  });
});

describe("a domain with p=reject and misaligned domains", () => {
  it("fails DMARC although SPF and DKIM pass, and says what to align", async () => {
    const report = await runDoctor(
      optionsFor("misaligned.test", {
        bounceDomain: "esp.test",
        dkim: { domain: "esp.test", selector, privateKey: fixtures.privateKey },
      }),
    );
    expect(only(report, "spf.bounce").status).toBe("pass");
    expect(only(report, "dkim").status).toBe("pass");
    const dmarc = only(report, "dmarc");
    expect(dmarc.status).toBe("fail");
    expect(dmarc.summary).toContain("p=reject fails");
    expect(dmarc.summary).toContain("envelope domain esp.test does not align with misaligned.test");
    expect(dmarc.summary).toContain("DKIM d=esp.test does not align with misaligned.test");
    expect(dmarc.summary).toContain("550 5.7.26");
    expect(dmarc.fix).toContain("DKIM_DOMAIN=misaligned.test");
    expect(dmarc.fix).toContain("BOUNCE_DOMAIN");
    expect(report.ok).toBe(false);
  });

  it("says what pct= does to the consequence: p=reject with pct=0 junks rather than rejects", async () => {
    const report = await runDoctor(
      optionsFor("pctzero.test", { bounceDomain: "esp.test", dkim: { domain: "esp.test", selector, privateKey: fixtures.privateKey } }),
    );
    const dmarc = only(report, "dmarc");
    expect(dmarc.status).toBe("fail");
    expect(dmarc.summary).toContain("receivers will junk our mail (pct=0: one step below reject)");
    expect(dmarc.summary).not.toContain("will reject");
  });

  it("says that a DMARC record is invalid, or one of several, rather than that there is none", async () => {
    const bad = only(await runDoctor(optionsFor("baddmarc.test", { dkim: undefined })), "dmarc");
    expect(bad).toMatchObject({ status: "warn", summary: expect.stringContaining("the DMARC record at _dmarc.baddmarc.test is not valid") as unknown });
    expect(bad.fix).toContain("p= is none, quarantine or reject");
    const two = only(await runDoctor(optionsFor("twodmarc.test", { dkim: undefined })), "dmarc");
    expect(two).toMatchObject({ status: "warn", summary: expect.stringContaining("2 DMARC records at _dmarc.twodmarc.test") as unknown });
  });

  it("warns when the From domain publishes no DMARC record", async () => {
    const report = await runDoctor(optionsFor("esp.test"));
    expect(only(report, "dmarc")).toMatchObject({ status: "warn", subject: "_dmarc.esp.test" });
    expect(only(report, "dmarc").fix).toContain("v=DMARC1; p=none");
  });
});

describe("a relay IP listed in a DNSBL", () => {
  it("fails the listing zone with the listing code and reason, and passes a zone that does not list it", async () => {
    const report = await runDoctor(optionsFor("listed.test", { relayIp: listedRelayIp, dnsblZones: [dnsblZone, cleanDnsblZone] }));
    const [listed, clean] = report.checks.filter((result) => result.id === "dnsbl");
    expect(listed).toMatchObject({ status: "fail", subject: dnsblZone });
    expect(listed?.summary).toBe(`relay ${listedRelayIp} is listed in ${dnsblZone} (127.0.0.2): listed in the fixture blocklist`);
    expect(clean).toMatchObject({ status: "pass", subject: "clean-bl.test" });
    expect(only(report, "spf.from").status).toBe("pass");
    expect(report.ok).toBe(false);
    expect(dns.queries).toContain(`A 66.2.0.192.${dnsblZone}`);
  });

  it("warns, rather than passes, a zone that does not list the RFC 5782 test address (mistyped or retired)", async () => {
    const report = await runDoctor(optionsFor("good.test", { bounceDomain: "bounces.good.test", dnsblZones: [cleanDnsblZone, "zen.spamhas.test"] }));
    const [clean, typo] = report.checks.filter((result) => result.id === "dnsbl");
    expect(clean).toMatchObject({ status: "pass", subject: cleanDnsblZone });
    expect(typo).toMatchObject({ status: "warn", subject: "zen.spamhas.test", summary: expect.stringContaining("not a working DNSBL") as unknown });
    expect(dns.queries).toContain("A 2.0.0.127.zen.spamhas.test");
  });

  it("does not look up a private relay IP, and says to set RELAY_IP", async () => {
    const report = await runDoctor(optionsFor("good.test", { relayIp: "10.0.0.5" }));
    for (const id of ["spf.from", "dnsbl"] as const) {
      expect(only(report, id)).toMatchObject({ status: "warn", fix: "set RELAY_IP to the relay's public egress IP" });
    }
  });
});

describe("the bounce domain's MX", () => {
  it("fails when the bounce domain has no MX, or does not exist", async () => {
    const noMx = await runDoctor(optionsFor("good.test"));
    expect(only(noMx, "mx.bounce")).toMatchObject({ status: "fail", summary: expect.stringContaining("no MX at good.test") as unknown });
    const nowhere = await runDoctor(optionsFor("good.test", { bounceDomain: "nowhere.test" }));
    expect(only(nowhere, "mx.bounce").summary).toContain("nowhere.test does not exist in DNS");
  });
});

describe("DNS that never answers", () => {
  it("bounds every lookup: the doctor finishes with warnings, not failures and not a hang", async () => {
    const slow = createDnsResolver({ servers: dns.servers, timeoutMs: 300 });
    try {
      const report = await runDoctor(optionsFor("stall.test", { resolver: slow, dnsblZones: [] }));
      for (const id of ["spf.from", "dkim", "dmarc", "mx.bounce"] as const) {
        expect(only(report, id), id).toMatchObject({ status: "warn" });
      }
      expect(only(report, "mx.bounce").summary).toMatch(/no answer within 300 ms|timed out/);
    } finally {
      slow.close();
    }
  });
});

describe("an MX that names an IP address", () => {
  it("fails, saying an MX must name a host, not to publish A records for an address", async () => {
    const report = await runDoctor(optionsFor("good.test", { bounceDomain: "ipmx.test" }));
    const result = only(report, "mx.bounce");
    expect(result).toMatchObject({ status: "fail", summary: expect.stringContaining("names an IP address (192.0.2.25) instead of a host name") as unknown });
    expect(result.fix).not.toContain("publish A/AAAA records for 192.0.2.25");
  });
});

describe("an MX host whose address lookup times out", () => {
  it("warns that it could not be looked up, not that it has no address", async () => {
    const slow = createDnsResolver({ servers: dns.servers, timeoutMs: 300 });
    try {
      const report = await runDoctor(optionsFor("good.test", { resolver: slow, dnsblZones: [], bounceDomain: "mxstall.test" }));
      expect(only(report, "mx.bounce")).toMatchObject({
        status: "warn",
        summary: expect.stringContaining("mx.stall.test (A mx.stall.test: no answer within 300 ms) could not be looked up") as unknown,
      });
    } finally {
      slow.close();
    }
  });
});

describe("DMARC when SPF or DKIM could not be checked", () => {
  it("warns instead of failing: an aligned SPF or DKIM that timed out is no verdict", async () => {
    const slow = createDnsResolver({ servers: dns.servers, timeoutMs: 300 });
    try {
      const report = await runDoctor(
        optionsFor("good.test", {
          resolver: slow,
          dnsblZones: [],
          bounceDomain: "stallspf.good.test",
          dkim: { domain: "good.test", selector: "stalled", privateKey: fixtures.privateKey },
        }),
      );
      expect(only(report, "spf.bounce").status).toBe("warn");
      expect(only(report, "dkim").status).toBe("warn");
      expect(only(report, "dmarc")).toMatchObject({ status: "warn", summary: expect.stringContaining("could not be evaluated") as unknown });
    } finally {
      slow.close();
    }
  });

  it("still fails when what could not be checked would not align anyway", async () => {
    const slow = createDnsResolver({ servers: dns.servers, timeoutMs: 300 });
    try {
      const report = await runDoctor(
        optionsFor("misaligned.test", { resolver: slow, dnsblZones: [], bounceDomain: "esp.test", dkim: { domain: "stall.test", selector, privateKey: fixtures.privateKey } }),
      );
      expect(only(report, "dkim").status).toBe("warn");
      expect(only(report, "dmarc").status).toBe("fail");
    } finally {
      slow.close();
    }
  });
});

describe("address helpers", () => {
  it("reverses IPv4 and IPv6 addresses for DNSBL queries", () => {
    expect(reverseIp("192.0.2.66")).toBe("66.2.0.192");
    expect(reverseIp("2001:db8::1")).toBe(
      "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2",
    );
    expect(reverseIp("::ffff:192.0.2.66")).toBe("66.2.0.192");
  });

  it("knows private addresses", () => {
    for (const ip of ["10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1", "fd00::1", "::1", "::ffff:10.0.0.1"]) {
      expect(isPrivateIp(ip), ip).toBe(true);
    }
    for (const ip of ["192.0.2.10", "8.8.8.8", "172.32.0.1", "2001:db8::1"]) expect(isPrivateIp(ip), ip).toBe(false);
  });
});
