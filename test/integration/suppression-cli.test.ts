/**
 * `npm run suppression` as support runs it: the compiled command in its own
 * process, configured like the service, against the Redis a real service
 * process uses. The suppression it shows and lifts is made the real way: a
 * SendOtp through the service, a DSN handed to its bounce intake over SMTP;
 * SendOtp's answers before and after say whether the command told the truth.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { createSuppressionList } from "../../src/bounce/suppression.js";
import { systemClock } from "../../src/clock.js";
import { createLogger } from "../../src/logger.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { errorDetails, grpcError, GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { freePort } from "../support/ports.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startRedisCluster, type RedisCluster } from "../support/redis-cluster.js";
import { startRedisSentinels, type RedisSentinelSet } from "../support/redis-sentinel.js";
import { codeFromMail } from "../support/service.js";
import { killServiceProcesses, runCommand, startServiceProcess, type CommandRun, type ServiceProcess } from "../support/service-process.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const cli = "dist/src/bounce/suppression-cli.js";
const root = fileURLToPath(new URL("../..", import.meta.url));
const { sendOtp } = OtpEmailService.method;
const bounceDomain = "bounces.acme.test";
const secret = "suppression-cli-test-secret-0123456789abcdef";
const oldSecret = "suppression-cli-old-secret-0123456789abcdefg";

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

/** A service process and what a test does with it. */
interface Service {
  readonly process: ServiceProcess;
  /** The environment it runs with: the command gets the same. */
  readonly env: Record<string, string>;
  send(recipient: string): Promise<{ messageId: string; state: DeliveryState }>;
  refusal(recipient: string): Promise<grpc.ServiceError>;
  /** Hands its bounce intake a "no such mailbox" DSN for `messageId`, as the relay would, and waits until it is applied. */
  hardBounce(messageId: string, recipient: string): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `node dist/src/main.js` on `storeEnv` (REDIS_URL...) with a bounce intake, waiting until it listens. */
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
    ...storeEnv,
    ...secretEnv,
  };
  const service = startServiceProcess(env);
  await service.waitForLine((line) => line["msg"] === "otp-email listening");
  const client = new GrpcOtpClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
  clients.push(client);
  return {
    process: service,
    env,
    send: (recipient) => grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN }),
    refusal: (recipient) => grpcError(grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN })),
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
      await service.waitForLine((line) => line["msg"] === "bounce applied" && line["message_id"] === messageId && line["suppressed"] === true);
    },
    async stop() {
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    },
  };
}

/** The command, with the service's environment. */
function suppression(args: readonly string[], env: Record<string, string>): Promise<CommandRun> {
  return runCommand(cli, args, env);
}

/** The one JSON audit line the command writes to stderr. */
function auditLine(run: CommandRun): Record<string, unknown> {
  const lines = run.stderr.split("\n").filter((line) => line.startsWith("{"));
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0] ?? "") as Record<string, unknown>;
}

/** The reason in a refused call's google.rpc.ErrorInfo. */
const reasonOf = (error: grpc.ServiceError): string | undefined => errorDetails(error).errorInfo?.reason;

