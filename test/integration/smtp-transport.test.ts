import { execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { dkimTxtRecord } from "../../src/delivery/dkim.js";
import { createSmtpTransport, type SmtpTransportOptions } from "../../src/delivery/smtp-transport.js";
import { SmtpSendError, type OutgoingMail, type SmtpTransport } from "../../src/delivery/smtp-transport-types.js";
import { verifyWithMailauth } from "../support/dkim-verifiers.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const logger = pino({ level: "silent" });
const recipient = "jane.doe@example.com";

function mail(overrides: Partial<OutgoingMail> = {}): OutgoingMail {
  return {
    from: '"Acme" <no-reply@acme.test>',
    to: recipient,
    subject: "123456 is your code",
    text: "Your code is 123456",
    html: "<p>Your code is <b>123456</b></p>",
    messageId: "<m-1@acme.test>",
    headers: { "Auto-Submitted": "auto-generated" },
    ...overrides,
  };
}

/** Small timeouts: every failure in this file must come back well under a second. */
function transportFor(url: string, extra: Partial<SmtpTransportOptions> = {}): SmtpTransport {
  const transport = createSmtpTransport({
    url,
    logger,
    connectionTimeoutMs: 500,
    greetingTimeoutMs: 500,
    socketTimeoutMs: 300,
    ...extra,
  });
  cleanups.push(() => transport.close());
  return transport;
}

async function startSink(options?: Parameters<typeof startSmtpSink>[0]): Promise<SmtpSink> {
  const sink = await startSmtpSink(options);
  cleanups.push(() => sink.close());
  return sink;
}

async function sendError(transport: SmtpTransport, message = mail()): Promise<SmtpSendError> {
  const error: unknown = await transport.send(message).then(
    () => {
      throw new Error("expected the send to fail");
    },
    (failure: unknown) => failure,
  );
  expect(error).toBeInstanceOf(SmtpSendError);
  const failure = error as SmtpSendError;
  // Whatever happened, the recipient's address never leaks into the error.
  expect(JSON.stringify({ ...failure, message: failure.message })).not.toContain(recipient);
  return failure;
}

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  const pending = cleanups.reverse();
  cleanups = [];
  for (const cleanup of pending) await cleanup();
});

