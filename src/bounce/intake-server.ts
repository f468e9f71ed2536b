/**
 * The bounce intake: an SMTP listener (smtp-server) for the MX of the bounce
 * domain. It takes mail only for `bounce+<message id>@<bounce domain>` (the
 * VERP envelope senders of our messages) and for the feedback address (the
 * one registered with mailbox providers' feedback loops), from anyone and
 * with the null sender bounces use, up to a size limit and a per-peer
 * connection rate (IPv6: per /64). A feedback report (RFC 5965 ARF, by its
 * top-level Content-Type) goes to the feedback processor, whichever of the
 * two it came to; any other message to a VERP address goes to the bounce
 * processor, and any other message to the feedback address to the feedback
 * processor too, which counts it as not a report.
 *
 * With a certificate it offers STARTTLS (a DSN with RET=HDRS carries the
 * original Subject, and with it the code), and can require it: MAIL before
 * STARTTLS then gets 530 5.7.0.
 *
 * Replies: 550 for any other recipient; 552 for an oversized message; 451
 * (try again later) when storage could not record the bounce; 250 otherwise,
 * including for bounces that are not usable, which are counted and logged
 * rather than sent back to be retried for days. Every refusal is told to
 * `onRejection` by reason (intake-rejections.ts), for the metrics.
 */
import type { Socket } from "node:net";
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from "smtp-server";
import { hostPort } from "../host-port.js";
import type { Logger } from "../logger.js";
import { maskAddress } from "../otp/address.js";
import { messageIdPattern } from "../otp/code.js";
import { looksLikeFeedbackReport } from "./arf.js";
import type { BounceProcessor } from "./bounce-processor.js";
import type { FeedbackProcessor } from "./feedback-processor.js";
import { connectionRateKey, createConnectionRate } from "./connection-rate.js";
import type { IntakeRejectionReason } from "./intake-rejections.js";

export interface BounceIntakeOptions {
  /** Address to listen on (`127.0.0.1`, `0.0.0.0`). */
  readonly host: string;
  /** Port; 0 picks a free one. */
  readonly port: number;
  /** The domain of the VERP addresses (BOUNCE_DOMAIN). */
  readonly bounceDomain: string;
  readonly processor: Pick<BounceProcessor, "process">;
  /**
   * Feedback reports (ARF): `processor` takes every report, `address` (the
   * FEEDBACK_ADDRESS, any domain) is accepted as a recipient too; without
   * `address` reports are taken at the VERP addresses only. undefined: a
   * report is handed to the bounce processor like any other mail.
   */
  readonly feedback?: { readonly address: string | undefined; readonly processor: Pick<FeedbackProcessor, "process"> } | undefined;
  readonly logger: Logger;
  /**
   * STARTTLS with this certificate chain and key (PEM); `required`: MAIL
   * before STARTTLS is refused with 530 5.7.0. undefined: no STARTTLS.
   */
  readonly tls?: { readonly cert: string; readonly key: string; readonly required: boolean } | undefined;
  /** Largest message accepted (default 1 MiB); real DSNs with RET=HDRS are a few KB. */
  readonly maxBytes?: number | undefined;
  /** New connections per remote IPv4 address or IPv6 /64 per minute (default 60); more get 421. */
  readonly connectionsPerMinute?: number | undefined;
  /** Simultaneous connections (default 50). */
  readonly maxClients?: number | undefined;
  /** Idle time before a connection is dropped (default 60 s). */
  readonly socketTimeoutMs?: number | undefined;
  /** Longest time one message may take to record before the sender is told to retry (default 10 s). */
  readonly processTimeoutMs?: number | undefined;
  /**
   * When the port is taken, listen on a free one instead of failing (for
   * development, where several instances may run side by side).
   */
  readonly fallbackToFreePort?: boolean | undefined;
  /** Told every refusal, by reason (for otp_bounce_intake_rejections_total); never anything about the peer. */
  readonly onRejection?: ((reason: IntakeRejectionReason) => void) | undefined;
}

