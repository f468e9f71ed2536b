/**
 * The relay: a direct SMTP probe (connect, greeting, EHLO, STARTTLS with the
 * same certificate rules as the transport, EHLO again, QUIT) that reports
 * what the relay advertises where it matters: TLS, AUTH and DSN. It sends no
 * mail and never authenticates. Every step has its own timeout.
 */
import { connect as netConnect, isIP, type Socket } from "node:net";
import { connect as tlsConnect, rootCertificates, type TLSSocket } from "node:tls";
import { check, type CheckResult } from "./types.js";

/** Options of {@link checkRelay}. */
export interface RelayCheckOptions {
  /** SMTP_URL, with the transport's rules: smtp:// requires STARTTLS unless `?starttls=off`; smtps:// is TLS. */
  readonly url: string;
  /** SMTP_TLS_CA: PEM of a private CA, trusted besides the public roots. */
  readonly tlsCa?: string | undefined;
  /** Bound on connecting and on each reply. */
  readonly timeoutMs: number;
  /** The name we give in EHLO; default `otp-email-doctor.invalid`. */
  readonly clientName?: string;
}

interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly secure: boolean;
  readonly requireTls: boolean;
  readonly hasCredentials: boolean;
  readonly relay: string;
}

/** What the probe saw; exported for tests and the JSON report. */
export interface RelayProbe {
  readonly relay: string;
  /** Why the conversation stopped early, if it did. */
  readonly error?: string;
  readonly greeting?: string;
  /** How TLS went: not tried, up (with protocol), or failed (with the reason). */
  readonly tls: { readonly state: "none" } | { readonly state: "up"; readonly protocol: string } | { readonly state: "failed"; readonly reason: string };
  readonly starttlsOffered: boolean;
  /** EHLO keywords (upper case) and their parameters, from the last EHLO (after TLS when TLS is up). */
  readonly extensions: Readonly<Record<string, string>>;
}

/** Parses the relay URL; the config has validated its scheme already. */
export function parseRelayUrl(raw: string): Endpoint {
  const url = new URL(raw);
  const secure = url.protocol === "smtps:";
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  const port = url.port === "" ? (secure ? 465 : 587) : Number(url.port);
  const requireTls = !secure && url.searchParams.get("starttls") !== "off";
  return {
    host,
    port,
    secure,
    requireTls,
    hasCredentials: url.username !== "",
    relay: `${isIP(host) === 6 ? `[${host}]` : host}:${port}`,
  };
}

/** The relay checks: relay.connect, then (when connected) relay.starttls, relay.auth, relay.dsn. */
export async function checkRelay(options: RelayCheckOptions): Promise<CheckResult[]> {
  const endpoint = parseRelayUrl(options.url);
  const probe = await probeRelay(endpoint, options);
  const subject = endpoint.relay;
  const details = { ...probe };

  if (probe.greeting === undefined || !probe.greeting.startsWith("220")) {
    const tlsFailure = probe.tls.state === "failed" ? probe.tls.reason : undefined;
    return [
      check(
        "relay.connect",
        subject,
        "fail",
        probe.greeting === undefined ? `cannot talk to the relay: ${tlsFailure ?? probe.error ?? "no greeting"}` : `the relay refuses us: ${probe.greeting}`,
        tlsFailure !== undefined ? tlsFix : "check the host and port in SMTP_URL, the relay, and the firewall between us",
        details,
      ),
    ];
  }
  const results = [check("relay.connect", subject, "pass", `connected: ${probe.greeting}`, "", details)];
  results.push(starttlsResult(endpoint, probe));
  // What a relay advertises before TLS can differ from after it; after a failed upgrade we do not know.
  const known = !(endpoint.requireTls && probe.tls.state !== "up");
  results.push(authResult(endpoint, probe, known));
  results.push(dsnResult(endpoint, probe, known));
  return results;
}

const tlsFix = "trust the relay's certificate: set SMTP_TLS_CA to the CA that signs it, or give the relay a valid certificate for this host name";

function starttlsResult(endpoint: Endpoint, probe: RelayProbe): CheckResult {
  const subject = endpoint.relay;
  if (probe.tls.state === "up") {
    return check("relay.starttls", subject, "pass", `${endpoint.secure ? "implicit TLS" : "STARTTLS"} (${probe.tls.protocol}), certificate verified`);
  }
  if (probe.tls.state === "failed") {
    return check("relay.starttls", subject, "fail", `TLS with the relay failed: ${probe.tls.reason}`, tlsFix);
  }
  if (endpoint.requireTls) {
    return check(
      "relay.starttls",
      subject,
      "fail",
      "the relay does not offer STARTTLS, which an smtp:// URL requires: every send fails",
      "enable STARTTLS on the relay, or use smtps://; ?starttls=off is for loopback relays only",
    );
  }
  if (isLoopback(endpoint.host)) {
    return check("relay.starttls", subject, "pass", "plaintext by choice (?starttls=off) to a loopback relay");
  }
  return check(
    "relay.starttls",
    subject,
    "warn",
    `?starttls=off: mail and credentials cross the network in clear text${probe.starttlsOffered ? " although the relay offers STARTTLS" : ""}`,
    probe.starttlsOffered ? "remove ?starttls=off from SMTP_URL" : "enable STARTTLS on the relay and remove ?starttls=off from SMTP_URL",
  );
}

