/**
 * Certificates renewed on disk are served without a restart: the real app,
 * real TLS handshakes on the gRPC port and on the bounce intake's STARTTLS,
 * real mTLS callers. The files are replaced the way cert-manager and ACME
 * clients do (a new file renamed over the old one), then the poll
 * (TLS_RELOAD_INTERVAL) or a reload request (what SIGHUP does; SIGHUP to the
 * real process is in process.test.ts) picks them up.
 *
 * - applied: a NEW connection presents the new certificate (fingerprints
 *   compared), a connection opened before goes on, an RPC succeeds, the
 *   reload is counted and the expiry gauge follows;
 * - TLS_CLIENT_CA replaced: the new CA's client certificates name callers,
 *   the old CA's no longer do;
 * - refused (a garbage key, a key of another certificate): the old
 *   certificate stays, the log names the variable and the reason and holds
 *   no key material, the refusal is counted once;
 * - a certificate written before its key is no refusal: the pair is applied
 *   once the key follows;
 * - PEM text given inline is never re-read.
 */
import { X509Certificate } from "node:crypto";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { systemClock } from "../../src/clock.js";
import { createLogger } from "../../src/logger.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { startCertificateReloader } from "../../src/tls/certificate-reloader.js";
import { openCertificateWorkshop, type CertificateAuthority, type CertificateWorkshop, type KeyPair } from "../support/certs.js";
import { GrpcOtpClient, grpcError, grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { fingerprintOf, presentedAfterStarttls, presentedByTls } from "../support/tls-peer.js";

const { sendOtp } = OtpEmailService.method;

let workshop: CertificateWorkshop;
let caA: CertificateAuthority;
let caB: CertificateAuthority;
/** Server certificates for 127.0.0.1 / localhost: two from CA A, one from CA B. */
let serverA: KeyPair;
let serverA2: KeyPair;
let serverB: KeyPair;
/** Client certificates (mTLS callers) from each CA. */
let alphaA: KeyPair;
let betaB: KeyPair;

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  caA = await workshop.newCa("reload test CA A");
  caB = await workshop.newCa("reload test CA B");
  const server = (ca: CertificateAuthority, days: number) => ca.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1,DNS:localhost", server: true, days });
  serverA = await server(caA, 1);
  serverA2 = await server(caA, 2);
  serverB = await server(caB, 2);
  alphaA = await caA.issue({ cn: "alpha", san: "URI:spiffe://test/alpha" });
  betaB = await caB.issue({ cn: "beta", san: "URI:spiffe://test/beta" });
});

afterAll(async () => {
  await workshop.cleanup();
});

