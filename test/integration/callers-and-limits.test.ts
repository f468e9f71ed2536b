/**
 * Callers and limits over the wire: whole service instances (startApp) on
 * real gRPC sockets, real Redis (the run's shared one, a fresh prefix per
 * fleet) and a real SMTP sink.
 *
 * - exactness: 1,000 concurrent SendOtp spread over 3 instances on one Redis
 *   admit exactly the limit (recipient, caller, global), and exactly that
 *   many mails reach the sink; the same on one dev-mode instance with the
 *   memory store
 * - windows pass on an injected clock, resend_available_at is exact
 * - failed verifications are capped per recipient across fresh codes
 * - callers: tokens, client certificates (valid; expired, untrusted or for
 *   servers only, each refused with its reason in the message and the log),
 *   purposes, and one caller never seeing another's messages or codes
 * - afterwards no key under any prefix used lacks a TTL
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import type { Clock } from "../../src/clock.js";
import { openCertificateWorkshop, type CertificateWorkshop, type KeyPair } from "../support/certs.js";
import {
  bearer,
  call,
  detailsOf,
  failure,
  getDeliveryStatus,
  newToken,
  otpClient,
  retryDelayMs,
  sendOtp,
  servingStatus,
  startInstance,
  tally,
  untilServing,
  verifyOtp,
  type Instance,
} from "../support/otp-instances.js";
import { randomPrefix, redisUrlForTests, scanPrefix } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const redisUrl = redisUrlForTests();
const alpha = newToken("alpha");
const beta = newToken("beta");
const tokens = `${alpha.entry},${beta.entry}`;

/** Every Redis prefix a test used, checked for keys without a TTL at the end. */
const prefixesUsed: string[] = [];
const running: Instance[] = [];
let sink: SmtpSink;

beforeAll(async () => {
  sink = await startSmtpSink();
});

let transactionsBefore = 0;
/** Mail transactions the sink saw during this test. */
const transactions = (): number => sink.transactions() - transactionsBefore;

beforeEach(() => {
  transactionsBefore = sink.transactions();
  sink.messages.length = 0;
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((instance) => instance.stop()));
});

afterAll(async () => {
  await sink.close();
  const admin = new Redis(redisUrl);
  try {
    const withoutTtl: string[] = [];
    let seen = 0;
    for (const prefix of prefixesUsed) {
      const keys = await scanPrefix(admin, prefix);
      seen += keys.length;
      for (const key of keys) if ((await admin.pttl(key)) === -1) withoutTtl.push(key);
      if (keys.length > 0) await admin.del(...keys);
    }
    expect(seen, "the tests wrote keys").toBeGreaterThan(0);
    expect(withoutTtl, "keys without a TTL").toEqual([]);
  } finally {
    await admin.quit();
  }
});

/** Starts `count` instances sharing one store (one Redis prefix) and the sink. */
async function fleet(
  count: number,
  env: Record<string, string>,
  options: { store?: "redis" | "memory"; clock?: Clock; credentials?: grpc.ChannelCredentials; channelOptions?: grpc.ChannelOptions } = {},
): Promise<Instance[]> {
  const storeEnv: Record<string, string> = {};
  if (options.store !== "memory") {
    const prefix = randomPrefix();
    prefixesUsed.push(prefix);
    Object.assign(storeEnv, { REDIS_URL: redisUrl, REDIS_PREFIX: prefix });
  }
  const started = await Promise.all(
    Array.from({ length: count }, () =>
      startInstance({
        env: { SMTP_URL: sink.url, ...storeEnv, ...env },
        ...(options.clock ? { clock: options.clock } : {}),
        ...(options.credentials ? { credentials: options.credentials } : {}),
        ...(options.channelOptions ? { channelOptions: options.channelOptions } : {}),
      }),
    ),
  );
  running.push(...started);
  await Promise.all(started.map((instance) => untilServing(instance)));
  return started;
}

const RESOURCE_EXHAUSTED = grpc.status.RESOURCE_EXHAUSTED;