describe("a recipient suppressed by a real bounce", () => {
  it("is shown (case variants too, not another subaddress, as SendOtp keys it), lifted once, and SendOtp then sends", async () => {
    const service = await startService({ REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix() });
    const sent = await service.send("Jane.Doe@Example.com");
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [mail] = await sink.waitForMessages(1);
    const code = codeFromMail(mail?.parsed.subject);
    await service.hardBounce(sent.messageId, "Jane.Doe@Example.com");

    const refused = await service.refusal("jane.doe@example.com");
    expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(reasonOf(refused)).toBe("RECIPIENT_SUPPRESSED");

    // --json: what the entry holds, as stored (the diagnostic masked), the address masked.
    const shown = await suppression(["show", "JANE.DOE@EXAMPLE.COM", "--json"], service.env);
    expect(shown.stderr).toBe("");
    expect(shown.code).toBe(0);
    const report = JSON.parse(shown.stdout) as { recipient: string; suppressed: boolean; entries: Record<string, unknown>[] };
    expect(report).toMatchObject({ recipient: "J***@example.com", suppressed: true });
    expect(report.entries).toHaveLength(1);
    const entry = report.entries[0] ?? {};
    expect(entry).toMatchObject({
      keyedBy: "OTP_SECRET",
      messageId: sent.messageId,
      status: "5.1.1",
      diagnosticCode: "smtp; 550 5.1.1 <J***@Example.com>: Recipient address rejected: User unknown in virtual mailbox table",
    });
    const bouncedAt = Date.parse(String(entry["bouncedAt"]));
    // SUPPRESSION_TTL's default: 30 days.
    expect(Date.parse(String(entry["suppressedUntil"])) - bouncedAt).toBe(30 * 86_400_000);
    expect(Math.abs(Date.now() - bouncedAt)).toBeLessThan(60_000);

    // Text: the same facts for a person.
    const text = await suppression(["show", "jane.doe@example.com"], service.env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^j\*\*\*@example\.com is suppressed until \d{4}-\d\d-\d\dT[\d:.]+Z: SendOtp refuses it \(RECIPIENT_SUPPRESSED\)$/m);
    expect(text.stdout).toContain(`message_id  ${sent.messageId}`);
    expect(text.stdout).toMatch(/^ {2}status {6}5\.1\.1$/m);
    expect(text.stdout).toContain("diagnostic  smtp; 550 5.1.1 <J***@Example.com>: Recipient address rejected");

    // Another subaddress is another address to SendOtp's suppression list: not suppressed, and SendOtp sends to it.
    const other = await suppression(["show", "jane.doe+work@example.com"], service.env);
    expect(other.code).toBe(3);
    expect(other.stdout).toBe("j***@example.com is not suppressed: SendOtp sends to it\n");
    expect((await service.send("jane.doe+work@example.com")).state).toBe(DeliveryState.ACCEPTED);

    const removed = await suppression(["remove", "Jane.Doe@example.COM"], service.env);
    expect(removed.code).toBe(0);
    expect(removed.stdout).toContain(`lifted the suppression of J***@example.com (keyed by OTP_SECRET): bounced`);
    expect(removed.stdout).toContain(`message_id ${sent.messageId}, status 5.1.1`);
    const audit = auditLine(removed);
    expect(audit).toMatchObject({
      level: "info",
      service: "otp-email",
      component: "suppression-cli",
      msg: "suppression lifted",
      recipient: "J***@example.com",
      removed: [{ keyed_by: "OTP_SECRET", message_id: sent.messageId, status: "5.1.1" }],
    });
    expect(typeof audit["operator"]).toBe("string");
    for (const output of [shown, text, other, removed]) {
      expect(`${output.stdout}${output.stderr}`.toLowerCase()).not.toContain("jane.doe");
      expect(`${output.stdout}${output.stderr}`).not.toContain(code);
    }

    expect((await service.send("jane.doe@example.com")).state).toBe(DeliveryState.ACCEPTED);
    expect(sink.messages.map((message) => message.envelope.rcptTo)).toEqual([["Jane.Doe@example.com"], ["jane.doe+work@example.com"], ["jane.doe@example.com"]]);

    // Again: nothing to lift, said so, exit 3, audited as such.
    const again = await suppression(["remove", "jane.doe@example.com", "--json"], service.env);
    expect(again.code).toBe(3);
    expect(JSON.parse(again.stdout)).toEqual({ recipient: "j***@example.com", lifted: false, removed: [] });
    expect(auditLine(again)).toMatchObject({ msg: "suppression not lifted: none in force", recipient: "j***@example.com", removed: [] });
    expect((await suppression(["show", "jane.doe@example.com"], service.env)).code).toBe(3);
    await service.stop();
  });

  it("made under the previous OTP_SECRET is found and lifted during a rotation, with an entry under the new secret too", async () => {
    const prefix = randomPrefix();
    const store = { REDIS_URL: redis.url, REDIS_PREFIX: prefix };
    const before = await startService(store, { OTP_SECRET: oldSecret });
    const sent = await before.send("gone@example.com");
    await sink.waitForMessages(1);
    await before.hardBounce(sent.messageId, "gone@example.com");
    await before.stop();

    const rotation = { OTP_SECRET: secret, OTP_SECRET_PREVIOUS: oldSecret, OTP_SECRET_ROTATED_AT: new Date(Date.now() - 60_000).toISOString() };
    const after = await startService(store, rotation);
    expect(reasonOf(await after.refusal("gone@example.com"))).toBe("RECIPIENT_SUPPRESSED");

    // Without OTP_SECRET_PREVIOUS the command would not see it: the rotation's settings are what find it.
    const newOnly = await suppression(["show", "gone@example.com"], { ...after.env, OTP_SECRET_PREVIOUS: "", OTP_SECRET_ROTATED_AT: "" });
    expect(newOnly.code).toBe(3);
    const shown = await suppression(["show", "gone@example.com", "--json"], after.env);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({ suppressed: true, entries: [{ keyedBy: "OTP_SECRET_PREVIOUS", messageId: sent.messageId }] });

    // A later bounce under the new secret (written as the service writes one): both entries are listed, the current one first.
    const redisStore = createRedisStore({ url: redis.url, prefix, logger: createLogger({ level: "silent" }) });
    try {
      const list = createSuppressionList({ store: redisStore, secret: Buffer.from(secret), ttlMs: 3_600_000, clock: systemClock });
      await list.suppress(list.recipientHash("gone@example.com"), { messageId: "01kbnewsecretbounce0000000", status: "5.1.1", diagnosticCode: "" });
    } finally {
      await redisStore.close();
    }
    const both = await suppression(["show", "gone@example.com", "--json"], after.env);
    expect(JSON.parse(both.stdout)).toMatchObject({
      entries: [
        { keyedBy: "OTP_SECRET", messageId: "01kbnewsecretbounce0000000" },
        { keyedBy: "OTP_SECRET_PREVIOUS", messageId: sent.messageId },
      ],
    });

    const removed = await suppression(["remove", "gone@example.com", "--json"], after.env);
    expect(removed.code).toBe(0);
    expect(JSON.parse(removed.stdout)).toMatchObject({
      recipient: "g***@example.com",
      lifted: true,
      removed: [
        { keyedBy: "OTP_SECRET", messageId: "01kbnewsecretbounce0000000" },
        { keyedBy: "OTP_SECRET_PREVIOUS", messageId: sent.messageId },
      ],
    });
    expect(auditLine(removed)).toMatchObject({
      msg: "suppression lifted",
      removed: [{ keyed_by: "OTP_SECRET" }, { keyed_by: "OTP_SECRET_PREVIOUS", message_id: sent.messageId }],
    });
    expect((await after.send("gone@example.com")).state).toBe(DeliveryState.ACCEPTED);
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

  it("shows and lifts a suppression the service keeps in the {limits} slot, and SendOtp then sends", async () => {
    const service = await startService({ REDIS_URL: cluster.seeds, REDIS_CLUSTER: "true", REDIS_PREFIX: randomPrefix() });
    const sent = await service.send("ana@example.com");
    await sink.waitForMessages(1);
    await service.hardBounce(sent.messageId, "ana@example.com");
    expect(reasonOf(await service.refusal("ana@example.com"))).toBe("RECIPIENT_SUPPRESSED");

    const shown = await suppression(["show", "ana@example.com", "--json"], service.env);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({ suppressed: true, entries: [{ messageId: sent.messageId }] });
    const removed = await suppression(["remove", "ana@example.com"], service.env);
    expect(removed.code).toBe(0);
    expect((await service.send("ana@example.com")).state).toBe(DeliveryState.ACCEPTED);
    await service.stop();
  });
});

describe("on Redis Sentinel (a password on the data nodes and on the sentinels)", () => {
  const sentinelPassword = "sentinel-s3cret";
  let set: RedisSentinelSet;

  beforeAll(async () => {
    set = await startRedisSentinels({ password: "data-s3cret", sentinelPassword });
  });

  afterAll(async () => {
    await set.stop();
  });

  const sentinelEnv = (): Record<string, string> => ({
    REDIS_URL: set.url,
    REDIS_SENTINEL_MASTER: set.master,
    REDIS_SENTINEL_PASSWORD: sentinelPassword,
    REDIS_PREFIX: randomPrefix(),
  });

  it("shows the suppression the service wrote through the sentinels, after a failover too; lifts it on the new master, and SendOtp then sends", async () => {
    const service = await startService(sentinelEnv());
    const sent = await service.send("ana@example.com");
    await sink.waitForMessages(1);
    await service.hardBounce(sent.messageId, "ana@example.com");
    expect(reasonOf(await service.refusal("ana@example.com"))).toBe("RECIPIENT_SUPPRESSED");
    const shown = await suppression(["show", "ana@example.com", "--json"], service.env);
    expect(shown.code, shown.stderr).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({ suppressed: true, entries: [{ messageId: sent.messageId }] });

    // The suppression reached the replica; the sentinels promote it.
    await set.synced();
    const oldMaster = await set.masterPort();
    const newMaster = await set.failover();
    expect(newMaster).not.toBe(oldMaster);
    const after = await suppression(["show", "ana@example.com", "--json"], service.env);
    expect(after.code, after.stderr).toBe(0);
    expect(JSON.parse(after.stdout)).toMatchObject({ suppressed: true, entries: [{ messageId: sent.messageId }] });
    const removed = await suppression(["remove", "ana@example.com"], service.env);
    expect(removed.code, removed.stderr).toBe(0);
    // The service, never restarted, followed the failover: it sees the lift on the new master.
    expect((await service.send("ana@example.com")).state).toBe(DeliveryState.ACCEPTED);
    expect(`${shown.stderr}${after.stderr}${removed.stderr}`).not.toMatch(/s3cret/);
    await service.stop();
  });

  /** What the command printed after "did not answer: ", split per sentinel (the audit line aside). */
  const reasonsOf = (run: CommandRun, action: "show" | "remove"): string[] => {
    const said = run.stderr.split("\n").find((line) => line.startsWith("otp-email suppression: "));
    expect(said).toMatch(/^otp-email suppression: the Redis master of \S+ \(sentinels [^)]+\) did not answer: /);
    const reasons = (said ?? "").replace(/^.*? did not answer: /, "");
    return (action === "remove" ? reasons.replace(/; nothing was lifted$/, "") : reasons).split("; ");
  };

  it("no sentinel listening, a wrong REDIS_SENTINEL_PASSWORD, a master set they do not monitor: exit 69, each sentinel and why; nothing lifted", async () => {
    const port = await freePort();
    const env = {
      NODE_ENV: "test",
      REDIS_URL: `redis://:data-s3cret@127.0.0.1:${port}`,
      REDIS_SENTINEL_MASTER: "mymaster",
      REDIS_COMMAND_TIMEOUT: "500ms",
      OTP_SECRET: secret,
    };
    const removed = await suppression(["remove", "ana@example.com"], env);
    expect(removed.code).toBe(69);
    expect(removed.stderr).toMatch(/; nothing was lifted$/m);
    expect(reasonsOf(removed, "remove")).toEqual([`sentinel 127.0.0.1:${port}: unreachable (connect ECONNREFUSED 127.0.0.1:${port})`]);
    expect(auditLine(removed)).toMatchObject({ msg: "suppression not lifted: Redis did not answer" });

    const refused = await suppression(["show", "ana@example.com"], { ...env, ...sentinelEnv(), REDIS_SENTINEL_PASSWORD: "wrong-s3cret" });
    expect(refused.code).toBe(69);
    expect(reasonsOf(refused, "show")).toEqual(
      set.sentinelPorts.map((sentinel) => `sentinel 127.0.0.1:${sentinel}: refused REDIS_SENTINEL_PASSWORD (or REDIS_SENTINEL_USERNAME): check them (the sentinels' own, not REDIS_URL's)`),
    );

    const unknown = await suppression(["show", "ana@example.com"], { ...env, ...sentinelEnv(), REDIS_SENTINEL_MASTER: "othermaster" });
    expect(unknown.code).toBe(69);
    expect(unknown.stderr).toMatch(/^otp-email suppression: the Redis master of othermaster /m);
    expect(reasonsOf(unknown, "show")).toEqual(
      set.sentinelPorts.map((sentinel) => `sentinel 127.0.0.1:${sentinel}: monitors no master set named othermaster: check REDIS_SENTINEL_MASTER`),
    );
    expect(`${removed.stderr}${refused.stderr}${unknown.stderr}`).not.toMatch(/s3cret|enableOfflineQueue/);
  });

  it("a dead sentinel listed first, the others answering: the command works, and says nothing of it", async () => {
    const port = await freePort();
    const env = { NODE_ENV: "test", ...sentinelEnv(), REDIS_URL: `redis://:data-s3cret@127.0.0.1:${port},${set.url.replace(/^redis:\/\/:[^@]*@/, "redis://")}`, OTP_SECRET: secret };
    const shown = await suppression(["show", "nobody@example.com"], env);
    expect(shown.code, shown.stderr).toBe(3);
    expect(shown.stderr).toBe("");
  });
});

describe("what the command refuses", () => {
  const env = (): Record<string, string> => ({ NODE_ENV: "test", REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix(), OTP_SECRET: secret });

  it("an address SendOtp would refuse: CR/LF, oversize, bad syntax: exit 2, the rule named, the input not echoed", async () => {
    const cases: [string, RegExp][] = [
      ["ana@example.com\r\nBcc: eve@evil.test", /must not contain CR, LF or other control characters/],
      [`${"a".repeat(300)}@example.com`, /must be at most 254 characters/],
      [`${"b".repeat(100_000)}@example.com`, /must be at most 254 characters/],
      ["not-an-address", /must be an address of the form local@domain/],
      ["ana@[127.0.0.1]", /address literals/],
    ];
    for (const [address, rule] of cases) {
      const run = await suppression(["remove", address], env());
      expect(run.code, address.slice(0, 40)).toBe(2);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(/^otp-email suppression: the address is not valid: /);
      expect(run.stderr).toMatch(rule);
      expect(run.stderr).not.toContain("eve@evil.test");
      expect(run.stderr).not.toContain("aaaaaaaaaa");
    }
  });

  it("an address that is not valid UTF-8 (the bytes as a shell hands them over): exit 2, nothing echoed", async () => {
    const run = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn("/bin/sh", ["-c", `exec "$0" ${cli} show "$(printf 'an\\377\\376a@example.com')"`, process.execPath], {
        cwd: root,
        env: { PATH: process.env["PATH"] ?? "", ...env() },
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, stdout, stderr }));
    });
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(/^otp-email suppression: the address is not valid: must not contain CR, LF or other control characters/);
    expect(run.stderr).not.toContain("\uFFFD");
  });

  it("usage errors: exit 2 with the usage", async () => {
    for (const args of [[], ["show"], ["lift", "ana@example.com"], ["show", "ana@example.com", "--jsn"], ["show", "a@example.com", "b@example.com"]]) {
      const run = await suppression(args, env());
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr).toContain("usage: npm run --silent suppression -- show|remove <address> [--json]");
    }
    const help = await suppression(["--help"], env());
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("usage: npm run --silent suppression");
  });

  it("without REDIS_URL: exit 78, saying the suppressions live in the running process's memory", async () => {
    const run = await suppression(["show", "ana@example.com"], { NODE_ENV: "test", OTP_SECRET: secret });
    expect(run.code).toBe(78);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(/^otp-email suppression: configuration error: REDIS_URL is not set: /);
    expect(run.stderr).toMatch(/in the memory of the running service process/);
  });

  it("without OTP_SECRET: exit 78, saying the service's random secret cannot be known", async () => {
    const run = await suppression(["remove", "ana@example.com"], { NODE_ENV: "test", REDIS_URL: redis.url });
    expect(run.code).toBe(78);
    expect(run.stderr).toMatch(/^otp-email suppression: configuration error: OTP_SECRET is not set: /);
  });

  it("a configuration the service would refuse: exit 78 naming the variable, quoting no secret", async () => {
    const run = await suppression(["show", "ana@example.com"], { ...env(), OTP_SECRET_PREVIOUS: secret, OTP_SECRET_ROTATED_AT: "2026-01-01T00:00:00Z" });
    expect(run.code).toBe(78);
    expect(run.stderr).toMatch(/configuration error: OTP_SECRET_PREVIOUS: must differ from OTP_SECRET/);
    expect(run.stderr).not.toContain(secret);
  });
});

