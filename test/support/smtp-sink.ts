/**
 * A real SMTP server (smtp-server) in the test process, on a free loopback
 * port, that captures what it receives and answers the way a test tells it
 * to: accept, reply 421/451/550... at MAIL FROM, RCPT TO or end of DATA
 * (at once or late), drop the connection mid-DATA or after the whole message,
 * stall (at MAIL FROM, RCPT TO, mid-DATA or after the whole message), or
 * refuse AUTH.
 *
 *   const sink = await startSmtpSink();
 *   sink.respondWith(behave.reply("RCPT TO", 451, "4.3.0", "try later"), behave.accept());
 *   ... send twice through createSmtpTransport({ url: sink.url, ... }) ...
 *   await sink.close();
 *
 * Behaviours form a queue consumed one per mail transaction (at MAIL FROM);
 * when it is empty every transaction is accepted. `rejectAuth` is consumed
 * by the next AUTH instead.
 *
 * `hold()` makes a relay that has stalled but will recover: every message it
 * would accept is taken whole and left unanswered (the client waits for the
 * final reply, its connection busy) until `release()` answers them all 250.
 *
 * `resume()` makes a relay that stalled (at MAIL FROM, RCPT TO or mid-DATA)
 * recover: the stalled transactions go on and are accepted.
 *
 * `replyAfter(ms)` makes a relay that takes a moment over each message, so
 * that concurrent sends overlap there; `countAwaitingReply()` tells how many
 * messages at most waited for their reply at once.
 */
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import { simpleParser, type ParsedMail } from "mailparser";
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from "smtp-server";

/** Where a scripted reply is given. "DATA" means after the message, at end of data. */
export type SinkStage = "MAIL FROM" | "RCPT TO" | "DATA";

export type SinkBehaviour =
  /** `250 2.0.0 Ok: queued as <ID>`, optionally after a delay. */
  | { readonly kind: "accept"; readonly delayMs?: number }
  /** Replies `<code> <enhancedStatus> <text>` at the given stage. */
  | {
      readonly kind: "reply";
      readonly stage: SinkStage;
      readonly code: number;
      readonly enhancedStatus: string;
      readonly text: string;
      /** At DATA: the text ends with the message's decoded Subject, as content filters quote it. */
      readonly quoteSubject?: boolean;
      /** At DATA: the reply comes this long after the whole message (a relay answering late). */
      readonly delayMs?: number;
    }
  /** Closes the TCP connection as soon as message data arrives. */
  | { readonly kind: "drop-mid-data" }
  /** Takes the whole message (it joins `unanswered`), then closes the TCP connection without a reply. */
  | { readonly kind: "drop-after-data" }
  /**
   * Never answers. At "DATA" (the default): takes the whole message (it joins
   * `unanswered`) and never replies to it. At "MAIL FROM" or "RCPT TO": never
   * replies to that command, so no message data is ever sent. At "mid-DATA":
   * answers DATA with 354 and then reads nothing, so a client with a message
   * larger than the connection's buffers cannot write all of it.
   */
  | { readonly kind: "stall"; readonly stage?: SinkStage | "mid-DATA" }
  /** Answers the next AUTH with `535 5.7.8`, whatever the credentials. */
  | { readonly kind: "reject-auth" };

/** Shorthands for SinkBehaviour values. */
export const behave = {
  accept: (options: { delayMs?: number } = {}): SinkBehaviour => ({ kind: "accept", ...options }),
  reply: (
    stage: SinkStage,
    code: number,
    enhancedStatus: string,
    text: string,
    options: { quoteSubject?: boolean; delayMs?: number } = {},
  ): SinkBehaviour => ({
    kind: "reply",
    stage,
    code,
    enhancedStatus,
    text,
    ...options,
  }),
  dropMidData: (): SinkBehaviour => ({ kind: "drop-mid-data" }),
  dropAfterData: (): SinkBehaviour => ({ kind: "drop-after-data" }),
  stall: (stage?: SinkStage | "mid-DATA"): SinkBehaviour => ({ kind: "stall", ...(stage === undefined ? {} : { stage }) }),
  rejectAuth: (): SinkBehaviour => ({ kind: "reject-auth" }),
};

