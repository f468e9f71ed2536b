/**
 * The send backlog (src/delivery/backlog.ts) over a real pooled transport and
 * a real SMTP server that holds its replies: what it counts as waiting for a
 * connection, that only new messages are turned away, and that a message
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

describe("send backlog", () => {
  it("counts what waits for a connection: places taken and sends beyond the pool's connections", () => {
    let inTransport = 0;
    const { logger } = logCollector();
    const backlog = createSendBacklog({ limit: 2, connections: 3, sendsInProgress: () => inTransport, logger });
    // Three free connections: the first three places wait for nothing.
    const places = [backlog.enter(), backlog.enter(), backlog.enter()];
    expect(backlog.size()).toBe(0);
    places.push(backlog.enter(), backlog.enter());
    expect(backlog.size()).toBe(2);
    expect(backlog.enter()).toBeUndefined();
    // Handed to the transport: the same five messages, counted there now.
    for (const place of places) place?.leave();
    inTransport = 5;
    expect(backlog.size()).toBe(2);
    expect(backlog.enter()).toBeUndefined();
    // Leaving twice frees one place, once.
    inTransport = 4;
    const place = backlog.enter();
    expect(place).toBeDefined();
    place?.leave();
    place?.leave();
    expect(backlog.size()).toBe(1);
  });

  it("without a limit it still counts, and never refuses", () => {
    const { logger } = logCollector();
    const backlog = createSendBacklog({ limit: undefined, connections: 1, sendsInProgress: () => 1000, logger });
    expect(backlog.enter()).toBeDefined();
    expect(backlog.size()).toBe(1000);
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
    const backlog = createSendBacklog({ limit: 1, connections: 1, sendsInProgress: () => transport.inProgress(), logger });
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
});
