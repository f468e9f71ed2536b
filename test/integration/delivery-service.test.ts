import { createServer } from "node:net";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { createDeliveryService, type DeliveryServiceOptions, type RelayHealthEvent } from "../../src/delivery/delivery-service.js";
import type { DeliveryRecord, DeliveryState } from "../../src/delivery/record.js";
import { createSmtpTransport, type SmtpTransportOptions } from "../../src/delivery/smtp-transport.js";
import type { OutgoingMail, SmtpTransport } from "../../src/delivery/smtp-transport-types.js";
import type { OtpStore } from "../../src/store/types.js";
import { createDeliveryTelemetry } from "../../src/telemetry/delivery-telemetry.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const recipient = "jane.doe@example.com";

/** The store is not under test here: a Map is enough, and remembers every write in order. */
function fakeStore(): Pick<OtpStore, "putRecord"> & { records: Map<string, DeliveryRecord>; writes: DeliveryRecord[] } {
  const records = new Map<string, DeliveryRecord>();
  const writes: DeliveryRecord[] = [];
  return {
    records,
    writes,
    putRecord(record: DeliveryRecord): Promise<void> {
      records.set(record.messageId, record);
      writes.push(record);
      return Promise.resolve();
    },
  };
}

let sequence = 0;
function queuedRecord(expiresInMs = 60_000): DeliveryRecord {
  const now = Date.now();
  sequence++;
  return {
    messageId: `msg-${sequence}`,
    caller: "test",
    state: "QUEUED",
    recipientMasked: "j***@example.com",
    recipientDomain: "example.com",
    purpose: "login",
    locale: "en",
    createdAt: now,
    updatedAt: now,
    expiresAt: now + expiresInMs,
    attempts: [],
    traceId: "",
  };
}

function mailFor(record: DeliveryRecord): OutgoingMail {
  return {
    from: '"Acme" <no-reply@acme.test>',
    to: recipient,
    subject: "123456 is your Acme sign-in code",
    text: "123456",
    html: "<p>123456</p>",
    messageId: `<${record.messageId}@acme.test>`,
    headers: {},
  };
}

interface Harness {
  readonly sink: SmtpSink;
  readonly transport: SmtpTransport;
  readonly store: ReturnType<typeof fakeStore>;
  readonly service: ReturnType<typeof createDeliveryService>;
  readonly health: RelayHealthEvent[];
  readonly logs: string[];
}

let sinks: SmtpSink[] = [];
let transports: SmtpTransport[] = [];
afterEach(async () => {
  // Sinks first: closing them ends stalled sends, which transport.close() waits for.
  for (const sink of sinks) await sink.close();
  for (const transport of transports) await transport.close();
  sinks = [];
  transports = [];
});

async function harness(
  options: {
    sink?: Parameters<typeof startSmtpSink>[0];
    url?: string;
    transport?: Partial<SmtpTransportOptions>;
    service?: Partial<DeliveryServiceOptions>;
  } = {},
): Promise<Harness> {
  const sink = await startSmtpSink(options.sink);
  sinks.push(sink);
  const logs: string[] = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void logs.push(line) });
  const transport = createSmtpTransport({
    url: options.url ?? sink.url,
    logger,
    // Short enough for the stall tests, long enough that a loaded CI machine
    // (many test files at once) does not turn a slow reply into a timeout.
    connectionTimeoutMs: 2000,
    greetingTimeoutMs: 2000,
    socketTimeoutMs: 1000,
    ...options.transport,
  });
  transports.push(transport);
  const store = fakeStore();
  const health: RelayHealthEvent[] = [];
  const service = createDeliveryService({
    store,
    transport,
    clock: systemClock,
    logger,
    maxAttempts: 3,
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 40,
    waitBudgetMs: 5000,
    recordTtlMs: 60_000,
    random: () => 1,
    onRelayHealth: (event) => health.push(event),
    ...options.service,
  });
  return { sink, transport, store, service, health, logs };
}

function statesWritten(store: ReturnType<typeof fakeStore>, messageId: string): DeliveryState[] {
  return store.writes.filter((record) => record.messageId === messageId).map((record) => record.state);
}

