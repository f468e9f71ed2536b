/**
 * Sends a message built here (mime.ts) straight through nodemailer's pooled
 * transport, past `sendMail`.
 *
 * `sendMail` is a builder in front of the transport: for a `raw` message it
 * still makes a MailMessage, a MailComposer and a MimeNode (random bytes for
 * a boundary it never writes, header-name normalisation, an address parse of
 * the envelope), then a stream pipeline (PassThrough, LastNewline) around the
 * Buffer: about 0.1 ms of CPU per message on this project's bench machine
 * (the bench's SMTP ceiling sender went from 0.22 to 0.11 ms per message
 * when it took this path too). The pool itself only reads what nodemailer's transport interface
 * (`transport.send(mail, callback)`, the one custom transports implement)
 * hands it: the envelope, the Message-ID and the message from
 * `mail.message` (a MessageSource, which pipes like a stream), the DSN
 * request and the abort signal from `mail.data`. This
 * module gives it exactly that. Connections, pooling, STARTTLS, AUTH,
 * pipelining, dot-stuffing, DSN and abort stay nodemailer's.
 *
 * Only a message that nodemailer would send unchanged takes this path: plain
 * addresses (a dot-atom at an ASCII domain); everything else goes through
 * `sendMail` as before. With DKIM, the transport signs the message first
 * (dkim-sign.ts), as nodemailer would have in sendMail's pipeline.
 */
import { Socket } from "node:net";
import type { RandomBytes } from "../random-pool.js";
import { composeOtpMime } from "./mime.js";
import type { OutgoingMail } from "./smtp-transport-types.js";

/** What nodemailer's pooled transport reads of a message (nodemailer's MailMessage, narrowed). */
interface PoolMail {
  readonly data: {
    readonly signal: AbortSignal;
    readonly dsn?: { readonly envid: string; readonly notify: string[]; readonly ret: string } | undefined;
  };
  readonly message: {
    getEnvelope(): { from: string; to: string[] };
    messageId(): string;
    getHeader(name: string): string | undefined;
    createReadStream(): MessageSource;
  };
}

/** The part of nodemailer's reply to a send that the transport reads. */
export interface PoolSendInfo {
  readonly response: string;
  readonly ehlo?: unknown;
}

/** nodemailer's transport interface, as its pooled transport implements it. */
export interface PoolTransport {
  send(mail: PoolMail, callback: (error?: Error | null, info?: PoolSendInfo) => void): unknown;
}

/** A message ready for the pool: its bytes and the envelope nodemailer would have derived. */
export interface PooledMessage {
  readonly raw: Buffer;
  readonly from: string;
  readonly to: string;
  readonly messageId: string;
  readonly dsn: { readonly envid: string; readonly notify: string[]; readonly ret: string } | undefined;
}

/** The transport behind a nodemailer transporter, when it is one this module can feed. */
export function poolTransportOf(transporter: unknown): PoolTransport | undefined {
  const inner = (transporter as { transporter?: { send?: unknown; supportsAbortSignal?: unknown } }).transporter;
  return typeof inner?.send === "function" && inner.supportsAbortSignal === true ? (inner as PoolTransport) : undefined;
}

/** A dot-atom local part at an ASCII domain name: what nodemailer's address handling leaves as it is. */
export const plainAddress = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$/;

/**
 * `mail` as the pool takes it, or undefined when only sendMail may send it
 * (an address that is not plain, or headers only nodemailer's builder writes).
 * Envelope addresses get a lower-cased domain, as nodemailer writes them.
 */
export function pooledMessage(mail: OutgoingMail, random: RandomBytes): PooledMessage | undefined {
  const from = mail.envelope?.from ?? addressOf(mail.from);
  const to = mail.envelope?.to ?? mail.to;
  if (!plainAddress.test(from) || !plainAddress.test(to)) return undefined;
  const raw = composeOtpMime(mail, new Date(), random(12).toString("hex"));
  if (raw === undefined) return undefined;
  return {
    raw,
    from: lowerDomain(from),
    to: lowerDomain(to),
    messageId: mail.messageId,
    dsn: mail.dsn === undefined ? undefined : { envid: mail.dsn.envelopeId, notify: [...mail.dsn.notify], ret: mail.dsn.ret },
  };
}

/**
 * What a message does when a pooled connection takes it, after any wait in
 * the pool's queue: go as built (undefined), go with other bytes under the
 * same envelope (`raw`), or not go at all (`withdrawn`: nothing of it
 * reaches the relay and the send rejects with that error).
 */
export type Departure = undefined | { readonly raw: Buffer | Promise<Buffer> } | { readonly withdrawn: Error };