describe("when Redis does not answer", () => {
  it("nothing listening: exit 69 at once, saying so, with no password from REDIS_URL", async () => {
    const port = await freePort();
    for (const action of ["show", "remove"]) {
      const run = await suppression([action, "ana@example.com"], {
        NODE_ENV: "test",
        REDIS_URL: `redis://:hunter2-password@127.0.0.1:${port}`,
        REDIS_COMMAND_TIMEOUT: "500ms",
        OTP_SECRET: secret,
      });
      expect(run.code, action).toBe(69);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(new RegExp(`^otp-email suppression: Redis at 127\\.0\\.0\\.1:${port} did not answer: .*ECONNREFUSED`, "m"));
      expect(run.stderr).not.toContain("hunter2");
      // Not a hang: the first connection attempt is waited for one command timeout at most.
      expect(run.elapsedMs).toBeLessThan(10_000);
    }
  });

  it("REDIS_CLUSTER=true and no node listening, or a Redis that is no cluster: exit 69 saying so, and remove says nothing was lifted", async () => {
    const port = await freePort();
    const env = { NODE_ENV: "test", REDIS_CLUSTER: "true", REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_COMMAND_TIMEOUT: "500ms", OTP_SECRET: secret };
    const shown = await suppression(["show", "ana@example.com"], env);
    expect(shown.code).toBe(69);
    expect(shown.stderr).toMatch(
      new RegExp(`^otp-email suppression: Redis at 127\\.0\\.0\\.1:${port} did not answer: no node of the Redis Cluster could be reached`, "m"),
    );
    // ioredis' own wording for "no connection, nothing queued" is no operator's reason.
    expect(shown.stderr).not.toMatch(/enableOfflineQueue/);
    const removed = await suppression(["remove", "ana@example.com"], env);
    expect(removed.code).toBe(69);
    // Never sent (the cluster never connected): certain, not "unknown".
    expect(removed.stderr).toMatch(/; nothing was lifted$/m);
    expect(removed.stderr).not.toMatch(/unknown/);
    expect(auditLine(removed)).toMatchObject({ msg: "suppression not lifted: Redis did not answer" });

    // A standalone Redis named as a cluster: its own refusal, not "Failed to refresh slots cache." alone.
    const standalone = await startRedisServer();
    try {
      const wrong = await suppression(["remove", "ana@example.com"], { ...env, REDIS_URL: standalone.url });
      expect(wrong.code).toBe(69);
      expect(wrong.stderr).toMatch(/did not answer: Failed to refresh slots cache: ERR This instance has cluster support disabled; nothing was lifted$/m);
    } finally {
      await standalone.stop();
    }
  });

  it("a Redis that holds the connection and never answers: exit 69 within the command timeout's bounds, nothing lifted", async () => {
    const frozen = await startRedisServer();
    frozen.signal("SIGSTOP");
    try {
      const run = await suppression(["remove", "ana@example.com"], {
        NODE_ENV: "test",
        REDIS_URL: frozen.url,
        REDIS_COMMAND_TIMEOUT: "500ms",
        OTP_SECRET: secret,
      });
      expect(run.code).toBe(69);
      expect(run.stderr).toMatch(
        /^otp-email suppression: Redis at 127\.0\.0\.1:\d+ did not answer: not connected within REDIS_COMMAND_TIMEOUT \(500 ms\); nothing was lifted$/m,
      );
      expect(auditLine(run)).toMatchObject({ level: "warn", msg: "suppression not lifted: Redis did not answer", recipient: "a***@example.com" });
      expect(run.elapsedMs).toBeLessThan(10_000);
    } finally {
      frozen.signal("SIGCONT");
      await frozen.stop();
    }
  });

  it("a Redis that answers but not the removal in time (writes paused): exit 69, the outcome unknown, show still answers", async () => {
    const env = { NODE_ENV: "test", REDIS_URL: redis.url, REDIS_PREFIX: randomPrefix(), REDIS_COMMAND_TIMEOUT: "500ms", OTP_SECRET: secret };
    const admin = new Redis(redis.url);
    try {
      // Redis holds every write command (GETDEL among them) for 3 s; reads go on.
      await admin.call("CLIENT", "PAUSE", "3000", "WRITE");
      const run = await suppression(["remove", "ana@example.com"], env);
      expect(run.code).toBe(69);
      expect(run.stderr).toMatch(
        /^otp-email suppression: Redis at 127\.0\.0\.1:\d+ did not answer: no reply within REDIS_COMMAND_TIMEOUT \(500 ms\); whether the suppression was lifted is unknown: run show once Redis answers$/m,
      );
      expect(auditLine(run)).toMatchObject({ level: "warn", msg: "suppression lift failed: Redis did not answer, outcome unknown" });
      expect(run.elapsedMs).toBeLessThan(10_000);
      expect((await suppression(["show", "ana@example.com"], env)).code).toBe(3);
    } finally {
      await admin.call("CLIENT", "UNPAUSE");
      await admin.quit();
    }
  });
});
