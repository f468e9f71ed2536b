/**
 * The benchmark's SMTP sink, a child process: smtp-server on a free loopback
 * port that accepts every message as fast as it can read it and counts
 * messages, DKIM-signed messages and connections. Nothing is parsed or kept.
 * Like every real relay it offers STARTTLS (with the certificate the parent
 * passes in BENCH_SINK_TLS_KEY / BENCH_SINK_TLS_CERT; plaintext only when
 * they are unset). On request it answers each message late, like a relay
 * that takes time to queue it.
 */
import type { Socket } from "node:net";
import { SMTPServer } from "smtp-server";
import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";
import { onParentCommand, sendToParent } from "./ipc.js";
import type { SinkCommand, SinkEvent } from "./protocol.js";

// smtp-server holds every greeting back 100 ms to catch "early talkers" (a
// spam-bot trap that relays such as Postfix do not set by default). On
// loopback that delay would be nearly the whole cost of a new connection, and
// the naive design would look 50 times slower than it is: this sink greets at once.
SMTPConnection.prototype.init = function init(this: SMTPConnection): void {
  this._setListeners(() => this.connectionReady());
};

let accepted = 0;
let signed = 0;
/** How long the final reply to each message waits: 0, or a relay's time to queue a message. */
let replyDelayMs = 0;
let connections = 0;
const emit = (event: SinkEvent): void => sendToParent(event);

const tlsKey = process.env["BENCH_SINK_TLS_KEY"];
const tlsCert = process.env["BENCH_SINK_TLS_CERT"];
const tls = tlsKey !== undefined && tlsCert !== undefined;

const server = new SMTPServer({
  name: "sink.bench",
  banner: "bench sink",
  logger: false,
  disableReverseLookup: true,
  authOptional: true,
  disabledCommands: tls ? ["AUTH"] : ["STARTTLS", "AUTH"],
  ...(tls ? { key: tlsKey, cert: tlsCert } : {}),
  closeTimeout: 100,
  onData(stream, _session, callback) {
    // A DKIM-Signature header, when there is one, is among the first bytes.
    let head = "";
    stream.on("data", (chunk: Buffer) => {
      if (head.length < 4096) head += chunk.toString("latin1", 0, Math.min(chunk.length, 4096));
    });
    stream.on("end", () => {
      accepted++;
      const end = head.search(/\r?\n\r?\n/);
      const headers = end === -1 ? head : head.slice(0, end);
      if (/^dkim-signature:/im.test(headers)) signed++;
      const reply = (): void => callback(null, `Ok: queued as B${accepted}`);
      if (replyDelayMs > 0) setTimeout(reply, replyDelayMs);
      else reply();
    });
  },
});
server.server.on("connection", (_socket: Socket) => {
  connections++;
});
// A client that hangs up mid-conversation is not the sink's problem.
server.on("error", () => undefined);

onParentCommand<SinkCommand>((command) => {
  switch (command.type) {
    case "count":
      emit({ type: "count", accepted, signed, connections });
      return;
    case "delay":
      replyDelayMs = command.ms;
      emit({ type: "delay-set", ms: replyDelayMs });
      return;
    case "exit":
      server.close(() => process.exit(0));
      return;
  }
});

server.listen(0, "127.0.0.1", () => {
  const address = server.server.address();
  if (address === null || typeof address === "string") throw new Error("sink: no TCP address");
  emit({ type: "listening", port: address.port });
});