/** A folder of certificate files, replaced the way cert-manager and ACME clients do: a new file renamed over the old. */
async function certificateFolder(files: Record<string, string>): Promise<{ path(name: string): string; replace(name: string, pem: string): Promise<void>; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "otp-cert-reload-"));
  const path = (name: string): string => join(dir, name);
  const replace = async (name: string, pem: string): Promise<void> => {
    await writeFile(path(`.${name}.tmp`), pem);
    await rename(path(`.${name}.tmp`), path(name));
  };
  for (const [name, pem] of Object.entries(files)) await writeFile(path(name), pem);
  return { path, replace, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** One sample's value from the app's registry (undefined when the series does not exist). */
async function sample(service: ObservedService, name: string, labels: Record<string, string>): Promise<number | undefined> {
  for (const metric of await service.metrics.registry.getMetricsAsJSON()) {
    if (metric.name !== name) continue;
    for (const value of metric.values) {
      const actual = value.labels as Record<string, string | number>;
      const keys = Object.keys(actual);
      if (keys.length === Object.keys(labels).length && keys.every((key) => String(actual[key]) === labels[key])) return value.value;
    }
  }
  return undefined;
}

const reloads = (service: ObservedService, certificate: string, result: string) =>
  sample(service, "otp_tls_certificate_reloads_total", { certificate, result });

/** Retries `check` until it returns true (every 100 ms, for up to `timeoutMs`). */
async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A grpc-js client with a connection of its own (no subchannel shared with other clients), trusting `trust`. */
function tlsClient(port: number, trust: string, identity?: KeyPair): grpc.Client {
  const credentials = grpc.credentials.createSsl(
    Buffer.from(trust),
    identity === undefined ? null : Buffer.from(identity.key),
    identity === undefined ? null : Buffer.from(identity.cert),
  );
  return new GrpcOtpClient(`127.0.0.1:${port}`, credentials, {
    "grpc.ssl_target_name_override": "localhost",
    "grpc.use_local_subchannel_pool": 1,
  });
}

let recipients = 0;
const send = (client: grpc.Client) => grpcUnary(client, sendOtp, { recipient: `reload-${++recipients}@example.com`, purpose: Purpose.LOGIN });

/** The lines of a private key that are base64 body, for "never in a log" checks. */
const keyLines = (...pairs: KeyPair[]): string[] =>
  pairs.flatMap((pair) => pair.key.split("\n").filter((line) => line.length > 20 && !line.startsWith("-----")));

const notAfterSeconds = (pem: string): number => Math.floor(new X509Certificate(pem).validToDate.getTime() / 1000);

describe("gRPC server: TLS_CERT, TLS_KEY and TLS_CLIENT_CA files, re-read every TLS_RELOAD_INTERVAL", () => {
  let folder: Awaited<ReturnType<typeof certificateFolder>>;
  let service: ObservedService;
  let port = 0;
  const clients: grpc.Client[] = [];
  const client = (trust: string, identity?: KeyPair): grpc.Client => {
    const made = tlsClient(port, trust, identity);
    clients.push(made);
    return made;
  };

  beforeAll(async () => {
    folder = await certificateFolder({ "cert.pem": serverA.cert, "key.pem": serverA.key, "ca.pem": caA.cert });
    service = await startObservedService({
      env: { TLS_CERT: folder.path("cert.pem"), TLS_KEY: folder.path("key.pem"), TLS_CLIENT_CA: folder.path("ca.pem"), TLS_RELOAD_INTERVAL: "1s" },
      certificateSettleMs: 200,
    });
    port = service.app.address.port;
  });

  afterAll(async () => {
    for (const made of clients) made.close();
    await service.stop();
    await folder.remove();
  });

  it("renewed files: within a poll a NEW connection gets the new certificate, one opened before goes on, RPCs succeed; counted, the expiry gauge follows", async () => {
    expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(serverA.cert));

    // A caller connected before the renewal, trusting CA A only.
    const before = client(caA.cert, alphaA);
    expect((await send(before)).state).toBe(DeliveryState.ACCEPTED);

    // The renewal comes from another CA, so a client of CA A could not make a new connection.
    await folder.replace("cert.pem", serverB.cert);
    await folder.replace("key.pem", serverB.key);
    await until("the new certificate on a new connection", async () => (await presentedByTls(port)).fingerprint256 === fingerprintOf(serverB.cert));
    expect(await presentedByTls(port, { ca: caB.cert })).toMatchObject({ authorized: true });

    // The connection opened before keeps its session; a new caller trusting CA B gets in.
    expect((await send(before)).state).toBe(DeliveryState.ACCEPTED);
    expect((await send(client(caB.cert, alphaA))).state).toBe(DeliveryState.ACCEPTED);
    // A caller that trusts only the old CA cannot make a new connection any more: the new certificate is what is served.
    const stale = await grpcError(send(client(caA.cert, alphaA)));
    expect(stale.code).toBe(grpc.status.UNAVAILABLE);

    expect(await reloads(service, "grpc", "applied")).toBe(1);
    expect(await reloads(service, "grpc", "refused")).toBe(0);
    expect(await sample(service, "otp_tls_certificate_expiry_timestamp_seconds", { certificate: "grpc" })).toBe(notAfterSeconds(serverB.cert));
    const applied = service.logs().filter((line) => line["certificate"] === "grpc" && line["changed"] !== undefined);
    expect(applied).toEqual([
      expect.objectContaining({ level: "info", changed: ["TLS_CERT", "TLS_KEY"], subject: "CN=127.0.0.1", msg: expect.stringMatching(/^TLS_CERT, TLS_KEY reloaded/) as string }),
    ]);
    const logged = service.logLines.join("\n");
    for (const line of keyLines(serverA, serverB)) expect(logged).not.toContain(line);
  });

  it("TLS_CLIENT_CA replaced: a client certificate from the new CA names its caller, one from the old CA no longer does", async () => {
    await folder.replace("ca.pem", caB.cert);
    await service.app.reloadCertificates();
    expect(await reloads(service, "grpc", "applied")).toBe(2);
    expect(service.logs().filter((line) => line["certificate"] === "grpc" && line["changed"] !== undefined).at(-1)).toMatchObject({ changed: ["TLS_CLIENT_CA"] });

    const beta = await send(client(caB.cert, betaB));
    expect(beta.state).toBe(DeliveryState.ACCEPTED);
    expect(service.logs().filter((line) => line["msg"] === "otp queued").at(-1)).toMatchObject({ caller: "spiffe://test/beta" });

    const alpha = await grpcError(send(client(caB.cert, alphaA)));
    expect(alpha.code).toBe(grpc.status.UNAUTHENTICATED);
    // The server certificate did not change with the CA.
    expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(serverB.cert));
  });
});

