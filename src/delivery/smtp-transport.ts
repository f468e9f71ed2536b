/**
 * The SMTP transport: one pooled nodemailer transport per process, speaking
 * to one relay. It sends finished messages and reports, truthfully, either
 * the relay's acceptance (with its own reply) or a classified failure. It
 * knows nothing about OTPs; retry policy lives in the delivery service.
 */
import { setMaxListeners } from "node:events";
import { createSecureContext, rootCertificates } from "node:tls";
import { createTransport, type SendMailOptions } from "nodemailer";
import type { Logger } from "../logger.js";
import { maskAddressesIn } from "../otp/address.js";
import { createRandomPool, type RandomBytes } from "../random-pool.js";
import { composeOtpMime } from "./mime.js";
import {
  addressOf,
  plainAddress,
  pooledMessage,
  poolTransportOf,
  sendThroughPool,
  type Departure,
  type PoolSendInfo,
} from "./pool-send.js";
import type { DkimSigningOptions } from "./dkim.js";
import { createDkimSigner } from "./dkim-sign.js";
import { parseSmtpUrl } from "./smtp-url.js";
import {
  SmtpSendError,
  type OutgoingMail,
  type SendOptions,
  type SmtpAcceptance,
  type SmtpFailureKind,
  type SmtpTransport,
} from "./smtp-transport-types.js";

/** Options of {@link createSmtpTransport}. */
export interface SmtpTransportOptions {
  /**
   * The relay, as one URL:
   * - `smtp://user:pass@host:587`: STARTTLS is required (nodemailer
   *   `requireTLS`); a relay that does not offer it fails the send with
   *   errorCode `ETLS` instead of falling back to plaintext. Port 587 by default.
   * - `smtp://host:2525?starttls=off`: plaintext, no STARTTLS even if offered.
   *   Meant for loopback sinks and tests only (a warning is logged otherwise).
   * - `smtps://user:pass@host:465`: implicit TLS. Port 465 by default.
   *
   * Certificates are always verified (`rejectUnauthorized: true`). User and
   * password are URL-decoded (`p%40ss` is `p@ss`); when present they are
   * always used (AUTH is attempted even if the relay does not advertise it).
   * A malformed URL throws an Error that names the problem (never the password).
   */
  readonly url: string;
  /** PEM text of a private CA to trust in addition to the public roots. */
  readonly tlsCa?: string | undefined;
  /** Pooled connections to the relay; default 5. */
  readonly maxConnections?: number | undefined;
  /** Messages per connection before it is replaced; default 100. */
  readonly maxMessages?: number | undefined;
  /** Time to open the TCP connection (DNS included); default 10 s. */
  readonly connectionTimeoutMs?: number | undefined;
  /** Time from connecting to the relay's 220 greeting (and a STARTTLS upgrade); default 10 s. */
  readonly greetingTimeoutMs?: number | undefined;
  /** Longest silence from the relay while a command waits for its reply; default 30 s. */
  readonly socketTimeoutMs?: number | undefined;
  /**
   * Upper bound on one send, from queueing in the pool to the final reply.
   * The other timeouts only notice silence; this one also stops a relay that
   * trickles bytes forever, and a send stuck behind a full pool. Default:
   * connectionTimeoutMs + greetingTimeoutMs + 2 × socketTimeoutMs.
   */
  readonly sendTimeoutMs?: number | undefined;
  /** Sign every message with this key (from `prepareDkim`, which checked it can sign). */
  readonly dkim?: DkimSigningOptions | undefined;
  readonly logger: Logger;
}

const defaults = {
  maxConnections: 5,
  maxMessages: 100,
  connectionTimeoutMs: 10_000,
  greetingTimeoutMs: 10_000,
  socketTimeoutMs: 30_000,
} as const;

/**
 * Creates the pooled transport. Throws a descriptive Error for a bad URL,
 * bad CA or nonsensical number; nothing connects until the first send or
 * verify().
 */
