/**
 * TLS_CLIENT_CRL: a revoked client certificate names no caller. The real
 * app, real TLS handshakes on the gRPC port, callers with certificates from
 * two client CAs (TLS_CLIENT_CA holds both, TLS_CLIENT_CRL a CRL of each,
 * made with `openssl ca -gencrl`), and a token caller on the same port.
 *
 * - a revoked certificate is UNAUTHENTICATED saying it is revoked, one the
 *   CRL does not list is a caller, whichever of the two CAs signed it; a
 *   token caller is not affected;
 * - each refused connection is counted
 *   (otp_tls_client_certificate_refusals_total), and logged once, naming
 *   the certificate: the same certificate again within a minute is not;
 * - a renewed CRL file, picked up at a reload, revokes a certificate that
 *   was fine before, for new connections;
 * - a renewed CRL that fails the checks (expired, from a CA that is not a
 *   client CA) is refused: the CRL in use stays, the log names
 *   TLS_CLIENT_CRL and why;
 * - otp_tls_client_crl_next_update_timestamp_seconds follows the CRLs in use;
 * - a renewed CRL still to come (its thisUpdate a few seconds ahead: clock
 *   skew) is applied beside the CRL in force for its CA, which TLS keeps
 *   using until then; then the new one is in force, with no reload request
 *   (a timer), or at the next periodic read of the unchanged file (an
 *   injected clock: the reloader alone);
 * - a CRL that expires while the service runs: every certificate of its CA
 *   is refused, and the caller and the log are told the CRL expired;
 * - a CRL a few seconds early at start-up: the service starts, warns, and
 *   refuses that CA's certificates saying why (crl_not_yet_valid) until
 *   its thisUpdate, then takes them;
 * - the service as `npm start` runs it refuses to start on an expired CRL,
 *   and on one hours early (exit 78), naming TLS_CLIENT_CRL.
 */
import { createHash, X509Certificate } from "node:crypto";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { createLogger } from "../../src/logger.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { startCertificateReloader } from "../../src/tls/certificate-reloader.js";
import type { CertificateSet } from "../../src/tls/certificate-set.js";
import { checkClientCrl } from "../../src/tls/client-crl.js";
import { openCertificateWorkshop, type CertificateAuthority, type CertificateWorkshop, type KeyPair } from "../support/certs.js";
import { errorDetails, grpcError, GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { sampleValue } from "../support/metric-samples.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { killServiceProcesses, startServiceProcess } from "../support/service-process.js";

const { sendOtp } = OtpEmailService.method;
const token = "client-crl-test-token-0123456789";

let workshop: CertificateWorkshop;
let caA: CertificateAuthority;
let caB: CertificateAuthority;
let server: KeyPair;
/** Client certificates: alpha and beta from CA A, gamma from CA B. */
let alpha: KeyPair;
let beta: KeyPair;
let gamma: KeyPair;
/** When the CRLs in the first file expire. */
const firstNextUpdate = new Date(Date.now() + 3 * 86_400_000);

let folder: string;
let service: ObservedService;
let port = 0;
const clients: grpc.Client[] = [];

const file = (name: string): string => join(folder, name);
/** Replaced the way cert-manager and ACME clients do: a new file renamed over the old. */
async function replace(name: string, pem: string): Promise<void> {
  await writeFile(file(`.${name}.tmp`), pem);
  await rename(file(`.${name}.tmp`), file(name));
}

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  caA = await workshop.newCa("crl test CA A");
  caB = await workshop.newCa("crl test CA B");
  server = await caA.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1,DNS:localhost", server: true });
  alpha = await caA.issue({ cn: "alpha", san: "URI:spiffe://test/alpha" });
  beta = await caA.issue({ cn: "beta", san: "URI:spiffe://test/beta" });
  gamma = await caB.issue({ cn: "gamma", san: "URI:spiffe://test/gamma" });

  folder = await mkdtemp(join(tmpdir(), "otp-client-crl-"));
  await writeFile(file("cert.pem"), server.cert);
  await writeFile(file("key.pem"), server.key);
  await writeFile(file("ca.pem"), caA.cert + caB.cert);
  // One file, two CRLs: beta is revoked.
  await writeFile(
    file("crl.pem"),
    (await caA.crl({ revoked: [beta], nextUpdate: firstNextUpdate })) + (await caB.crl({ nextUpdate: new Date(firstNextUpdate.getTime() + 86_400_000) })),
  );
  service = await startObservedService({
    env: {
      TLS_CERT: file("cert.pem"),
      TLS_KEY: file("key.pem"),
      TLS_CLIENT_CA: file("ca.pem"),
      TLS_CLIENT_CRL: file("crl.pem"),
      AUTH_TOKENS: `tokens:${createHash("sha256").update(token).digest("hex")}`,
      // Only reload requests read the files, so that each step is seen exactly once.
      TLS_RELOAD_INTERVAL: "off",
    },
    certificateSettleMs: 100,
  });
  port = service.app.address.port;
});