/** Epoch ms of a response timestamp (NaN when unset, which fails any comparison). */
const msOf = (timestamp: Timestamp | undefined): number => (timestamp === undefined ? Number.NaN : timestampMs(timestamp));

describe.each([
  { store: "redis" as const, instances: 3 },
  { store: "memory" as const, instances: 1 },
])("exact limits under 1,000 concurrent SendOtp ($store store, $instances instance(s))", ({ store, instances: count }) => {
  const burst = (instances: Instance[], request: (i: number) => { recipient: string; token: string }) =>
    tally(
      Array.from({ length: 1000 }, (_, i) => {
        const { recipient, token } = request(i);
        const instance = instances[i % instances.length];
        return call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }, bearer(token));
      }),
    );

  it("per recipient: exactly 5 accepted, 995 RESOURCE_EXHAUSTED, exactly 5 mails", async () => {
    const instances = await fleet(count, { AUTH_TOKENS: tokens, LIMIT_RECIPIENT: "5/15m", LIMIT_RESEND_COOLDOWN: "0" }, { store });
    const { codes, errors } = await burst(instances, () => ({ recipient: "victim@example.com", token: alpha.token }));

    expect(Object.fromEntries(codes)).toEqual({ 0: 5, [RESOURCE_EXHAUSTED]: 995 });
    for (const error of errors) expect(detailsOf(error).errorInfo?.reason).toBe("RECIPIENT_RATE_LIMITED");
    const sample = errors[0];
    expect(sample.details).toMatch(/^limit recipient reached: at most 5 codes per 15m to one recipient; retry in \d+s$/);
    expect(retryDelayMs(sample)).toBeGreaterThan(14 * 60_000);
    expect(detailsOf(sample).quotaFailure?.violations).toMatchObject([
      { subject: "recipient", quotaId: "recipient:15m", quotaValue: 5n, description: "at most 5 codes per 15m to one recipient" },
    ]);
    // Every admitted send has been answered ACCEPTED by the sink: nothing more is on its way.
    expect(transactions()).toBe(5);
    expect(sink.messages.map((m) => m.envelope.rcptTo)).toEqual(Array.from({ length: 5 }, () => ["victim@example.com"]));
  });

  it("per recipient mailbox: 1,000 subaddresses of one mailbox get exactly 5 codes between them", async () => {
    const instances = await fleet(count, { AUTH_TOKENS: tokens, LIMIT_RECIPIENT: "5/15m", LIMIT_RESEND_COOLDOWN: "0" }, { store });
    const { codes, errors } = await burst(instances, (i) => ({ recipient: `Victim+${i}@example.com`, token: alpha.token }));

    expect(Object.fromEntries(codes)).toEqual({ 0: 5, [RESOURCE_EXHAUSTED]: 995 });
    for (const error of errors) expect(detailsOf(error).errorInfo?.reason).toBe("RECIPIENT_RATE_LIMITED");
    expect(transactions()).toBe(5);
  });

  it("per caller: exactly 5 of one caller's sends accepted; another caller is not affected", async () => {
    const instances = await fleet(count, { AUTH_TOKENS: tokens, LIMIT_CALLER: "5/1m" }, { store });
    const { codes, errors } = await burst(instances, (i) => ({ recipient: `user${i}@example.com`, token: alpha.token }));

    expect(Object.fromEntries(codes)).toEqual({ 0: 5, [RESOURCE_EXHAUSTED]: 995 });
    for (const error of errors) expect(detailsOf(error).errorInfo?.reason).toBe("CALLER_QUOTA_EXCEEDED");
    expect(detailsOf(errors[0]).quotaFailure?.violations[0]?.subject).toBe("caller:alpha");
    expect(transactions()).toBe(5);

    await call(instances[0].client, sendOtp, { recipient: "other@example.com", purpose: Purpose.LOGIN }, bearer(beta.token));
    expect(sink.messages).toHaveLength(6);
  });

  it("global budget: exactly 5 sends accepted across callers, exactly 5 mails", async () => {
    const instances = await fleet(count, { AUTH_TOKENS: tokens, LIMIT_GLOBAL: "5/1m", LIMIT_CALLER: "off" }, { store });
    const { codes, errors } = await burst(instances, (i) => ({
      recipient: `user${i}@example.com`,
      token: i % 2 === 0 ? alpha.token : beta.token,
    }));

    expect(Object.fromEntries(codes)).toEqual({ 0: 5, [RESOURCE_EXHAUSTED]: 995 });
    for (const error of errors) expect(detailsOf(error).errorInfo?.reason).toBe("GLOBAL_BUDGET_EXHAUSTED");
    expect(transactions()).toBe(5);
    expect(sink.messages).toHaveLength(5);
  });
});