export interface BounceIntake {
  /** Where it listens (the real port when 0 or a fallback was used). */
  readonly address: { readonly host: string; readonly port: number };
  /** Connections refused by the rate limit, recipients refused with 550, and MAIL refused before STARTTLS (530), so far. */
  rejections(): { readonly rateLimited: number; readonly badRecipient: number; readonly withoutTls: number };
  /**
   * STARTTLS presents this certificate chain and key from now on (sessions
   * already upgraded keep theirs). Only for an intake started with `tls`;
   * give a checked pair (tls/certificate-set.ts): smtp-server rebuilds its
   * context in place, and a pair it cannot use would leave it with none.
   */
  updateCertificate(pair: { readonly cert: string; readonly key: string }): void;
  /** Stops listening and drops open connections. */
  close(): Promise<void>;
}

const defaults = {
  maxBytes: 1024 * 1024,
  connectionsPerMinute: 60,
  maxClients: 50,
  socketTimeoutMs: 60_000,
  processTimeoutMs: 10_000,
} as const;

/** A bounce message rarely has more than one recipient; a few is generous. */
const maxRecipients = 5;

function smtpError(code: number, text: string): Error {
  return Object.assign(new Error(text), { responseCode: code });
}

export async function startBounceIntake(options: BounceIntakeOptions): Promise<BounceIntake> {
  const maxBytes = options.maxBytes ?? defaults.maxBytes;
  const perMinute = options.connectionsPerMinute ?? defaults.connectionsPerMinute;
  const processTimeoutMs = options.processTimeoutMs ?? defaults.processTimeoutMs;
  const domain = options.bounceDomain.toLowerCase();
  const logger = options.logger.child({ component: "bounce-intake" });
  const recipient = new RegExp(`^bounce\\+([0-9a-z]+)@${domain.replace(/\./g, "\\.")}$`, "i");
  const feedbackAddress = options.feedback?.address?.toLowerCase();
  const isFeedbackAddress = (address: string): boolean => feedbackAddress !== undefined && address.toLowerCase() === feedbackAddress;
  const connections = createConnectionRate({ max: perMinute, windowMs: 60_000 });
  const sockets = new Set<Socket>();
  const maxClients = options.maxClients ?? defaults.maxClients;
  const reject = (reason: IntakeRejectionReason): void => options.onRejection?.(reason);
  let rateLimited = 0;
  let badRecipient = 0;
  let withoutTls = 0;

  /** The message id a recipient names, or undefined when it is not one of ours. */
  function messageIdOf(address: string): string | undefined {
    const id = recipient.exec(address)?.[1]?.toLowerCase();
    return id !== undefined && messageIdPattern.test(id) ? id : undefined;
  }

  async function receive(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const chunk of stream) {
      const buffer = chunk as Buffer;
      bytes += buffer.length;
      // Keep reading to the end (the client waits for our reply), but stop keeping.
      if (bytes <= maxBytes) chunks.push(buffer);
    }
    if (stream.sizeExceeded || bytes > maxBytes) {
      logger.warn({ remote: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session), bytes }, "bounce larger than the size limit refused");
      reject("too_large");
      throw smtpError(552, `5.3.4 Message too big (limit ${maxBytes} bytes)`);
    }
    const raw = Buffer.concat(chunks);
    const ids = [...new Set(session.envelope.rcptTo.flatMap((rcpt) => messageIdOf(rcpt.address) ?? []))];
    const toFeedbackAddress = session.envelope.rcptTo.some((rcpt) => isFeedbackAddress(rcpt.address));
    const source = { remoteAddress: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session) };
    const feedback = options.feedback?.processor;
    const isReport = feedback !== undefined && looksLikeFeedbackReport(raw);
    // One feedback report is about one message: every VERP address it came to is a candidate id.
    const jobs: Promise<unknown>[] = isReport ? [feedback.process(raw, source, ids)] : ids.map((id) => options.processor.process(id, raw, source));
    // Other mail to the feedback address is read (and counted) as not a report.
    if (!isReport && toFeedbackAddress && feedback !== undefined) jobs.push(feedback.process(raw, source, []));
    const work = Promise.all(jobs);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`recording took longer than ${processTimeoutMs} ms`)), processTimeoutMs);
    });
    try {
      await Promise.race([work, timeout]);
    } catch (error) {
      logger.warn(
        { err: error, remote: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session) },
        "could not record a bounce; the sender is asked to retry",
      );
      reject("record_failed");
      throw smtpError(451, "4.3.0 Could not record the report now; try again later");
    } finally {
      clearTimeout(timer);
      // A late rejection after the timeout is already answered.
      work.catch(() => undefined);
    }
    return toFeedbackAddress && ids.length === 0 ? "2.0.0 Feedback report received" : `2.0.0 Report received for ${ids.length} message(s)`;
  }

  const server = new SMTPServer({
    // The host the bounce domain's MX names: the intake answers as that domain (220 <BOUNCE_DOMAIN> ESMTP).
    name: domain,
    banner: "OtpEmail bounce intake: delivery status notifications and feedback reports only",
    logger: false,
    authOptional: true,
    // Without a certificate of ours, smtp-server would offer STARTTLS with its built-in (published) key.
    disabledCommands: options.tls === undefined ? ["AUTH", "STARTTLS"] : ["AUTH"],
    ...(options.tls === undefined ? {} : { cert: options.tls.cert, key: options.tls.key }),
    disableReverseLookup: true,
    size: maxBytes,
    // smtp-server would refuse a MAIL with a larger SIZE= itself, with no hook to count or log it; refused in onMailFrom instead.
    hideSize: true,
    maxClients,
    socketTimeout: options.socketTimeoutMs ?? defaults.socketTimeoutMs,
    closeTimeout: 1000,

    onConnect(session, callback) {
      if (!connections.admit(session.remoteAddress)) {
        rateLimited++;
        reject("rate_limited");
        const peer = connectionRateKey(session.remoteAddress);
        logger.warn({ remote: session.remoteAddress, peer }, "bounce intake connection refused: rate limit");
        callback(smtpError(421, `4.7.0 Too many connections from ${peer}; try again later`));
        return;
      }
      callback();
    },

    onMailFrom(address, session, callback) {
      if (options.tls?.required === true && !session.secure) {
        withoutTls++;
        reject("tls_required");
        logger.warn({ remote: session.remoteAddress, helo: heloOf(session) }, "bounce intake refused MAIL before STARTTLS (BOUNCE_TLS_REQUIRED)");
        callback(smtpError(530, "5.7.0 Must issue a STARTTLS command first"));
        return;
      }
      // A relay declares the size (RFC 1870 SIZE=) and is told at once, before it sends the message.
      const declared = Number((address.args as Record<string, unknown>)["SIZE"] ?? 0);
      if (declared > maxBytes) {
        logger.warn(
          { remote: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session), declared_bytes: declared },
          "bounce larger than the size limit refused (SIZE declared in MAIL)",
        );
        reject("too_large");
        callback(smtpError(552, `5.3.4 Message too big (limit ${maxBytes} bytes)`));
        return;
      }
      // Bounces come with the null sender (`MAIL FROM:<>`); anything else is fine too.
      callback();
    },

    onRcptTo(address, session, callback) {
      if (messageIdOf(address.address) === undefined && !isFeedbackAddress(address.address)) {
        badRecipient++;
        reject("bad_recipient");
        logger.info(
          { remote: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session), recipient: maskAddress(address.address) },
          "bounce intake refused a recipient: neither a VERP address of ours nor the feedback address",
        );
        callback(smtpError(550, "5.1.1 No such recipient here: this host only takes bounces and feedback reports of its own messages"));
        return;
      }
      if (session.envelope.rcptTo.length >= maxRecipients) {
        reject("too_many_recipients");
        logger.warn({ remote: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session) }, "bounce intake refused a recipient: too many in one message");
        callback(smtpError(452, "4.5.3 Too many recipients"));
        return;
      }
      callback();
    },

    onData(stream, session, callback) {
      let answered = false;
      const answer = (error: Error | null, message?: string): void => {
        if (answered) return;
        answered = true;
        callback(error, message);
      };
      stream.once("error", (error) => {
        if (!answered) {
          reject("unreadable");
          logger.warn({ err: error, remote: session.remoteAddress, helo: heloOf(session), tls: tlsOf(session) }, "bounce intake could not read a message");
        }
        answer(smtpError(451, `4.3.0 Could not read the message (${error.message})`));
      });
      receive(stream, session).then(
        (message) => answer(null, message),
        (error: unknown) => {
          // The stream's own error (the client went away mid-DATA) was answered, counted and logged above:
          // reading it again here is the same failure, not an internal one.
          if (answered) return;
          if (error instanceof Error && "responseCode" in error) answer(error);
          else {
            logger.error({ err: error }, "bounce intake failed unexpectedly");
            reject("error");
            answer(smtpError(451, "4.3.0 Internal error; try again later"));
          }
        },
      );
    },
  });

  // A client tearing down its connection is not our failure: log, never crash.
  server.on("error", (error) => logger.debug({ err: error }, "bounce intake connection error"));
  server.server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    // smtp-server answers a connection over maxClients with 421 itself, with no hook
    // to tell us; it counts the same sockets (this listener runs after its own).
    if (sockets.size > maxClients) {
      reject("too_many_clients");
      logger.warn({ remote: socket.remoteAddress, max_clients: maxClients }, "bounce intake connection refused: too many simultaneous connections");
    }
    socket.once("close", () => sockets.delete(socket));
  });

  const port = await listen(server, options.host, options.port).catch(async (error: unknown) => {
    if (!(options.fallbackToFreePort === true && (error as NodeJS.ErrnoException).code === "EADDRINUSE")) throw error;
    const free = await listen(server, options.host, 0);
    logger.warn(
      { wanted: hostPort(options.host, options.port), using: hostPort(options.host, free) },
      "bounce intake port is taken (another instance?); listening on a free port instead",
    );
    return free;
  });
  const starttls = options.tls === undefined ? "off" : options.tls.required ? "required" : "offered";
  logger.info(
    { address: hostPort(options.host, port), bounce_domain: domain, feedback_address: feedbackAddress === undefined ? "off" : maskAddress(feedbackAddress), starttls },
    "bounce intake listening",
  );
  if (options.tls === undefined && !isLoopback(options.host)) {
    logger.warn(
      { address: hostPort(options.host, port) },
      "bounce intake listens beyond loopback without STARTTLS: DSNs, whose returned headers hold the code, reach it in clear; set BOUNCE_TLS_CERT and BOUNCE_TLS_KEY",
    );
  }

  let closing: Promise<void> | undefined;
  return {
    address: { host: options.host, port },
    rejections: () => ({ rateLimited, badRecipient, withoutTls }),
    updateCertificate(pair) {
      if (options.tls === undefined) throw new Error("the bounce intake was started without TLS: there is no certificate to replace");
      // smtp-server's own live update: each STARTTLS takes the server's current context.
      server.updateSecureContext({ cert: pair.cert, key: pair.key });
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}

/** The HELO/EHLO name a client gave, safe to log: printable, bounded. */
function heloOf(session: SMTPServerSession): string {
  const name = typeof session.hostNameAppearsAs === "string" ? session.hostNameAppearsAs : "";
  return name.replace(/[^\x21-\x7e]/g, "?").slice(0, 255);
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

/** The TLS protocol of the session (`TLSv1.3`), or `none` when the bounce came in clear. */
function tlsOf(session: SMTPServerSession): string {
  if (!session.secure) return "none";
  return session.tlsOptions === false ? "tls" : session.tlsOptions.version;
}

function listen(server: SMTPServer, host: string, port: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.server.once("error", onError);
    server.listen(port, host, () => {
      server.server.off("error", onError);
      const address = server.server.address();
      resolve(typeof address === "object" && address !== null ? address.port : port);
    });
  });
}
