/**
 * A hard bounce or a complaint whose suppression cannot be written, on real
 * parts: a whole instance (startApp, real gRPC, a real SMTP sink as relay)
 * on a private redis-server, reports handed to its bounce intake over SMTP.
 * An ACL lets Redis take the report but refuse the suppression write (as a
 * Redis Cluster node holding the suppressions being down would): the intake
 * answers 451, and the relay's retry of the same report, once Redis takes
 * writes again, suppresses the recipient. Had the first report stayed
 * stored, the retry would be a copy, and a copy never suppresses.
 */
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { DeliveryState, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { arfMessage } from "../support/arf-fixtures.js";
import { dsnMessage } from "../support/dsn-fixtures.js";
import { call, detailsOf, failure, getDeliveryStatus, sendOtp, startInstance, untilServing, type Instance } from "../support/otp-instances.js";
import { randomPrefix, startRedisServer, type RedisServer } from "../support/redis.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const bounceDomain = "bounces.acme.test";

let redis: RedisServer;
let sink: SmtpSink;
let admin: Redis;
let instance: Instance;
const prefix = randomPrefix();

beforeAll(async () => {
  [redis, sink] = await Promise.all([startRedisServer(), startSmtpSink()]);
  admin = new Redis(redis.url);
  instance = await startInstance({
    env: {
      REDIS_URL: redis.url,
      REDIS_PREFIX: prefix,
      SMTP_URL: sink.url,
      BOUNCE_SMTP_ADDR: "127.0.0.1:0",
      BOUNCE_DOMAIN: bounceDomain,
      LIMIT_RESEND_COOLDOWN: "0",
    },
  });
  await untilServing(instance);
});

afterEach(async () => {
  await admin.acl("SETUSER", "default", "allkeys");
});

afterAll(async () => {
  await instance.stop();
  admin.disconnect();
  await sink.close();
  await redis.stop();
});

/** Redis reads every key, writes every key but the suppressions ({limits}:supp:...). */
async function refuseSuppressionWrites(): Promise<void> {
  const writable = ["code:", "fail:", "msg:", "idem:", "dsn:", "sent:"].map((kind) => `~${prefix}${kind}*`);
  await admin.acl("SETUSER", "default", "resetkeys", ...writable, `%R~${prefix}{limits}:*`);
}

/** Hands `raw` to the instance's intake for `to`, as the relay would; resolves the intake's reply. */
async function deliver(to: string, raw: Buffer): Promise<string> {
  const intake = createTransport({ host: "127.0.0.1", port: instance.app.bounceIntake?.port, secure: false, ignoreTLS: true, logger: false });
  try {
    return (await intake.sendMail({ envelope: { from: "", to }, raw })).response;
  } catch (error) {
    return String((error as { response?: unknown }).response);
  } finally {
    intake.close();
  }
}

async function suppressionOf(recipient: string): Promise<Record<string, string>> {
  const error = await failure(call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN }));
  return detailsOf(error).errorInfo?.metadata ?? {};
}

it("a hard bounce whose suppression could not be written is taken back, and the relay's retry suppresses", async () => {
  const recipient = "gone@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `bounce+${sent.messageId}@${bounceDomain}`;
  const dsn = dsnMessage({
    to,
    envelopeId: sent.messageId,
    recipients: [{ action: "failed", status: "5.1.1", finalRecipient: recipient, diagnosticCode: "smtp; 550 5.1.1 User unknown" }],
  });

  await refuseSuppressionWrites();
  expect(await deliver(to, dsn)).toMatch(/^451 /);
  // Nothing of it stays: GetDeliveryStatus shows no report, SendOtp is not refused.
  await admin.acl("SETUSER", "default", "allkeys");
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toEqual([]);

  // The relay retries the same DSN.
  expect(await deliver(to, dsn)).toMatch(/^250 /);

  expect(await suppressionOf(recipient)).toMatchObject({ suppression_reason: "hard_bounce", bounce_status: "5.1.1", bounced_message_id: sent.messageId });
  const status = await call(instance.client, getDeliveryStatus, { messageId: sent.messageId });
  expect(status.state).toBe(DeliveryState.BOUNCED);
  expect(status.deliveryReports).toHaveLength(1);
});

it("a complaint whose suppression could not be written is taken back, and the provider's retry suppresses", async () => {
  const recipient = "annoyed@example.com";
  const sent = await call(instance.client, sendOtp, { recipient, purpose: Purpose.LOGIN });
  const to = `fbl@${bounceDomain}`;
  const report = arfMessage({
    to,
    report: [
      "Feedback-Type: abuse",
      "User-Agent: Yahoo!-Mail-Feedback/2.0",
      "Version: 1",
      `Original-Mail-From: <bounce+${sent.messageId}@${bounceDomain}>`,
      `Original-Rcpt-To: <${recipient}>`,
      "Arrival-Date: Fri, 27 Nov 2026 07:59:31 +0000",
    ],
  });

  await refuseSuppressionWrites();
  expect(await deliver(to, report)).toMatch(/^451 /);
  await admin.acl("SETUSER", "default", "allkeys");
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toEqual([]);

  expect(await deliver(to, report)).toMatch(/^250 /);

  expect(await suppressionOf(recipient)).toMatchObject({ suppression_reason: "complaint", feedback_type: "abuse", complained_message_id: sent.messageId });
  expect((await call(instance.client, getDeliveryStatus, { messageId: sent.messageId })).deliveryReports).toHaveLength(1);
});