export interface CapturedMail {
  /** The message exactly as received (.eml). */
  readonly raw: Buffer;
  readonly parsed: ParsedMail;
  readonly envelope: {
    readonly mailFrom: string;
    readonly rcptTo: readonly string[];
    /** MAIL FROM parameters, names upper-cased (`RET`, `ENVID`, `BODY`...). */
    readonly mailFromArgs: Readonly<Record<string, string>>;
    /** RCPT TO parameters of each recipient (`NOTIFY`, `ORCPT`...). */
    readonly rcptArgs: readonly Readonly<Record<string, string>>[];
  };
  /** The queue id the sink announced in its 250 reply. */
  readonly queueId: string;
}

export interface SmtpSinkOptions {
  /** Require AUTH (PLAIN/LOGIN) with these credentials. */
  readonly auth?: { readonly user: string; readonly pass: string };
  /** Offer STARTTLS with this PEM key and certificate; without it STARTTLS is not offered. */
  readonly tls?: { readonly key: string; readonly cert: string };
  /** Advertise DSN in EHLO (smtp-server hides it by default), so clients send RET/ENVID/NOTIFY. */
  readonly dsn?: boolean;
  /**
   * Picks a behaviour by recipient at RCPT TO, overriding the queued one
   * (e.g. a fake mailbox provider that refuses some addresses for good and
   * defers others). Return undefined to keep the transaction's behaviour.
   */
  readonly route?: (recipient: string) => SinkBehaviour | undefined;
}

export interface SmtpSink {
  /**
   * A URL for createSmtpTransport: `smtp://127.0.0.1:PORT?starttls=off`
   * (with `user:pass@` when auth is on); without `?starttls=off` when TLS is on.
   */
  readonly url: string;
  readonly port: number;
  /** Accepted messages, in order. */
  readonly messages: CapturedMail[];
  /** Messages taken whole and never answered (`stall()`, `dropAfterData()`), in order. */
  readonly unanswered: CapturedMail[];
  /** How many mail transactions (MAIL FROM commands) the sink has seen. */
  transactions(): number;
  /** Queues behaviours, consumed one per transaction; then every transaction is accepted. */
  respondWith(...behaviours: SinkBehaviour[]): void;
  /**
   * From now on, a message the sink would accept is taken and left without a
   * reply (its client keeps waiting) until `release()`.
   */
  hold(): void;
  /** Answers every held message `250` (they join `messages`, in order) and stops holding. */
  release(): void;
  /** How many messages wait for their reply now. */
  held(): number;
  /**
   * From now on, a message the sink would accept at once is answered
   * `delayMs` after it arrived whole (a relay that takes a moment over each
   * message); 0 answers at once again. A behaviour's own `delayMs` wins.
   */
  replyAfter(delayMs: number): void;
  /**
   * Starts counting the messages taken whole and waiting for their reply
   * (delayed or held) at once; the function returned tells the most so far.
   */
  countAwaitingReply(): () => number;
  /**
   * Ends every stall now waiting at MAIL FROM, RCPT TO or mid-DATA: the
   * command is answered 250 (the data read), and the transaction goes on
   * as accepted, its message joining `messages` if its end of data comes.
   */
  resume(): void;
  /** How many transactions wait on a stall that `resume()` would end. */
  stalled(): number;
  /** Resolves once `count` messages were accepted; rejects after `timeoutMs`. */
  waitForMessages(count: number, timeoutMs?: number): Promise<CapturedMail[]>;
  /** Resolves once `count` messages were taken whole and left unanswered; rejects after `timeoutMs`. */
  waitForUnanswered(count: number, timeoutMs?: number): Promise<CapturedMail[]>;
  /** Destroys every connection (stalled ones too) and stops listening. */
  close(): Promise<void>;
}

/** smtp-server's parsed parameters (`{ RET: "HDRS" }`, or false when none) as strings. */
function argsOf(args: unknown): Record<string, string> {
  if (typeof args !== "object" || args === null) return {};
  return Object.fromEntries(Object.entries(args).map(([name, value]) => [name.toUpperCase(), String(value)]));
}

function smtpError(code: number, enhancedStatus: string, text: string): Error {
  // hideENHANCEDSTATUSCODES keeps smtp-server from adding its own, so the
  // reply is exactly `<code> <enhancedStatus> <text>`.
  return Object.assign(new Error(enhancedStatus === "" ? text : `${enhancedStatus} ${text}`), { responseCode: code });
}