export function createSmtpTransport(options: SmtpTransportOptions): SmtpTransport {
  const endpoint = parseSmtpUrl(options.url);
  const maxConnections = positiveInt("maxConnections", options.maxConnections ?? defaults.maxConnections);
  const maxMessages = positiveInt("maxMessages", options.maxMessages ?? defaults.maxMessages);
  const connectionTimeoutMs = positiveInt("connectionTimeoutMs", options.connectionTimeoutMs ?? defaults.connectionTimeoutMs);
  const greetingTimeoutMs = positiveInt("greetingTimeoutMs", options.greetingTimeoutMs ?? defaults.greetingTimeoutMs);
  const socketTimeoutMs = positiveInt("socketTimeoutMs", options.socketTimeoutMs ?? defaults.socketTimeoutMs);
  const sendTimeoutMs = positiveInt(
    "sendTimeoutMs",
    options.sendTimeoutMs ?? connectionTimeoutMs + greetingTimeoutMs + 2 * socketTimeoutMs,
  );
  if (options.tlsCa !== undefined) assertPemCa(options.tlsCa);
  const logger = options.logger.child({ component: "smtp-transport", relay: endpoint.relay });

  if (!endpoint.secure && !endpoint.requireTls && !isLoopback(endpoint.host)) {
    logger.warn("SMTP URL has starttls=off for a host that is not loopback: mail and credentials travel in clear text");
  }

  const secureContext = createSecureContext({
    minVersion: "TLSv1.2",
    // `ca` replaces Node's trust store, so keep the public roots next to the private CA.
    ...(options.tlsCa === undefined ? {} : { ca: [...rootCertificates, options.tlsCa] }),
  });

  const transporter = createTransport({
    pool: true,
    host: endpoint.host,
    port: endpoint.port,
    secure: endpoint.secure,
    requireTLS: endpoint.requireTls,
    // `starttls=off` means plaintext, even when the relay offers STARTTLS.
    ignoreTLS: !endpoint.secure && !endpoint.requireTls,
    auth: endpoint.auth === undefined ? undefined : { user: endpoint.auth.user, pass: endpoint.auth.pass },
    // nodemailer silently skips AUTH when the relay does not advertise it;
    // configured credentials must be used or fail loudly.
    forceAuth: endpoint.auth !== undefined,
    tls: {
      rejectUnauthorized: true,
      minVersion: "TLSv1.2",
      // One context for every connection: given `ca`, tls.connect would parse
      // the whole trust store again for each one (about 7 ms of CPU and a
      // megabyte of garbage per connection, measured with a connection per message).
      secureContext,
    },
    maxConnections,
    maxMessages,
    // One send() is exactly one SMTP transaction: the delivery service
    // records every attempt and owns retries (backoff, expiry, drain), so
    // the pool must not silently resend a message on a new connection.
    maxRequeues: 0,
    connectionTimeout: connectionTimeoutMs,
    greetingTimeout: greetingTimeoutMs,
    socketTimeout: socketTimeoutMs,
    dnsTimeout: connectionTimeoutMs,
    // nodemailer's own log lines name the recipients; we log outcomes ourselves.
    logger: false,
    debug: false,
    // Messages are built from templates; nothing may pull in files or URLs.
    disableFileAccess: true,
    disableUrlAccess: true,
    ...(options.dkim === undefined ? {} : { dkim: { ...options.dkim } }),
  });

  // Whether the relay advertised DSN, as last seen on a pool connection:
  // logged when first seen and whenever it changes, not per message.
  let dsnAdvertised: boolean | undefined;
  function noteDsnSupport(supported: boolean): void {
    if (supported === dsnAdvertised) return;
    dsnAdvertised = supported;
    if (supported) logger.info("the relay advertises DSN: bounces will be asked for and tied to their message");
    else {
      logger.warn(
        "the relay does not advertise DSN in EHLO: no delivery status notification can be requested, " +
          "so a later bounce is only seen if it reaches the bounce domain's mailbox",
      );
    }
  }

  const inFlight = new Set<Promise<unknown>>();
  // Of the sends in flight, those the pool has not had its turn at yet, those it had and gave no connection, and
  // those on one: counted as each moves on and settles, for the send backlog (read per SendOtp: a count, not a
  // look through the pool).
  let sendsHandingOver = 0;
  let sendsWaiting = 0;
  let sendsOnConnection = 0;
  let closed: Promise<void> | undefined;
  const random = createRandomPool();
  const deadline = createDeadlines(sendTimeoutMs);
  // A message we built goes straight to the pool (see pool-send.ts), signed
  // here when DKIM is on (dkim-sign.ts: the RSA work off the event loop).
  const pool = poolTransportOf(transporter);
  const dkimSigner = options.dkim === undefined ? undefined : createDkimSigner(options.dkim);

  // A connection keeps its EHLO lines (one array) for all its messages: read
  // once per connection, not per message.
  const dsnByEhlo = new WeakMap<object, boolean>();
  function dsnIn(ehlo: unknown): boolean {
    if (typeof ehlo !== "object" || ehlo === null) return false;
    let found = dsnByEhlo.get(ehlo);
    if (found === undefined) {
      found = ehloHasDsn(ehlo);
      dsnByEhlo.set(ehlo, found);
    }
    return found;
  }

  /**
   * How a pooled message departs (SendOptions.atDeparture): as built, made
   * again from the mail given then (signed again with DKIM on), or withdrawn.
   */
  function departure(mail: OutgoingMail, atDeparture: NonNullable<SendOptions["atDeparture"]>, logFields: SendOptions["logFields"]): Departure {
    let next: ReturnType<typeof atDeparture>;
    try {
      next = atDeparture(mail);
    } catch (error) {
      // Called from inside nodemailer's pool, where a throw would escape every handler.
      logger.error({ ...logFields, err: error }, "making a message again as it left the pool's queue failed");
      return { withdrawn: new SmtpSendError("transient", "internal error while making the message as it left", 0, "", "EINTERNAL") };
    }
    if (next === mail) return undefined;
    if ("withdrawn" in next) return { withdrawn: new SmtpSendError("transient", next.withdrawn, 0, "", next.errorCode ?? "EEXPIRED") };
    // Same addresses and headers as the mail that took the pooled path: it composes too (else it goes as built).
    const remade = pooledMessage(next, random);
    if (remade === undefined) return undefined;
    if (dkimSigner === undefined) return { raw: remade.raw };
    const signed = dkimSigner.sign(remade.raw);
    // Read only if the relay takes the envelope: a failure is the message's error then, and nobody's otherwise.
    void signed.catch(() => undefined);
    return { raw: signed };
  }

  async function sendOnce(mail: OutgoingMail, sendOptions: SendOptions): Promise<SmtpAcceptance> {
    const { withinMs, atDeparture, logFields, onTaken, onEndOfData, signal: stop } = sendOptions;
    const startedAt = performance.now();
    // Only a send whose code expires before the send timeout gets a timer of its own (rare: a retry
    // near the end of a code's life); every other send shares the timeout's signal.
    const expiry = withinMs !== undefined && withinMs < sendTimeoutMs ? expiryAfter(withinMs) : undefined;
    // Set once the end of the message's data was let go to the relay's connection (pooled path only): from then
    // on `stop` cannot keep the relay from having the whole message.
    let endOfDataLetGo = false;
    // Set once the whole message, end-of-data dot included, was written to the relay's connection (pooled
    // path only: sendMail's own message stream does not tell). A failure after it is no failure to send.
    let endOfDataWritten = false;
    // Handed over until the pool has had its turn at it (signed first, with DKIM), then waiting for a connection
    // until one takes it, then on it until the send ends. A send handed over is not counted as waiting: an idle
    // connection takes it at the pool's turn, and counted so it would fill a small backlog for nothing.
    let stage: "handing over" | "waiting" | "taken" | "ended" = "handing over";
    sendsHandingOver++;
    const leaveStage = (): void => {
      if (stage === "handing over") sendsHandingOver--;
      else if (stage === "waiting") sendsWaiting--;
      else if (stage === "taken") sendsOnConnection--;
    };
    const take = (): void => {
      if (stage !== "handing over" && stage !== "waiting") return;
      leaveStage();
      stage = "taken";
      sendsOnConnection++;
      onTaken?.();
    };
    const poolTurn = (): void => {
      if (stage !== "handing over") return;
      leaveStage();
      stage = "waiting";
      sendsWaiting++;
    };
    try {
      const signal = expiry === undefined ? deadline() : AbortSignal.any([deadline(), expiry.signal]);
      let pooled = pool === undefined ? undefined : pooledMessage(mail, random);
      if (pooled !== undefined && dkimSigner !== undefined) pooled = { ...pooled, raw: await dkimSigner.sign(pooled.raw) };
      let info: PoolSendInfo;
      if (pool !== undefined && pooled !== undefined) {
        info = await sendThroughPool(pool, pooled, signal, {
          depart: atDeparture === undefined ? undefined : () => departure(mail, atDeparture, logFields),
          taken: take,
          poolTurn,
          endOfData: {
            stop,
            letGo: () => {
              endOfDataLetGo = true;
              onEndOfData?.();
            },
            written: () => {
              endOfDataWritten = true;
            },
          },
        });
      } else {
        // nodemailer's builder makes the message before it queues: asked now, not when a connection takes it.
        const next = atDeparture?.(mail) ?? mail;
        if ("withdrawn" in next) throw new SmtpSendError("transient", next.withdrawn, 0, "", next.errorCode ?? "EEXPIRED");
        // Its wait in the pool's queue is out of sight: counted from here as the relay's (see SendOptions.onTaken).
        take();
        // Nor does its message stream tell when its end goes: the relay may have all of it from now on.
        endOfDataLetGo = true;
        onEndOfData?.();
        info = await transporter.sendMail({ ...nodemailerMessage(next, random), signal });
      }
      // `ehlo` is the EHLO reply (after STARTTLS) of the very connection that
      // carried this message: the truth about whether DSN went out with it.
      const dsnSupported = dsnIn(info.ehlo);
      noteDsnSupport(dsnSupported);
      const acceptance = parseAcceptance(endpoint.relay, info.response, dsnSupported, mail.dsn !== undefined, mail.to, mail.redact);
      if (logger.isLevelEnabled("debug")) {
        logger.debug(
          { ...logFields, reply_code: acceptance.replyCode, queue_id: acceptance.queueId, duration_ms: Math.round(performance.now() - startedAt) },
          "relay accepted message",
        );
      }
      return acceptance;
    } catch (error) {
      const expired = expiry?.signal.aborted === true && (error as { code?: unknown } | undefined)?.code === "EABORT";
      // Stopped before its end of data was let go: the relay cannot have it, whatever the connection said after.
      const failure =
        stop?.aborted === true && !endOfDataLetGo && !(error instanceof SmtpSendError)
        ? new SmtpSendError("transient", "the sender stopped the message before the end of its data went to the relay; nothing was delivered", 0, "", "ESTOPPED")
        : endOfDataWritten
        ? unansweredIfNoReply(expired ? expiredAwaitingReply() : toSmtpSendError(error, sendTimeoutMs, mail.to, mail.redact))
        : expired
          ? new SmtpSendError("transient", "the code expired before the relay took the message; the attempt was given up", 0, "", "EEXPIRED")
          : toSmtpSendError(error, sendTimeoutMs, mail.to, mail.redact);
      logger.debug(
        {
          ...logFields,
          kind: failure.kind,
          reply_code: failure.replyCode,
          enhanced_status: failure.enhancedStatus,
          error_code: failure.errorCode,
          reply: failure.replyText,
          duration_ms: Math.round(performance.now() - startedAt),
        },
        "relay did not accept message",
      );
      throw failure;
    } finally {
      expiry?.clear();
      leaveStage();
      stage = "ended";
    }
  }

  return {
    relay: endpoint.relay,

    send(mail: OutgoingMail, sendOptions: SendOptions = {}): Promise<SmtpAcceptance> {
      if (closed !== undefined) {
        return Promise.reject(
          new SmtpSendError("transient", "the SMTP transport is closed (the service is stopping)", 0, "", "ECONNECTION"),
        );
      }
      const sending = sendOnce(mail, sendOptions);
      const tracked = sending.then(
        () => undefined,
        () => undefined,
      );
      inFlight.add(tracked);
      void tracked.finally(() => inFlight.delete(tracked));
      return sending;
    },

    inProgress: () => inFlight.size,
    handingOver: () => sendsHandingOver,
    waitingForConnection: () => sendsWaiting,
    onConnection: () => sendsOnConnection,

    async verify(): Promise<void> {
      // verify() opens its own connection outside the pool; bound it like a send.
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          reject(
            new SmtpSendError(
              "transient",
              `the relay did not complete connect, TLS and authentication within ${sendTimeoutMs} ms`,
              0,
              "",
              "ETIMEDOUT",
            ),
          );
        }, sendTimeoutMs);
        timer.unref();
      });
      try {
        await Promise.race([
          transporter.verify().catch((error: unknown) => {
            throw toSmtpSendError(error, sendTimeoutMs);
          }),
          timeout,
        ]);
      } finally {
        clearTimeout(timer);
      }
    },

    close(closeOptions = {}): Promise<void> {
      if (closeOptions.abandonInFlight === true && inFlight.size > 0) {
        // nodemailer's pool closes busy connections too when forced; their sends fail.
        (transporter.close as (options: { force: boolean }) => void)({ force: true });
      }
      closed ??= (async () => {
        // Idle connections close now; busy ones finish their message first.
        transporter.close();
        await Promise.all([...inFlight]);
      })();
      return closed;
    },
  };
}

