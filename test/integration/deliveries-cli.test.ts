/**
 * `npm run deliveries` as support runs it: the compiled command in its own
 * process, configured like the service, against the Redis a real service
 * process writes. The messages it lists are made the real way: SendOtp
 * through the service to a real SMTP sink (accepting, or refusing with 5xx),
 * a DSN handed to its bounce intake over SMTP, a send refused as suppressed;
 * GetDeliveryStatus says whether the command told the same truth.
 */
import { createHash } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { arfMessage } from "../support/arf-fixtures.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { errorDetails, grpcError, GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { freePort } from "../support/ports.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startRedisCluster, type RedisCluster } from "../support/redis-cluster.js";
import { codeFromMail } from "../support/service.js";
import { killServiceProcesses, runCommand, startServiceProcess, type CommandRun } from "../support/service-process.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const cli = "dist/src/delivery/deliveries-cli.js";
const { sendOtp, getDeliveryStatus } = OtpEmailService.method;
const bounceDomain = "bounces.acme.test";
const secret = "deliveries-cli-test-secret-0123456789abcdef";
const oldSecret = "deliveries-cli-old-secret-0123456789abcdefg";

let redis: RedisServer;
let sink: SmtpSink;
const clients: grpc.Client[] = [];

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
});

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  killServiceProcesses();
  sink.messages.length = 0;
});

afterAll(async () => {
  await Promise.all([sink.close(), redis.stop()]);
});

interface Service {
  /** The environment it runs with: the command gets the same. */
  readonly env: Record<string, string>;
  send(recipient: string, options?: { caller?: string; idempotencyKey?: string; purpose?: Purpose }): Promise<{ messageId: string; state: DeliveryState }>;
  refusal(recipient: string): Promise<grpc.ServiceError>;
  explanation(messageId: string, caller?: string): Promise<string>;
  /** Hands its bounce intake a "no such mailbox" DSN for `messageId` and waits until it is applied. */
  hardBounce(messageId: string, recipient: string): Promise<void>;
  /** Hands its bounce intake a feedback loop's abuse report (ARF) about `messageId` and waits until it is applied. */
  complaint(messageId: string, recipient: string): Promise<void>;
  stop(): Promise<void>;
}

/** Two callers, so the listing shows whose message each was. */
const tokens = { billing: "billing-token-0123456789abcdef", signup: "signup-token-0123456789abcdefgh" };

