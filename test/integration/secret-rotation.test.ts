/**
 * OTP_SECRET rotation across two real instances on one private Redis: A runs
 * with the old secret, B with the new one plus OTP_SECRET_PREVIOUS and
 * OTP_SECRET_ROTATED_AT, as during (and after) a rolling deploy.
 */
import * as grpc from "@grpc/grpc-js";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import type { Clock } from "../../src/clock.js";
import { secretKeyId } from "../../src/otp/secret-rotation.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { call, failure, sendOtp, startInstance, untilServing, verifyOtp, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startRedisCluster, type RedisCluster } from "../support/redis-cluster.js";
import { codeFromMail } from "../support/service.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const oldSecret = "old-secret-rotation-test-0123456789abcdefgh";
const newSecret = "new-secret-rotation-test-0123456789abcdefgh";
const minute = 60_000;
const hour = 60 * minute;
const day = 24 * hour;
const bounceDomain = "bounces.acme.test";

let redis: RedisServer;
let sink: SmtpSink;
const running: Instance[] = [];

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
});

afterAll(async () => {
  await Promise.all([sink.close(), redis.stop()]);
});

beforeEach(() => {
  sink.messages.length = 0;
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((instance) => instance.stop()));
});

/** B's clock: real time plus what the test adds. */
function movableClock(): Clock & { advance(ms: number): void } {
  let offset = 0;
  return { now: () => Date.now() + offset, advance: (ms) => void (offset += ms) };
}

/** A (old secret) and B (new secret, rotating) on one Redis prefix, the sink as relay, each with a bounce intake. */
async function pair(
  options: {
    env?: Record<string, string>;
    rotatedAt?: number;
    clock?: Clock;
    envOfA?: Record<string, string>;
    /** Where both keep their data: the private Redis by default. */
    redisEnv?: Record<string, string>;
  } = {},
): Promise<{ a: Instance; b: Instance }> {
  const shared = {
    SMTP_URL: sink.url,
    REDIS_URL: redis.url,
    REDIS_PREFIX: randomPrefix(),
    ...options.redisEnv,
    BOUNCE_SMTP_ADDR: "127.0.0.1:0",
    BOUNCE_DOMAIN: bounceDomain,
    ...options.env,
  };
  const [a, b] = await Promise.all([
    startInstance({ env: { ...shared, OTP_SECRET: oldSecret, ...options.envOfA } }),
    startInstance({
      env: {
        ...shared,
        OTP_SECRET: newSecret,
        OTP_SECRET_PREVIOUS: oldSecret,
        OTP_SECRET_ROTATED_AT: new Date(options.rotatedAt ?? Date.now() - 60_000).toISOString(),
      },
      ...(options.clock === undefined ? {} : { clock: options.clock }),
    }),
  ]);
  running.push(a, b);
  await Promise.all([untilServing(a), untilServing(b)]);
  return { a, b };
}