/** What sendThroughPool tells, and is told, about a message on its way (all optional). */
export interface PoolSendHooks {
  /**
   * Asked once, when the connection that took the message is ready (just
   * before the envelope goes out), what the message does then.
   */
  readonly depart?: (() => Departure) | undefined;
  /**
   * Told once, when the pool takes the message off its queue for a
   * connection (before connecting it, when the connection is new).
   */
  readonly taken?: (() => void) | undefined;
  /**
   * Told once the pool has had its turn at the message: nodemailer's pool
   * gives queued messages to connections in a setImmediate that each send
   * schedules, so this is told in one scheduled just after it. A message not
   * `taken` by then waits for a connection (none was free, or the pool is
   * pausing before it opens one again).
   */
  readonly poolTurn?: (() => void) | undefined;
  /** How the end of the message's data is let go, and what is told about it: see EndOfDataHooks. */
  readonly endOfData?: EndOfDataHooks | undefined;
}

/**
 * Sends through the pool; resolves with nodemailer's info, rejects with its
 * error. `signal` is nodemailer's (an abort fails the send and closes its
 * connection); `hooks` tell and ask about the message on its way.
 */
export function sendThroughPool(pool: PoolTransport, message: PooledMessage, signal: AbortSignal, hooks: PoolSendHooks = {}): Promise<PoolSendInfo> {
  const { depart, taken, poolTurn, endOfData } = hooks;
  const { from, to, messageId, dsn } = message;
  let raw: Buffer | Promise<Buffer> = message.raw;
  let withdrawn: Error | undefined;
  let tookIt = taken === undefined;
  // The pool reads the Message-ID when it assigns the message to a connection, before connecting a new one
  // (nodemailer's smtp-pool `_processMessages`); the envelope, once connected. Whichever comes first.
  const take = (): void => {
    if (tookIt) return;
    tookIt = true;
    taken?.();
  };
  return new Promise((resolve, reject) => {
    pool.send(
      {
        data: { signal, dsn },
        message: {
          getEnvelope: () => {
            take();
            const departure = depart?.();
            if (departure !== undefined) {
              if ("withdrawn" in departure) withdrawn = departure.withdrawn;
              else raw = departure.raw;
            }
            // Fresh each time: nodemailer's connection writes its state into the envelope object.
            // A withdrawn message names no recipient: the connection refuses that envelope before
            // a command goes out, and stays in the pool for the next message.
            return { from, to: withdrawn === undefined ? [to] : [] };
          },
          messageId: () => messageId,
          getHeader: (name) => {
            take();
            return name.toLowerCase() === "message-id" ? messageId : undefined;
          },
          createReadStream: () => new MessageSource(raw, endOfData),
        },
      },
      (error, info) => {
        if (withdrawn !== undefined) reject(withdrawn);
        else if (error !== null && error !== undefined) reject(error);
        else if (info === undefined) reject(new Error("the SMTP pool reported no result"));
        else resolve(info);
      },
    );
    // After the pool's own setImmediate, which send() has just scheduled: immediates run in the order they were set.
    if (poolTurn !== undefined) setImmediate(poolTurn);
  });
}

/**
 * The end of a message's data: when it is let go to the relay's connection,
 * what is told about it, and what keeps it from ever going.
 *
 * The end-of-data dot is only ever written because the message source ends
 * nodemailer's dot-stuffing stream: until then the relay cannot have the
 * whole message. The source ends it (lets it go) with the message's bytes,
 * at once, as the relay takes the envelope and DATA is under way: an OTP
 * message is a few kilobytes, which the socket takes in one write, so the
 * end does not wait for the rest to drain (waiting, even a tick, cost every
 * message a turn of the event loop; a relay that stalls mid-DATA of a
 * message this small is not seen in practice). An attempt stopped after
 * that is treated as one the relay may have whole: the safe side.
 */
export interface EndOfDataHooks {
  /**
   * Once aborted, the end of the data is never let go, if it was not yet
   * (`letGo` was not told): the send fails when it gets to the data (nothing
   * more of the message is written then), or with its connection. Checked
   * synchronously where the end would be let go, so an abort decided in the
   * same tick as a look at `letGo` is certain either way.
   */
  readonly stop?: AbortSignal | undefined;
  /**
   * Told once, synchronously, as the end of the data is let go (just before
   * it is written): from then on the relay may have the whole message.
   */
  readonly letGo?: (() => void) | undefined;
  /**
   * Told once the end of the data has been written to the relay's socket
   * (handed to the operating system, not just to a stream): a failure after
   * it leaves it unknown whether the relay took the message.
   */
  readonly written?: (() => void) | undefined;
}

/**
 * A finished message as nodemailer's connection reads it, without a stream.
 * The connection listens for 'error' on its message while the envelope is
 * sent, pipes the message into its dot-stuffing stream once the relay took
 * the envelope, and destroys it if the connection fails first. A Readable
 * holding one Buffer did all that through a real pipe: listeners on both
 * sides, a tick to start flowing, a 'data' event, all per message. Here the
 * pipe is a single `end(raw)` on the destination: the same bytes, then the
 * same end. Bytes still being made (a message made again as it left the
 * queue, being DKIM-signed) are ended into the destination once made; if
 * making them fails, the connection hears that as the message's 'error'.
 *
 * The end (the end-of-data dot that the destination adds) goes with the
 * bytes, at once, unless `endOfData.stop` was aborted before: see
 * EndOfDataHooks.
 */