/** Starts `node dist/src/main.js` on `storeEnv` with a bounce intake and two callers, waiting until it listens. */
async function startService(storeEnv: Record<string, string>, secretEnv: Record<string, string> = { OTP_SECRET: secret }): Promise<Service> {
  const [grpcPort, intakePort] = [await freePort(), await freePort()];
  const env = {
    NODE_ENV: "test",
    GRPC_ADDR: `127.0.0.1:${grpcPort}`,
    METRICS_ADDR: "off",
    MAIL_FROM: '"Acme" <no-reply@acme.test>',
    SMTP_URL: sink.url,
    BOUNCE_SMTP_ADDR: `127.0.0.1:${intakePort}`,
    BOUNCE_DOMAIN: bounceDomain,
    LIMIT_RESEND_COOLDOWN: "0",
    AUTH_TOKENS: Object.entries(tokens)
      .map(([caller, token]) => `${caller}:${createHash("sha256").update(token).digest("hex")}`)
      .join(","),
    ...storeEnv,
    ...secretEnv,
  };
  const service = startServiceProcess(env);
  await service.waitForLine((line) => line["msg"] === "otp-email listening");
  const client = new GrpcOtpClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
  clients.push(client);
  const as = (caller = "billing"): grpc.Metadata => {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${tokens[caller as keyof typeof tokens]}`);
    return metadata;
  };
  return {
    env,
    send: (recipient, options = {}) =>
      grpcUnary(
        client,
        sendOtp,
        { recipient, purpose: options.purpose ?? Purpose.LOGIN, idempotencyKey: options.idempotencyKey ?? "" },
        { metadata: as(options.caller) },
      ),
    refusal: (recipient) => grpcError(grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN }, { metadata: as() })),
    explanation: async (messageId, caller) => (await grpcUnary(client, getDeliveryStatus, { messageId }, { metadata: as(caller) })).explanation,
    async hardBounce(messageId, recipient) {
      const to = `bounce+${messageId}@${bounceDomain}`;
      const intake = createTransport({ host: "127.0.0.1", port: intakePort, secure: false, ignoreTLS: true, logger: false });
      try {
        const block = {
          action: "failed",
          status: "5.1.1",
          finalRecipient: recipient,
          diagnosticCode: `smtp; 550 5.1.1 <${recipient}>: Recipient address rejected: User unknown in virtual mailbox table`,
          remoteMta: "dns; mx.example.com",
        };
        await intake.sendMail({ envelope: { from: "", to }, raw: dsnMessage({ to, envelopeId: messageId, recipients: [block] }) });
      } finally {
        intake.close();
      }
      await service.waitForLine((line) => line["msg"] === "bounce applied" && line["message_id"] === messageId);
    },
    async complaint(messageId, recipient) {
      const to = `fbl@${bounceDomain}`;
      const report = arfMessage({
        to,
        report: [
          "Feedback-Type: abuse",
          "User-Agent: Yahoo!-Mail-Feedback/2.0",
          "Version: 1",
          `Original-Mail-From: <bounce+${messageId}@${bounceDomain}>`,
          `Original-Rcpt-To: <${recipient}>`,
        ],
      });
      const intake = createTransport({ host: "127.0.0.1", port: intakePort, secure: false, ignoreTLS: true, logger: false });
      try {
        await intake.sendMail({ envelope: { from: "", to }, raw: report });
      } finally {
        intake.close();
      }
      await service.waitForLine((line) => line["msg"] === "complaint applied" && line["message_id"] === messageId);
    },
    async stop() {
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    },
  };
}

function deliveries(args: readonly string[], env: Record<string, string>): Promise<CommandRun> {
  return runCommand(cli, args, env);
}

/** The one JSON audit line the command writes to stderr. */
function auditLine(run: CommandRun): Record<string, unknown> {
  const lines = run.stderr.split("\n").filter((line) => line.startsWith("{"));
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0] ?? "") as Record<string, unknown>;
}

interface Listing {
  recipient: string;
  addressesMasked: boolean;
  suppressed: boolean;
  suppressions: Record<string, unknown>[];
  messages: Array<Record<string, unknown> & { messageId: string; explanation: string }>;
  notShown: number;
}

describe("an address's recent messages, made through the real service", () => {
  it("lists sent, relay-refused (5xx), bounced and suppressed messages newest first, as GetDeliveryStatus explains them", async () => {
    const service = await startService({ REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix() });

    // 1: accepted, then hard-bounced; its idempotent replay is the same message, not a second one.
    const first = await service.send("Ana.Lima@Example.com", { idempotencyKey: "first" });
    expect(first.state).toBe(DeliveryState.ACCEPTED);
    const replay = await service.send("Ana.Lima@Example.com", { idempotencyKey: "first" });
    expect(replay.messageId).toBe(first.messageId);
    const [mail] = await sink.waitForMessages(1);
    const code = codeFromMail(mail?.parsed.subject);

    // 2: refused for good by the relay, another caller and purpose.
    sink.respondWith(behave.reply("DATA", 550, "5.7.1", "Message rejected: sender not authorised for ana.lima@example.com"));
    const refusedByRelay = await grpcError(service.send("ana.lima@example.com", { caller: "signup", purpose: Purpose.SIGNUP }));
    expect(errorDetails(refusedByRelay).errorInfo?.reason).toBe("RELAY_REJECTED");
    const failedId = errorDetails(refusedByRelay).errorInfo?.metadata["message_id"] ?? "";

    await service.hardBounce(first.messageId, "Ana.Lima@Example.com");

    // 3: refused as suppressed; and another subaddress, which is another address.
    const suppressed = await service.refusal("ana.lima@example.com");
    expect(errorDetails(suppressed).errorInfo?.reason).toBe("RECIPIENT_SUPPRESSED");
    const suppressedId = errorDetails(suppressed).errorInfo?.metadata["message_id"] ?? "";
    await service.send("ana.lima+work@example.com");

    const json = await deliveries(["ANA.LIMA@example.com", "--json"], service.env);
    expect(json.code, json.stderr).toBe(0);
    const listing = JSON.parse(json.stdout) as Listing;
    expect(listing).toMatchObject({ recipient: "A***@example.com", addressesMasked: true, suppressed: true, notShown: 0 });
    expect(listing.suppressions).toMatchObject([{ keyedBy: "OTP_SECRET", messageId: first.messageId, status: "5.1.1" }]);
    expect(listing.messages.map((message) => message.messageId)).toEqual([suppressedId, failedId, first.messageId]);
    const [refusal, failed, bounced] = listing.messages;
    expect(refusal).toMatchObject({
      state: "SUPPRESSED",
      caller: "billing",
      purpose: "login",
      relayReply: "",
      bounce: null,
      suppressedBy: { messageId: first.messageId, status: "5.1.1" },
    });
    expect(failed).toMatchObject({
      state: "FAILED",
      caller: "signup",
      purpose: "signup",
      relayReply: expect.stringMatching(/^550 5\.7\.1 Message rejected: sender not authorised for a\*\*\*@example\.com$/) as unknown,
      bounce: null,
    });
    expect(bounced).toMatchObject({
      state: "BOUNCED",
      caller: "billing",
      recipient: "A***@example.com",
      relayReply: expect.stringMatching(/^250 /) as unknown,
      bounce: {
        action: "failed",
        status: "5.1.1",
        diagnosticCode: "smtp; 550 5.1.1 <A***@Example.com>: Recipient address rejected: User unknown in virtual mailbox table",
        remoteMta: "dns; mx.example.com",
      },
    });
    // The very sentences GetDeliveryStatus answers each message's caller.
    expect(refusal?.explanation).toBe(await service.explanation(suppressedId));
    expect(failed?.explanation).toBe(await service.explanation(failedId, "signup"));
    expect(bounced?.explanation).toBe(await service.explanation(first.messageId));
    expect(bounced?.explanation).toMatch(/The address does not exist/);

    const audit = auditLine(json);
    expect(audit).toMatchObject({
      level: "info",
      service: "otp-email",
      component: "deliveries-cli",
      msg: "delivery history read",
      action: "lookup",
      recipient: "A***@example.com",
      message_ids: [suppressedId, failedId, first.messageId],
      suppressed: true,
    });
    expect(typeof audit["operator"]).toBe("string");

    // Text: the same facts for a person, and the masking said.
    const text = await deliveries(["ana.lima@example.com"], service.env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^a\*\*\*@example\.com is suppressed until \d{4}-\d\d-\d\dT[\d:.]+Z: SendOtp refuses it \(RECIPIENT_SUPPRESSED\)$/m);
    expect(text.stdout).toContain("3 messages to a***@example.com, newest first:");
    expect(text.stdout).toMatch(new RegExp(`^${failedId}  \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z  FAILED$`, "m"));
    expect(text.stdout).toMatch(/^ {2}caller {6}signup$/m);
    expect(text.stdout).toContain("  relay reply 550 5.7.1 Message rejected: sender not authorised for a***@example.com");
    expect(text.stdout).toMatch(/^ {2}bounce {6}failed 5\.1\.1 at /m);
    expect(text.stdout).toContain("  diagnostic  smtp; 550 5.1.1 <A***@Example.com>: Recipient address rejected");
    expect(text.stdout).toContain(`  explanation ${bounced?.explanation ?? "?"}`);
    expect(text.stdout).toContain("Addresses are masked, as in the service's logs, the one asked about too.");

    // --limit: the newest only, the rest counted.
    const newest = await deliveries(["ana.lima@example.com", "--limit", "1", "--json"], service.env);
    expect(newest.code).toBe(0);
    expect(JSON.parse(newest.stdout)).toMatchObject({ messages: [{ messageId: suppressedId }], notShown: 2 });
    const limitedText = await deliveries(["ana.lima@example.com", "--limit=2"], service.env);
    expect(limitedText.stdout).toContain("2 messages to a***@example.com, newest first; 1 older not shown (--limit):");

    // Another subaddress: its own message only, not suppressed.
    const work = await deliveries(["ana.lima+work@example.com", "--json"], service.env);
    expect(work.code).toBe(0);
    expect(JSON.parse(work.stdout)).toMatchObject({ suppressed: false, messages: [{ state: "ACCEPTED" }] });

    for (const output of [json, text, newest, limitedText, work]) {
      const all = `${output.stdout}${output.stderr}`;
      expect(all.toLowerCase()).not.toContain("ana.lima");
      expect(all).not.toContain(code);
    }
    await service.stop();
  });

  it("a spam complaint: the message's report and the suppression it caused say complaint, not hard bounce", async () => {
    const service = await startService({ REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix() });
    const sent = await service.send("cleo@example.com");
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    await service.complaint(sent.messageId, "cleo@example.com");
    const refused = await service.refusal("cleo@example.com");
    const refusedId = errorDetails(refused).errorInfo?.metadata["message_id"] ?? "";

    const json = await deliveries(["cleo@example.com", "--json"], service.env);
    expect(json.code, json.stderr).toBe(0);
    const listing = JSON.parse(json.stdout) as Listing;
    expect(listing.suppressions).toMatchObject([{ reason: "complaint", feedbackType: "abuse", messageId: sent.messageId }]);
    const [refusal, complained] = listing.messages;
    expect(refusal).toMatchObject({ messageId: refusedId, state: "SUPPRESSED", suppressedBy: { reason: "complaint", messageId: sent.messageId, feedbackType: "abuse" } });
    expect(complained).toMatchObject({ messageId: sent.messageId, state: "DELIVERED", bounce: { action: "complained", feedbackType: "abuse" } });
    expect(complained?.explanation).toBe(await service.explanation(sent.messageId));

    const text = await deliveries(["cleo@example.com"], service.env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^ {2}spam complaint about ${sent.messageId} at \\S+, feedback type abuse \\(keyed by OTP_SECRET`, "m"));
    expect(text.stdout).toContain(`  suppressed  by the spam complaint about ${sent.messageId} (feedback type abuse)`);
    expect(text.stdout).toMatch(/^ {2}report {6}complained \(abuse\) at /m);
    expect(text.stdout).not.toMatch(/hard bounce/);
  });

  it("an address never sent to: exit 3, said so, and the lookup audited all the same", async () => {
    const service = await startService({ REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix() });
    const run = await deliveries(["nobody@example.com"], service.env);
    expect(run.code).toBe(3);
    expect(run.stdout).toContain("n***@example.com is not suppressed: SendOtp sends to it");
    expect(run.stdout).toContain("No message to n***@example.com on record (records are kept for RECORD_RETENTION).");
    expect(auditLine(run)).toMatchObject({ msg: "delivery history read: nothing known", recipient: "n***@example.com", message_ids: [] });
    const json = await deliveries(["nobody@example.com", "--json"], service.env);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stdout)).toEqual({
      recipient: "n***@example.com",
      addressesMasked: true,
      suppressed: false,
      suppressions: [],
      messages: [],
      notShown: 0,
    });
    await service.stop();
  });

  it("keeps the newest 20 per address, and a replayed idempotency key adds none", async () => {
    const prefix = randomPrefix();
    const service = await startService({ REDIS_URL: redis.url, REDIS_PREFIX: prefix, LIMIT_RECIPIENT: "off" });
    const ids: string[] = [];
    for (let i = 0; i < 22; i++) ids.push((await service.send("many@example.com", { idempotencyKey: `many-${i}` })).messageId);
    await service.send("many@example.com", { idempotencyKey: "many-21" });
    const run = await deliveries(["many@example.com", "--limit", "20", "--json"], service.env);
    const listing = JSON.parse(run.stdout) as Listing;
    expect(listing.messages.map((message) => message.messageId)).toEqual(ids.slice(2).reverse());
    expect(listing.notShown).toBe(0);
    // In Redis: one list under the prefix, holding ids only (no address), expiring with the records.
    const admin = new Redis(redis.url);
    try {
      const keys = await admin.keys(`${prefix}sent:*`);
      expect(keys).toHaveLength(1);
      const stored = await admin.lrange(keys[0] ?? "", 0, -1);
      expect(stored).toEqual(ids.slice(2).reverse());
      expect(keys[0]).not.toContain("many");
      const ttl = await admin.pttl(keys[0] ?? "");
      // RECORD_RETENTION's default: 7 days.
      expect(ttl).toBeGreaterThan(7 * 86_400_000 - 60_000);
      expect(ttl).toBeLessThanOrEqual(7 * 86_400_000);
    } finally {
      admin.disconnect();
    }
    await service.stop();
  });

  it("during an OTP_SECRET rotation: messages sent under the previous secret are listed too, keyed by it", async () => {
    const prefix = randomPrefix();
    const store = { REDIS_URL: redis.url, REDIS_PREFIX: prefix };
    const before = await startService(store, { OTP_SECRET: oldSecret });
    const old = await before.send("rui@example.com");
    await before.stop();

    const rotation = { OTP_SECRET: secret, OTP_SECRET_PREVIOUS: oldSecret, OTP_SECRET_ROTATED_AT: new Date(Date.now() - 60_000).toISOString() };
    const after = await startService(store, rotation);
    const recent = await after.send("rui@example.com");

    const run = await deliveries(["rui@example.com", "--json"], after.env);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({
      messages: [
        { messageId: recent.messageId, keyedBy: "OTP_SECRET" },
        { messageId: old.messageId, keyedBy: "OTP_SECRET_PREVIOUS" },
      ],
    });
    const text = await deliveries(["rui@example.com"], after.env);
    expect(text.stdout).toMatch(/^ {2}keyed by {4}OTP_SECRET_PREVIOUS$/m);
    // Without OTP_SECRET_PREVIOUS the older message is out of reach: the rotation's settings are what find it.
    const newOnly = await deliveries(["rui@example.com", "--json"], { ...after.env, OTP_SECRET_PREVIOUS: "", OTP_SECRET_ROTATED_AT: "" });
    expect(JSON.parse(newOnly.stdout)).toMatchObject({ messages: [{ messageId: recent.messageId }] });
    expect((JSON.parse(newOnly.stdout) as Listing).messages).toHaveLength(1);
    await after.stop();
  });
});