describe("refused replacements: the certificate in use stays", () => {
  let folder: Awaited<ReturnType<typeof certificateFolder>>;
  let service: ObservedService;
  let port = 0;
  const garbageKey = "-----BEGIN PRIVATE KEY-----\nTm90IGEga2V5IGF0IGFsbCwganVzdCBzb21lIHRleHQgaW4gYSBQRU0gYmxvY2s=\n-----END PRIVATE KEY-----\n";

  beforeAll(async () => {
    folder = await certificateFolder({ "cert.pem": serverA.cert, "key.pem": serverA.key, "intake-cert.pem": serverA.cert, "intake-key.pem": serverA.key });
    service = await startObservedService({
      env: {
        TLS_CERT: folder.path("cert.pem"),
        TLS_KEY: folder.path("key.pem"),
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_TLS_CERT: folder.path("intake-cert.pem"),
        BOUNCE_TLS_KEY: folder.path("intake-key.pem"),
        // Only reload requests read the files here, so that each step is seen exactly once.
        TLS_RELOAD_INTERVAL: "off",
      },
      certificateSettleMs: 200,
    });
    port = service.app.address.port;
  });

  afterAll(async () => {
    await service.stop();
    await folder.remove();
  });

  const refusals = (certificate: string) => service.logs().filter((line) => line["certificate"] === certificate && line["level"] === "error");

  it("a key file of garbage: refused once it stays so, logged naming TLS_KEY and the reason without key material, counted once", async () => {
    await folder.replace("key.pem", garbageKey);
    await service.app.reloadCertificates();
    await until("the refusal", () => refusals("grpc").length > 0);
    expect(refusals("grpc")).toEqual([
      expect.objectContaining({ variable: "TLS_KEY", reason: expect.stringMatching(/^not a usable unencrypted PEM private key/) as string }),
    ]);
    expect(String(refusals("grpc")[0]?.["msg"])).toMatch(/^TLS_KEY changed but was not applied: TLS_KEY: not a usable unencrypted PEM private key/);
    expect(service.logLines.join("\n")).not.toContain("Tm90IGEga2V5");
    expect(await reloads(service, "grpc", "refused")).toBe(1);
    expect(await reloads(service, "grpc", "applied")).toBe(0);
    expect(await sample(service, "otp_tls_certificate_last_reload_successful", { certificate: "grpc" })).toBe(0);

    // The certificate in use is still presented, and calls go on over new connections.
    expect((await presentedByTls(port, { ca: caA.cert })).fingerprint256).toBe(fingerprintOf(serverA.cert));
    const caller = tlsClient(port, caA.cert);
    try {
      expect((await send(caller)).state).toBe(DeliveryState.ACCEPTED);
    } finally {
      caller.close();
    }

    // The same broken files read again: no second report.
    await service.app.reloadCertificates();
    await sleep(400);
    expect(refusals("grpc")).toHaveLength(1);
    expect(await reloads(service, "grpc", "refused")).toBe(1);
  });

  it("a key that belongs to another certificate: refused as not matching TLS_CERT", async () => {
    await folder.replace("key.pem", serverB.key);
    await service.app.reloadCertificates();
    await until("the refusal", () => refusals("grpc").length > 1);
    expect(refusals("grpc")[1]).toMatchObject({ variable: "TLS_KEY", reason: expect.stringMatching(/^does not match TLS_CERT/) as string });
    expect(await reloads(service, "grpc", "refused")).toBe(2);
    expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(serverA.cert));
    expect(service.logLines.join("\n")).not.toContain(keyLines(serverB)[0]);
  });

  it("the files put right: applied, and the refusal clears", async () => {
    await folder.replace("cert.pem", serverA2.cert);
    await folder.replace("key.pem", serverA2.key);
    await service.app.reloadCertificates();
    expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(serverA2.cert));
    expect(await reloads(service, "grpc", "applied")).toBe(1);
    expect(await sample(service, "otp_tls_certificate_last_reload_successful", { certificate: "grpc" })).toBe(1);
  });

  it("the intake: a mismatched BOUNCE_TLS_KEY is refused and STARTTLS keeps presenting the certificate in use", async () => {
    const intakePort = service.app.bounceIntake?.port ?? 0;
    expect((await presentedAfterStarttls(intakePort)).fingerprint256).toBe(fingerprintOf(serverA.cert));
    await folder.replace("intake-key.pem", serverB.key);
    await service.app.reloadCertificates();
    await until("the refusal", () => refusals("bounce_intake").length > 0);
    expect(refusals("bounce_intake")[0]).toMatchObject({
      variable: "BOUNCE_TLS_KEY",
      reason: expect.stringMatching(/^does not match BOUNCE_TLS_CERT/) as string,
    });
    expect(await reloads(service, "bounce_intake", "refused")).toBe(1);
    expect(await sample(service, "otp_tls_certificate_last_reload_successful", { certificate: "bounce_intake" })).toBe(0);
    expect((await presentedAfterStarttls(intakePort, { ca: caA.cert })).fingerprint256).toBe(fingerprintOf(serverA.cert));
  });
});