afterAll(async () => {
  killServiceProcesses();
  for (const made of clients) made.close();
  await service?.stop();
  await workshop?.cleanup();
  if (folder !== undefined) await rm(folder, { recursive: true, force: true });
});

/** A grpc-js client with a connection of its own (no subchannel shared with other clients). */
function client(identity?: KeyPair): grpc.Client {
  const credentials = grpc.credentials.createSsl(
    Buffer.from(caA.cert),
    identity === undefined ? null : Buffer.from(identity.key),
    identity === undefined ? null : Buffer.from(identity.cert),
  );
  const made = new GrpcOtpClient(`127.0.0.1:${port}`, credentials, {
    "grpc.ssl_target_name_override": "localhost",
    "grpc.use_local_subchannel_pool": 1,
  });
  clients.push(made);
  return made;
}

let recipients = 0;
const send = (caller: grpc.Client, metadata?: grpc.Metadata) =>
  grpcUnary(caller, sendOtp, { recipient: `crl-${++recipients}@example.com`, purpose: Purpose.LOGIN }, metadata === undefined ? {} : { metadata });
const bearer = (): grpc.Metadata => {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
};
const lastCaller = (): unknown => service.logs().filter((line) => line["msg"] === "otp queued").at(-1)?.["caller"];

/** `identity`, named `name`, is refused on a new connection as revoked. */
async function refusedAsRevoked(identity: KeyPair, name: string): Promise<void> {
  const error = await grpcError(send(client(identity)));
  expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
  expect(errorDetails(error).errorInfo?.reason).toBe("CREDENTIALS_MISSING");
  expect(errorDetails(error).errorInfo?.metadata).toEqual({ certificate_refusal: "revoked" });
  expect(error.details).toContain(`no credentials: the client certificate (${name}) is revoked (TLS_CLIENT_CRL), so it counts as none; `);
}

/** The warnings about client certificates that did not verify, so far. */
const refusalLines = () => service.logs().filter((line) => String(line["msg"]).startsWith("a client certificate did not verify"));
const refusals = (reason: string) => sampleValue(service.metrics.registry, "otp_tls_client_certificate_refusals_total", { reason });

/** Retries `check` until it returns true (every 50 ms, for up to 10 s). */
async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const reloads = (result: string) => sampleValue(service.metrics.registry, "otp_tls_certificate_reloads_total", { certificate: "grpc", result });
const nextUpdate = (issuer: string) => sampleValue(service.metrics.registry, "otp_tls_client_crl_next_update_timestamp_seconds", { issuer });
const seconds = (date: Date): number => Math.floor(date.getTime() / 1000);