describe("windows on an injected clock", () => {
  it("resend_available_at is exact, a full window refuses until its oldest send leaves, then admits", async () => {
    let now = Date.UTC(2026, 0, 1, 9, 0, 0);
    const clock: Clock = { now: () => now };
    const [a, b] = await fleet(2, { AUTH_TOKENS: tokens, LIMIT_RECIPIENT: "2/15m", LIMIT_RESEND_COOLDOWN: "30s" }, { clock });
    const t0 = now;
    const send = (instance: Instance) =>
      call(instance.client, sendOtp, { recipient: "pat@example.com", purpose: Purpose.SIGNUP }, bearer(alpha.token));

    const first = await send(a);
    expect(msOf(first.resendAvailableAt)).toBe(t0 + 30_000);

    now = t0 + 10_000;
    const refusedCode = { recipient: "pat@example.com", purpose: Purpose.SIGNUP, code: "999999" };
    const cooling = await failure(call(b.client, sendOtp, refusedCode, bearer(alpha.token)));
    expect(cooling.code).toBe(RESOURCE_EXHAUSTED);
    expect(detailsOf(cooling).errorInfo?.reason).toBe("RESEND_COOLDOWN");
    expect(retryDelayMs(cooling)).toBe(20_000);
    // The refused send stored no code and sent no mail.
    expect((await call(a.client, verifyOtp, refusedCode, bearer(alpha.token))).result).toBe(VerifyResult.INVALID);
    expect(sink.messages).toHaveLength(1);

    now = t0 + 30_000;
    const second = await send(b);
    // The window (2 per 15m) is full now: the next send waits for the first to leave it.
    expect(msOf(second.resendAvailableAt)).toBe(t0 + 15 * 60_000);

    now = t0 + 15 * 60_000 - 1;
    const full = await failure(send(a));
    expect(detailsOf(full).errorInfo?.reason).toBe("RECIPIENT_RATE_LIMITED");
    expect(retryDelayMs(full)).toBe(1);

    now = t0 + 15 * 60_000;
    const third = await send(a);
    expect(third.state).toBe(DeliveryState.ACCEPTED);
    expect(msOf(third.resendAvailableAt)).toBe(t0 + 15 * 60_000 + 30_000);
    expect(sink.messages).toHaveLength(3);
  });

  it("an idempotent replay's resend_available_at is when the limits will admit the send, read from them without spending", async () => {
    let now = Date.UTC(2026, 0, 1, 10, 0, 0);
    const clock: Clock = { now: () => now };
    const [a, b] = await fleet(2, { AUTH_TOKENS: tokens, LIMIT_RECIPIENT: "2/15m", LIMIT_RESEND_COOLDOWN: "30s" }, { clock });
    const t0 = now;
    const request = { recipient: "rio@example.com", purpose: Purpose.LOGIN, idempotencyKey: "replay-1" };

    const first = await call(a.client, sendOtp, request, bearer(alpha.token));
    expect(msOf(first.resendAvailableAt)).toBe(t0 + 30_000);

    // A replay (on another instance) 10 s later: the cooldown still has 20 s to run, not "now".
    now = t0 + 10_000;
    const replayed = await call(b.client, sendOtp, request, bearer(alpha.token));
    expect(replayed.messageId).toBe(first.messageId);
    expect(msOf(replayed.resendAvailableAt)).toBe(t0 + 30_000);

    // Another caller's send fills the mailbox's window (2 per 15m): the replay says so.
    await call(a.client, sendOtp, { recipient: "rio@example.com", purpose: Purpose.LOGIN }, bearer(beta.token));
    now = t0 + 20_000;
    expect(msOf((await call(a.client, sendOtp, request, bearer(alpha.token))).resendAvailableAt)).toBe(t0 + 15 * 60_000);
    expect(sink.messages.filter((m) => m.envelope.rcptTo.includes("rio@example.com"))).toHaveLength(2);

    // The replays spent nothing: exactly then, the send is admitted.
    now = t0 + 15 * 60_000;
    const next = await call(b.client, sendOtp, { recipient: "rio@example.com", purpose: Purpose.LOGIN }, bearer(alpha.token));
    expect(next.state).toBe(DeliveryState.ACCEPTED);
  });

  it("failed verifications are capped per recipient: a fresh code does not reset the count, a right guess is not counted", async () => {
    const [instance] = await fleet(1, { AUTH_TOKENS: tokens, LIMIT_VERIFY_FAILURES: "3/1d", LIMIT_RESEND_COOLDOWN: "0" });
    const { client } = instance;
    const auth = bearer(alpha.token);
    const recipient = "sam@example.com";
    const verify = (code: string) => call(client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code }, auth);

    await call(client, sendOtp, { recipient, purpose: Purpose.LOGIN, code: "1111" }, auth);
    expect((await verify("0000")).result).toBe(VerifyResult.INVALID);
    expect((await verify("0001")).result).toBe(VerifyResult.INVALID);
    expect((await verify("1111")).result).toBe(VerifyResult.VERIFIED);

    await call(client, sendOtp, { recipient, purpose: Purpose.LOGIN, code: "2222" }, auth);
    expect((await verify("0002")).result).toBe(VerifyResult.INVALID);
    const capped = await failure(verify("2222"));
    expect(capped.code).toBe(RESOURCE_EXHAUSTED);
    expect(capped.details).toMatch(/^limit verify_failures reached: at most 3 failed verifications per 1d for one recipient/);
    expect(detailsOf(capped).errorInfo?.reason).toBe("VERIFY_FAILURES_EXCEEDED");
    expect(detailsOf(capped).quotaFailure?.violations).toHaveLength(1);
    expect(retryDelayMs(capped)).toBeGreaterThan(23 * 3_600_000);

    // Another caller's verifications are its own world (and it has no code here).
    expect((await call(client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code: "2222" }, bearer(beta.token))).result).toBe(
      VerifyResult.NOT_FOUND,
    );
  });
});