function authResult(endpoint: Endpoint, probe: RelayProbe, known: boolean): CheckResult {
  const subject = endpoint.relay;
  if (!known) return check("relay.auth", subject, "warn", "AUTH not checked: TLS did not come up", "fix the TLS check first");
  const auth = probe.extensions["AUTH"];
  if (endpoint.hasCredentials) {
    return auth === undefined
      ? check(
          "relay.auth",
          subject,
          "fail",
          "SMTP_URL has credentials but the relay does not offer AUTH: every send fails",
          "enable AUTH on the relay, or remove user:pass from SMTP_URL if it authorizes us by IP",
        )
      : check("relay.auth", subject, "pass", `AUTH ${auth} offered; SMTP_URL's credentials will be used (not tried here)`);
  }
  return auth === undefined
    ? check("relay.auth", subject, "pass", "no AUTH offered or configured: the relay must authorize us by IP")
    : check(
        "relay.auth",
        subject,
        "warn",
        `the relay offers AUTH ${auth} but SMTP_URL has no credentials: sends fail unless it authorizes us by IP`,
        "add user:pass to SMTP_URL (smtp://user:pass@host:587)",
      );
}

function dsnResult(endpoint: Endpoint, probe: RelayProbe, known: boolean): CheckResult {
  const subject = endpoint.relay;
  if (!known) return check("relay.dsn", subject, "warn", "DSN not checked: TLS did not come up", "fix the TLS check first");
  return "DSN" in probe.extensions
    ? check("relay.dsn", subject, "pass", "DSN advertised: bounces are requested per message (NOTIFY, ENVID)")
    : check(
        "relay.dsn",
        subject,
        "warn",
        "the relay does not advertise DSN: NOTIFY/ENVID are dropped, so a later bounce is seen only if it reaches the bounce domain's mailbox",
        "enable DSN on the relay (Postfix has it on unless smtpd_discard_ehlo_keywords lists dsn)",
      );
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

// ---------------------------------------------------------------------------
// The SMTP conversation

/** Runs the probe conversation; never throws, the outcome says how far it got. */
export async function probeRelay(endpoint: Endpoint, options: RelayCheckOptions): Promise<RelayProbe> {
  const tlsOptions = {
    host: endpoint.host,
    ...(isIP(endpoint.host) === 0 ? { servername: endpoint.host } : {}),
    rejectUnauthorized: true,
    minVersion: "TLSv1.2" as const,
    ...(options.tlsCa === undefined ? {} : { ca: [...rootCertificates, options.tlsCa] }),
  };
  const clientName = options.clientName ?? "otp-email-doctor.invalid";
  let tls: RelayProbe["tls"] = { state: "none" };
  let greeting: string | undefined;
  let starttlsOffered = false;
  let extensions: Record<string, string> = {};
  let conversation: Conversation | undefined;
  const outcome = (error?: string): RelayProbe => ({
    relay: endpoint.relay,
    ...(error === undefined ? {} : { error }),
    ...(greeting === undefined ? {} : { greeting }),
    tls,
    starttlsOffered,
    extensions,
  });

  try {
    let socket: Socket;
    try {
      socket = await open(endpoint, tlsOptions, options.timeoutMs);
    } catch (error) {
      if (endpoint.secure && isTlsError(error)) tls = { state: "failed", reason: describe(error) };
      return outcome(describe(error));
    }
    if (endpoint.secure) tls = { state: "up", protocol: (socket as TLSSocket).getProtocol() ?? "TLS" };
    conversation = new Conversation(socket, options.timeoutMs);

    greeting = (await conversation.reply()).text;
    if (!greeting.startsWith("220")) return outcome();
    let ehlo = await conversation.command(`EHLO ${clientName}`);
    if (ehlo.code !== 250) return outcome(`EHLO refused: ${ehlo.text}`);
    extensions = parseExtensions(ehlo.lines);
    starttlsOffered = !endpoint.secure && "STARTTLS" in extensions;

    if (endpoint.requireTls && starttlsOffered) {
      const ready = await conversation.command("STARTTLS");
      if (ready.code !== 220) {
        tls = { state: "failed", reason: `STARTTLS refused: ${ready.text}` };
        return outcome();
      }
      try {
        conversation = await conversation.upgrade(tlsOptions);
      } catch (error) {
        tls = { state: "failed", reason: describe(error) };
        return outcome();
      }
      tls = { state: "up", protocol: (conversation.socket as TLSSocket).getProtocol() ?? "TLS" };
      ehlo = await conversation.command(`EHLO ${clientName}`);
      if (ehlo.code !== 250) return outcome(`EHLO after STARTTLS refused: ${ehlo.text}`);
      extensions = parseExtensions(ehlo.lines);
    }
    await conversation.command("QUIT").catch(() => undefined);
    return outcome();
  } catch (error) {
    return outcome(describe(error));
  } finally {
    conversation?.close();
  }
}

function open(endpoint: Endpoint, tlsOptions: Record<string, unknown>, timeoutMs: number): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const socket = endpoint.secure
      ? tlsConnect({ ...tlsOptions, port: endpoint.port })
      : netConnect({ host: endpoint.host, port: endpoint.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (error: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    };
    socket.once("error", onError);
    socket.once(endpoint.secure ? "secureConnect" : "connect", () => {
      clearTimeout(timer);
      socket.off("error", onError);
      resolve(socket);
    });
  });
}

