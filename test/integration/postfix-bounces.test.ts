/**
 * Delivery truth end to end, through a real Postfix relay: the whole service
 * (gRPC, Redis, DKIM, VERP, DSN) sends through a private Postfix instance,
 * which says 250 and later sends its DSN to the service's bounce intake.
 *
 *   SendOtp -> service -> Postfix (250, ACCEPTED) -> local(8) or the fake
 *   "Gmail" MX (an in-test smtp-server) -> DSN -> bounce intake -> BOUNCED /
 *   DELAYED in GetDeliveryStatus, and a suppressed recipient; a content
 *   filter's refusal that quotes the Subject keeps the code out of it all.
 *
 * The intake requires TLS (BOUNCE_TLS_REQUIRED, a certificate from a test CA)
 * and Postfix delivers to it only over TLS, trusting that CA: every DSN here
 * crosses the wire encrypted, as it should in production.
 *
 * This file owns its Postfix instance (own folders, free ports) and stops it
 * at the end.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  DeliveryReportAction,
  DeliveryState,
  GetDeliveryStatusResponseSchema,
  Purpose,
  type GetDeliveryStatusResponse,
} from "../../gen/otp/v1/otp_email_pb.js";
import { startApp, type App } from "../../src/app.js";
import { createOtpEmailClient, type OtpEmailClient } from "../../src/client.js";
import { loadConfig } from "../../src/config.js";
import { unlimited, type SendLimiter } from "../../src/limits/types.js";
import { createLogger } from "../../src/logger.js";
import { openCertificateWorkshop, type CertificateWorkshop } from "../support/certs.js";
import { freePort } from "../support/ports.js";
import { startPostfix, type PostfixRelay } from "../support/postfix.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const localDomain = "local.test";
const gmailDomain = "gmail.test";
const bounceDomain = "bounces.acme.test";
const dmarcRefusal =
  "Unauthenticated email from acme.test is not accepted due to domain's DMARC policy. " +
  "Please contact the administrator of acme.test domain if this was a legitimate mail.";

let postfix: PostfixRelay | undefined;
let fakeGmail: SmtpSink;
let certificates: CertificateWorkshop | undefined;
let certDir: string | undefined;
let app: App | undefined;
let client: OtpEmailClient;
/** SendOtp admissions the limiter was asked for (suppressed sends must not spend any). */
const admissions: string[] = [];

beforeAll(async () => {
  // The fake Gmail MX: refuses dmarc-* for good (5.7.26), defers greylist-* (4xx), and refuses the content of
  // filtered-* after DATA, quoting its Subject (which holds the code) as content filters do.
  fakeGmail = await startSmtpSink({
    route: (recipient) =>
      recipient.startsWith("dmarc-")
        ? behave.reply("RCPT TO", 550, "5.7.26", dmarcRefusal)
        : recipient.startsWith("greylist-")
          ? behave.reply("RCPT TO", 451, "4.7.1", "Greylisted, please try again later")
          : recipient.startsWith("filtered-")
            ? behave.reply("DATA", 550, "5.7.1", "Message content rejected", { quoteSubject: true })
            : undefined,
  });
  const smtpPort = await freePort();
  // The intake's certificate, signed by a CA that Postfix is told to trust; given to the service as PEM files.
  certificates = await openCertificateWorkshop();
  const ca = await certificates.newCa("Bounce test CA");
  const intakeCertificate = await ca.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1,DNS:localhost", server: true });
  certDir = await mkdtemp(join(tmpdir(), "otp-postfix-intake-tls-"));
  await writeFile(join(certDir, "intake.crt"), intakeCertificate.cert);
  await writeFile(join(certDir, "intake.key"), intakeCertificate.key, { mode: 0o600 });
  const limiter: SendLimiter = {
    ...unlimited,
    admit: (ctx, request) => {
      admissions.push(request.recipientKey);
      return unlimited.admit(ctx, request);
    },
  };
  const config = loadConfig({
    NODE_ENV: "test",
    GRPC_ADDR: "127.0.0.1:0",
    LOG_LEVEL: "warn",
    OTP_SECRET: randomBytes(32).toString("hex"),
    MAIL_FROM: '"Acme" <no-reply@acme.test>',
    REDIS_URL: redisUrlForTests(),
    REDIS_PREFIX: randomPrefix(),
    SMTP_URL: `smtp://127.0.0.1:${smtpPort}?starttls=off`,
    SMTP_MAX_ATTEMPTS: "1",
    DKIM_SELECTOR: "s2026",
    DKIM_PRIVATE_KEY: generateKeyPairSync("rsa", { modulusLength: 2048 })
      .privateKey.export({ type: "pkcs8", format: "pem" })
      .toString(),
    BOUNCE_DOMAIN: bounceDomain,
    BOUNCE_SMTP_ADDR: "127.0.0.1:0",
    BOUNCE_TLS_CERT: join(certDir, "intake.crt"),
    BOUNCE_TLS_KEY: join(certDir, "intake.key"),
    BOUNCE_TLS_REQUIRED: "true",
  });
  app = await startApp({ config, logger: createLogger({ level: config.logLevel }), limiter });
  const intake = app.bounceIntake;
  if (intake === undefined) throw new Error("the bounce intake did not start");
  postfix = await startPostfix({
    smtpPort,
    localDomain,
    routes: { [bounceDomain]: intake.port, [gmailDomain]: fakeGmail.port },
    tls: { caCert: ca.cert, encrypt: [bounceDomain] },
  });
  client = createOtpEmailClient({ baseUrl: `http://127.0.0.1:${app.address.port}` });
});