/** Hands a "no such mailbox" DSN for `messageId` to `instance`'s bounce intake, as the relay would. */
async function hardBounce(instance: Instance, messageId: string, recipient: string): Promise<void> {
  const to = `bounce+${messageId}@${bounceDomain}`;
  const intake = createTransport({ host: "127.0.0.1", port: instance.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
  try {
    const block = { action: "failed", status: "5.1.1", finalRecipient: recipient, diagnosticCode: "smtp; 550 5.1.1 user unknown" };
    await intake.sendMail({ envelope: { from: "", to }, raw: dsnMessage({ to, envelopeId: messageId, recipients: [block] }) });
  } finally {
    intake.close();
  }
}

describe("start-up", () => {
  it("logs each secret's key id, never the secret, and until when the previous one is consulted", async () => {
    const rotatedAt = Date.parse("2026-01-01T00:00:00Z");
    const { a, b } = await pair({ rotatedAt, env: { SUPPRESSION_TTL: "30d", RECORD_RETENTION: "7d" } });
    const line = b.logs.find((entry) => entry["otp_secret_previous_key_id"] !== undefined);
    expect(line).toMatchObject({
      otp_secret_key_id: secretKeyId(Buffer.from(newSecret)),
      otp_secret_previous_key_id: secretKeyId(Buffer.from(oldSecret)),
      otp_secret_rotated_at: "2026-01-01T00:00:00.000Z",
      suppression_list_consulted_until: new Date(rotatedAt + 37 * day).toISOString(),
      // OTP_TTL_MAX (1 h by default) and the hour an expired code set is kept to answer EXPIRED.
      codes_consulted_until: new Date(rotatedAt + 2 * hour).toISOString(),
    });
    expect(a.logs.find((entry) => entry["otp_secret_key_id"] !== undefined)).toMatchObject({
      otp_secret_key_id: secretKeyId(Buffer.from(oldSecret)),
    });
    expect(secretKeyId(Buffer.from(oldSecret))).toMatch(/^[0-9a-f]{8}$/);
    const all = JSON.stringify([...a.logs, ...b.logs]);
    expect(all).not.toContain(oldSecret);
    expect(all).not.toContain(newSecret);
  });
});

describe("start-up, a rotation whose dates have passed", () => {
  it("warns to remove OTP_SECRET_PREVIOUS, or, for a rotation just made, to set OTP_SECRET_ROTATED_AT to now", async () => {
    const { b } = await pair({ rotatedAt: Date.parse("2020-01-01T00:00:00Z"), env: { SUPPRESSION_TTL: "30d", RECORD_RETENTION: "7d" } });
    const line = b.logs.find((entry) => entry["otp_secret_previous_key_id"] !== undefined);
    expect(line?.["level"]).toBe("warn");
    expect(String(line?.["msg"])).toMatch(/no longer consulted .*remove it and OTP_SECRET_ROTATED_AT; if you have just rotated OTP_SECRET, .*set it to when this one was deployed/);
  });
});

describe("the suppression list survives the rotation", () => {
  it("a hard bounce of A's message, processed by B, suppresses the recipient on B: refused, nothing mailed, no limit spent", async () => {
    // The rotation is a little ahead of this host's clock (another host's, within the skew allowed): A's message is from before it.
    const rotatedAt = Date.now() + 60_000;
    const { a, b } = await pair({ rotatedAt, env: { LIMIT_GLOBAL: "3/1d" } });
    const recipient = "gone@example.com";
    const sent = await call(a.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
    await sink.waitForMessages(1);
    await hardBounce(b, sent.messageId, recipient);
    const applied = b.logs.find((entry) => entry["msg"] === "bounce applied");
    // B wrote the hash the record carries (A's, under the old secret) and says until when SendOtp reads it.
    expect(applied).toMatchObject({
      message_id: sent.messageId,
      suppressed: true,
      recipient_hash_before_rotation: true,
      suppression_consulted_until: new Date(rotatedAt + 37 * day).toISOString(),
    });

    for (let i = 0; i < 3; i++) {
      const refused = await failure(call(b.client, sendOtp, { recipient, purpose: Purpose.LOGIN }));
      expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(refused.details).toMatch(/suppressed/);
    }
    expect(sink.messages).toHaveLength(1);
    // The global budget (3 a day, one spent by A: that log is not keyed by the secret) is untouched by the refusals.
    await call(b.client, sendOtp, { recipient: "one@example.com", purpose: Purpose.LOGIN });
    await call(b.client, sendOtp, { recipient: "two@example.com", purpose: Purpose.LOGIN });
    expect((await failure(call(b.client, sendOtp, { recipient: "three@example.com", purpose: Purpose.LOGIN }))).code).toBe(
      grpc.status.RESOURCE_EXHAUSTED,
    );
  });

  it("after SUPPRESSION_TTL + RECORD_RETENTION from the rotation, B no longer consults the old secret's list", async () => {
    const clock = movableClock();
    const { a, b } = await pair({ clock, env: { SUPPRESSION_TTL: "30d", RECORD_RETENTION: "7d" } });
    const recipient = "gone-later@example.com";
    const sent = await call(a.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
    await sink.waitForMessages(1);
    await hardBounce(a, sent.messageId, recipient);

    clock.advance(36 * day);
    expect((await failure(call(b.client, sendOtp, { recipient, purpose: Purpose.LOGIN }))).code).toBe(grpc.status.FAILED_PRECONDITION);
    clock.advance(1 * day + 60_000);
    // The old secret's entry is still in Redis (real TTL), but B no longer looks: in production it expired by now.
    await call(b.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
    expect(sink.messages).toHaveLength(2);
  });
});

/** Sends a code to `recipient` on `instance` and reads it from the mail the sink got. */
async function sendCode(instance: Instance, recipient: string, ttlSeconds?: number): Promise<string> {
  const before = sink.messages.length;
  await call(instance.client, sendOtp, {
    recipient,
    purpose: Purpose.LOGIN,
    ...(ttlSeconds === undefined ? {} : { ttl: { seconds: BigInt(ttlSeconds), nanos: 0 } }),
  });
  const [mail] = (await sink.waitForMessages(before + 1)).slice(before);
  return codeFromMail(mail?.parsed.subject);
}

function verify(instance: Instance, recipient: string, code: string) {
  return call(instance.client, verifyOtp, { recipient, purpose: Purpose.LOGIN, code });
}

/** A code of the same length that is not `code`. */
const wrong = (code: string): string => code.replace(/^./, (digit) => String((Number(digit) + 1) % 10));

describe("codes sent before the rotation still verify", () => {
  it("sent on A (old secret), verified on B (new secret): VERIFIED, once", async () => {
    const { a, b } = await pair();
    const code = await sendCode(a, "early@example.com");
    expect(await verify(b, "early@example.com", code)).toMatchObject({ result: VerifyResult.VERIFIED });
    // Consumed in the old set: neither instance verifies it again.
    expect((await verify(b, "early@example.com", code)).result).not.toBe(VerifyResult.VERIFIED);
    expect((await verify(a, "early@example.com", code)).result).not.toBe(VerifyResult.VERIFIED);
  });

  it("a wrong guess on B counts once, against the old set's attempts, which A sees too; the set locks as usual", async () => {
    const { a, b } = await pair({ env: { OTP_MAX_FAILED_ATTEMPTS: "3" } });
    const code = await sendCode(a, "guess@example.com");
    expect(await verify(b, "guess@example.com", wrong(code))).toMatchObject({ result: VerifyResult.INVALID, attemptsRemaining: 2 });
    expect(await verify(a, "guess@example.com", wrong(code))).toMatchObject({ result: VerifyResult.INVALID, attemptsRemaining: 1 });
    expect(await verify(b, "guess@example.com", wrong(code))).toMatchObject({ result: VerifyResult.INVALID, attemptsRemaining: 0 });
    expect(await verify(b, "guess@example.com", code)).toMatchObject({ result: VerifyResult.LOCKED });
  });

  it("the old set answers EXPIRED for its own expired code", async () => {
    const clock = movableClock();
    const { a, b } = await pair({ clock });
    const code = await sendCode(a, "late@example.com", 60);
    clock.advance(2 * minute);
    expect(await verify(b, "late@example.com", code)).toMatchObject({ result: VerifyResult.EXPIRED });
  });

  it("once a new code was sent under the new secret, the new set decides: the old code is INVALID", async () => {
    const { a, b } = await pair();
    const old = await sendCode(a, "both@example.com");
    const fresh = await sendCode(b, "both@example.com");
    expect(await verify(b, "both@example.com", old)).toMatchObject({ result: VerifyResult.INVALID });
    expect(await verify(b, "both@example.com", fresh)).toMatchObject({ result: VerifyResult.VERIFIED });
  });

  it("after OTP_TTL_MAX + 1 h from the rotation, B no longer looks under the old secret: NOT_FOUND", async () => {
    // Every set made under the old secret before the rotation is gone by then, so only a code that an instance
    // still on the old secret sent after the rotation (A here, lagging behind) shows whether B still looks.
    const clock = movableClock();
    const { a, b } = await pair({ clock, rotatedAt: Date.now() - 90 * minute, env: { OTP_TTL_MAX: "1h" } });
    const code = await sendCode(a, "gone-code@example.com", 3600);
    clock.advance(29 * minute);
    expect(await verify(b, "gone-code@example.com", wrong(code))).toMatchObject({ result: VerifyResult.INVALID });
    clock.advance(2 * minute);
    expect(await verify(b, "gone-code@example.com", code)).toMatchObject({ result: VerifyResult.NOT_FOUND });
    // The set is still there for the old secret.
    expect(await verify(a, "gone-code@example.com", code)).toMatchObject({ result: VerifyResult.VERIFIED });
  });
});

describe("a rolling deploy without a mixed window (README runbook, step 3)", () => {
  it("A in the first phase (old secret, new one as PREVIOUS) and B in the second verify each other's codes and see each other's suppressions", async () => {
    const { a, b } = await pair({
      envOfA: { OTP_SECRET_PREVIOUS: newSecret, OTP_SECRET_ROTATED_AT: new Date(Date.now() - 60_000).toISOString() },
    });
    expect(await verify(a, "from-b@example.com", await sendCode(b, "from-b@example.com"))).toMatchObject({ result: VerifyResult.VERIFIED });
    expect(await verify(b, "from-a@example.com", await sendCode(a, "from-a@example.com"))).toMatchObject({ result: VerifyResult.VERIFIED });

    const sent = await call(b.client, sendOtp, { recipient: "gone-b@example.com", purpose: Purpose.LOGIN });
    await hardBounce(b, sent.messageId, "gone-b@example.com");
    expect((await failure(call(a.client, sendOtp, { recipient: "gone-b@example.com", purpose: Purpose.LOGIN }))).code).toBe(
      grpc.status.FAILED_PRECONDITION,
    );
  });
});

describe("on a Redis Cluster (old and new code sets in different slots; both suppression keys in {limits})", () => {
  let cluster: RedisCluster;
  beforeAll(async () => {
    cluster = await startRedisCluster();
  });
  afterAll(async () => {
    await cluster.stop();
  });
  const onCluster = () => ({ redisEnv: { REDIS_URL: cluster.seeds, REDIS_CLUSTER: "true" } });

  it("a code sent on A verifies on B; a wrong guess on B counts against the old set", async () => {
    const { a, b } = await pair({ ...onCluster(), env: { OTP_MAX_FAILED_ATTEMPTS: "3" } });
    const code = await sendCode(a, "cluster@example.com");
    expect(await verify(b, "cluster@example.com", wrong(code))).toMatchObject({ result: VerifyResult.INVALID, attemptsRemaining: 2 });
    expect(await verify(a, "cluster@example.com", wrong(code))).toMatchObject({ result: VerifyResult.INVALID, attemptsRemaining: 1 });
    expect(await verify(b, "cluster@example.com", code)).toMatchObject({ result: VerifyResult.VERIFIED });
  });

  it("a hard bounce of A's message, processed by B, refuses SendOtp on B with no CROSSSLOT", async () => {
    const { a, b } = await pair(onCluster());
    const sent = await call(a.client, sendOtp, { recipient: "cluster-gone@example.com", purpose: Purpose.LOGIN });
    await hardBounce(b, sent.messageId, "cluster-gone@example.com");
    const refused = await failure(call(b.client, sendOtp, { recipient: "cluster-gone@example.com", purpose: Purpose.LOGIN }));
    expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
    await call(b.client, sendOtp, { recipient: "cluster-fine@example.com", purpose: Purpose.LOGIN });
    expect(JSON.stringify([...a.logs, ...b.logs])).not.toContain("CROSSSLOT");
  });
});
