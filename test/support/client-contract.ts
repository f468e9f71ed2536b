/**
 * What another language's generated client must get right, once for every
 * example under examples/ (Python, Go, Java): the real service process (as
 * `npm start` runs it, production mode, TLS and a bearer token) on a private
 * redis-server and a real SMTP sink, and the contract suite each example's
 * CLI is driven through.
 *
 * Each example's CLI prints the same JSON: the response with proto field
 * names on stdout (exit 0), or a failed call's error details on the last line
 * of stderr (exit 1).
 *
 * The service takes few calls at once per connection (`clientStreamBound`),
 * so that one channel's burst of calls meets the bound, as the README's
 * GRPC_MAX_CONCURRENT_STREAMS promises it may: each language's burst program
 * (test/support/client-burst/) fires many SendOtps at once on one channel of
 * its example's client.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { openCertificateWorkshop } from "./certs.js";
import { nonLoopbackIPv4, watchListener } from "./non-loopback.js";
import { startRedisServer, type RedisServer } from "./redis.js";
import { codeFromMail } from "./service.js";
import { startSmtpSink, type SmtpSink } from "./smtp-sink.js";

const root = fileURLToPath(new URL("../..", import.meta.url));

/**
 * The service's GRPC_MAX_CONCURRENT_STREAMS in the client tests: under the
 * SMTP pool's 5 connections, so that the most messages at the relay at once
 * is this bound's doing, not the pool's.
 */
export const clientStreamBound = 4;

/** A Debian package a client test needs, and how to tell it is installed. */
export interface DebianPackage {
  readonly name: string;
  readonly present: () => boolean;
}

export function onPath(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

/** Fails (never skips) with the apt-get command that installs what is missing. */
export function requireDebianPackages(test: string, packages: readonly DebianPackage[]): void {
  const missing = packages.filter((pkg) => !pkg.present()).map((pkg) => pkg.name);
  if (missing.length > 0) {
    throw new Error(
      `the ${test} needs Debian packages that are missing: ${missing.join(", ")}. ` +
        `Install them: apt-get install -y --no-install-recommends ${missing.join(" ")}`,
    );
  }
}

/** A fresh W3C traceparent, as the caller's active span would give it. */
export function newTraceparent(): { traceparent: string; traceId: string } {
  const traceId = randomBytes(16).toString("hex");
  return { traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01`, traceId };
}

/** One run of an example's CLI. */
export interface ClientRun {
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout parsed (the answer) on success, stderr's last line parsed (the error) on failure. */
  readonly json: Record<string, unknown>;
}

export interface ClientRunOptions {
  /** The bearer token, handed over in OTP_EMAIL_TOKEN (never on the command line). */
  readonly token?: string;
  /** Written to the client's standard input (the code a user typed). */
  readonly stdin?: string;
}

/**
 * Runs `command` once with only PATH (and the token, when given) in its
 * environment, as a team would run the example by hand, and parses its JSON.
 */
export function runClientCommand(
  command: string,
  args: readonly string[],
  options: ClientRunOptions & { readonly timeoutMs?: number; readonly label?: string } = {},
): Promise<ClientRun> {
  const label = `${options.label ?? command} ${args[0] ?? ""}`;
  const timeoutMs = options.timeoutMs ?? 20_000;
  const child = spawn(command, [...args], {
    env: { PATH: process.env["PATH"] ?? "", ...(options.token === undefined ? {} : { OTP_EMAIL_TOKEN: options.token }) },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  child.stdin.on("error", () => undefined);
  child.stdin.end(options.stdin ?? "");
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${label} did not finish within ${timeoutMs / 1000} s; stderr: ${stderr}`));
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (exitCode) => {
      clearTimeout(timer);
      const text = exitCode === 0 ? stdout : (stderr.trim().split("\n").at(-1) ?? "");
      try {
        resolve({ exitCode, stdout, stderr, json: JSON.parse(text) as Record<string, unknown> });
      } catch {
        reject(new Error(`${label} exited ${exitCode} without JSON; stderr: ${stderr}`));
      }
    });
  });
}