describe("TLS_CLIENT_CRL", () => {
  it("a revoked certificate is no credential (UNAUTHENTICATED); unrevoked ones of both client CAs name their callers; a token caller is unaffected", async () => {
    await refusedAsRevoked(beta, "spiffe://test/beta");

    expect((await send(client(alpha))).state).toBe(DeliveryState.ACCEPTED);
    expect(lastCaller()).toBe("spiffe://test/alpha");
    // The second CRL of the file is in force too: without it, TLS could not check CA B's certificates and would refuse them all.
    expect((await send(client(gamma))).state).toBe(DeliveryState.ACCEPTED);
    expect(lastCaller()).toBe("spiffe://test/gamma");

    expect((await send(client(), bearer())).state).toBe(DeliveryState.ACCEPTED);
    expect(lastCaller()).toBe("tokens");
    expect(service.sink.messages).toHaveLength(3);
  });

  it("each refused connection is counted; the log names the revoked certificate once, not again within a minute", async () => {
    // The first test's connection with beta was the first refusal: one line, naming beta.
    const certificate = new X509Certificate(beta.cert);
    expect(refusalLines()).toEqual([
      expect.objectContaining({
        level: "warn",
        reason: "revoked",
        openssl_error: "CERT_REVOKED",
        client_certificate: expect.objectContaining({ name: "spiffe://test/beta", serial: certificate.serialNumber, issuer: "CN=crl test CA A" }) as unknown,
        msg: "a client certificate did not verify (revoked: CERT_REVOKED): it counts as none on its connection",
      }),
    ]);
    expect(await refusals("revoked")).toBe(1);
    expect(await refusals("expired")).toBe(0);

    // Two more connections with beta, calls retried on one: counted per connection, no new line.
    const again = client(beta);
    await grpcError(send(again));
    await grpcError(send(again));
    await refusedAsRevoked(beta, "spiffe://test/beta");
    expect(await refusals("revoked")).toBe(3);
    expect(refusalLines()).toHaveLength(1);
  });

  it("says at start-up that client certificates are checked against CRLs, and tells when each client CA's CRL expires", async () => {
    expect(service.logs().find((line) => line["msg"] === "callers must authenticate")).toMatchObject({ client_certificates: true, client_certificate_crl: true });
    expect(await nextUpdate("CN=crl test CA A")).toBe(seconds(firstNextUpdate));
    expect(await nextUpdate("CN=crl test CA B")).toBe(seconds(firstNextUpdate) + 86_400);
  });

  it("a renewed CRL read at a reload revokes a certificate that was fine before, for new connections", async () => {
    const before = client(gamma);
    expect((await send(before)).state).toBe(DeliveryState.ACCEPTED);

    const renewed = new Date(Date.now() + 7 * 86_400_000);
    await replace("crl.pem", (await caA.crl({ revoked: [beta], nextUpdate: renewed })) + (await caB.crl({ revoked: [gamma], nextUpdate: renewed })));
    await service.app.reloadCertificates();
    expect(await reloads("applied")).toBe(1);
    expect(service.logs().filter((line) => line["certificate"] === "grpc" && line["changed"] !== undefined)).toEqual([
      expect.objectContaining({ level: "info", changed: ["TLS_CLIENT_CRL"], msg: expect.stringMatching(/^TLS_CLIENT_CRL reloaded/) as string }),
    ]);

    await refusedAsRevoked(gamma, "spiffe://test/gamma");
    await refusedAsRevoked(beta, "spiffe://test/beta");
    expect((await send(client(alpha))).state).toBe(DeliveryState.ACCEPTED);
    expect(await nextUpdate("CN=crl test CA B")).toBe(seconds(renewed));
    // TLS checks a certificate at the handshake: a connection opened before goes on until it closes.
    expect((await send(before)).state).toBe(DeliveryState.ACCEPTED);
  });

  it.each([
    ["an expired CRL", async () => (await caA.crl({ lastUpdate: new Date(Date.now() - 2 * 86_400_000), nextUpdate: new Date(Date.now() - 3_600_000) })) + (await caB.crl()), /^the CRL from CN=crl test CA A expired at /],
    ["a CRL of a CA that is not a client CA", async () => (await (await workshop.newCa("crl test CA C")).crl()) + (await caA.crl()) + (await caB.crl()), /^CRL 1 of .* comes from CN=crl test CA C, which is not a CA of TLS_CLIENT_CA$/],
  ])("%s is refused at a reload: the CRL in use stays, the log names TLS_CLIENT_CRL and why", async (_name, make, reason) => {
    const refusedBefore = (await reloads("refused")) ?? 0;
    const errorsBefore = service.logs().filter((line) => line["level"] === "error").length;
    await replace("crl.pem", await make());
    await service.app.reloadCertificates();
    // Refused once the files stay so for the settle time.
    await until("the refusal", async () => (await reloads("refused")) === refusedBefore + 1);
    const errors = service.logs().filter((line) => line["level"] === "error").slice(errorsBefore);
    expect(errors).toEqual([expect.objectContaining({ certificate: "grpc", changed: ["TLS_CLIENT_CRL"], variable: "TLS_CLIENT_CRL", reason: expect.stringMatching(reason) as string })]);

    // Still the renewed CRL of the test before: gamma and beta revoked, alpha a caller.
    await refusedAsRevoked(gamma, "spiffe://test/gamma");
    expect((await send(client(alpha))).state).toBe(DeliveryState.ACCEPTED);
  });
});