describe("smtp transport against a real SMTP server", () => {
  it("reports the relay's acceptance with reply code, enhanced status and queue id", async () => {
    const sink = await startSink();
    const transport = transportFor(sink.url);

    const acceptance = await transport.send(mail());

    const [received] = await sink.waitForMessages(1);
    expect(acceptance).toEqual({
      relay: `127.0.0.1:${sink.port}`,
      replyCode: 250,
      enhancedStatus: "2.0.0",
      text: `250 2.0.0 Ok: queued as ${received?.queueId}`,
      queueId: received?.queueId,
      // This sink does not advertise DSN, and the mail asked for none.
      dsnSupported: false,
      dsnRequested: false,
    });
    expect(transport.relay).toBe(`127.0.0.1:${sink.port}`);
    expect(received?.envelope).toMatchObject({ mailFrom: "no-reply@acme.test", rcptTo: [recipient] });
    expect(received?.parsed.messageId).toBe("<m-1@acme.test>");
  });

  it("hands the pool exactly the message built in one pass: its bytes, a lower-cased envelope domain, VERP and DSN", async () => {
    const sink = await startSink({ dsn: true });
    const transport = transportFor(sink.url);
    const verp = "bounce+01jabc@Bounces.Acme.test";
    const acceptance = await transport.send(
      mail({
        to: "Jane.Doe@Example.COM",
        text: "Your code is 123456\n.a line that starts with a dot\n",
        envelope: { from: verp, to: "Jane.Doe@Example.COM" },
        dsn: { envelopeId: "01jabc", notify: ["FAILURE", "DELAY"], ret: "HDRS" },
      }),
    );
    const [received] = await sink.waitForMessages(1);
    expect(acceptance.dsnRequested).toBe(true);
    expect(received?.envelope).toMatchObject({
      mailFrom: "bounce+01jabc@bounces.acme.test",
      rcptTo: ["Jane.Doe@example.com"],
      mailFromArgs: { RET: "HDRS", ENVID: "01jabc" },
    });
    expect(received?.envelope.rcptArgs[0]).toMatchObject({ NOTIFY: "FAILURE,DELAY" });
    const raw = received?.raw.toString("latin1") ?? "";
    // Dot-stuffing undone by the relay, CRLF throughout, the message ends in one CRLF.
    expect(raw).toMatch(/^Content-Type: multipart\/alternative;\r\n boundary="--_OtpEmail-[0-9a-f]{24}"\r\n/);
    expect(raw).toContain("\r\nTo: Jane.Doe@example.com\r\n");
    expect(raw).toContain("\r\n\r\nYour code is 123456\r\n.a line that starts with a dot\r\n\r\n--");
    expect(raw.replace(/\r\n/g, "")).not.toMatch(/[\r\n]/);
    expect(raw).toMatch(/--\r\n$/);
    expect(received?.parsed.text).toBe("Your code is 123456\n.a line that starts with a dot\n");
  });

  it("reuses pooled connections for consecutive messages", async () => {
    const sink = await startSink();
    const transport = transportFor(sink.url, { maxConnections: 1 });
    await transport.send(mail());
    await transport.send(mail({ messageId: "<m-2@acme.test>" }));
    await sink.waitForMessages(2);
    expect(sink.transactions()).toBe(2);
  });

  it.each([
    ["MAIL FROM", 421, "4.7.0", "Too many connections, try later"],
    ["RCPT TO", 451, "4.3.0", "Temporary local problem"],
    ["DATA", 451, "4.3.0", "Queue file write error"],
  ] as const)("a %s %i is a transient failure with the relay's words", async (stage, code, enhanced, text) => {
    const sink = await startSink();
    sink.respondWith(behave.reply(stage, code, enhanced, text));
    const transport = transportFor(sink.url);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({
      kind: "transient",
      replyCode: code,
      enhancedStatus: enhanced,
      replyText: `${code} ${enhanced} ${text}`,
      errorCode: "",
    });
    // The next transaction goes through: the transport is still usable.
    await transport.send(mail());
    expect(sink.messages).toHaveLength(1);
  });

  it.each(["MAIL FROM", "RCPT TO"] as const)(
    "a 421 at %s on a reused pooled connection keeps the relay's words (masked), not a generic connection error",
    async (stage) => {
      const sink = await startSink();
      const transport = transportFor(sink.url, { maxConnections: 1 });
      await transport.send(mail());
      sink.respondWith(behave.reply(stage, 421, "4.7.0", `Try again later, closing connection (${recipient}, code 123456)`));

      // The second message goes over the connection the first one used.
      const failure = await sendError(transport, mail({ messageId: "<m-2@acme.test>", redact: ["123456"] }));

      expect(failure).toMatchObject({
        kind: "transient",
        replyCode: 421,
        enhancedStatus: "4.7.0",
        replyText: "421 4.7.0 Try again later, closing connection (j***@example.com, code [redacted])",
        errorCode: "",
      });
      expect(sink.transactions()).toBe(2);
      expect(sink.messages).toHaveLength(1);
      // The relay closed that connection; the next message takes a new one.
      await transport.send(mail({ messageId: "<m-3@acme.test>" }));
      expect(sink.messages).toHaveLength(2);
    },
  );

  it("a 550 at RCPT TO is permanent, keeps the relay's text and masks the echoed address", async () => {
    const sink = await startSink();
    sink.respondWith(behave.reply("RCPT TO", 550, "5.1.1", `<${recipient}>: Recipient address rejected: User unknown`));
    const transport = transportFor(sink.url);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({
      kind: "permanent",
      replyCode: 550,
      enhancedStatus: "5.1.1",
      replyText: "550 5.1.1 <j***@example.com>: Recipient address rejected: User unknown",
      errorCode: "",
    });
    expect(failure.message).toBe(failure.replyText);
  });

  it("masks an echoed address with an apostrophe, a lower-cased echo and the local part quoted alone", async () => {
    // O'Brien-style addresses are valid (RFC 5322 atext); relays quote the
    // address, sometimes lower-cased, and sometimes the local part alone.
    const irish = "Shaun.O'Connor@example.com";
    const sink = await startSink();
    sink.respondWith(
      behave.reply("RCPT TO", 550, "5.1.1", `<shaun.o'connor@example.com>: Recipient address rejected: unknown user: "Shaun.O'Connor"`),
    );
    const transport = transportFor(sink.url);

    const failure = await sendError(transport, mail({ to: irish }));

    expect(failure.replyText).toBe(`550 5.1.1 <s***@example.com>: Recipient address rejected: unknown user: "S***"`);
    expect(JSON.stringify({ ...failure, message: failure.message }).toLowerCase()).not.toContain("connor");
  });

  it("a local part that reads like reply words (550@, queued@) is masked without garbling the reply code, status or queue id", async () => {
    const sink = await startSink();
    sink.respondWith(behave.reply("RCPT TO", 550, "5.1.1", "<550@example.com>: Recipient address rejected: 550 unknown"));
    const transport = transportFor(sink.url);

    const failure = await sendError(transport, mail({ to: "550@example.com" }));
    const acceptance = await transport.send(mail({ to: "queued@example.com" }));

    expect(failure).toMatchObject({ replyCode: 550, enhancedStatus: "5.1.1", replyText: "550 5.1.1 <5***@example.com>: Recipient address rejected: 5*** unknown" });
    expect(acceptance.queueId).toBe(sink.messages[0]?.queueId);
    expect(acceptance.text).toBe(`250 2.0.0 Ok: q*** as ${sink.messages[0]?.queueId ?? ""}`);
  });

  it("a 550 at end of DATA is permanent with the relay's text", async () => {
    const sink = await startSink();
    sink.respondWith(behave.reply("DATA", 550, "5.7.1", "Message rejected as spam"));
    const transport = transportFor(sink.url);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({
      kind: "permanent",
      replyCode: 550,
      enhancedStatus: "5.7.1",
      replyText: "550 5.7.1 Message rejected as spam",
    });
    expect(sink.messages).toHaveLength(0);
  });

  it("rejected credentials are an auth failure, not a transient one", async () => {
    const sink = await startSink({ auth: { user: "svc", pass: "s3cret" } });
    sink.respondWith(behave.rejectAuth());
    const transport = transportFor(sink.url);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "auth", replyCode: 535, enhancedStatus: "5.7.8", errorCode: "EAUTH" });
    expect(failure.replyText).toContain("535 5.7.8");
    expect(failure.replyText).not.toContain("s3cret");
  });

  it("URL-encoded credentials are decoded and accepted", async () => {
    const sink = await startSink({ auth: { user: "svc@acme.test", pass: "p@ss:w/rd%" } });
    expect(sink.url).toContain("svc%40acme.test:p%40ss%3Aw%2Frd%25@");
    const transport = transportFor(sink.url);
    await expect(transport.send(mail())).resolves.toMatchObject({ replyCode: 250 });
    await expect(transport.verify()).resolves.toBeUndefined();
  });

  it("a refused connection is transient with ECONNREFUSED", async () => {
    const port = await unusedPort();
    const transport = transportFor(`smtp://127.0.0.1:${port}?starttls=off`);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "transient", replyCode: 0, errorCode: "ECONNREFUSED" });
    await expect(transport.verify()).rejects.toMatchObject({ kind: "transient", errorCode: "ECONNREFUSED" });
  });

  it("a relay that has the whole message and never answers fails as unanswered (ETIMEDOUT), not transient, bounded by socketTimeoutMs", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall());
    const transport = transportFor(sink.url, { socketTimeoutMs: 300 });

    const started = Date.now();
    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "unanswered", replyCode: 0, errorCode: "ETIMEDOUT" });
    expect(failure.replyText).toMatch(/^the relay had the whole message and gave no final reply \(timed out waiting for the relay's reply .*\); whether it took the message is unknown$/);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(sink.unanswered).toHaveLength(1);
  });

  it("a relay that never answers RCPT TO fails as a transient timeout: none of the message went out", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall("RCPT TO"));
    const transport = transportFor(sink.url, { socketTimeoutMs: 300 });

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "transient", replyCode: 0, errorCode: "ETIMEDOUT" });
    expect(sink.unanswered).toHaveLength(0);
  });

  it("a relay that stops reading mid-DATA, before the end of a large message could be written, fails as a transient timeout", async () => {
    // Larger than what the loopback connection's buffers hold: the end of data never leaves the client. The
    // bytes were all handed to nodemailer's stream, so only the socket can tell that they were not written.
    const sink = await startSink();
    sink.respondWith(behave.stall("mid-DATA"));
    const transport = transportFor(sink.url, { socketTimeoutMs: 500 });

    const failure = await sendError(transport, mail({ text: "Your code is 123456\n" + "x".repeat(76).concat("\n").repeat(260_000) }));

    expect(failure).toMatchObject({ kind: "transient", replyCode: 0, errorCode: "ETIMEDOUT" });
  });

  it("sendTimeoutMs bounds a send even when the socket timeout is long", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall());
    const transport = transportFor(sink.url, { socketTimeoutMs: 60_000, sendTimeoutMs: 300 });

    const started = Date.now();
    const failure = await sendError(transport);

    // The relay had the whole message: its answer is unknown.
    expect(failure).toMatchObject({ kind: "unanswered", errorCode: "ETIMEDOUT" });
    expect(failure.replyText).toContain("300 ms");
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("sendTimeoutMs before the end of data went out is a transient timeout", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall("MAIL FROM"));
    const transport = transportFor(sink.url, { socketTimeoutMs: 60_000, sendTimeoutMs: 300 });

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "transient", errorCode: "ETIMEDOUT" });
    expect(failure.replyText).toBe("the relay gave no final reply within 300 ms");
  });

  it("the code's expiry while the relay has the whole message and has not replied is unanswered (EEXPIRED); before, transient", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall(), behave.stall("RCPT TO"));
    const transport = transportFor(sink.url, { socketTimeoutMs: 60_000, sendTimeoutMs: 60_000 });

    const after = await transport.send(mail(), { withinMs: 300 }).catch((error: unknown) => error);
    const before = await transport.send(mail({ messageId: "<m-2@acme.test>" }), { withinMs: 300 }).catch((error: unknown) => error);

    expect(after).toMatchObject({
      kind: "unanswered",
      errorCode: "EEXPIRED",
      replyText: "the code expired while the relay had the whole message and had not replied; the attempt was given up",
    });
    expect(before).toMatchObject({
      kind: "transient",
      errorCode: "EEXPIRED",
      replyText: "the code expired before the relay took the message; the attempt was given up",
    });
    expect(sink.unanswered).toHaveLength(1);
  });

  it("a connection the relay drops after the whole message, with no reply, is unanswered", async () => {
    const sink = await startSink();
    sink.respondWith(behave.dropAfterData());
    const transport = transportFor(sink.url);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "unanswered", replyCode: 0 });
    expect(["ECONNECTION", "ECONNRESET", "EPIPE"]).toContain(failure.errorCode);
    // One send is one transaction: the pool did not silently resend it.
    expect(sink.transactions()).toBe(1);
    expect(sink.unanswered).toHaveLength(1);
  });

  it("a connection dropped mid-DATA, before the end of a large message went out, is transient", async () => {
    const sink = await startSink();
    sink.respondWith(behave.dropMidData());
    // A socket idle for 300 ms while a loaded machine writes the 20 MB would end the attempt first (ETIMEDOUT).
    const transport = transportFor(sink.url, { socketTimeoutMs: 5_000 });

    const failure = await sendError(transport, mail({ text: "Your code is 123456\n" + "x".repeat(76).concat("\n").repeat(260_000) }));

    expect(failure).toMatchObject({ kind: "transient", replyCode: 0 });
    expect(["ECONNECTION", "ECONNRESET", "ESOCKET", "EPIPE"]).toContain(failure.errorCode);
    expect(sink.transactions()).toBe(1);
    expect(sink.messages).toHaveLength(0);
  });

  it("a relay that hangs up before its greeting is one transient failure, not resent by the pool", async () => {
    let connections = 0;
    const hangUp = createServer((socket) => {
      connections++;
      socket.destroy();
    });
    await new Promise<void>((resolve) => hangUp.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise<void>((resolve) => hangUp.close(() => resolve())));
    const address = hangUp.address();
    if (address === null || typeof address === "string") throw new Error("no port");
    const transport = transportFor(`smtp://127.0.0.1:${address.port}?starttls=off`);

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "transient", replyCode: 0 });
    expect(["ECONNECTION", "ECONNRESET"]).toContain(failure.errorCode);
    expect(connections).toBe(1);
  });

  describe("TLS", () => {
    let pki: { key: string; cert: string };
    beforeAll(() => {
      const dir = mkdtempSync(join(tmpdir(), "otp-smtp-tls-"));
      try {
        execFileSync(
          "/usr/bin/openssl",
          [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
          ],
          { stdio: "ignore" },
        );
        pki = { key: readFileSync(join(dir, "key.pem"), "utf8"), cert: readFileSync(join(dir, "cert.pem"), "utf8") };
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("requires STARTTLS by default: a plaintext-only relay is refused, nothing is sent in clear", async () => {
      const sink = await startSink();
      const transport = transportFor(sink.url.replace("?starttls=off", ""));

      const failure = await sendError(transport);

      expect(failure).toMatchObject({ kind: "permanent", errorCode: "ETLS" });
      expect(sink.transactions()).toBe(0);
    });

    it("refuses a self-signed certificate without tlsCa", async () => {
      const sink = await startSink({ tls: pki });
      const transport = transportFor(sink.url);

      const failure = await sendError(transport);

      expect(failure).toMatchObject({ kind: "permanent", replyCode: 0, errorCode: "ETLS" });
      expect(failure.replyText).toMatch(/certificate/i);
      expect(sink.transactions()).toBe(0);
    });

    it("accepts the relay's certificate when its CA is given as tlsCa", async () => {
      const sink = await startSink({ tls: pki, auth: { user: "svc", pass: "s3cret" } });
      const transport = transportFor(sink.url, { tlsCa: pki.cert });

      await expect(transport.send(mail())).resolves.toMatchObject({ replyCode: 250 });
      await expect(transport.verify()).resolves.toBeUndefined();
      expect(sink.messages).toHaveLength(1);
    });
  });

  it.each([
    ["http://relay.test:25", /smtp:\/\/ \(STARTTLS\) or smtps:\/\//],
    ["smtp://", /no host|not a valid URL/],
    ["smtp://relay.test:0", /port/],
    ["smtp://relay.test:99999", /not a valid URL|port/],
    ["smtp://relay.test:25/inbox", /path/],
    ["smtp://relay.test:25?tls=1", /unknown parameter "tls"/],
    ["smtp://relay.test:25?starttls=maybe", /starttls must be/],
    ["smtps://relay.test?starttls=off", /smtp:\/\/ only/],
    ["smtp://:secret@relay.test", /no user/],
    ["not a url", /not a valid URL/],
  ])("rejects the bad URL %s with a clear error", (url, message) => {
    expect(() => createSmtpTransport({ url, logger })).toThrow(message);
  });

  it("never repeats the password of a bad URL in its error", () => {
    expect(() => createSmtpTransport({ url: "smtp://svc:hunter2@relay.test:25/x", logger })).toThrow(
      "smtp://svc:***@relay.test:25/x",
    );
    try {
      createSmtpTransport({ url: "ftp://svc:hunter2@relay.test", logger });
    } catch (error) {
      expect(String(error)).not.toContain("hunter2");
    }
  });

  it("rejects a tlsCa that is not PEM", () => {
    expect(() => createSmtpTransport({ url: "smtps://relay.test", tlsCa: "/etc/ssl/ca.pem", logger })).toThrow(/PEM/);
  });

  it("accepts the documented URL forms", () => {
    expect(transportFor("smtp://u:p@relay.test").relay).toBe("relay.test:587");
    expect(transportFor("smtps://relay.test").relay).toBe("relay.test:465");
    expect(transportFor("smtp://[::1]:2525?starttls=off").relay).toBe("[::1]:2525");
  });

  it.each([
    ["connects and never greets", "", { greetingTimeoutMs: 300, socketTimeoutMs: 10_000 }, "waiting for the relay's greeting"],
    ["greets and never answers EHLO", "220 relay.test ESMTP\r\n", { greetingTimeoutMs: 10_000, socketTimeoutMs: 300 }, "waiting for the relay's reply"],
  ])("a relay that %s fails as a transient timeout, bounded by its own timeout", async (_what, greeting, timeouts, described) => {
    const silent = createServer((socket) => {
      if (greeting !== "") socket.write(greeting);
      cleanups.push(() => {
        socket.destroy();
        return Promise.resolve();
      });
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise<void>((resolve) => silent.close(() => resolve())));
    const { port } = silent.address() as { port: number };
    const transport = transportFor(`smtp://127.0.0.1:${port}?starttls=off`, timeouts);

    const started = Date.now();
    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "transient", replyCode: 0, errorCode: "ETIMEDOUT" });
    expect(failure.replyText).toContain(described);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("a message is taken when the pool gives it a new connection, before connecting: a relay that never greets has it, and it is never asked to depart", async () => {
    const silent = createServer((socket) => {
      cleanups.push(() => {
        socket.destroy();
        return Promise.resolve();
      });
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise<void>((resolve) => silent.close(() => resolve())));
    const { port } = silent.address() as { port: number };
    const transport = transportFor(`smtp://127.0.0.1:${port}?starttls=off`, { greetingTimeoutMs: 300, socketTimeoutMs: 10_000 });

    const events: string[] = [];
    const failure = await transport
      .send(mail(), {
        onTaken: () => events.push("taken"),
        atDeparture: (queued) => {
          events.push("departure");
          return queued;
        },
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      );

    expect(failure).toMatchObject({ kind: "transient", errorCode: "ETIMEDOUT" });
    // Connecting to the relay was the relay's time (a greeting that never came), not a wait for a connection.
    expect(events).toEqual(["taken"]);
  });

  it("close with abandonInFlight fails a send the relay is sitting on at once; a plain close would wait for it", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall());
    const transport = transportFor(sink.url, { socketTimeoutMs: 60_000, sendTimeoutMs: 60_000 });
    const sending = sendError(transport);
    // The whole message, end of data included, not only its MAIL FROM: closed before its end of data, the send
    // would rightly read transient (the relay never had it whole). Waiting for MAIL FROM failed once in CI.
    await vi.waitFor(() => expect(sink.unanswered).toHaveLength(1));

    const started = Date.now();
    await transport.close({ abandonInFlight: true });
    const failure = await sending;

    // Closed under a message the relay had whole: its answer is unknown.
    expect(failure.kind).toBe("unanswered");
    expect(Date.now() - started).toBeLessThan(5000);
  });

  describe("a message waiting for a pooled connection", () => {
    /** A one-connection transport whose connection is busy with a message the relay holds. */
    async function busyTransport(extra: Partial<SmtpTransportOptions> = {}) {
      const sink = await startSink();
      const transport = transportFor(sink.url, { maxConnections: 1, socketTimeoutMs: 10_000, ...extra });
      sink.hold();
      const first = transport.send(mail());
      await vi.waitFor(() => expect(sink.held()).toBe(1));
      return { sink, transport, first };
    }

    it("is told it was taken only when the busy connection frees up, once, before it is asked what to send", async () => {
      const { sink, transport, first } = await busyTransport();
      const events: string[] = [];
      const second = transport.send(mail({ messageId: "<m-2@acme.test>" }), {
        onTaken: () => events.push("taken"),
        atDeparture: (queued) => {
          events.push("departure");
          return queued;
        },
      });
      // Queued behind the held message, several turns of the event loop: still waiting, not taken.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(events).toEqual([]);

      sink.release();
      await Promise.all([first, second]);
      expect(events).toEqual(["taken", "departure"]);
    });

    it("is asked what to send when the connection takes it, and sends the mail given then", async () => {
      const { sink, transport, first } = await busyTransport();
      let released = false;
      const asked: boolean[] = [];
      const second = transport.send(mail({ messageId: "<m-2@acme.test>" }), {
        atDeparture: (queued) => {
          asked.push(released);
          return { ...queued, text: "Your code is 123456, valid for 7 min", html: "<p>valid for 7 min</p>" };
        },
      });

      released = true;
      sink.release();
      await Promise.all([first, second]);

      expect(asked).toEqual([true]);
      const [, received] = await sink.waitForMessages(2);
      expect(received?.parsed.messageId).toBe("<m-2@acme.test>");
      expect(received?.parsed.text).toBe("Your code is 123456, valid for 7 min");
    });

    it("made again as it leaves, is DKIM-signed as made then", async () => {
      const privateKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
      const dkim = { domainName: "acme.test", keySelector: "s2026", privateKey };
      const { sink, transport, first } = await busyTransport({ dkim });
      const second = transport.send(mail({ messageId: "<m-2@acme.test>" }), {
        atDeparture: (queued) => ({ ...queued, text: "Your code is 123456, valid for 7 min" }),
      });

      sink.release();
      await Promise.all([first, second]);

      const [, received] = await sink.waitForMessages(2);
      expect(received?.parsed.text).toBe("Your code is 123456, valid for 7 min");
      const verdict = await verifyWithMailauth(received?.raw ?? Buffer.alloc(0), { name: "s2026._domainkey.acme.test", txt: dkimTxtRecord(privateKey) });
      expect(verdict.result).toBe("pass");
    });

    it("withdrawn as it leaves, sends nothing: EEXPIRED with the reason, and the connection serves the next message", async () => {
      const { sink, transport, first } = await busyTransport();
      const refused = transport
        .send(mail({ messageId: "<m-2@acme.test>" }), { atDeparture: () => ({ withdrawn: "the code expired while it waited" }) })
        .then(
          () => undefined,
          (error: unknown) => error,
        );

      sink.release();
      await first;
      const failure = await refused;

      expect(failure).toBeInstanceOf(SmtpSendError);
      expect(failure).toMatchObject({ kind: "transient", replyCode: 0, errorCode: "EEXPIRED", replyText: "the code expired while it waited" });
      expect(sink.transactions()).toBe(1);
      await transport.send(mail({ messageId: "<m-3@acme.test>" }));
      expect(sink.messages.map((received) => received.parsed.messageId)).toEqual(["<m-1@acme.test>", "<m-3@acme.test>"]);
    });
  });

  it("a wall clock set back (NTP) does not leave later sends with a send timeout that has already fired", async () => {
    const sink = await startSink();
    sink.respondWith(behave.stall());
    const transport = transportFor(sink.url, { socketTimeoutMs: 10_000, sendTimeoutMs: 300 });
    vi.useFakeTimers({ toFake: ["Date"], now: Date.now() });
    try {
      // This send's timeout fires: the relay sits on it.
      expect(await sendError(transport)).toMatchObject({ errorCode: "ETIMEDOUT" });
      vi.setSystemTime(Date.now() - 3_600_000);

      const acceptance = await transport.send(mail({ messageId: "<m-2@acme.test>" }));

      expect(acceptance.replyCode).toBe(250);
    } finally {
      vi.useRealTimers();
    }
  });

  describe("a send stopped before the end of its data (SendOptions.signal)", () => {
    it("a relay stalled at RCPT TO, the send stopped: onEndOfData is never told, the relay that recovers reaches DATA and gets nothing, and the send rejects ESTOPPED", async () => {
      const sink = await startSink();
      sink.respondWith(behave.stall("RCPT TO"));
      const transport = transportFor(sink.url, { socketTimeoutMs: 10_000 });
      const stop = new AbortController();
      let told = false;
      const sending = transport.send(mail(), { signal: stop.signal, onEndOfData: () => (told = true) });
      await vi.waitFor(() => expect(sink.stalled()).toBe(1));

      stop.abort();
      sink.resume();
      const failure: unknown = await sending.catch((error: unknown) => error);

      expect(failure).toBeInstanceOf(SmtpSendError);
      expect(failure).toMatchObject({ kind: "transient", replyCode: 0, errorCode: "ESTOPPED" });
      expect(told).toBe(false);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(sink.messages).toEqual([]);
      expect(sink.unanswered).toEqual([]);
    });

    it("onEndOfData is told as the end of the data goes, before the relay's reply; a stop then changes nothing", async () => {
      const sink = await startSink();
      const transport = transportFor(sink.url);
      const stop = new AbortController();
      const events: string[] = [];
      const acceptance = await transport.send(mail(), {
        signal: stop.signal,
        onEndOfData: () => {
          events.push("end of data");
          stop.abort();
        },
      });
      events.push("accepted");

      expect(acceptance.replyCode).toBe(250);
      expect(events).toEqual(["end of data", "accepted"]);
      expect(sink.messages).toHaveLength(1);
    });

    it("a message only nodemailer's builder can make is told onEndOfData as it is handed over: it cannot be stopped", async () => {
      const sink = await startSink();
      sink.respondWith(behave.stall("RCPT TO"));
      const transport = transportFor(sink.url, { socketTimeoutMs: 10_000 });
      let told = false;
      const sending = transport.send(mail({ to: "jöhn@example.com" }), { signal: new AbortController().signal, onEndOfData: () => (told = true) });
      void sending.catch(() => undefined);

      await vi.waitFor(() => expect(sink.stalled()).toBe(1));
      expect(told).toBe(true);
      await transport.close({ abandonInFlight: true });
    });
  });

  it("refuses to send once closed", async () => {
    const sink = await startSink();
    const transport = transportFor(sink.url);
    await transport.send(mail());
    await transport.close();

    const failure = await sendError(transport);

    expect(failure).toMatchObject({ kind: "transient", errorCode: "ECONNECTION" });
    expect(sink.messages).toHaveLength(1);
  });
});

/** A loopback port with nothing listening on it. */
async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}
