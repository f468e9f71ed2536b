/**
 * The send backlog (src/delivery/backlog.ts) over a real pooled transport and
 * a real SMTP server that holds its replies: what it counts as waiting for a
 * connection (what the pool really has not taken, also while it has no
 * connection up; not a send just handed over while idle connections are there
 * to take it), that only new messages are turned away, and that a message
 * already taken on keeps its retries even while the backlog is full.
 */
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { createSendBacklog } from "../../src/delivery/backlog.js";
import { createDeliveryService } from "../../src/delivery/delivery-service.js";
import type { DeliveryRecord } from "../../src/delivery/record.js";
import { createSmtpTransport } from "../../src/delivery/smtp-transport.js";
import type { OutgoingMail } from "../../src/delivery/smtp-transport-types.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { freePort } from "../support/ports.js";
import { behave, startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

function logCollector() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, lines };
}

let sequence = 0;
function record(recipient: string): { record: DeliveryRecord; mail: OutgoingMail } {
  const now = Date.now();
  const messageId = `backlog-${++sequence}`;
  return {
    record: {
      messageId,
      caller: "test",
      state: "SENDING",
      recipientMasked: "x***@example.com",
      recipientDomain: "example.com",
      purpose: "login",
      locale: "en",
      createdAt: now,
      updatedAt: now,
      expiresAt: now + 60_000,
      attempts: [],
      traceId: "",
    },
    mail: {
      from: '"Acme" <no-reply@acme.test>',
      to: recipient,
      subject: "Your Acme code",
      text: "Your code is in the subject",
      html: "<p>Your code is in the subject</p>",
      messageId: `<${messageId}@acme.test>`,
      headers: {},
    },
  };
}