async function eventually<T>(read: () => T | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = read();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("delivery service against a real SMTP server", () => {
  it("a 421 from the relay is retried and the second attempt is recorded", async () => {
    const { sink, service, store, health, transport } = await harness();
    sink.respondWith(behave.reply("MAIL FROM", 421, "4.7.0", "Too many connections, try again later"));
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("ACCEPTED");
    expect(result.attempts).toHaveLength(2);
    expect(result.attempts[0]).toMatchObject({
      number: 1,
      outcome: "transient",
      replyCode: 421,
      enhancedStatus: "4.7.0",
      replyText: "421 4.7.0 Too many connections, try again later",
      errorCode: "",
    });
    expect(result.attempts[1]).toMatchObject({ number: 2, outcome: "accepted", replyCode: 250, enhancedStatus: "2.0.0" });
    expect(result.attempts[1]?.startedAt).toBeGreaterThanOrEqual((result.attempts[0]?.startedAt ?? 0) + (result.attempts[0]?.durationMs ?? 0));
    expect(statesWritten(store, record.messageId)).toEqual(["SENDING", "RETRYING", "SENDING", "ACCEPTED"]);
    expect(store.records.get(record.messageId)).toEqual(result);
    expect(health).toEqual(["ok", "ok"]);
    expect(result.relayReply?.relay).toBe(transport.relay);
  });

  it("a 421 on a reused pooled connection is recorded in the relay's words, then retried", async () => {
    const { sink, service } = await harness({ transport: { maxConnections: 1 } });
    const earlier = queuedRecord();
    expect((await service.dispatch(earlier, mailFor(earlier))).state).toBe("ACCEPTED");
    sink.respondWith(behave.reply("RCPT TO", 421, "4.7.0", `Try again later, closing connection <${recipient}>`));
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("ACCEPTED");
    expect(result.attempts[0]).toMatchObject({
      outcome: "transient",
      replyCode: 421,
      enhancedStatus: "4.7.0",
      replyText: "421 4.7.0 Try again later, closing connection <j***@example.com>",
      errorCode: "",
    });
  });

  it.each([
    ["back", -3_600_000],
    ["forward", 3_600_000],
  ])("an attempt's duration is measured on the monotonic clock: a wall clock set %s an hour mid-attempt changes nothing", async (_direction, stepMs) => {
    let offset = 0;
    const { service } = await harness({
      // The wall clock is set while the relay looks at the recipient.
      sink: { route: () => void (offset += stepMs) },
      service: { clock: { now: () => Date.now() + offset } },
    });
    const record = queuedRecord(2 * 3_600_000);
    const before = Date.now();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("ACCEPTED");
    const [attempt] = result.attempts;
    // When it started is the wall clock's reading then; how long it took is not.
    expect(attempt?.startedAt).toBeGreaterThanOrEqual(before);
    expect(attempt?.startedAt).toBeLessThan(before + 60_000);
    expect(attempt?.durationMs).toBeGreaterThanOrEqual(0);
    expect(attempt?.durationMs).toBeLessThan(60_000);
  });

  it("a record stored as SENDING is not written SENDING again before its first attempt; a retry still is", async () => {
    const { sink, service, store } = await harness();
    sink.respondWith(behave.reply("MAIL FROM", 421, "4.7.0", "Too many connections, try again later"));
    const record: DeliveryRecord = { ...queuedRecord(), state: "SENDING" };

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("ACCEPTED");
    expect(result.attempts).toHaveLength(2);
    expect(statesWritten(store, record.messageId)).toEqual(["RETRYING", "SENDING", "ACCEPTED"]);
  });

  it("451, 451, then acceptance: ACCEPTED with three attempts and the relay's queue id", async () => {
    const { sink, service } = await harness();
    sink.respondWith(
      behave.reply("RCPT TO", 451, "4.3.0", "Temporary local problem"),
      behave.reply("DATA", 451, "4.3.0", "Queue file write error"),
    );
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    const [received] = await sink.waitForMessages(1);
    expect(result.state).toBe("ACCEPTED");
    expect(result.attempts.map((attempt) => attempt.outcome)).toEqual(["transient", "transient", "accepted"]);
    expect(result.relayReply).toMatchObject({
      text: `250 2.0.0 Ok: queued as ${received?.queueId}`,
      queueId: received?.queueId,
    });
    expect(result.relayReply?.acceptedAt).toBeGreaterThanOrEqual(record.createdAt);
    expect(result.updatedAt).toBeGreaterThanOrEqual(record.createdAt);
    expect(result.failureReason).toBeUndefined();
  });

  it("a 550 fails the message at once, after one attempt, in the relay's words", async () => {
    const { sink, service, health } = await harness();
    sink.respondWith(behave.reply("RCPT TO", 550, "5.1.1", `<${recipient}>: Recipient address rejected: User unknown`));
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts).toHaveLength(1);
    expect(result.attempts[0]).toMatchObject({ outcome: "permanent", replyCode: 550, enhancedStatus: "5.1.1" });
    expect(result.failureReason).toContain("550 5.1.1 <j***@example.com>: Recipient address rejected: User unknown");
    expect(JSON.stringify(result)).not.toContain(recipient);
    expect(sink.transactions()).toBe(1);
    expect(health).toEqual(["ok"]);
  });

  it("transient failures until maxAttempts is used up: FAILED, saying so", async () => {
    const { sink, service, store } = await harness({ service: { maxAttempts: 3 } });
    sink.respondWith(
      behave.reply("MAIL FROM", 451, "4.3.0", "busy"),
      behave.reply("MAIL FROM", 451, "4.3.0", "busy"),
      behave.reply("MAIL FROM", 451, "4.3.0", "still busy"),
      behave.accept(),
    );
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts.map((attempt) => attempt.outcome)).toEqual(["transient", "transient", "transient"]);
    expect(result.failureReason).toBe('gave up after 3 attempts; the last failed with: "451 4.3.0 still busy"');
    expect(sink.messages).toHaveLength(0);
    expect(statesWritten(store, record.messageId).at(-1)).toBe("FAILED");
  });

  it("backs off with full jitter: random() = 0 retries at once despite a one-minute base delay", async () => {
    const draws: number[] = [];
    const { sink, service } = await harness({
      service: { retryBaseDelayMs: 60_000, retryMaxDelayMs: 60_000, random: () => (draws.push(0), 0) },
    });
    sink.respondWith(behave.reply("MAIL FROM", 451, "4.3.0", "busy"));
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("ACCEPTED");
    expect(draws).toHaveLength(1);
  });

  it("an unreachable relay is transient, retried, and reported down", async () => {
    const port = await unusedPort();
    const { service, health } = await harness({ url: `smtp://127.0.0.1:${port}?starttls=off`, service: { maxAttempts: 2 } });
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts.map((attempt) => [attempt.outcome, attempt.replyCode, attempt.errorCode])).toEqual([
      ["transient", 0, "ECONNREFUSED"],
      ["transient", 0, "ECONNREFUSED"],
    ]);
    expect(health).toEqual(["down", "down"]);
  });

  it("never starts an attempt at or after the code's expiry", async () => {
    // The retry would come 1 s after the first attempt; the code expires before that.
    const { sink, service } = await harness({ service: { retryBaseDelayMs: 1000, retryMaxDelayMs: 1000, maxAttempts: 5 } });
    sink.respondWith(behave.reply("MAIL FROM", 451, "4.3.0", "busy"));
    const record = queuedRecord(500);

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts).toHaveLength(1);
    for (const attempt of result.attempts) expect(attempt.startedAt).toBeLessThan(record.expiresAt);
    expect(result.failureReason).toMatch(/^the code expired before it could be sent/);
    expect(result.failureReason).toContain("451 4.3.0 busy");
    expect(sink.transactions()).toBe(1);
  });

  it("sends nothing for a code that has already expired", async () => {
    const { sink, service } = await harness();
    const record = queuedRecord(-1);

    const result = await service.dispatch(record, mailFor(record));

    expect(result).toMatchObject({ state: "FAILED", attempts: [], failureReason: "the code expired before it could be sent" });
    expect(sink.transactions()).toBe(0);
  });

  it("gives up an attempt still waiting for the relay when its code expires: no expired code is handed over", async () => {
    // A relay that never answers the envelope, with timeouts far longer than the code's life,
    // and a wait budget that outlasts it: without the expiry the attempt would hold on for a minute.
    const { sink, service } = await harness({ transport: { socketTimeoutMs: 30_000 }, service: { waitBudgetMs: 20_000 } });
    sink.respondWith(behave.stall("RCPT TO"));
    const record = queuedRecord(1500);

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts.map((attempt) => [attempt.outcome, attempt.errorCode])).toEqual([["transient", "EEXPIRED"]]);
    expect(result.attempts[0]?.replyText).toBe("the code expired before the relay took the message; the attempt was given up");
    expect(result.failureReason).toMatch(/^the code expired before it could be sent/);
    expect(sink.messages).toHaveLength(0);
    expect(sink.unanswered).toHaveLength(0);
  });

  it("a code that expires while the relay has the whole message and has not replied: unanswered, its outcome unknown, no relay health event", async () => {
    const { sink, service, health } = await harness({ transport: { socketTimeoutMs: 30_000 }, service: { waitBudgetMs: 20_000 } });
    sink.respondWith(behave.stall());
    const record = queuedRecord(1500);

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts.map((attempt) => [attempt.outcome, attempt.errorCode])).toEqual([["unanswered", "EEXPIRED"]]);
    expect(result.failureReason).toMatch(/had the whole message and gave no final reply, so whether it took it is unknown/);
    expect(sink.unanswered).toHaveLength(1);
    // The code's clock ended the wait, not the relay's silence: as for any expiry, no verdict on the relay.
    expect(health).toEqual([]);
  });

  it("a relay that has the whole message and gives no final reply is not retried: FAILED, unanswered, one mail, and the relay counts as down", async () => {
    const { sink, service, health, store } = await harness();
    sink.respondWith(behave.stall(), behave.accept());
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts.map((attempt) => [attempt.outcome, attempt.errorCode])).toEqual([["unanswered", "ETIMEDOUT"]]);
    expect(result.failureReason).toMatch(
      /^the relay 127\.0\.0\.1:\d+ had the whole message and gave no final reply, so whether it took it is unknown: the mail may still arrive, and it is not sent again \(attempt 1: "the relay had the whole message/,
    );
    expect(store.writes.map((write) => write.state)).not.toContain("RETRYING");
    expect(sink.transactions()).toBe(1);
    expect(sink.unanswered).toHaveLength(1);
    expect(sink.messages).toHaveLength(0);
    expect(health).toEqual(["down"]);
  });

  it("answers after the wait budget when the relay stalls; the attempt lands in the store later", async () => {
    const { sink, service, store } = await harness({ service: { waitBudgetMs: 50 } });
    // Stalled before any of the message went out: retried.
    sink.respondWith(behave.stall("RCPT TO"), behave.accept());
    const record = queuedRecord();

    const early = await service.dispatch(record, mailFor(record));

    expect(early.state).toBe("SENDING");
    expect(early.attempts).toHaveLength(0);
    expect(service.inFlight()).toBe(1);
    const final = await eventually(() => {
      const stored = store.records.get(record.messageId);
      return stored?.state === "ACCEPTED" ? stored : undefined;
    });
    expect(final.attempts.map((attempt) => [attempt.outcome, attempt.errorCode])).toEqual([
      ["transient", "ETIMEDOUT"],
      ["accepted", ""],
    ]);
    await eventually(() => (service.inFlight() === 0 ? true : undefined));
  });

  it("drain fails a message waiting for its retry at once and lets an attempt in progress finish", async () => {
    const { sink, service, store } = await harness({
      // B's relay answers after 150 ms: a loaded machine must not turn that into a socket timeout.
      transport: { socketTimeoutMs: 5000 },
      service: { waitBudgetMs: 50, retryBaseDelayMs: 60_000, retryMaxDelayMs: 60_000 },
    });
    // A: refused transiently, then waits a minute for its retry.
    sink.respondWith(behave.reply("MAIL FROM", 451, "4.3.0", "busy"));
    const waiting = queuedRecord(10 * 60_000);
    const first = service.dispatch(waiting, mailFor(waiting));
    await eventually(() => (store.records.get(waiting.messageId)?.state === "RETRYING" ? true : undefined));
    expect(["SENDING", "RETRYING"]).toContain((await first).state);
    // B: in progress, the relay answers after a short while.
    sink.respondWith(behave.accept({ delayMs: 150 }));
    const sending = queuedRecord();
    const dispatched = service.dispatch(sending, mailFor(sending));
    await eventually(() => (sink.transactions() === 2 ? true : undefined));
    expect(service.inFlight()).toBe(2);

    await service.drain(10_000);

    expect(store.records.get(waiting.messageId)).toMatchObject({
      state: "FAILED",
      failureReason: 'the sender stopped before the retry; attempt 1 failed with: "451 4.3.0 busy"',
    });
    expect(store.records.get(waiting.messageId)?.attempts).toHaveLength(1);
    expect(store.records.get(sending.messageId)).toMatchObject({ state: "ACCEPTED" });
    // Its dispatch answered after the wait budget, before the relay did.
    expect(["SENDING", "ACCEPTED"]).toContain((await dispatched).state);
    expect(service.inFlight()).toBe(0);
    expect(sink.transactions()).toBe(2);

    // After drain nothing is sent any more.
    const late = queuedRecord();
    expect(await service.dispatch(late, mailFor(late))).toMatchObject({
      state: "FAILED",
      failureReason: "the sender stopped before the first attempt",
    });
    expect(sink.transactions()).toBe(2);
  });

  it("drain marks an attempt still running after the grace period FAILED, and keeps that verdict", async () => {
    const { sink, service, store, transport } = await harness({
      transport: { socketTimeoutMs: 60_000 },
      service: { waitBudgetMs: 50 },
    });
    sink.respondWith(behave.stall());
    const record = queuedRecord();
    expect((await service.dispatch(record, mailFor(record))).state).toBe("SENDING");

    await service.drain(100);

    const stopped = store.records.get(record.messageId);
    expect(stopped?.state).toBe("FAILED");
    expect(stopped?.failureReason).toMatch(/^the sender stopped while attempt 1 was in progress/);
    expect(service.inFlight()).toBe(0);
    // The stalled send ends when the relay goes away; its late outcome does not overwrite the record.
    await sink.close();
    await transport.close();
    expect(store.records.get(record.messageId)).toEqual(stopped);
  });

  it("rejected credentials fail the message, are logged as an operator error and reported", async () => {
    const { sink, service, health, logs } = await harness({ sink: { auth: { user: "svc", pass: "s3cret" } } });
    sink.respondWith(behave.rejectAuth());
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("FAILED");
    expect(result.attempts).toHaveLength(1);
    expect(result.attempts[0]).toMatchObject({ outcome: "permanent", replyCode: 535, errorCode: "EAUTH" });
    expect(result.failureReason).toMatch(/rejected the service's SMTP credentials \(an operator error/);
    expect(health).toEqual(["auth_failed"]);
    const errors = logs.map((line) => JSON.parse(line) as { level: number; msg: string }).filter((line) => line.level >= 50);
    expect(errors.map((line) => line.msg)).toContain(
      "the SMTP relay rejected the service's credentials: fix the SMTP URL's user and password",
    );
    expect(logs.join("\n")).not.toContain("s3cret");
  });

  it("a failing record write is logged and the send goes on", async () => {
    const { service, logs, sink } = await harness({
      service: {
        store: { putRecord: () => Promise.reject(new Error("storage is unavailable")) },
      },
    });
    const record = queuedRecord();

    const result = await service.dispatch(record, mailFor(record));

    expect(result.state).toBe("ACCEPTED");
    expect(sink.messages).toHaveLength(1);
    expect(logs.filter((line) => line.includes("could not write delivery record")).length).toBeGreaterThan(0);
  });

  it("a final record whose write failed is written again once the store answers; drain gives it a last try, not FAILED", async () => {
    const stored = fakeStore();
    let down = true;
    const store: Pick<OtpStore, "putRecord"> = {
      putRecord: (record, ttlMs) => (down ? Promise.reject(new Error("storage is unavailable")) : stored.putRecord(record, ttlMs)),
    };
    const { service } = await harness({ service: { store } });

    const first = queuedRecord();
    expect((await service.dispatch(first, mailFor(first))).state).toBe("ACCEPTED");
    expect(stored.records.get(first.messageId)).toBeUndefined();
    down = false;
    expect(await eventually(() => stored.records.get(first.messageId)?.state)).toBe("ACCEPTED");

    down = true;
    const second = queuedRecord();
    expect((await service.dispatch(second, mailFor(second))).state).toBe("ACCEPTED");
    down = false;
    // Shutdown comes before the next try: the relay's answer is known, so it is what gets stored.
    await service.drain(0);
    expect(stored.records.get(second.messageId)?.state).toBe("ACCEPTED");
    expect(service.inFlight()).toBe(0);
  });

  it("a relay that refuses STARTTLS for good fails the message at once and is reported down, though it replied", async () => {
    const relay = createServer((socket) => {
      socket.write("220 relay.test ESMTP\r\n");
      socket.on("data", (data: Buffer) => {
        const command = data.toString("utf8");
        if (/^EHLO/i.test(command)) socket.write("250-relay.test\r\n250 STARTTLS\r\n");
        else if (/^STARTTLS/i.test(command)) socket.write("554 5.7.0 TLS not available\r\n");
        else if (/^QUIT/i.test(command)) socket.end("221 2.0.0 Bye\r\n");
      });
    });
    await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = relay.address() as { port: number };
      const { service, store, health } = await harness({ url: `smtp://127.0.0.1:${port}` });
      const record = queuedRecord();

      const result = await service.dispatch(record, mailFor(record));

      expect(result.state).toBe("FAILED");
      expect(statesWritten(store, record.messageId)).toEqual(["SENDING", "FAILED"]);
      expect(result.attempts[0]).toMatchObject({ outcome: "permanent", replyCode: 554, errorCode: "ETLS" });
      // Every message would fail alike: the relay is unusable, whatever it replied.
      expect(health).toEqual(["down"]);
    } finally {
      relay.close();
    }
  });

  it("an attempt our own code broke (EINTERNAL) is logged as an error and counted as internal, and is no evidence that the relay is down", async () => {
    let offset = 0;
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    const { sink, transport, service, health, logs } = await harness({
      transport: { maxConnections: 1, socketTimeoutMs: 60_000 },
      service: { clock: { now: () => Date.now() + offset }, maxAttempts: 1, observer: createDeliveryTelemetry({ metrics }) },
    });
    // One connection, the relay sitting on the first message; the second waits for the connection.
    sink.hold();
    const ahead = queuedRecord(10 * 60_000);
    const accepted = service.dispatch(ahead, mailFor(ahead));
    await eventually(() => (sink.held() === 1 ? true : undefined));
    const behind = queuedRecord(10 * 60_000);
    // Leaving the queue seconds after it was made, its mail is made again: a template that throws is our bug.
    const broken = { minRemainingMs: 60_000, make: (): OutgoingMail => { throw new Error("the template broke"); } };
    const failed = service.dispatch(behind, mailFor(behind), { retryMail: broken });
    await eventually(() => (transport.inProgress() === 2 ? true : undefined));
    offset += 5000;
    sink.release();

    expect((await accepted).state).toBe("ACCEPTED");
    const record = await failed;
    expect(record.state).toBe("FAILED");
    expect(record.attempts.map((attempt) => attempt.errorCode)).toEqual(["EINTERNAL"]);
    // The relay answered the first message and never failed the second: nothing says it is down.
    expect(health).toEqual(["ok"]);
    const errors = logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((line) => line["level"] === 50);
    expect(errors.map((line) => line["msg"])).toEqual(["making a message again as it left the pool's queue failed"]);
    const text = await metrics.render("text");
    expect(text).toMatch(/^otp_smtp_attempts_total\{result="internal",reply_class="none"\} 1$/m);
    expect(text).toMatch(/^otp_smtp_attempts_total\{result="transient",reply_class="none"\} 0$/m);
    expect(sink.transactions()).toBe(1);
  });

  it("never logs the recipient's address", async () => {
    const { sink, service, logs } = await harness();
    sink.respondWith(behave.reply("RCPT TO", 451, "4.2.0", `<${recipient}> greylisted`), behave.reply("RCPT TO", 550, "5.1.1", `<${recipient}> unknown`));
    const record = queuedRecord();
    await service.dispatch(record, mailFor(record));
    expect(logs.length).toBeGreaterThan(0);
    expect(logs.join("\n")).not.toContain(recipient);
  });
});

async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}
