/**
 * The sending side of "delivery truth", against a real SMTP server: every
 * message is DKIM-signed so that two independent verifiers accept the exact
 * bytes that left (and reject a tampered copy), goes out with its own VERP
 * envelope sender, and asks for a DSN, which the record says was really
 * requested only when the relay advertised DSN.
 */
import { generateKeyPairSync } from "node:crypto";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { createDeliveryService } from "../../src/delivery/delivery-service.js";
import { dkimTxtRecord, prepareDkim, type DkimSigningOptions } from "../../src/delivery/dkim.js";
import { explain } from "../../src/delivery/explain.js";
import { buildOtpMail } from "../../src/delivery/message.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { createRenderer } from "../../src/delivery/render.js";
import { createSmtpTransport } from "../../src/delivery/smtp-transport.js";
import type { OutgoingMail, SmtpTransport } from "../../src/delivery/smtp-transport-types.js";
import { verifyWithDkimpy, verifyWithMailauth, type DkimKeyRecord } from "../support/dkim-verifiers.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const logger = pino({ level: "silent" });
const messageId = "01kbf3vq0m4x2c9d8e7f6g5h4j";
const recipient = "jane.doe@example.com";
const rsaKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
const keyRecord: DkimKeyRecord = { name: "s2026._domainkey.acme.test", txt: dkimTxtRecord(rsaKey) };

let sinks: SmtpSink[] = [];
let transports: SmtpTransport[] = [];
afterEach(async () => {
  for (const transport of transports) await transport.close();
  for (const sink of sinks) await sink.close();
  sinks = [];
  transports = [];
});

async function relay(options: { dsn: boolean; dkim?: DkimSigningOptions }) {
  const sink = await startSmtpSink({ dsn: options.dsn });
  sinks.push(sink);
  const transport = createSmtpTransport({ url: sink.url, logger, socketTimeoutMs: 2000, dkim: options.dkim });
  transports.push(transport);
  return { sink, transport };
}

/**
 * The service's message. A recipient whose address is not ASCII sends
 * through nodemailer's sendMail, which signs it; a plain one takes the
 * pooled path, signed by dkim-sign.ts.
 */
function otpMail(locale = "ko", to = recipient): OutgoingMail {
  const rendered = createRenderer({ defaultLocale: "en", productName: "Acme 클라우드" }).render({
    purpose: "login",
    locale,
    code: "482913",
    ttlMs: 600_000,
  });
  return buildOtpMail({
    rendered,
    to,
    fromName: "Acme 클라우드",
    fromAddress: "no-reply@acme.test",
    messageId,
    bounceDomain: "bounces.acme.test",
  });
}

/** The raw message with its header block and body split at the first empty line. */
function split(raw: Buffer): { head: string; body: string } {
  const text = raw.toString("latin1");
  const at = text.indexOf("\r\n\r\n");
  return { head: text.slice(0, at + 2), body: text.slice(at + 2) };
}

