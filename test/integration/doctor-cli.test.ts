/**
 * `npm run doctor` as users run it: the compiled CLI (dist/, built by the
 * test global setup) in its own process, configured only by environment
 * variables, against the fixture DNS server and an SMTP relay on loopback.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DoctorReport } from "../../src/doctor/types.js";
import { startDnsServer, type DnsFixtureServer } from "../support/dns-server.js";
import { buildDoctorFixtures, dnsblZone, relayIp, selector, type DoctorFixtures } from "../support/doctor-zones.js";
import { startRelayServer, type RelayServer } from "../support/relay-server.js";
import { makeSelfSigned, type SelfSigned } from "../support/self-signed.js";

const root = fileURLToPath(new URL("../..", import.meta.url));

let dns: DnsFixtureServer;
let fixtures: DoctorFixtures;
let relay: RelayServer;
let pki: SelfSigned;

beforeAll(async () => {
  fixtures = buildDoctorFixtures();
  pki = makeSelfSigned();
  dns = await startDnsServer(fixtures.records);
  relay = await startRelayServer({ tls: pki, auth: true, dsn: true });
});

afterAll(async () => {
  await relay.close();
  await dns.close();
});

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the doctor with only these variables (and PATH); async, so the servers in this process can answer. */
function doctor(args: readonly string[], env: Record<string, string>): Promise<Run> {
  return new Promise<Run>((resolve, reject) => {
    const child = spawn(process.execPath, ["dist/src/doctor/cli.js", ...args], {
      cwd: root,
      env: { PATH: process.env["PATH"] ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** The environment of a service sending as no-reply@<domain>, signing as <dkimDomain>. */
function envFor(domain: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    MAIL_FROM: `"Acme" <no-reply@${domain}>`,
    SMTP_URL: `smtp://svc:secret@127.0.0.1:${relay.port}`,
    SMTP_TLS_CA: pki.cert,
    DKIM_SELECTOR: selector,
    DKIM_PRIVATE_KEY: fixtures.privateKey,
    RELAY_IP: relayIp,
    DNSBL_ZONES: dnsblZone,
    DNS_SERVERS: dns.servers.join(","),
    DOCTOR_TIMEOUT: "2s",
    ...extra,
  };
}

describe("npm run doctor", () => {
  it("exits 0 for a domain that passes everything, and --json prints the whole report", async () => {
    const run = await doctor(["good.test", "--json"], envFor("good.test", { BOUNCE_DOMAIN: "bounces.good.test" }));
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const report = JSON.parse(run.stdout) as DoctorReport;
    expect(report).toMatchObject({
      domain: "good.test",
      ok: true,
      counts: { pass: 11, warn: 0, fail: 0 },
      context: { fromAddress: "no-reply@good.test", envelopeDomain: "bounces.good.test", dkimDomain: "good.test", relayIp },
    });
    expect(Number.isNaN(Date.parse(report.checkedAt))).toBe(false);
    for (const result of report.checks) {
      expect(Object.keys(result).sort()).toEqual(["details", "fix", "id", "status", "subject", "summary"]);
      expect(result.status).toBe("pass");
    }
  });

  it("exits 1 when a check fails, and the text report names the failure and its fix", async () => {
    const run = await doctor(
      ["misaligned.test"],
      envFor("misaligned.test", { DKIM_DOMAIN: "esp.test", BOUNCE_DOMAIN: "esp.test" }),
    );
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^FAIL {2}dmarc +_dmarc\.misaligned\.test: DMARC p=reject fails: /m);
    expect(run.stdout).toMatch(/^ +fix: sign with DKIM_DOMAIN=misaligned\.test and publish its key/m);
    expect(run.stdout).toMatch(/^PASS {2}dkim +s1\._domainkey\.esp\.test: /m);
    expect(run.stdout).toContain("NOT OK: 1 fail");
  });

  it("checks MAIL_FROM's domain when no domain is given, and --json reports failures too", async () => {
    const run = await doctor(["--json"], envFor("nospf.test"));
    expect(run.code).toBe(1);
    const report = JSON.parse(run.stdout) as DoctorReport;
    expect(report.ok).toBe(false);
    expect(report.checks.find((result) => result.id === "spf.from")).toMatchObject({ status: "fail", subject: "nospf.test" });
  });

  it("with a domain argument, checks the DKIM key the service would sign with for that From domain", async () => {
    // MAIL_FROM at good.test, DKIM_DOMAIN unset (it defaults to the From domain): asked about badkey.test,
    // the service would sign as badkey.test, whose published key is not ours.
    const run = await doctor(["badkey.test", "--json"], envFor("good.test"));
    const report = JSON.parse(run.stdout) as DoctorReport;
    expect(report.context).toMatchObject({ fromAddress: "no-reply@badkey.test", dkimDomain: "badkey.test" });
    expect(report.checks.find((result) => result.id === "dkim")).toMatchObject({ status: "fail", subject: `${selector}._domainkey.badkey.test` });

    // An explicit DKIM_DOMAIN elsewhere stays.
    const esp = await doctor(["misaligned.test", "--json"], envFor("good.test", { DKIM_DOMAIN: "esp.test" }));
    expect((JSON.parse(esp.stdout) as DoctorReport).context.dkimDomain).toBe("esp.test");
  });

  it("takes an internationalized domain as typed and checks its punycode form", async () => {
    const run = await doctor(["gööd.test", "--json"], envFor("good.test"));
    const report = JSON.parse(run.stdout) as DoctorReport;
    expect(report.context).toMatchObject({ fromAddress: "no-reply@xn--gd-fkaa.test", dkimDomain: "xn--gd-fkaa.test" });
    expect(report.checks.find((result) => result.id === "spf.from")?.subject).toBe("xn--gd-fkaa.test");

    const invalid = await doctor(["gö..d.test"], envFor("good.test"));
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toContain("expected one domain name, got gö..d.test");
  });

  it("--help exits 0 and names every kind of check the report holds, the relay's reverse DNS (PTR) too", async () => {
    const help = await doctor(["--help"], envFor("good.test"));
    expect(help.code).toBe(0);
    const text = help.stdout.replace(/\s+/g, " ");
    for (const check of ["SPF", "DKIM", "DMARC", "MX", "relay", "reverse DNS (PTR)", "DNSBL"]) expect(text).toContain(check);
  });

  it("exits 2 on a usage error and 78 on a configuration error naming the variable", async () => {
    const usage = await doctor(["good.test", "--jsn"], envFor("good.test"));
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("unknown option --jsn");

    const config = await doctor(["good.test"], envFor("good.test", { RELAY_IP: "not-an-ip" }));
    expect(config.code).toBe(78);
    expect(config.stderr).toContain("RELAY_IP=not-an-ip");
    expect(config.stdout).toBe("");
  });
});