const run = promisify(execFile);
const bufBin = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));

describe("callers with bearer tokens", () => {
  let instance: Instance;

  beforeAll(async () => {
    [instance] = (await fleet(1, { AUTH_TOKENS: tokens, CALLER_PURPOSES: "beta:login" })) as [Instance];
    running.length = 0; // kept for the whole block, stopped in afterAll
  });

  afterAll(async () => {
    await instance.stop();
  });

  const send = (metadata: grpc.Metadata, purpose = Purpose.LOGIN, recipient = "lee@example.com") =>
    call(instance.client, sendOtp, { recipient, purpose }, metadata);

  it.each([
    ["no token", new grpc.Metadata(), "CREDENTIALS_MISSING"],
    ["a wrong token", bearer("not-a-configured-token"), "TOKEN_INVALID"],
    ["a token hash instead of the token", bearer(alpha.entry.split(":")[1] ?? ""), "TOKEN_INVALID"],
    ["another scheme", (() => {
      const m = new grpc.Metadata();
      m.set("authorization", `Basic ${Buffer.from("alpha:x").toString("base64")}`);
      return m;
    })(), "AUTHORIZATION_MALFORMED"],
  ])("%s: UNAUTHENTICATED on every method, no mail", async (_name, metadata, reason) => {
    for (const attempt of [
      send(metadata),
      call(instance.client, verifyOtp, { recipient: "lee@example.com", purpose: Purpose.LOGIN, code: "123456" }, metadata),
      call(instance.client, getDeliveryStatus, { messageId: "01kb2m7q3c5xw9p8h2g4r6t0vn" }, metadata),
    ]) {
      const error = await failure(attempt);
      expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(detailsOf(error).errorInfo?.reason).toBe(reason);
    }
    expect(transactions()).toBe(0);
  });

  it("health and reflection need no credentials", async () => {
    expect(await servingStatus(instance)).toBe(ServingStatus.SERVING);
    const { stdout } = await run(bufBin, [
      "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", `http://${instance.address}`,
    ]);
    expect(stdout).toContain("otp.v1.OtpEmailService");
  });

  it("a caller restricted to some purposes gets PERMISSION_DENIED for the others", async () => {
    for (const attempt of [
      send(bearer(beta.token), Purpose.SIGNUP),
      call(instance.client, verifyOtp, { recipient: "lee@example.com", purpose: Purpose.PASSWORD_RESET, code: "1234" }, bearer(beta.token)),
    ]) {
      const error = await failure(attempt);
      expect(error.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(detailsOf(error).errorInfo?.reason).toBe("PURPOSE_NOT_ALLOWED");
    }
    expect(transactions()).toBe(0);
    await send(bearer(alpha.token), Purpose.SIGNUP, "kim@example.com");
  });

  it("caller B can neither read A's message nor verify A's code; A can", async () => {
    const guess = { recipient: "ash@example.com", purpose: Purpose.LOGIN, code: "482913" };
    const sent = await call(instance.client, sendOtp, guess, bearer(alpha.token));
    const status = (messageId: string) => call(instance.client, getDeliveryStatus, { messageId }, bearer(beta.token));

    const hidden = await failure(status(sent.messageId));
    expect(hidden.code).toBe(grpc.status.NOT_FOUND);
    // Exactly what an unknown id gets: existence is not leaked.
    expect(hidden.details).toBe((await failure(status("01kb2m7q3c5xw9p8h2g4r6t0vn"))).details);

    expect((await call(instance.client, verifyOtp, guess, bearer(beta.token))).result).toBe(VerifyResult.NOT_FOUND);
    expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId }, bearer(alpha.token))).state).toBe(
      DeliveryState.ACCEPTED,
    );
    expect((await call(instance.client, verifyOtp, guess, bearer(alpha.token))).result).toBe(VerifyResult.VERIFIED);
  });

  it("idempotency keys are scoped per caller: the same key from two callers is two requests", async () => {
    const request = (recipient: string) => ({ recipient, purpose: Purpose.LOGIN, idempotencyKey: "order-4711" });
    const first = await call(instance.client, sendOtp, request("idem-a@example.com"), bearer(alpha.token));
    const other = await call(instance.client, sendOtp, request("idem-b@example.com"), bearer(beta.token));
    expect(other.messageId).not.toBe(first.messageId);
    const replay = await call(instance.client, sendOtp, request("idem-a@example.com"), bearer(alpha.token));
    expect(replay.messageId).toBe(first.messageId);
    expect(transactions()).toBe(2);
  });

  it("the README's call with a token works (buf curl standing in for grpcurl)", async () => {
    const { stdout } = await run(bufBin, [
      "curl", "--protocol", "grpc", "--http2-prior-knowledge",
      "-H", `authorization: Bearer ${alpha.token}`,
      "-d", JSON.stringify({ recipient: "readme@example.com", purpose: "PURPOSE_LOGIN" }),
      `http://${instance.address}/otp.v1.OtpEmailService/SendOtp`,
    ]);
    expect(JSON.parse(stdout)).toMatchObject({ state: "DELIVERY_STATE_ACCEPTED" });
  });

  it("says at start-up that callers must authenticate", () => {
    expect(instance.logs.find((l) => l["msg"] === "callers must authenticate")).toMatchObject({
      token_callers: ["alpha", "beta"],
      client_certificates: false,
    });
    expect(instance.logs.some((l) => String(l["msg"]).startsWith("authentication is off"))).toBe(false);
  });
});