/**
 * Abort signals for sends that must end within `timeoutMs`: sends that start
 * within the same short window share one signal, which fires `timeoutMs`
 * after the window ends, so each send gets between `timeoutMs` and
 * `timeoutMs` plus 1/20 of it (at most 1 s more). `AbortSignal.timeout` per
 * send cost a timer, a weak reference and a finalizer per message.
 */
function createDeadlines(timeoutMs: number): () => AbortSignal {
  const windowMs = Math.max(1, Math.min(1000, Math.floor(timeoutMs / 20)));
  let signal: AbortSignal | undefined;
  let windowEnd = 0;
  return () => {
    // Monotonic: were the wall clock set back (NTP), a window measured on it would last until the
    // clock caught up, and every send in it would get a signal that has long fired.
    const now = performance.now();
    if (signal === undefined || now >= windowEnd) {
      windowEnd = now + windowMs;
      const controller = new AbortController();
      // Every send in flight in the window listens to this one signal.
      setMaxListeners(0, controller.signal);
      const timer = setTimeout(() => {
        controller.abort(new DOMException(`the send took longer than ${timeoutMs} ms`, "TimeoutError"));
      }, timeoutMs + windowMs);
      // Like AbortSignal.timeout: the process lives for its servers, not for a deadline.
      timer.unref();
      signal = controller.signal;
    }
    return signal;
  };
}