export async function startSmtpSink(options: SmtpSinkOptions = {}): Promise<SmtpSink> {
  const queue: SinkBehaviour[] = [];
  const messages: CapturedMail[] = [];
  const unanswered: CapturedMail[] = [];
  const current = new Map<string, SinkBehaviour>();
  const sockets = new Set<Socket>();
  const socketsByClientPort = new Map<number, Socket>();
  const waiters = new Set<() => void>();
  let transactions = 0;
  let holding = false;
  let replyDelayMs = 0;
  let awaitingReply = 0;
  /** The counts `countAwaitingReply()` handed out, each the most messages awaiting their reply since it began. */
  const awaitingPeaks = new Set<{ most: number }>();
  const heldReplies: (() => void)[] = [];
  const stalls: (() => void)[] = [];

  const behaviourOf = (session: SMTPServerSession): SinkBehaviour => current.get(session.id) ?? { kind: "accept" };
  const replyAt = (behaviour: SinkBehaviour, stage: SinkStage): Error | undefined =>
    behaviour.kind === "reply" && behaviour.stage === stage
      ? smtpError(behaviour.code, behaviour.enhancedStatus, behaviour.text)
      : undefined;
  const stallsAt = (behaviour: SinkBehaviour, stage: SinkStage): boolean => behaviour.kind === "stall" && behaviour.stage === stage;
  /** Keeps a message taken whole and left without a reply. */
  const leftUnanswered = (mail: CapturedMail): void => {
    unanswered.push(mail);
    for (const wake of waiters) wake();
  };

  async function capture(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<CapturedMail> {
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks);
    const parsed = await simpleParser(raw);
    const mailFrom = session.envelope.mailFrom === false ? "" : session.envelope.mailFrom.address;
    const mailFromArgs = session.envelope.mailFrom === false ? {} : argsOf(session.envelope.mailFrom.args);
    const rcptTo = session.envelope.rcptTo.map((rcpt) => rcpt.address);
    const rcptArgs = session.envelope.rcptTo.map((rcpt) => argsOf(rcpt.args));
    return {
      raw,
      parsed,
      envelope: { mailFrom, rcptTo, mailFromArgs, rcptArgs },
      queueId: randomBytes(5).toString("hex").toUpperCase(),
    };
  }

  /** Takes the whole message and answers 250 (after `delayMs`, else `replyAfter`'s; when released, if holding). */
  function accept(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    delayMs: number | undefined,
    callback: (error?: Error | null, message?: string) => void,
  ): void {
    capture(stream, session).then(
      (mail) => {
        awaitingReply++;
        for (const peak of awaitingPeaks) peak.most = Math.max(peak.most, awaitingReply);
        const take = (): void => {
          messages.push(mail);
          for (const wake of waiters) wake();
          const reply = (): void => {
            awaitingReply--;
            callback(null, `2.0.0 Ok: queued as ${mail.queueId}`);
          };
          const delay = delayMs ?? replyDelayMs;
          if (delay === 0) reply();
          else setTimeout(reply, delay);
        };
        if (holding) heldReplies.push(take);
        else take();
      },
      (error: unknown) => callback(smtpError(451, "4.3.0", `sink could not parse the message: ${String(error)}`)),
    );
  }

  const disabledCommands: string[] = [];
  if (options.tls === undefined) disabledCommands.push("STARTTLS");
  if (options.auth === undefined) disabledCommands.push("AUTH");

  const server = new SMTPServer({
    name: "sink.test",
    banner: "test sink",
    logger: false,
    disableReverseLookup: true,
    hideENHANCEDSTATUSCODES: true,
    hideDSN: options.dsn !== true,
    authOptional: options.auth === undefined,
    allowInsecureAuth: options.tls === undefined,
    disabledCommands,
    ...(options.tls === undefined ? {} : { key: options.tls.key, cert: options.tls.cert }),
    closeTimeout: 100,

    onAuth(auth, _session, callback) {
      if (queue[0]?.kind === "reject-auth") {
        queue.shift();
        callback(smtpError(535, "5.7.8", "Error: authentication credentials invalid"));
        return;
      }
      if (auth.username === options.auth?.user && auth.password === options.auth?.pass) {
        callback(null, { user: auth.username });
        return;
      }
      callback(smtpError(535, "5.7.8", "Error: authentication credentials invalid"));
    },

    onMailFrom(_address, session, callback) {
      transactions++;
      // A queued AUTH refusal waits for the next AUTH, not for a transaction.
      const next = queue[0]?.kind === "reject-auth" ? undefined : queue.shift();
      const behaviour = next ?? { kind: "accept" };
      current.set(session.id, behaviour);
      if (stallsAt(behaviour, "MAIL FROM")) {
        stalls.push(() => {
          current.set(session.id, { kind: "accept" });
          callback();
        });
        return;
      }
      callback(replyAt(behaviour, "MAIL FROM"));
    },

    onRcptTo(address, session, callback) {
      const routed = options.route?.(address.address);
      if (routed !== undefined) current.set(session.id, routed);
      if (stallsAt(behaviourOf(session), "RCPT TO")) {
        stalls.push(() => {
          current.set(session.id, { kind: "accept" });
          callback();
        });
        return;
      }
      callback(replyAt(behaviourOf(session), "RCPT TO"));
    },

    onData(stream, session, callback) {
      const behaviour = behaviourOf(session);
      switch (behaviour.kind) {
        case "drop-mid-data":
          stream.once("data", () => socketsByClientPort.get(session.remotePort)?.destroy());
          return;
        case "drop-after-data":
          capture(stream, session).then(
            (mail) => {
              leftUnanswered(mail);
              socketsByClientPort.get(session.remotePort)?.destroy();
            },
            () => socketsByClientPort.get(session.remotePort)?.destroy(),
          );
          return;
        case "stall":
          // Mid-DATA: read nothing, so the connection pushes back on the client. Else read everything and
          // answer nothing: the client is left waiting for the final reply.
          if (behaviour.stage === "mid-DATA") {
            stalls.push(() => accept(stream, session, undefined, callback));
            return;
          }
          capture(stream, session).then(leftUnanswered, () => undefined);
          return;
        case "reply":
          if (behaviour.stage === "DATA" && behaviour.quoteSubject === true) {
            capture(stream, session).then(
              (mail) => callback(smtpError(behaviour.code, behaviour.enhancedStatus, `${behaviour.text} (Subject: "${mail.parsed.subject ?? ""}")`)),
              (error: unknown) => callback(smtpError(451, "4.3.0", `sink could not parse the message: ${String(error)}`)),
            );
            return;
          }
          stream.resume();
          stream.once("end", () => {
            if (behaviour.delayMs === undefined) callback(replyAt(behaviour, "DATA"));
            else setTimeout(() => callback(replyAt(behaviour, "DATA")), behaviour.delayMs);
          });
          return;
        case "reject-auth":
          stream.resume();
          stream.once("end", () => callback(replyAt(behaviour, "DATA")));
          return;
        case "accept":
          accept(stream, session, behaviour.delayMs, callback);
          return;
      }
    },
  });

  server.server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    const clientPort = socket.remotePort;
    if (clientPort !== undefined) socketsByClientPort.set(clientPort, socket);
    socket.once("close", () => {
      sockets.delete(socket);
      if (clientPort !== undefined) socketsByClientPort.delete(clientPort);
    });
  });
  // A connection the client or a behaviour tore down is not a test failure.
  server.on("error", () => undefined);

  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.server.off("error", reject);
      resolve();
    });
  });
  const address = server.server.address();
  if (address === null || typeof address === "string") throw new Error("smtp sink: no TCP address");
  const port = address.port;
  const credentials =
    options.auth === undefined
      ? ""
      : `${encodeURIComponent(options.auth.user)}:${encodeURIComponent(options.auth.pass)}@`;
  const url = `smtp://${credentials}127.0.0.1:${port}${options.tls === undefined ? "?starttls=off" : ""}`;

  function waitFor(list: CapturedMail[], what: string, count: number, timeoutMs: number): Promise<CapturedMail[]> {
    return new Promise<CapturedMail[]>((resolve, reject) => {
      const check = (): void => {
        if (list.length < count) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(list.slice(0, count));
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`smtp sink: ${list.length} of ${count} ${what} after ${timeoutMs} ms`));
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  }

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    messages,
    unanswered,
    transactions: () => transactions,
    respondWith(...behaviours) {
      queue.push(...behaviours);
    },
    hold() {
      holding = true;
    },
    release() {
      holding = false;
      for (const accept of heldReplies.splice(0)) accept();
    },
    held: () => heldReplies.length,
    replyAfter(delayMs) {
      replyDelayMs = delayMs;
    },
    countAwaitingReply() {
      const peak = { most: awaitingReply };
      awaitingPeaks.add(peak);
      return () => peak.most;
    },
    resume() {
      for (const go of stalls.splice(0)) go();
    },
    stalled: () => stalls.length,
    waitForMessages: (count, timeoutMs = 5000) => waitFor(messages, "messages", count, timeoutMs),
    waitForUnanswered: (count, timeoutMs = 5000) => waitFor(unanswered, "unanswered messages", count, timeoutMs),
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}