describe("a reload request (SIGHUP) is answered in the log, whatever comes of it", () => {
  it("unchanged files: says so, with the certificate still served; refused files read again: says they are still refused and why, counted once; put back: says they hold the certificate in use again", async () => {
    const folder = await certificateFolder({ "cert.pem": serverA.cert, "key.pem": serverA.key });
    const service = await startObservedService({
      env: { TLS_CERT: folder.path("cert.pem"), TLS_KEY: folder.path("key.pem"), TLS_RELOAD_INTERVAL: "off" },
      certificateSettleMs: 200,
    });
    try {
      const about = (pattern: RegExp) => service.logs().filter((line) => line["certificate"] === "grpc" && pattern.test(String(line["msg"])));
      await service.app.reloadCertificates();
      const unchanged = about(/unchanged/);
      expect(unchanged).toEqual([
        expect.objectContaining({ level: "info", files: ["TLS_CERT", "TLS_KEY"], subject: expect.stringContaining("CN=127.0.0.1") as string }),
      ]);
      expect(String(unchanged[0]?.["msg"])).toMatch(/^TLS_CERT, TLS_KEY unchanged: new connections still get the certificate in use \(.*CN=127\.0\.0\.1.*, valid until \d{4}-/);

      await folder.replace("key.pem", serverB.key);
      await service.app.reloadCertificates();
      await until("the refusal", () => about(/not applied/).length > 0);
      await service.app.reloadCertificates();
      const still = about(/still not applied/);
      expect(still).toEqual([expect.objectContaining({ level: "warn", variable: "TLS_KEY", reason: expect.stringMatching(/^does not match TLS_CERT/) as string })]);
      expect(String(still[0]?.["msg"])).toMatch(/^TLS_KEY still not applied: TLS_KEY: does not match TLS_CERT/);
      expect(await reloads(service, "grpc", "refused")).toBe(1);
      expect(service.logLines.join("\n")).not.toContain(keyLines(serverB)[0]);

      // The refused file put back as it was: the answer says the files hold the certificate in use again.
      await folder.replace("key.pem", serverA.key);
      await service.app.reloadCertificates();
      expect(about(/hold the certificate in use again/)).toEqual([
        expect.objectContaining({ level: "info", msg: "the certificate files hold the certificate in use again" }),
      ]);
      expect(await sample(service, "otp_tls_certificate_last_reload_successful", { certificate: "grpc" })).toBe(1);
      expect(await reloads(service, "grpc", "applied")).toBe(0);
    } finally {
      await service.stop();
      await folder.remove();
    }
  });
});

describe("a certificate written before its key", () => {
  let folder: Awaited<ReturnType<typeof certificateFolder>>;
  let service: ObservedService;

  beforeAll(async () => {
    folder = await certificateFolder({ "cert.pem": serverA.cert, "key.pem": serverA.key });
    service = await startObservedService({
      env: { TLS_CERT: folder.path("cert.pem"), TLS_KEY: folder.path("key.pem"), TLS_RELOAD_INTERVAL: "off" },
      // Far longer than the test: a half pair is only ever "not yet".
      certificateSettleMs: 60_000,
    });
  });

  afterAll(async () => {
    await service.stop();
    await folder.remove();
  });

  it("is no refusal: the half pair is not applied, nothing is logged as an error or counted, and once the key follows the pair is applied", async () => {
    const port = service.app.address.port;
    await folder.replace("cert.pem", serverB.cert);
    await service.app.reloadCertificates();
    expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(serverA.cert));
    expect(await reloads(service, "grpc", "refused")).toBe(0);
    expect(await reloads(service, "grpc", "applied")).toBe(0);

    await folder.replace("key.pem", serverB.key);
    await service.app.reloadCertificates();
    expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(serverB.cert));
    expect(await reloads(service, "grpc", "applied")).toBe(1);
    expect(await reloads(service, "grpc", "refused")).toBe(0);
    expect(service.logs().filter((line) => line["level"] === "error")).toEqual([]);
  });
});