/** A signal that aborts after `ms` (at once when not positive); `clear` stops its timer. */
function expiryAfter(ms: number): { readonly signal: AbortSignal; clear(): void } {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new DOMException(`the code expired within ${ms} ms`, "TimeoutError")), Math.max(0, ms));
  timer.unref();
  return { signal: controller.signal, clear: () => clearTimeout(timer) };
}

function positiveInt(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new Error(`SMTP transport: ${name} must be a positive integer, got ${value}`);
  return value;
}

/**
 * What nodemailer is given for `mail`: the message built in one pass (see
 * mime.ts) as `raw` with its envelope, or the fields for nodemailer to build
 * when it needs more than plain ASCII addresses; and the DSN request.
 * Exported for the benchmark, whose SMTP ceiling must send exactly this.
 */
export function nodemailerMessage(mail: OutgoingMail, random: RandomBytes): SendMailOptions {
  const raw = composeOtpMime(mail, new Date(), random(12).toString("hex"));
  const content: SendMailOptions =
    raw === undefined
      ? {
          from: mail.from,
          to: mail.to,
          subject: mail.subject,
          text: mail.text,
          html: mail.html,
          // Explicit, or nodemailer derives one from the envelope sender.
          messageId: mail.messageId,
          headers: { ...mail.headers },
        }
      : // With raw, messageId only spares nodemailer generating one (5 randomBytes calls) for a header it never writes.
        { raw, messageId: mail.messageId };
  return {
    ...content,
    // A raw message names no envelope of its own: give it the one nodemailer would have derived.
    ...(mail.envelope !== undefined
      ? { envelope: { from: envelopeAddress(mail.envelope.from), to: envelopeAddress(mail.envelope.to) } }
      : raw === undefined
        ? {}
        : { envelope: { from: envelopeAddress(addressOf(mail.from)), to: envelopeAddress(mail.to) } }),
    // nodemailer drops `dsn` when the connection's EHLO lacks DSN.
    ...(mail.dsn === undefined ? {} : { dsn: { envid: mail.dsn.envelopeId, notify: [...mail.dsn.notify], ret: mail.dsn.ret } }),
  };
}