describe("on a Redis Cluster", () => {
  let cluster: RedisCluster;

  beforeAll(async () => {
    cluster = await startRedisCluster();
  });

  afterAll(async () => {
    await cluster.stop();
  });

  it("lists the messages the service indexed beside their records, whatever slots they landed in", async () => {
    const service = await startService({ REDIS_URL: cluster.seeds, REDIS_CLUSTER: "true", REDIS_PREFIX: randomPrefix() });
    const sent = [await service.send("eva@example.com"), await service.send("eva@example.com", { caller: "signup" })];
    await service.hardBounce(sent[0]?.messageId ?? "", "eva@example.com");
    const run = await deliveries(["eva@example.com", "--json"], service.env);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({
      suppressed: true,
      messages: [
        { messageId: sent[1]?.messageId, caller: "signup", state: "ACCEPTED" },
        { messageId: sent[0]?.messageId, caller: "billing", state: "BOUNCED" },
      ],
    });
    await service.stop();
  });
});

describe("what the command refuses", () => {
  const env = (): Record<string, string> => ({ NODE_ENV: "test", REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix(), OTP_SECRET: secret });

  it("an address SendOtp would refuse: exit 2, the rule named, the input not echoed, nothing audited", async () => {
    const cases: [string, RegExp][] = [
      ["ana@example.com\r\nBcc: eve@evil.test", /must not contain CR, LF or other control characters/],
      [`${"a".repeat(300)}@example.com`, /must be at most 254 characters/],
      ["not-an-address", /must be an address of the form local@domain/],
    ];
    for (const [address, rule] of cases) {
      const run = await deliveries([address], env());
      expect(run.code, address.slice(0, 40)).toBe(2);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(/^otp-email deliveries: the address is not valid: /);
      expect(run.stderr).toMatch(rule);
      expect(run.stderr).not.toContain("eve@evil.test");
      expect(run.stderr).not.toContain("aaaaaaaaaa");
      expect(run.stderr).not.toContain("not-an-address");
      expect(run.stderr).not.toContain("{");
    }
  });

  it("usage errors, a bad --limit among them: exit 2 with the usage, the value not echoed", async () => {
    for (const args of [[], ["a@example.com", "b@example.com"], ["a@example.com", "--jsn"], ["a@example.com", "--limit"], ["a@example.com", "--limit", "0"], ["a@example.com", "--limit", "21"], ["a@example.com", "--limit=x@evil.test"]]) {
      const run = await deliveries(args, env());
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr).toContain("usage: npm run --silent deliveries -- <address> [--json] [--limit N]");
      expect(run.stderr).not.toContain("evil.test");
    }
    const limit = await deliveries(["a@example.com", "--limit", "99"], env());
    expect(limit.stderr).toMatch(/^otp-email deliveries: --limit takes a whole number from 1 to 20$/m);
    const help = await deliveries(["--help"], env());
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("usage: npm run --silent deliveries");
  });

  it("without REDIS_URL or OTP_SECRET: exit 78, saying why the records are out of reach", async () => {
    const noRedis = await deliveries(["ana@example.com"], { NODE_ENV: "test", OTP_SECRET: secret });
    expect(noRedis.code).toBe(78);
    expect(noRedis.stderr).toMatch(/^otp-email deliveries: configuration error: REDIS_URL is not set: .*in the memory of the running service process/);
    const noSecret = await deliveries(["ana@example.com"], { NODE_ENV: "test", REDIS_URL: redis.url });
    expect(noSecret.code).toBe(78);
    expect(noSecret.stderr).toMatch(/^otp-email deliveries: configuration error: OTP_SECRET is not set: /);
  });
});