/** The service a client test calls. */
export interface ServiceForClients {
  /** `127.0.0.1:PORT`, TLS. */
  readonly target: string;
  /** `127.0.0.1:PORT`, plaintext: the same service (Redis, sink, token) without TLS, as behind a sidecar. */
  readonly plaintextTarget: string;
  /** The CA that signs the service's certificate, as a file. */
  readonly caFile: string;
  /** The bearer token of the one caller AUTH_TOKENS knows. */
  readonly token: string;
  readonly sink: SmtpSink;
  /** Every JSON log line the service (both processes) wrote so far. */
  readonly log: Record<string, unknown>[];
  waitForLog(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** SIGTERM, then the sink, Redis and the temporary files. */
  stop(): Promise<void>;
}

/**
 * Starts the compiled service in production mode with TLS and one token
 * caller named `caller`, and its plaintext twin; both take `clientStreamBound`
 * calls at once per connection.
 */
export async function startServiceForClients(caller: string): Promise<ServiceForClients> {
  const tmp = await mkdtemp(join(tmpdir(), `otp-${caller}-`));
  const token = randomBytes(24).toString("base64url");
  const log: Record<string, unknown>[] = [];
  let stderr = "";
  let redis: RedisServer | undefined;
  let sink: SmtpSink | undefined;
  const children: ChildProcess[] = [];

  const waitForLog = (
    predicate: (line: Record<string, unknown>) => boolean,
    timeoutMs = 15_000,
    lines: Record<string, unknown>[] = log,
  ): Promise<Record<string, unknown>> => {
    const deadline = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = lines.find(predicate);
        if (found !== undefined) resolve(found);
        else if (Date.now() > deadline || children.some((child) => child.exitCode !== null)) {
          reject(new Error(`no matching service log line within ${timeoutMs} ms; stderr: ${stderr}`));
        } else setTimeout(check, 50);
      };
      check();
    });
  };
  const stop = async (): Promise<void> => {
    await Promise.all(
      children
        .filter((child) => child.exitCode === null)
        .map((running) => {
          const exited = new Promise((resolve) => running.once("exit", resolve));
          running.kill("SIGTERM");
          return exited;
        }),
    );
    await sink?.close();
    await redis?.stop();
    await rm(tmp, { recursive: true, force: true });
  };
  /** Spawns one service process; its log lines go to `log` too. Resolves with the address it listens on. */
  const spawnService = async (env: Record<string, string>): Promise<string> => {
    const own: Record<string, unknown>[] = [];
    const started = spawn(process.execPath, ["--import", "./dist/src/telemetry/bootstrap.js", "dist/src/main.js"], {
      cwd: root,
      env: { PATH: process.env["PATH"] ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(started);
    let buffer = "";
    started.stdout.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("utf8");
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.trim() === "") continue;
        const parsed = JSON.parse(line) as Record<string, unknown>;
        own.push(parsed);
        log.push(parsed);
      }
    });
    started.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    const listening = await waitForLog((line) => line["msg"] === "otp-email listening", 15_000, own);
    return String(listening["grpc"]);
  };

  const workshop = await openCertificateWorkshop();
  try {
    const ca = await workshop.newCa(`otp ${caller} test CA`);
    const server = await ca.issue({ cn: "otp-email", san: "DNS:localhost,IP:127.0.0.1", server: true });
    const caFile = join(tmp, "ca.pem");
    await writeFile(caFile, ca.cert);
    redis = await startRedisServer();
    sink = await startSmtpSink();
    const env = {
      // Production mode: every safeguard a real deployment has.
      NODE_ENV: "production",
      GRPC_ADDR: "127.0.0.1:0",
      METRICS_ADDR: "off",
      REDIS_URL: redis.url,
      SMTP_URL: sink.url,
      OTP_SECRET: randomBytes(32).toString("base64"),
      MAIL_FROM: '"Acme Login" <no-reply@acme.test>',
      AUTH_TOKENS: `${caller}:${createHash("sha256").update(token).digest("hex")}`,
      LIMIT_RESEND_COOLDOWN: "60s",
      GRPC_MAX_CONCURRENT_STREAMS: String(clientStreamBound),
    };
    // The twin shares Redis, the sink and the token; it serves plaintext on loopback, as a sidecar's upstream would.
    const [target, plaintextTarget] = await Promise.all([
      spawnService({ ...env, TLS_CERT: server.cert, TLS_KEY: server.key }),
      spawnService(env),
    ]);
    return { target, plaintextTarget, caFile, token, sink, log, waitForLog: (predicate, timeoutMs) => waitForLog(predicate, timeoutMs), stop };
  } catch (error) {
    await stop();
    throw error;
  } finally {
    await workshop.cleanup();
  }
}

