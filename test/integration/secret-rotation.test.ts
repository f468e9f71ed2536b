/**
 * OTP_SECRET rotation across two real instances on one private Redis: A runs
 * with the old secret, B with the new one plus OTP_SECRET_PREVIOUS and
 * OTP_SECRET_ROTATED_AT, as during (and after) a rolling deploy.
 */
import * as grpc from "@grpc/grpc-js";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import type { Clock } from "../../src/clock.js";
import { secretKeyId } from "../../src/otp/secret-rotation.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { call, failure, sendOtp, startInstance, untilServing, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const oldSecret = "old-secret-rotation-test-0123456789abcdefgh";
const newSecret = "new-secret-rotation-test-0123456789abcdefgh";
const day = 86_400_000;
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
  options: { env?: Record<string, string>; rotatedAt?: number; clock?: Clock } = {},
): Promise<{ a: Instance; b: Instance }> {
  const shared = {
    SMTP_URL: sink.url,
    REDIS_URL: redis.url,
    REDIS_PREFIX: randomPrefix(),
    BOUNCE_SMTP_ADDR: "127.0.0.1:0",
    BOUNCE_DOMAIN: bounceDomain,
    ...options.env,
  };
  const [a, b] = await Promise.all([
    startInstance({ env: { ...shared, OTP_SECRET: oldSecret } }),
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