describe("when Redis does not answer", () => {
  it("nothing listening: exit 69 at once, saying so, with no password from REDIS_URL, and the attempt audited", async () => {
    const port = await freePort();
    const run = await deliveries(["ana@example.com"], {
      NODE_ENV: "test",
      REDIS_URL: `redis://:hunter2-password@127.0.0.1:${port}`,
      REDIS_COMMAND_TIMEOUT: "500ms",
      OTP_SECRET: secret,
    });
    expect(run.code).toBe(69);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(new RegExp(`^otp-email deliveries: Redis at 127\\.0\\.0\\.1:${port} did not answer: .*ECONNREFUSED`, "m"));
    expect(run.stderr).not.toContain("hunter2");
    expect(auditLine(run)).toMatchObject({ level: "warn", msg: "delivery history not read: Redis did not answer", recipient: "a***@example.com" });
    expect(run.elapsedMs).toBeLessThan(10_000);
  });

  it("REDIS_SENTINEL_MASTER and no sentinel listening: exit 69 naming the sentinel and why it was not reached", async () => {
    const port = await freePort();
    const run = await deliveries(["ana@example.com"], {
      NODE_ENV: "test",
      REDIS_URL: `redis://:hunter2-password@127.0.0.1:${port}`,
      REDIS_SENTINEL_MASTER: "mymaster",
      REDIS_COMMAND_TIMEOUT: "500ms",
      OTP_SECRET: secret,
    });
    expect(run.code).toBe(69);
    expect(run.stderr).toContain(
      `otp-email deliveries: the Redis master of mymaster (sentinels 127.0.0.1:${port}) did not answer: ` +
        `sentinel 127.0.0.1:${port}: unreachable (connect ECONNREFUSED 127.0.0.1:${port})\n`,
    );
    expect(run.stderr).not.toContain("hunter2");
  });
});