afterAll(async () => {
  await app?.stop(1000);
  await postfix?.stop();
  await fakeGmail.close();
  await certificates?.cleanup();
  if (certDir !== undefined) await rm(certDir, { recursive: true, force: true });
});

/** Polls GetDeliveryStatus until `state`; returns the status and how long it took from `since`. */
async function waitForState(messageId: string, state: DeliveryState, since: number): Promise<[GetDeliveryStatusResponse, number]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const status = await client.getDeliveryStatus({ messageId });
    if (status.state === state) return [status, Date.now() - since];
    if (Date.now() > deadline) {
      throw new Error(
        `message ${messageId} still ${DeliveryState[status.state]} (${status.explanation}); Postfix log:\n${postfix?.maillog() ?? ""}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function unknownUser(): string {
  return `nobody-${randomBytes(4).toString("hex")}@${localDomain}`;
}

describe("bounces through a real Postfix relay", () => {
  it("(1) unknown local user: 250, ACCEPTED, then the DSN (over TLS) makes it BOUNCED 5.1.1 and suppresses the recipient", async () => {
    const recipient = unknownUser();
    const started = Date.now();

    const sent = await client.sendOtp({ recipient, purpose: Purpose.LOGIN });

    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [bounced, tookMs] = await waitForState(sent.messageId, DeliveryState.BOUNCED, started);
    console.log(`postfix scenario 1: SendOtp -> BOUNCED in ${tookMs} ms`);
    expect(bounced.relayReply?.dsnRequested).toBe(true);
    expect(bounced.relayReply?.text).toMatch(/^250 2\.0\.0 Ok: queued as /);
    expect(bounced.deliveryReports).toHaveLength(1);
    expect(bounced.deliveryReports[0]).toMatchObject({
      action: DeliveryReportAction.FAILED,
      status: "5.1.1",
      reportingMta: "dns; relay.postfix.test",
      originalEnvelopeId: sent.messageId,
      finalRecipient: `rfc822; n***@${localDomain}`,
    });
    expect(bounced.deliveryReports[0]?.diagnosticCode).toMatch(/^X-Postfix; unknown user: "n\*\*\*"$/);
    expect(bounced.explanation).toMatch(/said delivery failed \(status 5\.1\.1, .*\)\. The address does not exist: the recipient is suppressed/);
    // The DSN reached the intake over TLS, with the intake's certificate checked against the test CA.
    expect(postfix?.maillog()).toMatch(
      new RegExp(`Trusted TLS connection established to 127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${app?.bounceIntake?.port ?? 0}: TLSv1\\.[23]`),
    );

    // The next SendOtp to that address: FAILED_PRECONDITION, nothing sent, no rate budget spent.
    const error = await client.sendOtp({ recipient, purpose: Purpose.LOGIN }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ConnectError);
    const refusal = error as ConnectError;
    expect(refusal.code).toBe(Code.FailedPrecondition);
    expect(refusal.rawMessage).toMatch(/^email not sent: n\*\*\*@local\.test hard-bounced \(status 5\.1\.1\) at .*, so sends to it are suppressed until /);
    const info = refusal.findDetails(ErrorInfoSchema)[0];
    expect(info?.reason).toBe("RECIPIENT_SUPPRESSED");
    expect(info?.metadata["bounced_message_id"]).toBe(sent.messageId);
    expect(admissions.filter((key) => key === recipient)).toHaveLength(1);
    const suppressedId = info?.metadata["message_id"] ?? "";
    const suppressed = await client.getDeliveryStatus({ messageId: suppressedId });
    expect(suppressed).toMatchObject({
      state: DeliveryState.SUPPRESSED,
      attempts: [],
      suppression: { bouncedMessageId: sent.messageId, status: "5.1.1" },
    });
    expect(suppressed.explanation).toMatch(/^Not sent: the recipient hard-bounced at .* Nothing was sent and no rate budget was spent\.$/);
    // Postfix saw the address once: the refused send never left.
    expect(postfix?.maillog().match(new RegExp(`to=<${recipient}>`, "g"))).toHaveLength(1);
  });

  it("(2) the fake Gmail MX refuses with 550 5.7.26: BOUNCED with that diagnostic, recipient not suppressed", async () => {
    const recipient = `dmarc-${randomBytes(4).toString("hex")}@${gmailDomain}`;
    const started = Date.now();

    const sent = await client.sendOtp({ recipient, purpose: Purpose.LOGIN });

    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [bounced, tookMs] = await waitForState(sent.messageId, DeliveryState.BOUNCED, started);
    console.log(`postfix scenario 2: SendOtp -> BOUNCED (5.7.26) in ${tookMs} ms`);
    expect(bounced.deliveryReports[0]).toMatchObject({
      action: DeliveryReportAction.FAILED,
      status: "5.7.26",
      remoteMta: "dns; 127.0.0.1",
    });
    expect(bounced.deliveryReports[0]?.diagnosticCode).toBe(`smtp; 550 5.7.26 ${dmarcRefusal}`);
    expect(bounced.explanation).toContain("it points at our sending domain's DNS (SPF, DKIM, DMARC)");
    expect(bounced.explanation).toContain("the recipient is not suppressed");

    // Not suppressed: the next code goes out.
    const again = await client.sendOtp({ recipient, purpose: Purpose.LOGIN });
    expect(again.state).toBe(DeliveryState.ACCEPTED);
  });

  it("(3) the fake Gmail MX defers with 451 and Postfix's delay warning arrives: DELAYED", async () => {
    const recipient = `greylist-${randomBytes(4).toString("hex")}@${gmailDomain}`;
    const started = Date.now();

    const sent = await client.sendOtp({ recipient, purpose: Purpose.LOGIN });

    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [delayed, tookMs] = await waitForState(sent.messageId, DeliveryState.DELAYED, started);
    console.log(`postfix scenario 3: SendOtp -> DELAYED in ${tookMs} ms`);
    expect(delayed.deliveryReports[0]).toMatchObject({ action: DeliveryReportAction.DELAYED, status: "4.7.1" });
    expect(delayed.deliveryReports[0]?.diagnosticCode).toBe("smtp; 451 4.7.1 Greylisted, please try again later");
    expect(delayed.explanation).toMatch(/said delivery is delayed \(status 4\.7\.1, .*\); the relay is still trying/);
  });

  it("(4) the fake Gmail MX refuses the content, quoting the Subject: Postfix's DSN says so, and the code reads [redacted]", async () => {
    const recipient = `filtered-${randomBytes(4).toString("hex")}@${gmailDomain}`;
    // A code of our choosing: letters and digits that no id, hash or timestamp can contain by chance.
    const code = "QX7ZK4W9";

    const sent = await client.sendOtp({ recipient, purpose: Purpose.LOGIN, code });

    expect(sent.state).toBe(DeliveryState.ACCEPTED);
    const [bounced] = await waitForState(sent.messageId, DeliveryState.BOUNCED, Date.now());
    expect(bounced.deliveryReports[0]).toMatchObject({ action: DeliveryReportAction.FAILED, status: "5.7.1" });
    // Postfix quotes the MX's reply, Subject and all; the code is kept out of the record and the answer.
    expect(postfix?.maillog()).toContain(`(Subject: "${code} is your Acme sign-in code")`);
    expect(bounced.deliveryReports[0]?.diagnosticCode).toBe('smtp; 550 5.7.1 Message content rejected (Subject: "[redacted] is your Acme sign-in code")');
    expect(toJsonString(GetDeliveryStatusResponseSchema, bounced)).not.toContain(code);
  });
});