export class MessageSource {
  /**
   * Read by the pool as "some of the message went out": always true. When a
   * reused connection fails transiently before any of a message went out (a
   * 421 at MAIL FROM or RCPT TO, a connection the relay had dropped), the
   * pool would hand the message to another connection; with maxRequeues 0
   * (one send is one attempt: the delivery service owns retries) it fails it
   * instead, with a generic "connection closed" error in place of the
   * relay's reply. Read as sent, it fails with the relay's own words, as on
   * a new connection.
   */
  readonly readableDidRead = true;
  readonly #raw: Buffer | Promise<Buffer>;
  readonly #endOfData: EndOfDataHooks;
  #onError: ((error: Error) => void) | undefined;

  constructor(raw: Buffer | Promise<Buffer>, endOfData: EndOfDataHooks = {}) {
    this.#raw = raw;
    this.#endOfData = endOfData;
  }

  pipe<T extends NodeJS.WritableStream>(destination: T): T {
    const raw = this.#raw;
    if (Buffer.isBuffer(raw)) this.#write(destination, raw);
    else {
      void raw.then(
        (bytes) => this.#write(destination, bytes),
        (error: unknown) => this.#onError?.(error instanceof Error ? error : new Error(String(error))),
      );
    }
    return destination;
  }

  #write(destination: NodeJS.WritableStream, bytes: Buffer): void {
    const { stop, letGo, written } = this.#endOfData;
    // The one place the end is let go: after this check nothing can stop it, before it nothing lets it go.
    if (stop?.aborted === true) {
      this.#stopped();
      return;
    }
    letGo?.();
    if (written !== undefined) whenAllWritten(destination, written);
    destination.end(bytes);
  }

  /** Fails the send (nodemailer closes the connection): nothing more of the message is written. */
  #stopped(): void {
    const onError = this.#onError;
    // Not from inside nodemailer's own call to pipe().
    if (onError !== undefined) process.nextTick(onError, new Error("the sender stopped the message before the end of its data"));
  }

  // Only bytes still being made, or a stopped message, can fail; a Buffer in memory holds nothing to release.
  on(event: string, listener: (error: Error) => void): this {
    if (event === "error") this.#onError = listener;
    return this;
  }

  removeListener(event: string, listener: (error: Error) => void): this {
    if (event === "error" && this.#onError === listener) this.#onError = undefined;
    return this;
  }

  destroy(): void {
    // Nothing to release.
  }
}

/** The socket nodemailer's dot-stuffing stream is piped into, when it can be found (the pipe has no public accessor). */
function socketOf(dataStream: NodeJS.WritableStream): Socket | undefined {
  const pipes = (dataStream as { _readableState?: { pipes?: unknown } })._readableState?.pipes;
  return (Array.isArray(pipes) ? (pipes as unknown[]) : [pipes]).find((pipe): pipe is Socket => pipe instanceof Socket);
}

/**
 * Calls `then` once every byte `dataStream` produces (nodemailer's
 * dot-stuffing stream, which ends the data with `.` and is piped into the
 * connection's socket with `end: false`) has been written to that socket;
 * never if the socket is destroyed first.
 *
 * The stream's 'end' comes after its last chunk went through the pipe's
 * socket.write() (the pipe pauses the stream while the socket pushes back),
 * but socket.write() may still hold bytes the operating system did not take
 * yet (a relay that stopped reading): written means the socket's buffer is
 * empty too. Should the socket not be found, the stream's end is the best
 * point left.
 */
function whenAllWritten(dataStream: NodeJS.WritableStream, then: () => void): void {
  (dataStream as NodeJS.WritableStream & NodeJS.ReadableStream).once("end", () => {
    const socket = socketOf(dataStream);
    if (socket === undefined) {
      then();
      return;
    }
    const check = (): void => {
      if (socket.destroyed) return;
      if (socket.writableLength === 0) then();
      // 'drain' only follows a write that filled the buffer; otherwise look again shortly.
      else if (socket.writableNeedDrain) socket.once("drain", check);
      else setTimeout(check, 10).unref();
    };
    check();
  });
}

/** The address of a From header (`"Name" <a@b>` or `a@b`). */
export function addressOf(from: string): string {
  return /<([^<>]*)>\s*$/.exec(from)?.[1] ?? from.trim();
}

function lowerDomain(address: string): string {
  const at = address.lastIndexOf("@");
  return address.slice(0, at) + address.slice(at).toLowerCase();
}