describe("development with no caller configured", () => {
  it("admits every call as the anonymous caller dev, and says so at start-up", async () => {
    const [instance] = (await fleet(1, {})) as [Instance];
    expect(instance.logs.find((l) => String(l["msg"]).startsWith("authentication is off"))).toMatchObject({
      level: "warn",
      caller: "dev",
    });
    const sent = await call(instance.client, sendOtp, { recipient: "dev@example.com", purpose: Purpose.LOGIN });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    expect(instance.logs.find((l) => l["msg"] === "otp queued")).toMatchObject({ caller: "dev" });
  });
});

describe("callers with client certificates (mTLS)", () => {
  let workshop: CertificateWorkshop;
  let instance: Instance;
  let caPem: string;
  const clients: grpc.Client[] = [];
  let certs: Record<"alpha" | "dnsOnly" | "expired" | "untrusted" | "serverOnly", KeyPair>;

  beforeAll(async () => {
    workshop = await openCertificateWorkshop();
    const ca = await workshop.newCa("otp test callers CA");
    const otherCa = await workshop.newCa("someone else's CA");
    caPem = ca.cert;
    const server = await ca.issue({ cn: "otp-email", san: "DNS:localhost,IP:127.0.0.1", server: true });
    certs = {
      alpha: await ca.issue({ cn: "ignored-cn", san: "URI:spiffe://test/alpha,DNS:alpha.internal" }),
      dnsOnly: await ca.issue({ cn: "ignored-cn", san: "DNS:reports.internal" }),
      expired: await ca.issue({ cn: "old", san: "URI:spiffe://test/alpha", days: -1 }),
      untrusted: await otherCa.issue({ cn: "intruder", san: "URI:spiffe://test/alpha" }),
      // A server certificate (serverAuth, no clientAuth) handed to a caller by mistake.
      serverOnly: await ca.issue({ cn: "otp-email-peer", san: "DNS:peer.internal", server: true }),
    };
    [instance] = (await fleet(1, {
      TLS_CERT: server.cert,
      TLS_KEY: server.key,
      TLS_CLIENT_CA: ca.cert,
      AUTH_TOKENS: beta.entry,
      CALLER_PURPOSES: "spiffe://test/alpha:login",
    }, { credentials: grpc.credentials.createSsl(Buffer.from(ca.cert)), channelOptions: tlsName })) as [Instance];
    running.length = 0;
  });

  afterAll(async () => {
    for (const client of clients) client.close();
    await instance.stop();
    await workshop.cleanup();
  });

  function clientWith(pair: KeyPair | undefined): grpc.Client {
    const credentials = grpc.credentials.createSsl(
      Buffer.from(caPem),
      pair === undefined ? null : Buffer.from(pair.key),
      pair === undefined ? null : Buffer.from(pair.cert),
    );
    const client = otpClient(instance.address, credentials, tlsName);
    clients.push(client);
    return client;
  }

  const login = (recipient: string) => ({ recipient, purpose: Purpose.LOGIN });
  // The server certificate's DNS name; connecting to 127.0.0.1 by name avoids an IP as TLS SNI.
  const tlsName: grpc.ChannelOptions = { "grpc.ssl_target_name_override": "localhost" };

  it("a verified certificate names the caller: URI SAN first, else DNS SAN; its purposes apply", async () => {
    const alphaClient = clientWith(certs.alpha);
    const sent = await call(alphaClient, sendOtp, login("tls-a@example.com"));
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    expect(instance.logs.find((l) => l["msg"] === "otp queued")).toMatchObject({ caller: "spiffe://test/alpha" });
    const denied = await failure(call(alphaClient, sendOtp, { recipient: "tls-a@example.com", purpose: Purpose.SIGNUP }));
    expect(denied.code).toBe(grpc.status.PERMISSION_DENIED);

    await call(clientWith(certs.dnsOnly), sendOtp, { recipient: "tls-d@example.com", purpose: Purpose.SIGNUP });
    expect(instance.logs.filter((l) => l["msg"] === "otp queued").map((l) => l["caller"])).toEqual([
      "spiffe://test/alpha",
      "reports.internal",
    ]);
  });

  /** The warnings about client certificates that did not verify, so far. */
  const refusalLines = () => instance.logs.filter((l) => String(l["msg"]).startsWith("a client certificate did not verify"));

  it.each([
    ["an expired certificate", "expired", "expired", "CERT_HAS_EXPIRED", "spiffe://test/alpha", /the client certificate \(spiffe:\/\/test\/alpha\) has expired/],
    ["a certificate from an untrusted CA", "untrusted", "untrusted", "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "spiffe://test/alpha", /the client certificate \(spiffe:\/\/test\/alpha\) is not signed by a client CA of this service \(TLS_CLIENT_CA\)/],
    ["a certificate for servers only", "serverOnly", "other", "INVALID_PURPOSE", "peer.internal", /the client certificate \(peer.internal\) did not verify \(OpenSSL: INVALID_PURPOSE\)/],
  ] as const)("%s is no credential: UNAUTHENTICATED saying why, no mail; the log names the certificate and why, once per connection", async (_name, which, reason, code, name, said) => {
    const before = refusalLines().length;
    const refused = clientWith(certs[which]);
    const error = await failure(call(refused, sendOtp, login("tls-x@example.com")));
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    // The reason callers handle stays; the why is in the message and in ErrorInfo's metadata.
    expect(detailsOf(error).errorInfo?.reason).toBe("CREDENTIALS_MISSING");
    expect(detailsOf(error).errorInfo?.metadata).toEqual({ certificate_refusal: reason });
    expect(error.details).toMatch(said);
    expect(error.details).toMatch(/so it counts as none; send the metadata `authorization: Bearer <token>` or a valid client certificate signed by the configured CA$/);
    expect(transactions()).toBe(0);

    // A retry on the same connection is refused alike and adds no line.
    expect((await failure(call(refused, sendOtp, login("tls-x@example.com")))).details).toMatch(said);
    const lines = refusalLines().slice(before);
    const certificate = new X509Certificate(certs[which].cert);
    expect(lines).toEqual([
      expect.objectContaining({
        level: "warn",
        reason,
        openssl_error: code,
        client_certificate: {
          name,
          subject: certificate.subject.replace(/\n/g, ", "),
          issuer: certificate.issuer.replace(/\n/g, ", "),
          serial: certificate.serialNumber,
          not_before: certificate.validFromDate.toISOString(),
          not_after: certificate.validToDate.toISOString(),
        },
      }),
    ]);
    // Nothing of the peer's address.
    expect(JSON.stringify(lines)).not.toMatch(/127\.0\.0\.1/);
  });

  it("a token caller whose connection brought a certificate that did not verify is the token's caller", async () => {
    const sent = await call(clientWith(certs.expired), sendOtp, login("tls-t@example.com"), bearer(beta.token));
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    expect(instance.logs.filter((l) => l["msg"] === "otp queued").at(-1)).toMatchObject({ caller: "beta" });
  });

  it("over the same TLS port a token caller needs no certificate; nothing at all is UNAUTHENTICATED", async () => {
    const plain = clientWith(undefined);
    await call(plain, sendOtp, login("tls-b@example.com"), bearer(beta.token));
    const error = await failure(call(plain, sendOtp, login("tls-b@example.com")));
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    // No certificate is no refused certificate: the message says what to send, no ErrorInfo metadata.
    expect(error.details).toMatch(/^no credentials: send the metadata `authorization: Bearer <token>` or a client certificate signed by the configured CA/);
    expect(detailsOf(error).errorInfo?.metadata).toEqual({});
  });

  it("a certificate and a token naming different callers are refused", async () => {
    const error = await failure(call(clientWith(certs.alpha), sendOtp, login("tls-c@example.com"), bearer(beta.token)));
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(detailsOf(error).errorInfo?.reason).toBe("CREDENTIALS_DISAGREE");
  });

  it("the token caller cannot read the certificate caller's message", async () => {
    const sent = await call(clientWith(certs.alpha), sendOtp, login("tls-e@example.com"));
    const error = await failure(call(clientWith(undefined), getDeliveryStatus, { messageId: sent.messageId }, bearer(beta.token)));
    expect(error.code).toBe(grpc.status.NOT_FOUND);
  });
});