async function until(what: string, condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Counts as a transport reports them (SmtpTransport.handingOver, waitingForConnection, onConnection), set by the test. */
function countedTransport() {
  const counts = { handingOver: 0, waiting: 0, onConnection: 0 };
  return {
    counts,
    transport: { handingOver: () => counts.handingOver, waitingForConnection: () => counts.waiting, onConnection: () => counts.onConnection },
  };
}

describe("send backlog", () => {
  it("counts what waits for a connection: the transport's sends no connection took, and places beyond the connections free", () => {
    const { counts, transport } = countedTransport();
    const { logger } = logCollector();
    const backlog = createSendBacklog({ limit: 2, connections: 3, transport, logger });
    // Three free connections: the first three places wait for nothing.
    const places = [backlog.enter(), backlog.enter(), backlog.enter()];
    expect(backlog.size()).toBe(0);
    places.push(backlog.enter(), backlog.enter());
    expect(backlog.size()).toBe(2);
    expect(backlog.enter()).toBeUndefined();
    // Handed to the transport, before the pool's turn: still three for the free connections, two beyond them.
    for (const place of places) place?.leave();
    counts.handingOver = 5;
    expect(backlog.size()).toBe(2);
    expect(backlog.enter()).toBeUndefined();
    // The pool's turn: three on the connections and two waiting.
    counts.handingOver = 0;
    counts.onConnection = 3;
    counts.waiting = 2;
    expect(backlog.size()).toBe(2);
    expect(backlog.enter()).toBeUndefined();
    // One went out and its connection took the next.
    counts.waiting = 1;
    // Leaving twice frees one place, once.
    const place = backlog.enter();
    expect(place).toBeDefined();
    place?.leave();
    place?.leave();
    expect(backlog.size()).toBe(1);
  });

  it("a send waits while connections are free but none takes it (the pool pausing before it opens one again): counted, and a place is counted beyond the connections left", () => {
    const { counts, transport } = countedTransport();
    const { logger } = logCollector();
    const backlog = createSendBacklog({ limit: 3, connections: 3, transport, logger });
    // No connection carries anything, two sends wait: two waiting, not "two of three connections busy".
    counts.waiting = 2;
    expect(backlog.size()).toBe(2);
    // The one connection those two leave free is a new place's...
    const first = backlog.enter();
    expect(first).toBeDefined();
    expect(backlog.size()).toBe(2);
    // ...and the next place waits.
    const second = backlog.enter();
    expect(second).toBeDefined();
    expect(backlog.size()).toBe(3);
    expect(backlog.enter()).toBeUndefined();
    first?.leave();
    second?.leave();
  });

  it("without a limit it still counts, and never refuses", () => {
    const { logger } = logCollector();
    const backlog = createSendBacklog({
      limit: undefined,
      connections: 1,
      transport: { handingOver: () => 0, waitingForConnection: () => 1000, onConnection: () => 1 },
      logger,
    });
    expect(backlog.enter()).toBeDefined();
    expect(backlog.size()).toBe(1001);
  });

  it("a message already taken on retries while the backlog is full, is counted in it, and goes out when the relay answers", async () => {
    let firstTry = true;
    // retry@ is deferred once (451 at RCPT); every message the relay would accept is then held until release().
    const sink: SmtpSink = await startSmtpSink({
      route: (recipient) => {
        if (recipient !== "retry@example.com" || !firstTry) return undefined;
        firstTry = false;
        return behave.reply("RCPT TO", 451, "4.3.0", "try again later");
      },
    });
    sink.hold();
    cleanups.push(async () => {
      sink.release();
      await sink.close();
    });
    const { logger, lines } = logCollector();
    const transport = createSmtpTransport({ url: sink.url, logger, maxConnections: 1, socketTimeoutMs: 60_000 });
    cleanups.push(() => transport.close());
    const backlog = createSendBacklog({ limit: 1, connections: 1, transport, logger });
    const store = new Map<string, DeliveryRecord>();
    const delivery = createDeliveryService({
      store: {
        putRecord: (written) => {
          store.set(written.messageId, written);
          return Promise.resolve();
        },
      },
      transport,
      clock: systemClock,
      logger,
      maxAttempts: 3,
      // With random() = 1 the retry comes exactly 1 s after the 451: time to fill the backlog first.
      retryBaseDelayMs: 1000,
      retryMaxDelayMs: 1000,
      random: () => 1,
      waitBudgetMs: 50,
      recordTtlMs: 60_000,
    });
    cleanups.push(() => delivery.drain(0));
    const send = (message: { record: DeliveryRecord; mail: OutgoingMail }): void => {
      const place = backlog.enter();
      expect(place, `a place for ${message.mail.to}`).toBeDefined();
      place?.leave();
      void delivery.dispatch(message.record, message.mail);
    };

    const deferred = record("retry@example.com");
    send(deferred);
    await until("the first attempt was deferred", () => store.get(deferred.record.messageId)?.state === "RETRYING");
    const onConnection = record("held@example.com");
    send(onConnection);
    await until("the relay holds a message", () => sink.held() === 1);
    const waiting = record("waiting@example.com");
    send(waiting);
    expect(backlog.size()).toBe(1);
    expect(backlog.enter()).toBeUndefined();

    // The deferred message's retry joins the queue all the same: two wait now, over the limit of one.
    await until("the retry waits for a connection", () => backlog.size() === 2);
    expect(backlog.enter()).toBeUndefined();

    sink.release();
    for (const message of [onConnection, waiting, deferred]) {
      await until(`${message.mail.to} is accepted`, () => store.get(message.record.messageId)?.state === "ACCEPTED");
    }
    expect(store.get(deferred.record.messageId)?.attempts.map((attempt) => attempt.outcome)).toEqual(["transient", "accepted"]);
    expect(backlog.size()).toBe(0);
    expect(backlog.enter()).toBeDefined();

    // One warning when it filled, one line when it had room again; not one per refusal.
    const full = lines.filter((line) => String(line["msg"]).includes("not keeping up"));
    expect(full).toHaveLength(1);
    expect(full[0]).toMatchObject({ level: 40, backlog: 1, limit: 1 });
    const room = lines.filter((line) => String(line["msg"]).includes("room again"));
    expect(room).toHaveLength(1);
    expect(room[0]).toMatchObject({ level: 30, refused: 2 });
  });

  it("sends handed to a pool of idle connections wait for nothing: five in one turn of the event loop, each taking its place first as SendOtp does, all get one with a limit of 1", async () => {
    const sink = await startSmtpSink();
    sink.hold();
    cleanups.push(async () => {
      sink.release();
      await sink.close();
    });
    const { logger } = logCollector();
    const transport = createSmtpTransport({ url: sink.url, logger, maxConnections: 5 });
    cleanups.push(() => transport.close());
    const backlog = createSendBacklog({ limit: 1, connections: 5, transport, logger });
    // Five connections up: each took a message held by the relay before the next was sent...
    const warming: Promise<unknown>[] = [];
    for (let n = 1; n <= 5; n++) {
      warming.push(transport.send(record(`warm-${n}@example.com`).mail));
      await until(`the relay holds ${n} messages`, () => sink.held() === n);
    }
    // ...then answered: five idle connections (the pool makes each available again a turn after its reply).
    sink.release();
    await Promise.all(warming);
    await new Promise((resolve) => setImmediate(resolve));

    // A burst in one turn, before nodemailer's pool has had its turn at any of them (it gives queued
    // messages to idle connections in a setImmediate): what SendOtp calls whose admissions and
    // hand-overs interleave in one turn see.
    const sends: Promise<unknown>[] = [];
    for (let n = 1; n <= 5; n++) {
      const place = backlog.enter();
      expect(place, `a place for burst message ${n}`).toBeDefined();
      place?.leave();
      sends.push(transport.send(record(`burst-${n}@example.com`).mail));
    }
    // Awaited below; a failed assertion before then must not leave them unhandled.
    for (const sent of sends) sent.catch(() => undefined);
    expect(backlog.size()).toBe(0);
    // The pool's turn: each on a connection of its own, none waiting.
    await new Promise((resolve) => setImmediate(resolve));
    expect([transport.onConnection(), transport.waitingForConnection(), backlog.size()]).toEqual([5, 0, 0]);
    await Promise.all(sends);
    expect(sink.messages).toHaveLength(10);
  });

  it("a connection recycled after its messages (SMTP_MAX_MESSAGES_PER_CONNECTION): the message behind it waits while no connection is up, and the backlog and its gauge count it and refuse the next", async () => {
    const sink = await startSmtpSink();
    sink.hold();
    cleanups.push(async () => {
      sink.release();
      await sink.close();
    });
    const { logger } = logCollector();
    // One message per connection: each connection is closed after its message, and the pool opens the next one.
    const transport = createSmtpTransport({ url: sink.url, logger, maxConnections: 1, maxMessages: 1 });
    cleanups.push(() => transport.close());
    const backlog = createSendBacklog({ limit: 1, connections: 1, transport, logger });
    const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
    metrics.watchBacklog(backlog);
    const gauge = async (): Promise<number | undefined> => (await metrics.smtpBacklog.get()).values[0]?.value;

    const first = transport.send(record("first@example.com").mail);
    const second = transport.send(record("second@example.com").mail);
    // Awaited below; a failed assertion before then must not leave them unhandled.
    for (const sent of [first, second]) sent.catch(() => undefined);
    await until("the relay holds the first message", () => sink.held() === 1);
    expect([transport.onConnection(), transport.waitingForConnection(), backlog.size()]).toEqual([1, 1, 1]);

    sink.release();
    await first;
    // The connection that carried it is closed now; nodemailer's pool opens the next one after a pause (100 ms).
    await new Promise((resolve) => setImmediate(resolve));
    // One send in the transport and one connection in the pool, yet it waits: counted so, not as on the connection.
    expect(transport.inProgress()).toBe(1);
    expect([transport.onConnection(), transport.waitingForConnection()]).toEqual([0, 1]);
    expect(backlog.size()).toBe(1);
    expect(await gauge()).toBe(1);
    expect(backlog.enter()).toBeUndefined();

    // The new connection takes it, and it goes out: nothing waits.
    await second;
    expect(sink.messages.map((mail) => mail.envelope.rcptTo)).toEqual([["first@example.com"], ["second@example.com"]]);
    expect([transport.onConnection(), transport.waitingForConnection(), backlog.size()]).toEqual([0, 0, 0]);
    expect(await gauge()).toBe(0);
    backlog.enter()?.leave();
  });

  it("a relay that refuses connections: the message behind a failed connection waits while the pool pauses with none up, and is counted", async () => {
    const { logger } = logCollector();
    const transport = createSmtpTransport({ url: `smtp://127.0.0.1:${await freePort()}?starttls=off`, logger, maxConnections: 1 });
    cleanups.push(() => transport.close());
    const backlog = createSendBacklog({ limit: 1, connections: 1, transport, logger });

    const first = transport.send(record("first@example.com").mail);
    const second = transport.send(record("second@example.com").mail);
    // Awaited below; a failed assertion before then must not leave it unhandled.
    second.catch(() => undefined);
    await expect(first).rejects.toMatchObject({ errorCode: "ECONNREFUSED" });
    // Its connection failed and is gone; the pool tries the next message only after a pause (100 ms).
    expect([transport.onConnection(), transport.waitingForConnection()]).toEqual([0, 1]);
    expect(backlog.size()).toBe(1);
    expect(backlog.enter()).toBeUndefined();

    await expect(second).rejects.toMatchObject({ errorCode: "ECONNREFUSED" });
    expect([transport.onConnection(), transport.waitingForConnection(), backlog.size()]).toEqual([0, 0, 0]);
  });
});