export interface ClientUnderTest {
  readonly service: ServiceForClients;
  /** Runs one CLI command against `service`; with the service's token it may go through a long-lived session. */
  readonly run: (args: readonly string[], options?: ClientRunOptions) => Promise<ClientRun>;
  /** Everything the client processes wrote so far beyond the runs' own output (a long-lived session's). */
  readonly otherOutput: () => string;
  /**
   * Runs one CLI command in a process of its own with `connection` as its
   * global flags (`--target`, `--ca-file`, `--allow-plaintext-token`) instead
   * of the service's TLS target and CA.
   */
  readonly runWith: (connection: readonly string[], args: readonly string[], options?: ClientRunOptions) => Promise<ClientRun>;
  /**
   * Runs the language's burst program (test/support/client-burst/) against
   * the service's TLS target with its token: one channel of the example's
   * client, a SendOtp (purpose login) to each recipient, all started at once.
   * It prints `{"outcomes": [...]}`, one a recipient in order: the state the
   * call answered, or `CODE: message` of its error.
   */
  readonly burst: (recipients: readonly string[]) => Promise<ClientRun>;
}

/**
 * The contract every example's client must keep, as `it`s in the caller's
 * describe. `client()` is read when each test runs (after beforeAll).
 */
export function describeClientContract(language: string, client: () => ClientUnderTest): void {
  describe(`the contract, through the ${language} client`, () => {
    it("sends a code over TLS with a token: the mail reaches the relay, and a replayed idempotency key sends nothing", async () => {
      const { service, run } = client();
      const { sink, token } = service;
      const before = sink.messages.length;
      const key = `login-${randomBytes(6).toString("hex")}`;
      const args = ["send", "--recipient", "ana@example.com", "--purpose", "login", "--locale", "ko", "--ttl", "300", "--idempotency-key", key];
      const sent = await run(args, { token });
      expect(sent.exitCode, sent.stderr).toBe(0);
      // Enums arrive as their names, Timestamps as RFC 3339 times: the Duration ttl was honoured.
      expect(sent.json["state"]).toBe("DELIVERY_STATE_ACCEPTED");
      const expiresInMs = Date.parse(String(sent.json["expires_at"])) - Date.now();
      expect(expiresInMs).toBeGreaterThan(280_000);
      expect(expiresInMs).toBeLessThanOrEqual(300_000);
      expect(Date.parse(String(sent.json["resend_available_at"]))).toBeGreaterThan(Date.now());

      const mails = await sink.waitForMessages(before + 1);
      expect(mails[before]?.envelope.rcptTo).toEqual(["ana@example.com"]);
      // The client never sees the code, so it cannot print it.
      expect(sent.stdout + sent.stderr + client().otherOutput()).not.toContain(codeFromMail(mails[before]?.parsed.subject));

      const replay = await run(args, { token });
      expect(replay.exitCode).toBe(0);
      expect(replay.json["message_id"]).toBe(sent.json["message_id"]);
      expect(sink.messages).toHaveLength(before + 1);
    });

    it("reads the delivery status: ACCEPTED with the relay's reply, and the trace id of the caller's traceparent", async () => {
      const { service, run } = client();
      const { sink, token } = service;
      const before = sink.messages.length;
      const { traceparent, traceId } = newTraceparent();
      const sent = await run(["send", "--recipient", "ben@example.com", "--purpose", "signup", "--traceparent", traceparent], { token });
      expect(sent.exitCode, sent.stderr).toBe(0);
      const [mail] = (await sink.waitForMessages(before + 1)).slice(before);

      const status = await run(["status", String(sent.json["message_id"])], { token });
      expect(status.exitCode, status.stderr).toBe(0);
      expect(status.json).toMatchObject({
        message_id: sent.json["message_id"],
        state: "DELIVERY_STATE_ACCEPTED",
        recipient: "b***@example.com",
        purpose: "PURPOSE_SIGNUP",
        trace_id: traceId,
        relay_reply: { text: expect.stringContaining(`queued as ${mail?.queueId ?? "?"}`) as unknown, queue_id: mail?.queueId },
      });
      expect(status.json["attempts"]).toEqual([
        expect.objectContaining({ number: 1, outcome: "ATTEMPT_OUTCOME_ACCEPTED", reply_code: 250, duration: expect.stringMatching(/^\d+(\.\d+)?s$/) as unknown }),
      ]);
      // The service's own log line for the send carries the same trace id.
      const queued = await service.waitForLog((line) => line["msg"] === "otp queued" && line["message_id"] === sent.json["message_id"]);
      expect(queued["trace_id"]).toBe(traceId);
    });

    it("a relay that has not answered within the wait budget: SendOtp succeeds with SENDING and a message_id, and the status follows the send to ACCEPTED", async () => {
      const { service, run } = client();
      const { sink, token } = service;
      sink.hold();
      let sent: ClientRun;
      try {
        sent = await run(["send", "--recipient", "gus@example.com", "--purpose", "login", "--idempotency-key", `slow-${randomBytes(6).toString("hex")}`], { token });
        // Not a failure: the CLI exits 0 and prints where the message stands.
        expect(sent.exitCode, sent.stderr).toBe(0);
        expect(sent.json["state"]).toBe("DELIVERY_STATE_SENDING");
        expect(String(sent.json["message_id"])).toMatch(/^[0-9a-z]{26}$/);
        const pending = await run(["status", String(sent.json["message_id"])], { token });
        expect(pending.json["state"]).toBe("DELIVERY_STATE_SENDING");
      } finally {
        sink.release();
      }
      // The attempt went on in the background: the relay's answer reaches the record.
      let state = "";
      for (let polls = 0; polls < 40 && state !== "DELIVERY_STATE_ACCEPTED"; polls++) {
        if (polls > 0) await new Promise((resolve) => setTimeout(resolve, 250));
        const status = await run(["status", String(sent.json["message_id"])], { token });
        expect(status.exitCode, status.stderr).toBe(0);
        state = String(status.json["state"]);
      }
      expect(state).toBe("DELIVERY_STATE_ACCEPTED");
    });

    it("verifies: a wrong code is INVALID with attempts left, the right one VERIFIED, then it is used up", async () => {
      const { service, run } = client();
      const { sink, token } = service;
      const before = sink.messages.length;
      const who = ["--recipient", "cleo@example.com", "--purpose", "password_reset"];
      expect((await run(["send", ...who], { token })).exitCode).toBe(0);
      const [mail] = (await sink.waitForMessages(before + 1)).slice(before);
      const code = codeFromMail(mail?.parsed.subject);
      const wrong = code === "000000" ? "111111" : "000000";

      const invalid = await run(["verify", ...who], { token, stdin: `${wrong}\n` });
      expect(invalid.exitCode).toBe(0);
      expect(invalid.json).toEqual({ result: "VERIFY_RESULT_INVALID", attempts_remaining: 4 });

      const verified = await run(["verify", ...who], { token, stdin: `${code}\n` });
      expect(verified.json["result"]).toBe("VERIFY_RESULT_VERIFIED");

      const again = await run(["verify", ...who], { token, stdin: `${code}\n` });
      expect(again.json["result"]).toBe("VERIFY_RESULT_NOT_FOUND");
      // The code went in on standard input; nothing the client wrote repeats it.
      expect(verified.stdout + verified.stderr + again.stdout + again.stderr + client().otherOutput()).not.toContain(code);
    });

    it("a CR/LF in the recipient: INVALID_ARGUMENT with a BadRequest field violation naming recipient", async () => {
      const { service, run } = client();
      const before = service.sink.transactions();
      const bad = await run(["send", "--recipient", "dan@example.com\r\nBcc: eve@example.com", "--purpose", "login"], { token: service.token });
      expect(bad.exitCode).toBe(1);
      expect(bad.json).toMatchObject({ code: "INVALID_ARGUMENT", domain: "otp-email" });
      expect(bad.json["field_violations"]).toEqual([expect.objectContaining({ field: "recipient", description: expect.any(String) as unknown })]);
      expect(service.sink.transactions()).toBe(before);
    });

    it("a resend within the cooldown: RESOURCE_EXHAUSTED with RetryInfo, ErrorInfo and QuotaFailure", async () => {
      const { service, run } = client();
      const who = ["--recipient", "fay@example.com", "--purpose", "login"];
      expect((await run(["send", ...who], { token: service.token })).exitCode).toBe(0);
      const limited = await run(["send", ...who], { token: service.token });
      expect(limited.exitCode).toBe(1);
      expect(limited.json).toMatchObject({ code: "RESOURCE_EXHAUSTED", reason: "RESEND_COOLDOWN", domain: "otp-email" });
      const delay = Number(limited.json["retry_delay_seconds"]);
      expect(delay).toBeGreaterThan(0);
      expect(delay).toBeLessThanOrEqual(60);
      // future_quota_value is a proto3 `optional` field: presence is tracked, and the service leaves it unset.
      expect(limited.json["quota_violations"]).toEqual([
        expect.objectContaining({ subject: "recipient+purpose", quota_id: "resend_cooldown:1m", quota_value: 1, future_quota_value: null }),
      ]);
    });

    it(`a burst of 40 SendOtps at once on one channel, to a service that takes ${clientStreamBound} calls at once per connection: every call succeeds, the client holding those over the bound`, async () => {
      const { service, burst } = client();
      const { sink } = service;
      const before = sink.messages.length;
      const run = randomBytes(4).toString("hex");
      const recipients = Array.from({ length: 40 }, (_, index) => `burst-${run}-${index}@example.com`);
      // Each call holds its stream for the relay's moment over its message, so the burst's calls overlap.
      sink.replyAfter(200);
      const mostAtOnce = sink.countAwaitingReply();
      let sent: ClientRun;
      try {
        sent = await burst(recipients);
      } finally {
        sink.replyAfter(0);
      }
      expect(sent.exitCode, sent.stderr).toBe(0);
      // None refused (REFUSED_STREAM reads as UNAVAILABLE or INTERNAL), none cut short by a GOAWAY.
      expect(sent.json["outcomes"]).toEqual(Array(40).fill("DELIVERY_STATE_ACCEPTED"));
      const mails = (await sink.waitForMessages(before + 40)).slice(before);
      expect(mails.flatMap((mail) => mail.envelope.rcptTo).sort()).toEqual([...recipients].sort());
      // The calls met the bound and never went past it: the pool could have taken one more message at once.
      expect(mostAtOnce()).toBe(clientStreamBound);
    });

    it("no token, or a wrong one: UNAUTHENTICATED with the reason, and the token is echoed nowhere", async () => {
      const { service, run } = client();
      const missing = await run(["status", "01kb2m7q3c5xw9p8h2g4r6t0vn"]);
      expect(missing.exitCode).toBe(1);
      expect(missing.json).toMatchObject({ code: "UNAUTHENTICATED", reason: "CREDENTIALS_MISSING" });

      const wrongToken = randomBytes(24).toString("base64url");
      const wrong = await run(["status", "01kb2m7q3c5xw9p8h2g4r6t0vn"], { token: wrongToken });
      expect(wrong.exitCode).toBe(1);
      expect(wrong.json).toMatchObject({ code: "UNAUTHENTICATED", reason: "TOKEN_INVALID" });
      expect(wrong.stdout + wrong.stderr + JSON.stringify(service.log)).not.toContain(wrongToken);
      expect(JSON.stringify(service.log) + client().otherOutput()).not.toContain(service.token);
    });
  });
  describe(`the token travels only over TLS or to loopback, through the ${language} client`, () => {
    const unknownId = "01kb2m7q3c5xw9p8h2g4r6t0vn";
    const listeners: { close(): Promise<void> }[] = [];
    afterEach(async () => {
      await Promise.all(listeners.splice(0).map((listener) => listener.close()));
    });
    /** A listener on this machine's non-loopback address that pipes to the plaintext twin. */
    const watched = async () => {
      const listener = await watchListener(nonLoopbackIPv4(), client().service.plaintextTarget);
      listeners.push(listener);
      return listener;
    };

    it("a token to a plaintext target that is not loopback is refused before any connection, saying what to do", async () => {
      const { service, runWith } = client();
      const listener = await watched();
      const refused = await runWith(["--target", listener.target], ["status", unknownId], { token: service.token });
      expect(refused.exitCode).toBe(1);
      // Refused before dialling, not a call that failed on the wire.
      expect(refused.json["code"]).toBe("UNKNOWN");
      expect(refused.json["message"]).toMatch(/TLS/);
      expect(refused.json["message"]).toMatch(/allow.?plaintext.?token/i);
      expect(refused.stdout + refused.stderr).not.toContain(service.token);
      // A connection the client opened before exiting would have been accepted by now; give the loop a turn.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(listener.connections()).toBe(0);
    });

    it("with the explicit opt-out the token goes over plaintext to that target: the service authenticates the call", async () => {
      const { service, runWith } = client();
      const listener = await watched();
      const sent = await runWith(["--target", listener.target, "--allow-plaintext-token"], ["status", unknownId], { token: service.token });
      // NOT_FOUND, not UNAUTHENTICATED: the token arrived and was accepted.
      expect(sent.exitCode).toBe(1);
      expect(sent.json).toMatchObject({ code: "NOT_FOUND" });
      expect(listener.connections()).toBeGreaterThan(0);
    });

    it("without a token, plaintext to that target stays allowed: the call arrives and is refused for want of credentials", async () => {
      const listener = await watched();
      const anonymous = await client().runWith(["--target", listener.target], ["status", unknownId]);
      expect(anonymous.json).toMatchObject({ code: "UNAUTHENTICATED", reason: "CREDENTIALS_MISSING" });
      expect(listener.connections()).toBeGreaterThan(0);
    });

    it("a token over plaintext to a loopback target is sent (development, a sidecar on this host)", async () => {
      const { service, runWith } = client();
      const local = await runWith(["--target", service.plaintextTarget], ["status", unknownId], { token: service.token });
      expect(local.exitCode).toBe(1);
      expect(local.json).toMatchObject({ code: "NOT_FOUND" });
    });

    it("an IPv4-mapped loopback target ([::ffff:127.0.0.1]:port) is loopback too: the token is sent", async () => {
      const { service, runWith } = client();
      const port = service.plaintextTarget.slice(service.plaintextTarget.lastIndexOf(":") + 1);
      const mapped = await runWith(["--target", `[::ffff:127.0.0.1]:${port}`], ["status", unknownId], { token: service.token });
      expect(mapped.json, mapped.stderr).toMatchObject({ code: "NOT_FOUND" });
    });
  });
}