describe("a settle overtaken by a newer change", () => {
  it("does not refuse the newer files at the older ones' re-read: the newer files wait their own full settle", async () => {
    const folder = await certificateFolder({ "cert.pem": serverA.cert, "key.pem": serverA.key });
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"] });
    const reloader = startCertificateReloader({
      certificates: [
        {
          role: "grpc",
          cert: { variable: "TLS_CERT", path: folder.path("cert.pem"), pem: serverA.cert },
          key: { variable: "TLS_KEY", path: folder.path("key.pem"), pem: serverA.key },
          apply: () => undefined,
        },
      ],
      intervalMs: undefined,
      settleMs: 1000,
      metrics,
      logger: createLogger({ level: "silent" }),
      clock: systemClock,
    });
    const refused = async () => (await metrics.registry.getSingleMetric("otp_tls_certificate_reloads_total")?.get())?.values.find((v) => v.labels["result"] === "refused")?.value;
    try {
      await folder.replace("key.pem", serverB.key);
      await reloader.reload();
      await vi.advanceTimersByTimeAsync(999);
      // Another change, read by a request queued just before the first change's settle ends and queues its re-read.
      await folder.replace("key.pem", betaB.key);
      const request = reloader.reload();
      vi.advanceTimersByTime(1);
      await request;
      await reloader.reload();
      // The re-read found the newer key, seen for the first time a moment ago: it is not refused yet.
      expect(await refused()).toBe(0);

      await vi.advanceTimersByTimeAsync(1000);
      await reloader.reload();
      expect(await refused()).toBe(1);
    } finally {
      reloader.stop();
      vi.useRealTimers();
      await folder.remove();
    }
  });
});