describe("DKIM signing", () => {
  it("signs so that mailauth and python3-dkim both verify the exact bytes received, d= aligned with From", async () => {
    const dkim = await prepareDkim({ domain: "acme.test", selector: "s2026", privateKey: rsaKey }, "no-reply@acme.test");
    const { sink, transport } = await relay({ dsn: true, dkim });

    await transport.send(otpMail());
    const [received] = await sink.waitForMessages(1);
    const raw = received.raw;

    const signature = /^DKIM-Signature:(.*(?:\r\n[ \t].*)*)/m.exec(raw.toString("latin1"))?.[1] ?? "";
    expect(signature.replace(/\s+/g, "")).toMatch(/a=rsa-sha256;c=relaxed\/relaxed;d=acme\.test;.*s=s2026;/);
    expect(signature).toMatch(/h=[^;]*from[^;]*subject[^;]*message-id[^;]*to/i);
    const mailauth = await verifyWithMailauth(raw, keyRecord);
    expect(mailauth).toMatchObject({ result: "pass", signingDomain: "acme.test" });
    expect(await verifyWithDkimpy(raw, keyRecord)).toBe(true);
  });

  it("both paths sign: the pooled one (dkim-sign.ts, RSA on the thread pool) and sendMail's (nodemailer, for an IDN recipient), and both verify", async () => {
    const dkim = await prepareDkim({ domain: "acme.test", selector: "s2026", privateKey: rsaKey }, "no-reply@acme.test");
    const { sink, transport } = await relay({ dsn: true, dkim });
    await transport.send(otpMail("ko"));
    await transport.send(otpMail("ko", "jane@bücher.example"));
    const [pooled, composed] = await sink.waitForMessages(2);
    // The one-pass builder's boundary tells the pooled message from nodemailer's.
    expect(pooled.raw.toString("latin1")).toContain("_OtpEmail-");
    expect(composed.raw.toString("latin1")).not.toContain("_OtpEmail-");
    for (const { raw } of [pooled, composed]) {
      expect(raw.toString("latin1")).toMatch(/^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=acme\.test;/);
      expect(await verifyWithMailauth(raw, keyRecord)).toMatchObject({ result: "pass", signingDomain: "acme.test" });
      expect(await verifyWithDkimpy(raw, keyRecord)).toBe(true);
    }
  });

  it("a tampered copy (header or body) fails both verifiers", async () => {
    const dkim = await prepareDkim({ domain: "acme.test", selector: "s2026", privateKey: rsaKey }, "no-reply@acme.test");
    const { sink, transport } = await relay({ dsn: true, dkim });
    await transport.send(otpMail("en"));
    const [received] = await sink.waitForMessages(1);
    const { head, body } = split(received.raw);
    expect(head).toMatch(/^To: jane\.doe@example\.com\r$/m);

    const tamperedHeader = Buffer.from(head.replace(/^To: jane\.doe@example\.com/m, "To: mallory@example.com") + body, "latin1");
    const tamperedBody = Buffer.from(head + body.replace("482913", "482914"), "latin1");
    expect(body).toContain("482913");

    // mailauth reports a body-hash mismatch as "neutral" (RFC 6376 leaves the
    // word to the verifier); either way the signature does not pass.
    expect(await verifyWithMailauth(tamperedHeader, keyRecord)).toMatchObject({ result: "fail", comment: "bad signature" });
    expect(await verifyWithMailauth(tamperedBody, keyRecord)).toMatchObject({
      result: "neutral",
      comment: "body hash did not verify",
    });
    expect(await verifyWithDkimpy(tamperedHeader, keyRecord)).toBe(false);
    expect(await verifyWithDkimpy(tamperedBody, keyRecord)).toBe(false);
    // The untouched bytes still pass: the failures are the tampering's.
    expect(await verifyWithDkimpy(Buffer.from(head + body, "latin1"), keyRecord)).toBe(true);
  });

  it("start-up refuses a key that cannot sign, a short key, a malformed key and a d= that does not align with From", async () => {
    const ed25519 = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const short = generateKeyPairSync("rsa", { modulusLength: 512 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const config = { domain: "acme.test", selector: "s2026" };

    await expect(prepareDkim({ ...config, privateKey: ed25519 }, "no-reply@acme.test")).rejects.toThrow(
      /must be an RSA key of at least 1024 bits .*got ed25519/,
    );
    await expect(prepareDkim({ ...config, privateKey: short }, "no-reply@acme.test")).rejects.toThrow(/got rsa of 512 bits/);
    await expect(prepareDkim({ ...config, privateKey: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" }, "no-reply@acme.test")).rejects.toThrow(
      /not a usable PEM private key/,
    );
    await expect(prepareDkim({ ...config, privateKey: rsaKey }, "no-reply@other.test")).rejects.toThrow(
      /DKIM_DOMAIN=acme.test does not align with the From domain other.test/,
    );
    // Relaxed alignment: a subdomain of the signing domain is fine.
    await expect(prepareDkim({ ...config, privateKey: rsaKey }, "no-reply@mail.acme.test")).resolves.toMatchObject({
      domainName: "acme.test",
    });
  });
});

describe("return path and DSN request", () => {
  it("sends from bounce+<message_id>@<bounce domain> with NOTIFY=FAILURE,DELAY RET=HDRS ENVID=<message_id>", async () => {
    const { sink, transport } = await relay({ dsn: true });

    const acceptance = await transport.send(otpMail());

    const [received] = await sink.waitForMessages(1);
    expect(received?.envelope).toMatchObject({
      mailFrom: `bounce+${messageId}@bounces.acme.test`,
      rcptTo: [recipient],
      mailFromArgs: { RET: "HDRS", ENVID: messageId },
      rcptArgs: [{ NOTIFY: "FAILURE,DELAY" }],
    });
    expect(received?.parsed.messageId).toBe(`<${messageId}@acme.test>`);
    expect(received?.parsed.from?.value[0]?.address).toBe("no-reply@acme.test");
    expect(acceptance).toMatchObject({ dsnSupported: true, dsnRequested: true });
  });

  it("a relay without DSN gets no DSN parameters, and the record and explanation say so", async () => {
    const { sink, transport } = await relay({ dsn: false });
    const writes: DeliveryRecord[] = [];
    const delivery = createDeliveryService({
      store: { putRecord: (record) => Promise.resolve(void writes.push(record)) },
      transport,
      clock: systemClock,
      logger,
      maxAttempts: 1,
      retryBaseDelayMs: 10,
      retryMaxDelayMs: 10,
      waitBudgetMs: 5000,
      recordTtlMs: 60_000,
    });
    const now = Date.now();
    const queued: DeliveryRecord = {
      messageId,
      caller: "test",
      state: "QUEUED",
      recipientMasked: "j***@example.com",
      recipientDomain: "example.com",
      purpose: "login",
      locale: "ko",
      createdAt: now,
      updatedAt: now,
      expiresAt: now + 600_000,
      attempts: [],
      traceId: "",
    };

    const accepted = await delivery.dispatch(queued, otpMail());

    const [received] = await sink.waitForMessages(1);
    // VERP still applies: it needs nothing from the relay.
    expect(received?.envelope.mailFrom).toBe(`bounce+${messageId}@bounces.acme.test`);
    expect(received?.envelope.mailFromArgs).not.toHaveProperty("RET");
    expect(received?.envelope.rcptArgs[0]).not.toHaveProperty("NOTIFY");
    expect(accepted.state).toBe("ACCEPTED");
    expect(accepted.relayReply?.dsnRequested).toBe(false);
    expect(explain(accepted, Date.now())).toMatch(
      /; acceptance is not delivery; the relay does not support DSN, so a later bounce will only be seen if it reaches the bounce domain's mailbox\.$/,
    );
  });
});