/**
 * An envelope address as nodemailer takes it: a plain address as an address
 * object, which nodemailer uses as is, where a string goes through its
 * address parser (several microseconds per message); anything else as the string.
 */
function envelopeAddress(address: string): string | { name: string; address: string } {
  return plainAddress.test(address) ? { name: "", address } : address;
}

/** Fails at start-up, not at the first send, when the CA text is not usable. */
function assertPemCa(pem: string): void {
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new Error("SMTP transport: tlsCa must be PEM text (-----BEGIN CERTIFICATE-----...), not a file name");
  }
  try {
    createSecureContext({ ca: pem });
  } catch (error) {
    throw new Error(
      `SMTP transport: tlsCa is not a usable PEM certificate: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

// ---------------------------------------------------------------------------
// Replies

const replyLine = /^(\d{3})[ -](?:([245]\.\d{1,3}\.\d{1,3})\b)?/;

/** Forms relays use to name their queue id in the final 250 reply. */
const queueIdPatterns: readonly RegExp[] = [
  /\bqueued as ([A-Za-z0-9._-]+)/i, // Postfix: "250 2.0.0 Ok: queued as 4F2A"
  /\bid=([A-Za-z0-9._-]+)/i, // Exim: "250 OK id=1tXyZa-000123-AB"
  /^250 2\.0\.0 ([A-Za-z0-9]{8,}) Message accepted/i, // Sendmail
];

/** nodemailer's `dsn` message option (missing from @types/nodemailer). */

/** True when EHLO lines (`["PIPELINING", "SIZE 10240000", "DSN"]`) name the DSN extension. */
function ehloHasDsn(ehlo: unknown): boolean {
  return Array.isArray(ehlo) && ehlo.some((line) => typeof line === "string" && /^DSN\b/i.test(line.trim()));
}

/**
 * A relay's reply as records, logs and API answers may show it: relays often
 * echo the recipient, so every address and the recipient's local part are
 * masked, all but the leading reply code and enhanced status (a local part
 * may read `550`). Fields are parsed from the reply as it came.
 */
function maskReply(reply: string, recipient: string, secrets: readonly string[] = []): string {
  const prefix = replyLine.exec(reply)?.[0] ?? "";
  return prefix + maskAddressesIn(redactSecrets(reply.slice(prefix.length), secrets), recipient);
}

/**
 * `text` with each of `secrets` (OutgoingMail.redact: the code) replaced by
 * `[redacted]` wherever it appears, in any case. A content filter that
 * refuses a message often quotes its Subject, and the Subject holds the code.
 */
function redactSecrets(text: string, secrets: readonly string[]): string {
  let redacted = text;
  for (const secret of secrets) {
    if (secret === "" || !redacted.toLowerCase().includes(secret.toLowerCase())) continue;
    redacted = redacted.replace(new RegExp(secret.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&"), "giu"), "[redacted]");
  }
  return redacted;
}

function parseAcceptance(
  relay: string,
  response: string,
  dsnSupported: boolean,
  dsnAsked: boolean,
  recipient: string,
  secrets: readonly string[] = [],
): SmtpAcceptance {
  const reply = response.trim();
  const text = maskReply(reply, recipient, secrets);
  const [, code, enhanced] = replyLine.exec(reply) ?? [];
  let queueId = "";
  for (const pattern of queueIdPatterns) {
    const match = pattern.exec(reply);
    if (match?.[1] !== undefined) {
      queueId = match[1].replace(/[.]+$/, "");
      break;
    }
  }
  return {
    relay,
    replyCode: code === undefined ? 250 : Number(code),
    enhancedStatus: enhanced ?? "",
    text,
    queueId,
    dsnSupported,
    dsnRequested: dsnAsked && dsnSupported,
  };
}

// ---------------------------------------------------------------------------
// Failures

/** The fields of a nodemailer error we read; everything else is ignored. */
interface NodemailerErrorFields {
  readonly code?: unknown;
  readonly originalCode?: unknown;
  readonly responseCode?: unknown;
  readonly response?: unknown;
  readonly command?: unknown;
  readonly timeoutType?: unknown;
  readonly message?: unknown;
}

/** Node's codes for a certificate the TLS client refused to trust. */
const certificateErrorCodes = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_REVOKED",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_SIGNATURE_FAILURE",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "HOSTNAME_MISMATCH",
]);

/** Errors about the message or envelope we built: retrying cannot help. */
const localPermanentCodes = new Set(["EENVELOPE", "EMESSAGE", "ECONFIG", "EMAXRECIPIENTS", "ESTREAM", "EREQUIRETLS"]);

/**
 * The one place that maps a nodemailer (or Node socket) error to an
 * SmtpSendError. Never copies the raw error (its message and fields may name
 * the recipient): only the relay's reply and a description, both masked.
 */
function toSmtpSendError(error: unknown, sendTimeoutMs: number, recipient = "", secrets: readonly string[] = []): SmtpSendError {
  if (error instanceof SmtpSendError) return error;
  const fields: NodemailerErrorFields = typeof error === "object" && error !== null ? error : {};
  const code = typeof fields.code === "string" ? fields.code : "";
  const originalCode = typeof fields.originalCode === "string" ? fields.originalCode : "";
  const command = typeof fields.command === "string" ? fields.command : "";
  const reply = typeof fields.response === "string" ? fields.response.trim() : "";
  const response = maskReply(reply, recipient, secrets);
  const message = maskAddressesIn(redactSecrets(typeof fields.message === "string" ? fields.message : String(error), secrets), recipient);
  const [, replyCodeText, enhanced] = replyLine.exec(reply) ?? [];
  const replyCode =
    typeof fields.responseCode === "number" ? fields.responseCode : replyCodeText === undefined ? 0 : Number(replyCodeText);
  const enhancedStatus = enhanced ?? "";
  const make = (kind: SmtpFailureKind, text: string, errorCode: string): SmtpSendError =>
    new SmtpSendError(kind, text, replyCode, enhancedStatus, errorCode);

  // Credentials: the relay refused them (EAUTH, 535) or demands them (530).
  // A 4xx during AUTH (454 "temporary authentication failure") is the relay
  // being unwell, not a verdict on the credentials: it falls through to 4xx.
  const authStep = code === "EAUTH" || code === "ENOAUTH" || command.startsWith("AUTH");
  if (replyCode === 535 || replyCode === 530 || (authStep && !(replyCode >= 400 && replyCode < 500))) {
    return make("auth", response || `authentication with the relay failed (${message})`, "EAUTH");
  }

  const tlsCode = certificateErrorCodes.has(originalCode) ? originalCode : certificateErrorCodes.has(code) ? code : "";
  if (tlsCode !== "") {
    return make("permanent", `the relay's TLS certificate was not trusted (${tlsCode}): ${message}`, "ETLS");
  }
  if (code === "ETLS") {
    // 454 "TLS not available due to temporary reason" is worth another try.
    if (replyCode >= 400 && replyCode < 500) return make("transient", response, "ETLS");
    return make(
      "permanent",
      response === ""
        ? `TLS with the relay failed: ${message}`
        : `the relay refused STARTTLS, which an smtp:// URL requires (${response})`,
      "ETLS",
    );
  }

  // A 5xx greeting ("554 no SMTP service here") or a refused EHLO/HELO turns the
  // whole connection away before any message is offered: every message fails
  // alike until an operator acts, so it is the relay's refusal, not this
  // message's (ESESSION: no retry of the message, the relay counts as down).
  if (replyCode >= 500 && (command === "CONN" || command === "EHLO" || command === "HELO")) {
    return make("permanent", response || message, "ESESSION");
  }
  // The relay replied: its words are the evidence; errorCode is for replies that never came.
  if (replyCode >= 500) return make("permanent", response || message, "");
  if (replyCode >= 400) return make("transient", response || message, "");

  // The relay never replied.
  if (code === "EABORT") {
    return make("transient", `the relay gave no final reply within ${sendTimeoutMs} ms`, "ETIMEDOUT");
  }
  if (localPermanentCodes.has(code)) return make("permanent", `the message could not be sent: ${message}`, code);
  const errorCode = originalCode || code || "ECONNECTION";
  return make("transient", describeConnectionFailure(errorCode, fields.timeoutType, message), errorCode);
}