describe("bounce intake: BOUNCE_TLS_CERT and BOUNCE_TLS_KEY files", () => {
  let folder: Awaited<ReturnType<typeof certificateFolder>>;
  let service: ObservedService;

  beforeAll(async () => {
    folder = await certificateFolder({ "cert.pem": serverA.cert, "key.pem": serverA.key });
    service = await startObservedService({
      env: {
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_TLS_CERT: folder.path("cert.pem"),
        BOUNCE_TLS_KEY: folder.path("key.pem"),
        TLS_RELOAD_INTERVAL: "1s",
      },
    });
  });

  afterAll(async () => {
    await service.stop();
    await folder.remove();
  });

  it("renewed files: within a poll a new STARTTLS session presents the new certificate, verified by its CA; counted, the expiry gauge follows", async () => {
    const port = service.app.bounceIntake?.port ?? 0;
    expect(await presentedAfterStarttls(port, { ca: caA.cert })).toEqual({ fingerprint256: fingerprintOf(serverA.cert), authorized: true });

    await folder.replace("cert.pem", serverB.cert);
    await folder.replace("key.pem", serverB.key);
    await until("the new certificate after STARTTLS", async () => (await presentedAfterStarttls(port)).fingerprint256 === fingerprintOf(serverB.cert));
    expect(await presentedAfterStarttls(port, { ca: caB.cert })).toEqual({ fingerprint256: fingerprintOf(serverB.cert), authorized: true });

    expect(await reloads(service, "bounce_intake", "applied")).toBe(1);
    expect(await reloads(service, "bounce_intake", "refused")).toBe(0);
    expect(await sample(service, "otp_tls_certificate_expiry_timestamp_seconds", { certificate: "bounce_intake" })).toBe(notAfterSeconds(serverB.cert));
    // No gRPC certificate is configured: no gRPC series.
    expect(await reloads(service, "grpc", "applied")).toBeUndefined();
  });
});

describe("certificates given as PEM text", () => {
  it("are never re-read: the start-up log says so, there is no reload series, and a reload request changes nothing and says so", async () => {
    const service = await startObservedService({
      env: {
        TLS_CERT: serverA.cert,
        TLS_KEY: serverA.key,
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_TLS_CERT: serverA.cert,
        BOUNCE_TLS_KEY: serverA.key,
        TLS_RELOAD_INTERVAL: "1s",
      },
    });
    try {
      const inline = service.logs().filter((line) => /never reloaded/.test(String(line["msg"])));
      expect(inline).toEqual([
        expect.objectContaining({ level: "info", variables: ["TLS_CERT", "TLS_KEY", "BOUNCE_TLS_CERT", "BOUNCE_TLS_KEY"] }),
      ]);
      const text = await service.metrics.render("text");
      expect(text).toContain("# TYPE otp_tls_certificate_reloads_total counter");
      expect(text).not.toMatch(/^otp_tls_certificate_reloads_total\{/m);
      expect(text).not.toMatch(/^otp_tls_certificate_last_reload_successful\{/m);

      const linesBefore = service.logLines.length;
      await service.app.reloadCertificates();
      await sleep(1500);
      expect(service.logs().slice(linesBefore).filter((line) => line["certificate"] !== undefined)).toEqual([]);
      // The request is answered all the same: nothing to read, and why.
      expect(service.logs().slice(linesBefore).map((line) => line["msg"])).toContain(
        "no certificate file to read again: TLS_CERT, TLS_KEY, BOUNCE_TLS_CERT, BOUNCE_TLS_KEY are PEM text; renewing them takes a restart",
      );
      expect((await presentedByTls(service.app.address.port)).fingerprint256).toBe(fingerprintOf(serverA.cert));
    } finally {
      await service.stop();
    }
  });
});
