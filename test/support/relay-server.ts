/**
 * An SMTP server (smtp-server) on a free loopback port that only has to
 * answer the doctor's probe: greeting, EHLO with the extensions a test asks
 * for (STARTTLS with a given certificate, AUTH, DSN), STARTTLS, QUIT. It
 * accepts no mail.
 */
import { SMTPServer } from "smtp-server";
import type { SelfSigned } from "./self-signed.js";

export interface RelayServerOptions {
  /** Offer STARTTLS with this key and certificate; without it STARTTLS is not offered. */
  readonly tls?: SelfSigned;
  /** Offer AUTH PLAIN LOGIN. */
  readonly auth?: boolean;
  /** Advertise DSN in EHLO (smtp-server hides it by default). */
  readonly dsn?: boolean;
  /** TLS from the first byte (smtps://) with `tls`'s certificate, instead of STARTTLS. */
  readonly implicitTls?: boolean;
}

export interface RelayServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startRelayServer(options: RelayServerOptions = {}): Promise<RelayServer> {
  const disabledCommands: string[] = [];
  if (options.tls === undefined) disabledCommands.push("STARTTLS");
  if (options.auth !== true) disabledCommands.push("AUTH");
  const server = new SMTPServer({
    name: "relay.test",
    logger: false,
    disableReverseLookup: true,
    hideDSN: options.dsn !== true,
    authOptional: true,
    allowInsecureAuth: options.tls === undefined,
    disabledCommands,
    ...(options.tls === undefined ? {} : { key: options.tls.key, cert: options.tls.cert }),
    secure: options.implicitTls === true,
    closeTimeout: 100,
    onAuth(_auth, _session, callback) {
      callback(new Error("the doctor never authenticates"));
    },
    onData(stream, _session, callback) {
      stream.resume();
      stream.once("end", () => callback(new Error("this relay accepts no mail")));
    },
  });
  server.on("error", () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.server.off("error", reject);
      resolve();
    });
  });
  const address = server.server.address();
  if (address === null || typeof address === "string") throw new Error("relay server: no TCP address");
  return {
    port: address.port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
