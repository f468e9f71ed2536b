/**
 * The variables the doctor (and the DKIM signer) read: DKIM_*, BOUNCE_DOMAIN,
 * RELAY_IP, DNSBL_ZONES, DNS_SERVERS, DOCTOR_TIMEOUT.
 */
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";

const spki = { type: "spki", format: "pem" } as const;
const pkcs8 = { type: "pkcs8", format: "pem" } as const;
const rsaPem = generateKeyPairSync("rsa", { modulusLength: 1024, publicKeyEncoding: spki, privateKeyEncoding: pkcs8 }).privateKey;
const ed25519Pem = generateKeyPairSync("ed25519", { publicKeyEncoding: spki, privateKeyEncoding: pkcs8 }).privateKey;
const ecPem = generateKeyPairSync("ec", { namedCurve: "P-256", publicKeyEncoding: spki, privateKeyEncoding: pkcs8 }).privateKey;
const shortRsaPem = generateKeyPairSync("rsa", { modulusLength: 512, publicKeyEncoding: spki, privateKeyEncoding: pkcs8 }).privateKey;
const from = { MAIL_FROM: '"Acme" <no-reply@acme.example>' };

describe("doctor and DKIM configuration", () => {
  it("has defaults: no DKIM, bounces at the From domain, two public DNSBLs, system DNS, 5 s", () => {
    const config = loadConfig(from);
    expect(config.dkim).toBeUndefined();
    expect(config.bounce.domain).toBeUndefined();
    expect(config.doctor).toEqual({
      relayIp: undefined,
      dnsblZones: ["zen.spamhaus.org", "bl.spamcop.net"],
      dnsServers: [],
      timeoutMs: 5000,
    });
  });

  it("reads DKIM with the From domain as the default d=, from PEM text (\\n escapes too) or a file", () => {
    const inline = loadConfig({ ...from, DKIM_SELECTOR: "s2025", DKIM_PRIVATE_KEY: rsaPem.replace(/\n/g, "\\n") });
    expect(inline.dkim).toEqual({ domain: "acme.example", selector: "s2025", privateKey: rsaPem });

    const dir = mkdtempSync(join(tmpdir(), "otp-dkim-"));
    try {
      writeFileSync(join(dir, "dkim.pem"), rsaPem);
      const fromFile = loadConfig({ ...from, DKIM_DOMAIN: "Mail.Acme.Example", DKIM_SELECTOR: "s2026", DKIM_PRIVATE_KEY: join(dir, "dkim.pem") });
      expect(fromFile.dkim).toEqual({ domain: "mail.acme.example", selector: "s2026", privateKey: rsaPem });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each([
    [{ DKIM_SELECTOR: "s1" }, /DKIM_PRIVATE_KEY: required when DKIM_SELECTOR is set/],
    [{ DKIM_PRIVATE_KEY: "x" }, /DKIM_SELECTOR: required when DKIM_PRIVATE_KEY is set/],
    [{ DKIM_DOMAIN: "acme.example" }, /DKIM_DOMAIN: also set DKIM_SELECTOR and DKIM_PRIVATE_KEY/],
    [{ DKIM_SELECTOR: "s1", DKIM_PRIVATE_KEY: "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----" }, /DKIM_PRIVATE_KEY: not a usable PEM private key/],
    [{ DKIM_SELECTOR: "s1", DKIM_PRIVATE_KEY: "/nonexistent/dkim.pem" }, /DKIM_PRIVATE_KEY: cannot read \/nonexistent\/dkim.pem/],
    [{ DKIM_SELECTOR: "bad selector", DKIM_PRIVATE_KEY: rsaPem }, /DKIM_SELECTOR=bad selector: must be DNS labels/],
    [{ BOUNCE_DOMAIN: "not a domain" }, /BOUNCE_DOMAIN=not a domain: must be a domain name/],
    [{ RELAY_IP: "relay.acme.example" }, /RELAY_IP=relay.acme.example: must be an IPv4 or IPv6 address/],
    [{ DNSBL_ZONES: "zen.spamhaus.org,,bad zone" }, /DNSBL_ZONES=bad zone/],
    [{ DNS_SERVERS: "dns.example:53" }, /DNS_SERVERS=dns.example:53: must be IP addresses/],
    [{ DOCTOR_TIMEOUT: "5 minutes" }, /DOCTOR_TIMEOUT=5 minutes: must be a duration/],
  ])("refuses %j, naming the variable", (env, message) => {
    expect(() => loadConfig({ ...from, ...env })).toThrow(message);
  });

  // The service signs rsa-sha256 only (its own signer and nodemailer's): any other key is a configuration error.
  it.each([
    ["an Ed25519 key", ed25519Pem, "not ed25519"],
    ["an EC P-256 key", ecPem, "not ec"],
    ["a 512-bit RSA key", shortRsaPem, "not rsa of 512 bits"],
  ])("refuses %s as a configuration error: RSA only, because signing is rsa-sha256", (_, pem, got) => {
    let error: unknown;
    try {
      loadConfig({ ...from, DKIM_SELECTOR: "s1", DKIM_PRIVATE_KEY: pem });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toBe(
      `DKIM_PRIVATE_KEY: must be an RSA key of at least 1024 bits (2048 recommended: openssl genrsa -out dkim.pem 2048), ${got}; the service signs rsa-sha256 only`,
    );
  });

  it("reads the doctor's overrides", () => {
    const config = loadConfig({
      ...from,
      BOUNCE_DOMAIN: "Bounces.Acme.Example.",
      RELAY_IP: "2001:db8::25",
      DNSBL_ZONES: " zen.spamhaus.org , dnsbl.example ",
      DNS_SERVERS: "127.0.0.1:5353,[::1]:53,9.9.9.9",
      DOCTOR_TIMEOUT: "2s",
    });
    expect(config.bounce.domain).toBe("bounces.acme.example");
    expect(config.doctor).toEqual({
      relayIp: "2001:db8::25",
      dnsblZones: ["zen.spamhaus.org", "dnsbl.example"],
      dnsServers: ["127.0.0.1:5353", "[::1]:53", "9.9.9.9"],
      timeoutMs: 2000,
    });
    expect(loadConfig({ ...from, DNSBL_ZONES: "none" }).doctor.dnsblZones).toEqual([]);
  });
});
