/**
 * A spam complaint end to end, on real parts: the compiled service process
 * on a private Redis prefix, the SMTP sink as its relay, its bounce intake
 * over SMTP, the compiled `npm run suppression` command. SendOtp, then the
 * provider's feedback report (Yahoo-style ARF returning the whole original
 * message, code included) at the feedback address, then GetDeliveryStatus,
 * a refused SendOtp, the suppression lifted, and a SendOtp that sends again.
 * The code of the complained-about message appears nowhere: not in Redis,
 * not in the logs, not in any answer.
 */
import { toJsonString } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import { createTransport } from "nodemailer";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  DeliveryReportAction,
  DeliveryState,
  GetDeliveryStatusResponseSchema,
  OtpEmailService,
  Purpose,
  SuppressionReason,
} from "../../gen/otp/v1/otp_email_pb.js";
import { arfMessage } from "../support/arf-fixtures.js";
import { errorDetails, grpcError, GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { freePort } from "../support/ports.js";
import { randomPrefix, redisUrlForTests, scanPrefix } from "../support/redis.js";
import { killServiceProcesses, runCommand, startServiceProcess } from "../support/service-process.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const { sendOtp, getDeliveryStatus } = OtpEmailService.method;
const bounceDomain = "bounces.acme.test";
/** A code of our choosing: letters and digits that no id, hash or timestamp can contain by chance. */
const code = "QX7ZK4W9";
const recipient = "Jane.Doe@yahoo.com";

let sink: SmtpSink;
let redis: Redis;
const clients: grpc.Client[] = [];

beforeAll(async () => {
  sink = await startSmtpSink();
  redis = new Redis(redisUrlForTests(), { lazyConnect: true });
  await redis.connect();
});

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  killServiceProcesses();
  sink.messages.length = 0;
});

afterAll(async () => {
  redis.disconnect();
  await sink.close();
});

/** Every value under `prefix`, whatever its type, as text. */
async function dumpRedis(prefix: string): Promise<string> {
  const parts: string[] = [];
  for (const key of await scanPrefix(redis, prefix)) {
    const type = await redis.type(key);
    const value =
      type === "string" ? await redis.get(key)
      : type === "list" ? await redis.lrange(key, 0, -1)
      : type === "hash" ? await redis.hgetall(key)
      : type === "zset" ? await redis.zrange(key, "0", "-1", "WITHSCORES")
      : type === "set" ? await redis.smembers(key)
      : `(${type})`;
    parts.push(`${key} ${JSON.stringify(value)}`);
  }
  return parts.join("\n");
}