interface Reply {
  readonly code: number;
  /** Every line without its `250-` prefix. */
  readonly lines: readonly string[];
  /** The reply as the relay sent it, lines joined with " / ". */
  readonly text: string;
}

/** Line-oriented SMTP replies over one socket, each awaited with a timeout. */
class Conversation {
  private buffer = "";
  private readonly lines: string[] = [];
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.buffer += chunk.toString("latin1");
    let index;
    while ((index = this.buffer.indexOf("\n")) >= 0) {
      this.lines.push(this.buffer.slice(0, index).replace(/\r$/, ""));
      this.buffer = this.buffer.slice(index + 1);
    }
    this.wake();
  };
  private readonly onError = (error: Error): void => {
    this.failure ??= error;
    this.wake();
  };
  private readonly onClose = (): void => {
    this.failure ??= new Error("the relay closed the connection");
    this.wake();
  };

  constructor(
    readonly socket: Socket,
    private readonly timeoutMs: number,
  ) {
    socket.on("data", this.onData);
    socket.on("error", this.onError);
    socket.on("close", this.onClose);
  }

  async command(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.reply();
  }

  async reply(): Promise<Reply> {
    const collected: string[] = [];
    for (;;) {
      const line = await this.nextLine();
      collected.push(line);
      if (!/^\d{3}-/.test(line)) break;
    }
    const code = Number(collected[0]?.slice(0, 3));
    return { code: Number.isInteger(code) ? code : 0, lines: collected.map((line) => line.slice(4)), text: collected.join(" / ") };
  }

  /** Hands the socket to TLS; the old conversation must not be used afterwards. */
  async upgrade(tlsOptions: Record<string, unknown>): Promise<Conversation> {
    this.detach();
    const secure = await new Promise<TLSSocket>((resolve, reject) => {
      const socket = tlsConnect({ ...tlsOptions, socket: this.socket });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`TLS handshake took longer than ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      const onError = (error: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(error);
      };
      socket.once("error", onError);
      socket.once("secureConnect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        resolve(socket);
      });
    });
    return new Conversation(secure, this.timeoutMs);
  }

  close(): void {
    this.detach();
    this.socket.destroy();
  }

  private detach(): void {
    this.socket.off("data", this.onData);
    this.socket.off("error", this.onError);
    this.socket.off("close", this.onClose);
    // A late error on a socket we no longer listen to must not crash the process.
    this.socket.on("error", () => undefined);
  }

  private nextLine(): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`the relay did not answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      const attempt = (): void => {
        const line = this.lines.shift();
        if (line !== undefined) {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve(line);
        } else if (this.failure !== undefined) {
          clearTimeout(timer);
          this.waiter = undefined;
          reject(this.failure);
        } else {
          this.waiter = attempt;
        }
      };
      attempt();
    });
  }

  private wake(): void {
    this.waiter?.();
  }
}

/** EHLO lines after the first: `KEYWORD params`. */
function parseExtensions(lines: readonly string[]): Record<string, string> {
  const extensions: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const [keyword = "", ...params] = line.trim().split(/\s+/);
    if (keyword !== "") extensions[keyword.toUpperCase()] = params.join(" ");
  }
  return extensions;
}

function isTlsError(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" && (/CERT|SSL|TLS|ALTNAME|SELF_SIGNED|VERIFY/.test(code) || code.startsWith("ERR_SSL"));
}

function describe(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  return typeof code === "string" && !message.includes(code) ? `${code}: ${message}` : message;
}