describe("a renewed CRL still to come (clock skew)", () => {
  it("is applied beside the CRL in force for its CA, which TLS keeps using until its thisUpdate; then it is in force, with no reload and nothing counted", async () => {
    const appliedBefore = await reloads("applied");
    const refusedBefore = await reloads("refused");
    const linesBefore = service.logs().length;
    // CA B's new CRL no longer lists gamma, and starts a few seconds from now (CRL times are whole seconds).
    const thisUpdate = new Date(Math.ceil((Date.now() + 5_000) / 1000) * 1000);
    const later = new Date(Date.now() + 8 * 86_400_000);
    await replace("crl.pem", (await caA.crl({ revoked: [beta], nextUpdate: later })) + (await caB.crl({ lastUpdate: thisUpdate, nextUpdate: later })));
    await service.app.reloadCertificates();

    // Applied (counted once), so the files on disk are no refused change.
    expect(await reloads("applied")).toBe((appliedBefore ?? 0) + 1);
    expect(await reloads("refused")).toBe(refusedBefore);
    expect(await sampleValue(service.metrics.registry, "otp_tls_certificate_last_reload_successful", { certificate: "grpc" })).toBe(1);
    expect(service.logs().slice(linesBefore).filter((line) => line["issuer"] === "CN=crl test CA B" && line["this_update"] !== undefined)).toEqual([
      expect.objectContaining({
        level: "warn",
        this_update: thisUpdate.toISOString(),
        crl_in_force_kept: true,
        msg: expect.stringMatching(
          /^the new CRL of CN=crl test CA B \(TLS_CLIENT_CRL\) is not valid until \S+ \(its thisUpdate, \d+ s ahead of this host's clock: clock skew\?\): TLS keeps using the CRL in force for that CA until then/,
        ) as string,
      }),
    ]);

    // Until then CA B's CRL in force is the one before: gamma is still revoked, and CA B's certificates are checked, not turned away.
    await refusedAsRevoked(gamma, "spiffe://test/gamma");
    expect((await send(client(alpha))).state).toBe(DeliveryState.ACCEPTED);
    expect(Date.now()).toBeLessThan(thisUpdate.getTime());

    // TLS_RELOAD_INTERVAL is off and no reload is asked for: the set in use is checked again once the new CRL is valid.
    await until("the new CRL in force", () => Promise.resolve(service.logs().some((line) => String(line["msg"]).startsWith("the new CRL of CN=crl test CA B (TLS_CLIENT_CRL) is in force now"))));
    expect((await send(client(gamma))).state).toBe(DeliveryState.ACCEPTED);
    expect(lastCaller()).toBe("spiffe://test/gamma");
    await refusedAsRevoked(beta, "spiffe://test/beta");
    expect(await nextUpdate("CN=crl test CA B")).toBe(seconds(later));
    expect(await reloads("applied")).toBe((appliedBefore ?? 0) + 1);
    expect(await refusals("crl_not_yet_valid")).toBe(0);
  });

  it("an unchanged file is looked at again by the periodic read once its CRL is due: the kept CRL is dropped (the reloader alone, on an injected clock)", async () => {
    let time = Date.now();
    const clock = { now: () => time };
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger({ level: "info", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const current = await caA.crl({ nextUpdate: new Date(time + 86_400_000) });
    await writeFile(file("periodic-crl.pem"), current);
    const startUp = checkClientCrl(current, caA.cert, "start-up", time);
    if (!startUp.ok) throw new Error(startUp.reason);
    const applied: CertificateSet[] = [];
    const reloader = startCertificateReloader({
      certificates: [
        {
          role: "grpc",
          cert: { variable: "TLS_CERT", path: file("cert.pem"), pem: server.cert },
          key: { variable: "TLS_KEY", path: file("key.pem"), pem: server.key },
          ca: { variable: "TLS_CLIENT_CA", path: undefined, pem: caA.cert },
          crl: { variable: "TLS_CLIENT_CRL", path: file("periodic-crl.pem"), pem: current },
          crls: startUp.crls,
          apply: (set) => void applied.push(set),
        },
      ],
      intervalMs: 50,
      metrics,
      logger,
      clock,
    });
    try {
      // An hour early on this clock: the timer that would look again is an hour away.
      const early = await caA.crl({ revoked: [beta], lastUpdate: new Date(time + 3_600_000), nextUpdate: new Date(time + 2 * 86_400_000) });
      await replace("periodic-crl.pem", early);
      await until("the early CRL applied", () => Promise.resolve(applied.length === 1));
      expect(applied[0]?.crl?.pems).toEqual([early.trim(), current.trim()]);
      expect(applied[0]?.crl?.authorities[0]?.pending).toMatchObject({ kept: true });
      expect(lines.find((line) => line["issuer"] === "CN=crl test CA A" && line["this_update"] !== undefined)).toMatchObject({ level: "error" });

      time += 2 * 3_600_000;
      await until("the unchanged file checked again", () => Promise.resolve(applied.length === 2));
      expect(applied[1]?.crl?.pems).toEqual([early.trim()]);
      expect(applied[1]?.crl?.authorities[0]?.pending).toBeUndefined();
      expect(lines.filter((line) => String(line["msg"]).includes("is in force now"))).toEqual([
        expect.objectContaining({ level: "info", issuer: "CN=crl test CA A", msg: expect.stringMatching(/: the CRL kept for that CA until then is dropped$/) as string }),
      ]);
      const counted = await metrics.registry.getSingleMetric("otp_tls_certificate_reloads_total")?.get();
      expect(counted?.values.find((value) => value.labels["result"] === "applied")?.value).toBe(1);
      // Once done, later reads of the same file change nothing.
      await sleep(200);
      expect(applied).toHaveLength(2);
    } finally {
      reloader.stop();
    }
  });
});

describe("a CRL that expires while the service runs", () => {
  let expiring: ObservedService | undefined;
  afterAll(async () => {
    await expiring?.stop();
  });

  it("refuses every certificate of its CA, telling the caller and the log that the CRL expired", async () => {
    // Passes the start-up checks (not expired yet), then expires.
    const nextUpdate = new Date(Date.now() + 3_000);
    await writeFile(file("expiring-crl.pem"), await caA.crl({ lastUpdate: new Date(Date.now() - 60_000), nextUpdate }));
    expiring = await startObservedService({
      env: { TLS_CERT: file("cert.pem"), TLS_KEY: file("key.pem"), TLS_CLIENT_CA: caA.cert, TLS_CLIENT_CRL: file("expiring-crl.pem"), TLS_RELOAD_INTERVAL: "off" },
    });
    const at = expiring.app.address.port;
    await sleep(Math.max(0, nextUpdate.getTime() + 1_000 - Date.now()));

    const made = new GrpcOtpClient(`127.0.0.1:${at}`, grpc.credentials.createSsl(Buffer.from(caA.cert), Buffer.from(alpha.key), Buffer.from(alpha.cert)), {
      "grpc.ssl_target_name_override": "localhost",
      "grpc.use_local_subchannel_pool": 1,
    });
    clients.push(made);
    const error = await grpcError(send(made));
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(errorDetails(error).errorInfo).toMatchObject({ reason: "CREDENTIALS_MISSING", metadata: { certificate_refusal: "crl_expired" } });
    expect(error.details).toContain("the client certificate (spiffe://test/alpha) cannot be checked: the CRL of its CA has expired (TLS_CLIENT_CRL;");
    const lines = expiring.logs().filter((line) => String(line["msg"]).startsWith("a client certificate did not verify"));
    expect(lines).toEqual([expect.objectContaining({ reason: "crl_expired", openssl_error: "CRL_HAS_EXPIRED" })]);
    expect(await sampleValue(expiring.metrics.registry, "otp_tls_client_certificate_refusals_total", { reason: "crl_expired" })).toBe(1);
  });
});

describe("a CRL a few seconds early at start-up (clock skew)", () => {
  let early: ObservedService | undefined;
  afterAll(async () => {
    await early?.stop();
  });

  it("starts and warns; its CA's certificates are refused as crl_not_yet_valid (message, log, counter) until its thisUpdate, then they are callers", async () => {
    const thisUpdate = new Date(Math.ceil((Date.now() + 5_000) / 1000) * 1000);
    await writeFile(file("early-crl.pem"), await caA.crl({ revoked: [beta], lastUpdate: thisUpdate }));
    early = await startObservedService({
      env: {
        TLS_CERT: file("cert.pem"),
        TLS_KEY: file("key.pem"),
        TLS_CLIENT_CA: caA.cert,
        TLS_CLIENT_CRL: file("early-crl.pem"),
        AUTH_TOKENS: `tokens:${createHash("sha256").update(token).digest("hex")}`,
        TLS_RELOAD_INTERVAL: "off",
      },
    });
    expect(early.logs().filter((line) => line["this_update"] !== undefined)).toEqual([
      expect.objectContaining({
        level: "warn",
        issuer: "CN=crl test CA A",
        this_update: thisUpdate.toISOString(),
        crl_in_force_kept: false,
        msg: expect.stringMatching(
          /^the CRL of CN=crl test CA A \(TLS_CLIENT_CRL\) is not valid until \S+ \(its thisUpdate, \d+ s ahead of this host's clock: clock skew\?\): TLS refuses every client certificate of that CA until then \(certificate_refusal crl_not_yet_valid\)$/,
        ) as string,
      }),
    ]);
    const at = early.app.address.port;
    const caller = (identity?: KeyPair) => {
      const made = new GrpcOtpClient(
        `127.0.0.1:${at}`,
        grpc.credentials.createSsl(Buffer.from(caA.cert), identity === undefined ? null : Buffer.from(identity.key), identity === undefined ? null : Buffer.from(identity.cert)),
        { "grpc.ssl_target_name_override": "localhost", "grpc.use_local_subchannel_pool": 1 },
      );
      clients.push(made);
      return made;
    };

    const error = await grpcError(send(caller(alpha)));
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(errorDetails(error).errorInfo).toMatchObject({ reason: "CREDENTIALS_MISSING", metadata: { certificate_refusal: "crl_not_yet_valid" } });
    expect(error.details).toContain(
      "the client certificate (spiffe://test/alpha) cannot be checked: the CRL of its CA is not valid yet (TLS_CLIENT_CRL; its thisUpdate is ahead of the service's clock: retry in a few minutes",
    );
    const refused = early.logs().filter((line) => String(line["msg"]).startsWith("a client certificate did not verify"));
    expect(refused).toEqual([expect.objectContaining({ reason: "crl_not_yet_valid", openssl_error: "CRL_NOT_YET_VALID" })]);
    expect(await sampleValue(early.metrics.registry, "otp_tls_client_certificate_refusals_total", { reason: "crl_not_yet_valid" })).toBe(1);
    expect(await sampleValue(early.metrics.registry, "otp_tls_client_certificate_refusals_total", { reason: "other" })).toBe(0);
    // Token callers are not affected.
    expect((await send(caller(), bearer())).state).toBe(DeliveryState.ACCEPTED);
    expect(Date.now()).toBeLessThan(thisUpdate.getTime());

    const running = early;
    await until("the CRL in force", () => Promise.resolve(running.logs().some((line) => String(line["msg"]).startsWith("the CRL of CN=crl test CA A (TLS_CLIENT_CRL) is in force now"))));
    expect((await send(caller(alpha))).state).toBe(DeliveryState.ACCEPTED);
    const revoked = await grpcError(send(caller(beta)));
    expect(errorDetails(revoked).errorInfo?.metadata).toEqual({ certificate_refusal: "revoked" });
  });
});

describe("TLS_CLIENT_CRL at start-up", () => {
  /** The compiled service with CA A's client certificates and `crl`, as a process (its exit code is the test). */
  const startWithCrl = (crl: string) =>
    startServiceProcess({
      NODE_ENV: "test",
      GRPC_ADDR: "127.0.0.1:0",
      METRICS_ADDR: "off",
      TLS_CERT: file("cert.pem"),
      TLS_KEY: file("key.pem"),
      TLS_CLIENT_CA: caA.cert,
      TLS_CLIENT_CRL: crl,
    });

  it("an expired CRL stops the start with exit 78, naming TLS_CLIENT_CRL and why", async () => {
    const expired = file("expired-crl.pem");
    await writeFile(expired, await caA.crl({ lastUpdate: new Date(Date.now() - 2 * 86_400_000), nextUpdate: new Date(Date.now() - 60_000) }));
    const started = startWithCrl(expired);
    expect(await started.exited).toBe(78);
    expect(started.stderr.join("")).toMatch(/configuration error: TLS_CLIENT_CRL: the CRL from CN=crl test CA A expired at \S+ \(its nextUpdate\)/);
  });

  it("a CRL hours early stops the start with exit 78, naming the CA, its thisUpdate and this host's clock", async () => {
    const thisUpdate = new Date(Math.floor((Date.now() + 3 * 3_600_000) / 1000) * 1000);
    await writeFile(file("future-crl.pem"), await caA.crl({ lastUpdate: thisUpdate, nextUpdate: new Date(Date.now() + 86_400_000) }));
    const started = startWithCrl(file("future-crl.pem"));
    expect(await started.exited).toBe(78);
    const stderr = started.stderr.join("");
    expect(stderr).toContain(
      `configuration error: TLS_CLIENT_CRL: the CRL from CN=crl test CA A is not valid until ${thisUpdate.toISOString()} (its thisUpdate), 3 hours ahead of this host's clock (`,
    );
    expect(stderr).toContain("(clock skew?)");
  });
});