/** The code expired while the relay, with the whole message, had not replied: see unansweredIfNoReply. */
function expiredAwaitingReply(): SmtpSendError {
  return new SmtpSendError("unanswered", "the code expired while the relay had the whole message and had not replied; the attempt was given up", 0, "", "EEXPIRED");
}

/**
 * A failure that came after the whole message, end-of-data dot included,
 * was written to the relay: a reply (4xx, 5xx) is the relay's verdict as
 * ever, but no reply at all (a timeout, the connection dropped) leaves it
 * unknown whether the relay took the message (RFC 5321 4.5.3.2.6 and 6.1:
 * no resend after a timeout past the end of data, or duplicates follow).
 */
function unansweredIfNoReply(failure: SmtpSendError): SmtpSendError {
  if (failure.kind !== "transient" || failure.replyCode !== 0) return failure;
  return new SmtpSendError(
    "unanswered",
    `the relay had the whole message and gave no final reply (${failure.replyText}); whether it took the message is unknown`,
    0,
    "",
    failure.errorCode,
  );
}

function describeConnectionFailure(errorCode: string, timeoutType: unknown, message: string): string {
  switch (errorCode) {
    case "ECONNREFUSED":
      return `the relay refused the connection (${message})`;
    case "ECONNRESET":
      return `the relay reset the connection (${message})`;
    case "ETIMEDOUT": {
      const what =
        timeoutType === "CONNECT_TIMEOUT"
          ? "connecting to the relay"
          : timeoutType === "GREETING_TIMEOUT"
            ? "waiting for the relay's greeting"
            : timeoutType === "UPGRADE_TIMEOUT"
              ? "the TLS handshake"
              : "waiting for the relay's reply";
      return `timed out ${what} (${message})`;
    }
    case "ECONNECTION":
      return `the relay closed the connection unexpectedly (${message})`;
    case "EDNS":
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `the relay's host name could not be resolved (${message})`;
    default:
      return `the connection to the relay failed (${message})`;
  }
}
