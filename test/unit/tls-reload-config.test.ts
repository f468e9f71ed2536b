import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";
import { makeSelfSigned } from "../support/self-signed.js";

const dir = mkdtempSync(join(tmpdir(), "otp-tls-reload-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const server = makeSelfSigned();
const other = makeSelfSigned();
const file = (name: string, content: string): string => {
  writeFileSync(join(dir, name), content);
  return join(dir, name);
};
const certFile = file("cert.pem", server.cert);
const keyFile = file("key.pem", server.key);
const otherKeyFile = file("other-key.pem", other.key);
const caFile = file("ca.pem", other.cert);

function refusal(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    for (const line of [server.key, other.key].flatMap((key) => key.split("\n")).filter((l) => l.length > 20 && !l.startsWith("-----"))) {
      expect(message).not.toContain(line);
    }
    return message;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(Object.keys(env))}`);
}

describe("TLS_RELOAD_INTERVAL", () => {
  it("is 1 minute by default, takes a duration from 1s to 1d, and off", () => {
    expect(loadConfig({}).tlsReloadIntervalMs).toBe(60_000);
    expect(loadConfig({ TLS_RELOAD_INTERVAL: "10s" }).tlsReloadIntervalMs).toBe(10_000);
    expect(loadConfig({ TLS_RELOAD_INTERVAL: "off" }).tlsReloadIntervalMs).toBeUndefined();
    expect(loadConfig({ TLS_RELOAD_INTERVAL: "OFF" }).tlsReloadIntervalMs).toBeUndefined();
    expect(refusal({ TLS_RELOAD_INTERVAL: "500ms" })).toMatch(/^TLS_RELOAD_INTERVAL=500ms: must be a duration such as .* from 1s to 1d, or off$/);
    expect(refusal({ TLS_RELOAD_INTERVAL: "soon" })).toMatch(/^TLS_RELOAD_INTERVAL=soon: must be a duration/);
  });
});

describe("TEMPLATES_RELOAD_INTERVAL", () => {
  it("is 1 minute by default, takes a duration from 1s to 1d, and off; apart from TLS_RELOAD_INTERVAL", () => {
    expect(loadConfig({}).mail.templatesReloadIntervalMs).toBe(60_000);
    expect(loadConfig({ TEMPLATES_RELOAD_INTERVAL: "30s", TLS_RELOAD_INTERVAL: "off" }).mail.templatesReloadIntervalMs).toBe(30_000);
    expect(loadConfig({ TEMPLATES_RELOAD_INTERVAL: "off", TLS_RELOAD_INTERVAL: "10s" }).mail.templatesReloadIntervalMs).toBeUndefined();
    expect(refusal({ TEMPLATES_RELOAD_INTERVAL: "500ms" })).toMatch(/^TEMPLATES_RELOAD_INTERVAL=500ms: must be a duration such as .* from 1s to 1d, or off$/);
    expect(refusal({ TEMPLATES_RELOAD_INTERVAL: "2d" })).toMatch(/^TEMPLATES_RELOAD_INTERVAL=2d: must be a duration/);
  });
});

describe("certificate files, remembered for reloading", () => {
  it("keeps the path of each value given as a file, and none for PEM text", () => {
    expect(loadConfig({ TLS_CERT: certFile, TLS_KEY: keyFile, TLS_CLIENT_CA: caFile }).tls).toEqual({
      cert: server.cert,
      key: server.key,
      clientCa: other.cert,
      paths: { cert: certFile, key: keyFile, clientCa: caFile },
    });
    expect(loadConfig({ TLS_CERT: server.cert, TLS_KEY: keyFile }).tls?.paths).toEqual({ cert: undefined, key: keyFile, clientCa: undefined });
    expect(loadConfig({ BOUNCE_TLS_CERT: certFile, BOUNCE_TLS_KEY: server.key }).bounce.tls?.paths).toEqual({ cert: certFile, key: undefined });
  });
});

describe("TLS_CERT / TLS_KEY: the checks a reload also makes", () => {
  it("refuses a key that does not belong to the certificate, at start-up (exit 78) rather than at the first connection", () => {
    expect(refusal({ TLS_CERT: certFile, TLS_KEY: otherKeyFile })).toBe(
      "TLS_KEY: does not match TLS_CERT (the certificate for CN=127.0.0.1; the first certificate of the file must be the one the key belongs to)",
    );
  });

  it("refuses an encrypted key and a file with no PEM private key, naming the variable", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const encrypted = privateKey.export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: "secret" }).toString();
    expect(refusal({ TLS_CERT: certFile, TLS_KEY: file("encrypted.pem", encrypted) })).toMatch(/^TLS_KEY: not a usable unencrypted PEM private key/);
    expect(refusal({ TLS_CERT: certFile, TLS_KEY: certFile })).toBe(`TLS_KEY: ${certFile} holds no PEM private key (a -----BEGIN ...PRIVATE KEY----- block)`);
    expect(refusal({ TLS_CERT: keyFile, TLS_KEY: keyFile })).toBe(`TLS_CERT: ${keyFile} holds no PEM certificate (a -----BEGIN ...CERTIFICATE----- block)`);
    expect(refusal({ TLS_CERT: certFile, TLS_KEY: keyFile, TLS_CLIENT_CA: keyFile })).toBe(
      `TLS_CLIENT_CA: ${keyFile} holds no PEM certificate (a -----BEGIN ...CERTIFICATE----- block)`,
    );
  });
});