describe("a spam complaint, from SendOtp to the suppression lifted", () => {
  it("is recorded on the message, suppresses the recipient as a complaint, is lifted by support, and leaves the code nowhere", async () => {
    const [grpcPort, intakePort, metricsPort] = [await freePort(), await freePort(), await freePort()];
    const prefix = randomPrefix();
    const env = {
      NODE_ENV: "test",
      LOG_LEVEL: "debug",
      GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      METRICS_ADDR: `127.0.0.1:${metricsPort}`,
      MAIL_FROM: '"Acme" <no-reply@acme.test>',
      SMTP_URL: sink.url,
      BOUNCE_SMTP_ADDR: `127.0.0.1:${intakePort}`,
      BOUNCE_DOMAIN: bounceDomain,
      LIMIT_RESEND_COOLDOWN: "0",
      REDIS_URL: redisUrlForTests(),
      REDIS_PREFIX: prefix,
      OTP_SECRET: "complaints-service-test-secret-0123456789abcdef",
    };
    const service = startServiceProcess(env);
    await service.waitForLine((line) => line["msg"] === "otp-email listening");
    const client = new GrpcOtpClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
    clients.push(client);

    // 1. The code goes out.
    const sent = await grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN, code });
    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [mail] = await sink.waitForMessages(1);
    expect(mail?.parsed.subject).toContain(code);

    // 2. Yahoo's feedback loop returns it, whole, as a complaint, to the feedback address (FEEDBACK_ADDRESS's default).
    const report = arfMessage({
      to: `fbl@${bounceDomain}`,
      report: [
        "Feedback-Type: abuse",
        "User-Agent: Yahoo!-Mail-Feedback/2.0",
        "Version: 1",
        `Original-Mail-From: <${mail?.envelope.mailFrom ?? ""}>`,
        `Original-Rcpt-To: <${recipient}>`,
        "Arrival-Date: Fri, 27 Nov 2026 07:59:31 +0000",
      ],
      original: (mail?.raw.toString("latin1") ?? "").split(/\r?\n/),
    });
    expect(report.toString("latin1")).toContain(code);
    const intake = createTransport({ host: "127.0.0.1", port: intakePort, secure: false, ignoreTLS: true, logger: false });
    try {
      const reply = await intake.sendMail({ envelope: { from: "", to: `fbl@${bounceDomain}` }, raw: report });
      expect(reply.response).toMatch(/^250 /);
    } finally {
      intake.close();
    }
    await service.waitForLine((line) => line["msg"] === "complaint applied" && line["message_id"] === sent.messageId);

    // 3. GetDeliveryStatus: the complaint is the evidence, the message reached the mailbox.
    const status = await grpcUnary(client, getDeliveryStatus, { messageId: sent.messageId });
    expect(status.state).toBe(DeliveryState.DELIVERED);
    expect(status.deliveryReports).toHaveLength(1);
    expect(status.deliveryReports[0]).toMatchObject({
      action: DeliveryReportAction.COMPLAINED,
      feedbackType: "abuse",
      userAgent: "Yahoo!-Mail-Feedback/2.0",
      arrivalDate: "Fri, 27 Nov 2026 07:59:31 +0000",
      finalRecipient: "rfc822; J***@yahoo.com",
      status: "",
    });
    expect(status.explanation).toMatch(/reported at .* a spam complaint \(feedback type abuse\).*The recipient is suppressed/);

    // 4. SendOtp refuses the recipient, saying it was a complaint, not a bounce.
    const refused = await grpcError(grpcUnary(client, sendOtp, { recipient: "jane.doe@yahoo.com", purpose: Purpose.LOGIN }));
    expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(refused.details).toMatch(/^email not sent: j\*\*\*@yahoo\.com marked an earlier message as spam \(their mailbox provider's feedback report, type abuse\) at /);
    const info = errorDetails(refused).errorInfo;
    expect(info?.reason).toBe("RECIPIENT_SUPPRESSED");
    expect(info?.metadata).toMatchObject({ suppression_reason: "complaint", feedback_type: "abuse", complained_message_id: sent.messageId });
    expect(info?.metadata["bounce_status"]).toBeUndefined();
    const suppressedId = info?.metadata["message_id"] ?? "";
    const suppressed = await grpcUnary(client, getDeliveryStatus, { messageId: suppressedId });
    expect(suppressed.state).toBe(DeliveryState.SUPPRESSED);
    expect(suppressed.suppression).toMatchObject({ reason: SuppressionReason.COMPLAINT, feedbackType: "abuse", bouncedMessageId: sent.messageId, status: "" });
    expect(suppressed.explanation).toMatch(/^Not sent: the recipient marked an earlier message as spam/);

    // 5. Support sees why, and lifts it.
    const shown = await runCommand("dist/src/bounce/suppression-cli.js", ["show", recipient], env);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain("reason      spam complaint (feedback type abuse)");
    const json = await runCommand("dist/src/bounce/suppression-cli.js", ["show", recipient, "--json"], env);
    expect(JSON.parse(json.stdout)).toMatchObject({ suppressed: true, entries: [{ reason: "complaint", feedbackType: "abuse", messageId: sent.messageId }] });

    // Nothing of the returned original was kept, logged or answered: not the code, not the address.
    const stored = await dumpRedis(prefix);
    expect(stored).toContain(sent.messageId);
    const logs = [JSON.stringify(service.lines), service.stderr.join("")].join("\n");
    expect(logs).toContain('"feedback_type":"abuse"');
    const answers = [
      toJsonString(GetDeliveryStatusResponseSchema, status),
      toJsonString(GetDeliveryStatusResponseSchema, suppressed),
      refused.details,
      JSON.stringify(info?.metadata),
      shown.stdout,
      shown.stderr,
      json.stdout,
    ].join("\n");
    for (const [where, text] of [["Redis", stored], ["logs", logs], ["answers", answers]] as const) {
      expect(text, where).not.toContain(code);
      expect(text.toLowerCase(), where).not.toContain("jane.doe@");
      expect(text, where).not.toContain("is your Acme");
    }

    const removed = await runCommand("dist/src/bounce/suppression-cli.js", ["remove", recipient], env);
    expect(removed.code).toBe(0);
    expect(removed.stdout).toContain("spam complaint (feedback type abuse)");
    expect(removed.stdout).not.toContain(code);

    // 6. SendOtp sends again.
    expect((await grpcUnary(client, sendOtp, { recipient, purpose: Purpose.LOGIN })).state).toBe(DeliveryState.ACCEPTED);
    expect(sink.messages).toHaveLength(2);

    // Counted, by feedback type and provider class, with the transition it caused.
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toContain('otp_feedback_reports_total{kind="applied",feedback_type="abuse"} 1');
    expect(metrics).toContain('otp_spam_complaints_total{feedback_type="abuse",provider="yahoo"} 1');
    expect(metrics).toContain('otp_delivery_state_transitions_total{state="DELIVERED",provider="yahoo"} 1');
    // The refused send: its own outcome, and a record that entered SUPPRESSED.
    expect(metrics).toContain('otp_sends_total{purpose="login",outcome="suppressed"} 1');
    expect(metrics).toContain('otp_sends_total{purpose="login",outcome="error"} 0');
    expect(metrics).toContain('otp_delivery_state_transitions_total{state="SUPPRESSED",provider="yahoo"} 1');
    expect(metrics).not.toContain(code);

    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
  });
});
