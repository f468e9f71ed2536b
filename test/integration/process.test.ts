/**
 * The compiled service as a separate process, as `npm start` runs it: the
 * zero-config development mode, SIGHUP re-reading the TLS certificate
 * files and TEMPLATES_DIR, and a graceful SIGTERM during a slow send.
 */
import { execFile, spawn } from "node:child_process";
import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { DeliveryState, OtpEmailService, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { createLogger } from "../../src/logger.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import { GrpcOtpClient, grpcUnary } from "../support/grpc.js";
import { randomPrefix, redisUrlForTests } from "../support/redis.js";
import { behave, startSmtpSink } from "../support/smtp-sink.js";
import { freePort } from "../support/ports.js";
import { makeSelfSigned } from "../support/self-signed.js";
import { openCertificateWorkshop, type CertificateAuthority } from "../support/certs.js";
import { killServiceProcesses, startServiceProcess } from "../support/service-process.js";
import { fingerprintOf, presentedAfterStarttls, presentedByTls } from "../support/tls-peer.js";

const { sendOtp, verifyOtp, getDeliveryStatus } = OtpEmailService.method;
const slowAppModule = fileURLToPath(new URL("../support/slow-app-module.mjs", import.meta.url));

/** A bearer token of `caller`, its hash and its AUTH_TOKENS entry. */
function newToken(caller: string): { value: string; hash: string; entry: string } {
  const value = `${caller}-token-${Math.random().toString(36).slice(2)}`;
  const hash = createHash("sha256").update(value).digest("hex");
  return { value, hash, entry: `${caller}:${hash}` };
}

/** Sends a login code to a new `<prefix>-N@example.com` with `bearer` as the call's token. */
function bearerSender(client: grpc.Client, prefix: string): (bearer: string) => Promise<{ state: DeliveryState }> {
  let sent = 0;
  return (bearer) => {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${bearer}`);
    return grpcUnary(client, sendOtp, { recipient: `${prefix}-${++sent}@example.com`, purpose: Purpose.LOGIN }, { metadata });
  };
}

afterEach(killServiceProcesses);

describe("npm start with nothing configured", () => {
  it("runs the development mode: memory store, capture sink, .eml files, copy-paste examples", async () => {
    const outbox = await mkdtemp(join(tmpdir(), "otp-outbox-"));
    const port = await freePort();
    const service = startServiceProcess({ GRPC_ADDR: `127.0.0.1:${port}`, OUTBOX_DIR: outbox });
    try {
      const banner = await service.waitForLine((line) => /DEVELOPMENT MODE/.test(String(line["msg"])));
      expect(String(banner["try_grpcurl"])).toContain(`grpcurl -plaintext`);
      expect(String(banner["try_buf_curl"])).toContain(`buf curl --protocol grpc --http2-prior-knowledge`);
      // Authentication is off: a header would only puzzle.
      expect(`${String(banner["try_grpcurl"])} ${String(banner["try_buf_curl"])}`).not.toContain("authorization");
      await service.waitForLine((line) => line["msg"] === "otp-email listening");

      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      try {
        const sent = await grpcUnary(client, sendOtp, { recipient: "dev@example.com", purpose: Purpose.LOGIN });
        expect(sent.state).toBe(DeliveryState.ACCEPTED);
        // Development mode shows the code in the capture log line (there is no inbox).
        const captured = await service.waitForLine((line) => line["captured"] === true);
        const code = /(\d{6})/.exec(String(captured["subject"]))?.[1] ?? "";
        expect(code).toMatch(/^\d{6}$/);
        expect(captured["to"]).toEqual(["d***@example.com"]);

        const files = await readdir(outbox);
        expect(files.filter((file) => file.endsWith(".eml"))).toHaveLength(1);
        const eml = await readFile(join(outbox, files[0] ?? ""), "utf8");
        expect(eml).toMatch(/^Auto-Submitted: auto-generated/m);

        const verified = await grpcUnary(client, verifyOtp, { recipient: "dev@example.com", purpose: Purpose.LOGIN, code });
        expect(verified.result).toBe(VerifyResult.VERIFIED);

        // The capture sink takes DSN requests as a relay would, so the record tells the whole story (a bounce fed
        // to the development intake is one asked for) and the log has no warning about the developer's own sink.
        const status = await grpcUnary(client, getDeliveryStatus, { messageId: sent.messageId });
        expect(status.relayReply?.dsnRequested).toBe(true);
        expect(status.explanation).toContain("A delivery status notification (DSN) was requested");
        expect(service.lines.filter((line) => line["level"] !== "info" && /DSN/.test(String(line["msg"])))).toEqual([]);
      } finally {
        client.close();
      }
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await rm(outbox, { recursive: true, force: true });
    }
  });

  it("with AUTH_TOKENS and TLS, the banner's commands name the token and the CA as placeholders, never the token, and work once they are filled in", async () => {
    const dir = await mkdtemp(join(tmpdir(), "otp-process-banner-"));
    const token = "banner-test-token-that-must-never-be-logged";
    try {
      const { cert, key } = makeSelfSigned();
      await writeFile(join(dir, "cert.pem"), cert);
      await writeFile(join(dir, "key.pem"), key);
      const port = await freePort();
      const service = startServiceProcess({
        GRPC_ADDR: `127.0.0.1:${port}`,
        METRICS_ADDR: "off",
        BOUNCE_SMTP_ADDR: "off",
        OUTBOX_DIR: dir,
        AUTH_TOKENS: `banner:${createHash("sha256").update(token).digest("hex")}`,
        TLS_CERT: join(dir, "cert.pem"),
        TLS_KEY: join(dir, "key.pem"),
      });
      const banner = await service.waitForLine((line) => /DEVELOPMENT MODE/.test(String(line["msg"])));
      const [grpcurl, bufCurl] = [String(banner["try_grpcurl"]), String(banner["try_buf_curl"])];
      for (const command of [grpcurl, bufCurl]) expect(command).toContain(`-H 'authorization: Bearer <your token>'`);
      expect(grpcurl).toMatch(/^grpcurl -cacert '<ca\.pem>' /);
      expect(bufCurl).toContain(`--cacert '<ca.pem>'`);
      expect(bufCurl).toContain(`https://127.0.0.1:${port}/`);
      await service.waitForLine((line) => line["msg"] === "otp-email listening");

      // As a developer would: the placeholders replaced, the rest run by a shell as printed.
      const filled = bufCurl
        .replace(/^npx buf /, `${fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url))} `)
        .replace("<your token>", token)
        .replace("<ca.pem>", join(dir, "cert.pem"));
      const { stdout } = await promisify(execFile)("sh", ["-c", filled], { timeout: 20_000 });
      expect(JSON.parse(stdout)).toMatchObject({ state: "DELIVERY_STATE_ACCEPTED" });
      expect(JSON.stringify(service.lines)).not.toContain(token);
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  // A second `npm start` on the same machine, or an address set by hand that another process holds.
  it.each(["GRPC_ADDR", "METRICS_ADDR", "BOUNCE_SMTP_ADDR"])(
    "a %s whose port is taken stops the start with one line naming the variable, the address and what to do (exit 1)",
    async (variable) => {
      const taken = createNetServer();
      await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
      const address = `127.0.0.1:${(taken.address() as AddressInfo).port}`;
      const outbox = await mkdtemp(join(tmpdir(), "otp-taken-"));
      try {
        const service = startServiceProcess({
          NODE_ENV: "test",
          OUTBOX_DIR: outbox,
          GRPC_ADDR: `127.0.0.1:${await freePort()}`,
          METRICS_ADDR: "off",
          BOUNCE_SMTP_ADDR: "off",
          [variable]: address,
        });
        expect(await service.exited).toBe(1);
        // The one line on stderr: grpc-js's own "E No address added out of total 1 resolved" went to the JSON log.
        expect(service.stderr.join("")).toBe(
          `otp-email: failed to start: ${variable}=${address}: the port is taken (another otp-email, or npm start already running?): ` +
            `stop that, or set ${variable} to a free port\n`,
        );
      } finally {
        taken.close();
        await rm(outbox, { recursive: true, force: true });
      }
    },
  );

  it("grpc-js's own diagnostics an operator asks for (GRPC_VERBOSITY=DEBUG, GRPC_TRACE) are JSON log lines at the default LOG_LEVEL", async () => {
    const outbox = await mkdtemp(join(tmpdir(), "otp-grpc-trace-"));
    try {
      const service = startServiceProcess({
        NODE_ENV: "test",
        OUTBOX_DIR: outbox,
        GRPC_ADDR: `127.0.0.1:${await freePort()}`,
        METRICS_ADDR: "off",
        BOUNCE_SMTP_ADDR: "off",
        GRPC_VERBOSITY: "DEBUG",
        GRPC_TRACE: "server",
      });
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const traced = await service.waitForLine((line) => line["component"] === "grpc-js" && line["grpc_severity"] === "debug");
      expect(traced["level"]).toBe("info");
      expect(String(traced["msg"])).toContain("| server |");
      // Nothing of grpc-js on stderr: it all went to the log.
      expect(service.stderr.join("")).not.toMatch(/\| server \|/);
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await rm(outbox, { recursive: true, force: true });
    }
  });

  it("refuses to start in production without its required settings, naming the variable", async () => {
    const service = startServiceProcess({ NODE_ENV: "production" });
    expect(await service.exited).toBe(78);
    expect(service.stderr.join("")).toMatch(/REDIS_URL: required when NODE_ENV=production/);
  });

  it("refuses an OTP_SECRET_PREVIOUS equal to OTP_SECRET with exit 78, naming the variable and quoting neither", async () => {
    const secret = "process-test-rotation-secret-0123456789abcdef";
    const service = startServiceProcess({ NODE_ENV: "test", OTP_SECRET: secret, OTP_SECRET_PREVIOUS: secret, OTP_SECRET_ROTATED_AT: "2026-01-01T00:00:00Z" });
    expect(await service.exited).toBe(78);
    expect(service.stderr.join("")).toMatch(/configuration error: OTP_SECRET_PREVIOUS: must differ from OTP_SECRET/);
    expect(service.stderr.join("")).not.toContain(secret);
  });

  it("refuses a REDIS_TLS_CA that is not a PEM certificate with exit 78, naming the variable", async () => {
    const service = startServiceProcess({ NODE_ENV: "test", REDIS_URL: "rediss://127.0.0.1:6380", REDIS_TLS_CA: "/etc/hostname" });
    expect(await service.exited).toBe(78);
    expect(service.stderr.join("")).toMatch(/configuration error: REDIS_TLS_CA: not a usable PEM certificate/);
  });

  it("refuses a TEMPLATES_DIR it cannot use and a DEFAULT_LOCALE without templates with exit 78, naming the variable", async () => {
    const missing = startServiceProcess({ NODE_ENV: "test", TEMPLATES_DIR: "/nonexistent/templates" });
    expect(await missing.exited).toBe(78);
    expect(missing.stderr.join("")).toMatch(/configuration error: TEMPLATES_DIR: templates folder \/nonexistent\/templates cannot be read/);
    const dir = await mkdtemp(join(tmpdir(), "otp-templates-"));
    try {
      await writeFile(join(dir, "login.ja.txt"), "no code here");
      const broken = startServiceProcess({ NODE_ENV: "test", TEMPLATES_DIR: dir });
      expect(await broken.exited).toBe(78);
      expect(broken.stderr.join("")).toMatch(/configuration error: TEMPLATES_DIR: .*login\.ja\.txt: must contain \{\{code\}\}/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const locale = startServiceProcess({ NODE_ENV: "test", DEFAULT_LOCALE: "fr" });
    expect(await locale.exited).toBe(78);
    expect(locale.stderr.join("")).toMatch(/configuration error: DEFAULT_LOCALE=fr: no login template/);
  });

  it("starts with a TEMPLATES_DIR locale that has some purposes only, and says which go out in DEFAULT_LOCALE", async () => {
    const dir = await mkdtemp(join(tmpdir(), "otp-templates-"));
    try {
      await writeFile(join(dir, "login.ja.subject.txt"), "{{product}} ログインコード: {{code}}\n");
      await writeFile(join(dir, "login.ja.txt"), "ログインコード: {{code}}\n");
      await writeFile(join(dir, "login.ja.html"), "<p>{{code}}</p>\n");
      const service = startServiceProcess({ NODE_ENV: "test", GRPC_ADDR: "127.0.0.1:0", METRICS_ADDR: "off", TEMPLATES_DIR: dir });
      const warning = await service.waitForLine((line) => line["locale"] === "ja");
      expect(warning).toMatchObject({ level: "warn", missing_purposes: ["signup", "password_reset"], default_locale: "en" });
      expect(String(warning["msg"])).toBe("TEMPLATES_DIR: no signup, password_reset template for locale ja: such mail in ja goes out in en");
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses an Ed25519 DKIM key with exit 78 and one line naming the variable: the service signs rsa-sha256 only", async () => {
    const ed25519 = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const service = startServiceProcess({
      NODE_ENV: "test",
      GRPC_ADDR: "127.0.0.1:0",
      METRICS_ADDR: "off",
      MAIL_FROM: '"Acme" <no-reply@acme.example>',
      DKIM_SELECTOR: "s1",
      DKIM_PRIVATE_KEY: ed25519,
    });
    expect(await service.exited).toBe(78);
    expect(service.stderr.join("")).toBe(
      "otp-email: configuration error: DKIM_PRIVATE_KEY: must be an RSA key of at least 1024 bits " +
        "(2048 recommended: openssl genrsa -out dkim.pem 2048), not ed25519; the service signs rsa-sha256 only\n",
    );
  });

  it("refuses to start when the bounce intake's TLS key does not belong to its certificate: 78, naming the variable, showing no key", async () => {
    const dir = await mkdtemp(join(tmpdir(), "otp-process-tls-"));
    try {
      const intake = makeSelfSigned();
      const stranger = makeSelfSigned();
      await writeFile(join(dir, "cert.pem"), intake.cert);
      await writeFile(join(dir, "key.pem"), stranger.key);
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: "127.0.0.1:0",
        METRICS_ADDR: "off",
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        BOUNCE_TLS_CERT: join(dir, "cert.pem"),
        BOUNCE_TLS_KEY: join(dir, "key.pem"),
      });
      expect(await service.exited).toBe(78);
      const stderr = service.stderr.join("");
      expect(stderr).toMatch(/^otp-email: configuration error: BOUNCE_TLS_KEY: does not match BOUNCE_TLS_CERT/);
      for (const line of stranger.key.split("\n").filter((l) => l.length > 20 && !l.startsWith("-----"))) expect(stderr).not.toContain(line);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("SIGHUP", () => {
  it("re-reads the certificate files: new TLS connections to the gRPC port and the intake's STARTTLS get the new certificate, calls succeed, the process goes on", async () => {
    const workshop = await openCertificateWorkshop();
    const dir = await mkdtemp(join(tmpdir(), "otp-process-sighup-"));
    try {
      const [oldCa, newCa] = [await workshop.newCa("SIGHUP test old CA"), await workshop.newCa("SIGHUP test new CA")];
      const issue = (ca: CertificateAuthority) => ca.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1,DNS:localhost", server: true });
      const [before, after] = [await issue(oldCa), await issue(newCa)];
      const file = (name: string) => join(dir, name);
      for (const [name, pem] of [["cert.pem", before.cert], ["key.pem", before.key]]) await writeFile(file(name), pem);
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: "127.0.0.1:0",
        METRICS_ADDR: "off",
        OUTBOX_DIR: dir,
        BOUNCE_SMTP_ADDR: "127.0.0.1:0",
        TLS_CERT: file("cert.pem"),
        TLS_KEY: file("key.pem"),
        BOUNCE_TLS_CERT: file("cert.pem"),
        BOUNCE_TLS_KEY: file("key.pem"),
        // No poll: only the signal reads the files again.
        TLS_RELOAD_INTERVAL: "off",
      });
      const listening = await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const grpcPort = Number(String(listening["grpc"]).split(":").at(-1));
      const intake = await service.waitForLine((line) => line["msg"] === "bounce intake listening");
      const intakePort = Number(String(intake["address"]).split(":").at(-1));
      expect((await presentedByTls(grpcPort)).fingerprint256).toBe(fingerprintOf(before.cert));

      // Renewed the way cert-manager does it: new files renamed over the old ones.
      for (const [name, pem] of [["cert.pem", after.cert], ["key.pem", after.key]]) {
        await writeFile(file(`.${name}.new`), pem);
        await rename(file(`.${name}.new`), file(name));
      }
      // Without the signal (and with no poll) nothing changes.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect((await presentedByTls(grpcPort)).fingerprint256).toBe(fingerprintOf(before.cert));

      service.child.kill("SIGHUP");
      await service.waitForLine((line) => line["certificate"] === "grpc" && /reloaded/.test(String(line["msg"])));
      await service.waitForLine((line) => line["certificate"] === "bounce_intake" && /reloaded/.test(String(line["msg"])));
      expect(await presentedByTls(grpcPort, { ca: newCa.cert })).toEqual({ fingerprint256: fingerprintOf(after.cert), authorized: true });
      expect(await presentedAfterStarttls(intakePort, { ca: newCa.cert })).toEqual({ fingerprint256: fingerprintOf(after.cert), authorized: true });

      // A call over a new connection that trusts only the new CA.
      const client = new GrpcOtpClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createSsl(Buffer.from(newCa.cert)), {
        "grpc.ssl_target_name_override": "localhost",
      });
      try {
        const sent = await grpcUnary(client, sendOtp, { recipient: "renewed@example.com", purpose: Purpose.LOGIN });
        expect(sent.state).toBe(DeliveryState.ACCEPTED);
      } finally {
        client.close();
      }
      expect(service.child.exitCode).toBeNull();
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
      await workshop.cleanup();
    }
  });
});

describe("SIGHUP and the AUTH_TOKENS file", () => {
  it("re-reads the token file: a removed token is refused, an added one works, on the same connection", async () => {
    const dir = await mkdtemp(join(tmpdir(), "otp-process-sighup-tokens-"));
    const [alpha, beta] = [newToken("alpha"), newToken("beta")];
    const path = join(dir, "tokens");
    await writeFile(path, `${alpha.entry}\n`);
    const service = startServiceProcess({
      NODE_ENV: "test",
      GRPC_ADDR: "127.0.0.1:0",
      METRICS_ADDR: "off",
      OUTBOX_DIR: dir,
      AUTH_TOKENS: path,
      // No poll: only the signal reads the file again.
      TLS_RELOAD_INTERVAL: "off",
    });
    let channel: grpc.Client | undefined;
    try {
      const listening = await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const port = Number(String(listening["grpc"]).split(":").at(-1));
      const opened = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      channel = opened;
      const send = bearerSender(opened, "tokens");
      expect((await send(alpha.value)).state).toBe(DeliveryState.ACCEPTED);

      await writeFile(join(dir, ".tokens.new"), `${beta.entry}\n`);
      await rename(join(dir, ".tokens.new"), path);
      service.child.kill("SIGHUP");
      await service.waitForLine((line) => line["component"] === "auth_tokens" && /reloaded/.test(String(line["msg"])));
      await expect(send(alpha.value)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      expect((await send(beta.value)).state).toBe(DeliveryState.ACCEPTED);
      expect(service.child.exitCode).toBeNull();
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      channel?.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("SIGHUP, the AUTH_TOKENS file and CALLER_PURPOSES", () => {
  it("a file dropping a caller CALLER_PURPOSES names is applied with a warning and counted on /metrics; a restart with it stops at start-up (exit 78), naming the caller", async () => {
    const dir = await mkdtemp(join(tmpdir(), "otp-process-sighup-purposes-"));
    const [alpha, beta] = [newToken("alpha"), newToken("beta")];
    const path = join(dir, "tokens");
    await writeFile(path, `${alpha.entry}\n${beta.entry}\n`);
    const env = {
      NODE_ENV: "test",
      GRPC_ADDR: "127.0.0.1:0",
      METRICS_ADDR: "127.0.0.1:0",
      BOUNCE_SMTP_ADDR: "off",
      OUTBOX_DIR: dir,
      AUTH_TOKENS: path,
      CALLER_PURPOSES: "beta:login",
      TLS_RELOAD_INTERVAL: "off",
    };
    const service = startServiceProcess(env);
    let channel: grpc.Client | undefined;
    try {
      const listening = await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const port = Number(String(listening["grpc"]).split(":").at(-1));
      const metricsAt = String((await service.waitForLine((line) => line["msg"] === "metrics listening"))["address"]);
      /** otp_auth_tokens_unlisted_purpose_callers as Prometheus scrapes it. */
      const unlisted = async () => {
        const body = await (await fetch(`http://${metricsAt}/metrics`)).text();
        return /^otp_auth_tokens_unlisted_purpose_callers\{variable="AUTH_TOKENS"\} (\S+)$/m.exec(body)?.[1];
      };
      expect(await unlisted()).toBe("0");
      const opened = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      channel = opened;
      const send = bearerSender(opened, "purposes");
      expect((await send(beta.value)).state).toBe(DeliveryState.ACCEPTED);

      await writeFile(join(dir, ".tokens.new"), `${alpha.entry}\n`);
      await rename(join(dir, ".tokens.new"), path);
      service.child.kill("SIGHUP");
      const reloaded = await service.waitForLine((line) => line["component"] === "auth_tokens" && /reloaded/.test(String(line["msg"])));
      expect(reloaded).toMatchObject({ level: "warn", unlisted_purpose_callers: ["beta"] });
      expect(String(reloaded["msg"])).toMatch(/CALLER_PURPOSES names beta, .* A restart with this file stops at start-up \(exit 78\)/);
      await expect(send(beta.value)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      expect((await send(alpha.value)).state).toBe(DeliveryState.ACCEPTED);
      // What OtpCallerPurposesNamesUnlistedCaller fires on, before the restart below proves it right.
      expect(await unlisted()).toBe("1");
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);

      // What the warning said: the same file and CALLER_PURPOSES stop the next start.
      const restarted = startServiceProcess(env);
      expect(await restarted.exited).toBe(78);
      expect(restarted.stderr.join("")).toMatch(/configuration error: CALLER_PURPOSES: beta is not a caller of AUTH_TOKENS/);
      const output = [...service.stderr, ...restarted.stderr, ...[...service.lines, ...restarted.lines].map((line) => JSON.stringify(line))].join("\n");
      for (const secret of [alpha.value, alpha.hash, beta.value, beta.hash]) expect(output).not.toContain(secret);
    } finally {
      channel?.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("SIGHUP and TEMPLATES_DIR", () => {
  it("re-reads the folder: once it held still for the settle, the next mail uses the changed template, and each part answers in the log", async () => {
    const sink = await startSmtpSink();
    const dir = await mkdtemp(join(tmpdir(), "otp-process-templates-"));
    const port = await freePort();
    const login = (version: string): [string, string][] => [
      ["login.ja.subject.txt", `${version} ログイン {{code}}`],
      ["login.ja.txt", `${version} {{code}}`],
      ["login.ja.html", `<p>${version} {{code}}</p>`],
    ];
    try {
      for (const [name, content] of login("before")) await writeFile(join(dir, name), content);
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${port}`,
        METRICS_ADDR: "off",
        SMTP_URL: sink.url,
        TEMPLATES_DIR: dir,
        // No poll: only the signal reads the folder again.
        TEMPLATES_RELOAD_INTERVAL: "off",
        LIMIT_RESEND_COOLDOWN: "0",
      });
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      try {
        const subject = async (): Promise<string> => {
          const before = sink.messages.length;
          await grpcUnary(client, sendOtp, { recipient: "templates@example.com", purpose: Purpose.LOGIN, locale: "ja" });
          return (await sink.waitForMessages(before + 1)).at(-1)?.parsed.subject ?? "";
        };
        expect(await subject()).toMatch(/^before ログイン \d{6}$/);
        for (const [name, content] of login("after")) {
          await writeFile(join(dir, `.${name}.new`), content);
          await rename(join(dir, `.${name}.new`), join(dir, name));
        }
        service.child.kill("SIGHUP");
        await service.waitForLine((line) => line["component"] === "templates" && /^TEMPLATES_DIR reloaded/.test(String(line["msg"])));
        // The certificates answered too: there are none to read.
        await service.waitForLine((line) => /^no certificate file to read again/.test(String(line["msg"])));
        expect(await subject()).toMatch(/^after ログイン \d{6}$/);
      } finally {
        client.close();
      }
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    } finally {
      await sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("SIGHUP during start-up", () => {
  it("is not dropped: once start-up ends, the certificate files are read again and new connections get the renewed certificate", async () => {
    // A relay that never greets holds start-up in its first check for SMTP_GREETING_TIMEOUT, while the gRPC port
    // already serves TLS with the files read at start.
    const silent = createNetServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const relayPort = (silent.address() as AddressInfo).port;
    const workshop = await openCertificateWorkshop();
    const dir = await mkdtemp(join(tmpdir(), "otp-process-sighup-start-"));
    try {
      const ca = await workshop.newCa("SIGHUP start-up test CA");
      const issue = () => ca.issue({ cn: "127.0.0.1", san: "IP:127.0.0.1,DNS:localhost", server: true });
      const [before, after] = [await issue(), await issue()];
      const file = (name: string) => join(dir, name);
      for (const [name, pem] of [["cert.pem", before.cert], ["key.pem", before.key]]) await writeFile(file(name), pem);
      const port = await freePort();
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${port}`,
        METRICS_ADDR: "off",
        OUTBOX_DIR: dir,
        SMTP_URL: `smtp://127.0.0.1:${relayPort}?starttls=off`,
        SMTP_GREETING_TIMEOUT: "3s",
        TLS_CERT: file("cert.pem"),
        TLS_KEY: file("key.pem"),
        TLS_RELOAD_INTERVAL: "off",
      });
      try {
        await vi.waitFor(async () => expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(before.cert)), { timeout: 10_000, interval: 100 });
        expect(service.lines.some((line) => line["msg"] === "otp-email listening")).toBe(false);
        for (const [name, pem] of [["cert.pem", after.cert], ["key.pem", after.key]]) {
          await writeFile(file(`.${name}.new`), pem);
          await rename(file(`.${name}.new`), file(name));
        }
        service.child.kill("SIGHUP");
        await service.waitForLine((line) => /SIGHUP during start-up/.test(String(line["msg"])));
        await service.waitForLine((line) => line["msg"] === "otp-email listening");
        await service.waitForLine((line) => line["certificate"] === "grpc" && /reloaded/.test(String(line["msg"])));
        expect((await presentedByTls(port)).fingerprint256).toBe(fingerprintOf(after.cert));
        expect(service.child.exitCode).toBeNull();
      } finally {
        service.child.kill("SIGTERM");
        expect(await service.exited).toBe(0);
      }
    } finally {
      await new Promise((resolve) => silent.close(resolve));
      await rm(dir, { recursive: true, force: true });
      await workshop.cleanup();
    }
  });
});

describe("SIGTERM", () => {
  it("lets a slow send finish, records its result and exits 0", async () => {
    const sink = await startSmtpSink();
    const prefix = randomPrefix();
    const secret = "process-test-secret-0123456789abcdef";
    const port = await freePort();
    try {
      sink.respondWith(behave.accept({ delayMs: 1500 }));
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${port}`,
        REDIS_URL: redisUrlForTests(),
        REDIS_PREFIX: prefix,
        SMTP_URL: sink.url,
        OTP_SECRET: secret,
        SEND_WAIT_BUDGET: "200ms",
        SHUTDOWN_GRACE: "10s",
      });
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const sent = await grpcUnary(client, sendOtp, { recipient: "slow@example.com", purpose: Purpose.LOGIN });
      client.close();
      // The wait budget ran out while the relay was still thinking.
      expect(sent.state).toBe(DeliveryState.SENDING);

      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
      expect(sink.messages).toHaveLength(1);

      const store = createRedisStore({ url: redisUrlForTests(), prefix, logger: createLogger({ level: "silent" }) });
      try {
        const record = await store.getRecord(sent.messageId);
        expect(record?.state).toBe("ACCEPTED");
        expect(record?.relayReply?.queueId).toBe(sink.messages[0]?.queueId);
      } finally {
        await store.close();
      }
      expect(service.lines.some((line) => /shutting down/.test(String(line["msg"])))).toBe(true);
    } finally {
      await sink.close();
    }
  });

  it("exits 0 within SHUTDOWN_GRACE when the relay never answers a send, recording that the answer is unknown", async () => {
    const sink = await startSmtpSink();
    const prefix = randomPrefix();
    const port = await freePort();
    try {
      // The relay takes the message and never replies: only the 30 s socket timeout would end the send.
      sink.respondWith(behave.stall());
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${port}`,
        REDIS_URL: redisUrlForTests(),
        REDIS_PREFIX: prefix,
        SMTP_URL: sink.url,
        OTP_SECRET: "process-test-secret-0123456789abcdef",
        SEND_WAIT_BUDGET: "200ms",
        SMTP_SOCKET_TIMEOUT: "30s",
        SHUTDOWN_GRACE: "1s",
      });
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const sent = await grpcUnary(client, sendOtp, { recipient: "stalled@example.com", purpose: Purpose.LOGIN });
      client.close();
      expect(sent.state).toBe(DeliveryState.SENDING);

      const signalled = Date.now();
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
      // The grace period, the final record write and closing: seconds, not the relay's socket timeout.
      expect(Date.now() - signalled).toBeLessThan(8000);

      const store = createRedisStore({ url: redisUrlForTests(), prefix, logger: createLogger({ level: "silent" }) });
      try {
        const record = await store.getRecord(sent.messageId);
        expect(record?.state).toBe("FAILED");
        expect(record?.failureReason).toMatch(/the sender stopped while attempt 1 was in progress/);
      } finally {
        await store.close();
      }
    } finally {
      await sink.close();
    }
  });
  it("during start-up, while the relay's first check waits for a greeting that never comes: calls already taken still finish, exit 0, no wait for the check", async () => {
    // A relay that takes the connection and never says a word: the start-up
    // check would wait out SMTP_GREETING_TIMEOUT (20 s here) before start-up ends.
    const silent = createNetServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const relayPort = (silent.address() as AddressInfo).port;
    const prefix = randomPrefix();
    const port = await freePort();
    try {
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${port}`,
        REDIS_URL: redisUrlForTests(),
        REDIS_PREFIX: prefix,
        SMTP_URL: `smtp://127.0.0.1:${relayPort}?starttls=off`,
        SMTP_GREETING_TIMEOUT: "20s",
        OTP_SECRET: "process-test-secret-0123456789abcdef",
        SEND_WAIT_BUDGET: "200ms",
        SHUTDOWN_GRACE: "1s",
      });
      // The gRPC port takes calls before start-up has finished.
      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      await new Promise<void>((resolve, reject) =>
        client.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve())),
      );
      const sent = await grpcUnary(client, sendOtp, { recipient: "early@example.com", purpose: Purpose.LOGIN });
      client.close();
      expect(sent.state).toBe(DeliveryState.SENDING);
      expect(service.lines.some((line) => line["msg"] === "otp-email listening")).toBe(false);

      const signalled = Date.now();
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
      // The grace period and closing, not the 20 s greeting timeout.
      expect(Date.now() - signalled).toBeLessThan(8000);
      expect(service.lines.some((line) => /shutting down during start-up/.test(String(line["msg"])))).toBe(true);
      expect(service.lines.some((line) => line["msg"] === "stopped")).toBe(true);

      const store = createRedisStore({ url: redisUrlForTests(), prefix, logger: createLogger({ level: "silent" }) });
      try {
        // The send was under way, not lost: its record says the sender stopped mid-attempt.
        const record = await store.getRecord(sent.messageId);
        expect(record?.state).toBe("FAILED");
        expect(record?.failureReason).toMatch(/the sender stopped/);
      } finally {
        await store.close();
      }
    } finally {
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});

describe("a second signal during shutdown", () => {
  it("a moment after the first: exits at once with status 1, saying so, the send in flight left SENDING", async () => {
    const sink = await startSmtpSink();
    const prefix = randomPrefix();
    const port = await freePort();
    try {
      sink.respondWith(behave.stall());
      const service = startServiceProcess({
        NODE_ENV: "test",
        GRPC_ADDR: `127.0.0.1:${port}`,
        METRICS_ADDR: "off",
        REDIS_URL: redisUrlForTests(),
        REDIS_PREFIX: prefix,
        SMTP_URL: sink.url,
        OTP_SECRET: "process-test-secret-0123456789abcdef",
        SEND_WAIT_BUDGET: "200ms",
        SHUTDOWN_GRACE: "20s",
      });
      await service.waitForLine((line) => line["msg"] === "otp-email listening");
      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const sent = await grpcUnary(client, sendOtp, { recipient: "impatient@example.com", purpose: Purpose.LOGIN });
      client.close();
      expect(sent.state).toBe(DeliveryState.SENDING);

      service.child.kill("SIGINT");
      await service.waitForLine((line) => /shutting down/.test(String(line["msg"])));
      await new Promise((resolve) => setTimeout(resolve, 1500));
      service.child.kill("SIGINT");
      expect(await service.exited).toBe(1);
      expect(service.lines.some((line) => line["msg"] === "second signal: exiting now")).toBe(true);
      const store = createRedisStore({ url: redisUrlForTests(), prefix, logger: createLogger({ level: "silent" }) });
      try {
        expect((await store.getRecord(sent.messageId))?.state).toBe("SENDING");
      } finally {
        await store.close();
      }
    } finally {
      await sink.close();
    }
  });
});

/**
 * `npm start` in a process group of its own, as a terminal runs a foreground command: Ctrl-C is SIGINT to the
 * whole group (npm, its shell when it keeps one, the service), and npm also passes it on to its child. With
 * bash as npm's script shell (Fedora's, macOS's /bin/sh) the child is the service itself, which then gets
 * the one Ctrl-C twice.
 */
function startNpm(env: Record<string, string>, scriptShell: string) {
  const child = spawn("npm", ["start"], {
    cwd: fileURLToPath(new URL("../..", import.meta.url)),
    env: {
      PATH: process.env["PATH"] ?? "",
      HOME: process.env["HOME"] ?? tmpdir(),
      npm_config_update_notifier: "false",
      npm_config_script_shell: scriptShell,
      ...env,
    },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const group = child.pid ?? 0;
  const { lines, stderr: stderrText, exited } = followOutput(child);
  npmGroups.add(group);
  return {
    lines,
    exited,
    stderr: stderrText,
    /** Ctrl-C in the terminal: SIGINT to every process of the group. */
    ctrlC: () => process.kill(-group, "SIGINT"),
    /** Whether any process of the group (npm, its shell, the service) still runs. */
    groupAlive: () => {
      try {
        process.kill(-group, 0);
        return true;
      } catch {
        return false;
      }
    },
    waitForLine: (predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
      vi.waitFor(
        () => {
          const found = lines.find(predicate);
          if (found === undefined) throw new Error(`no such log line yet; stderr: ${stderrText()}`);
          return found;
        },
        { timeout: timeoutMs, interval: 20 },
      ),
  };
}

/** Process groups of `npm start` runs, killed whole after each test. */
const npmGroups = new Set<number>();
afterEach(() => {
  for (const group of npmGroups) {
    try {
      process.kill(-group, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  npmGroups.clear();
});

describe("Ctrl-C on npm start", () => {
  for (const scriptShell of ["sh", "bash"]) {
    it(`(script shell ${scriptShell}) drains: the slow send finishes and is recorded, the service says so, and npm returns only once the service has exited`, async () => {
      const sink = await startSmtpSink();
      const prefix = randomPrefix();
      const port = await freePort();
      try {
        sink.respondWith(behave.accept({ delayMs: 1500 }));
        const npm = startNpm(
          {
            NODE_ENV: "test",
            GRPC_ADDR: `127.0.0.1:${port}`,
            METRICS_ADDR: "off",
            REDIS_URL: redisUrlForTests(),
            REDIS_PREFIX: prefix,
            SMTP_URL: sink.url,
            OTP_SECRET: "process-test-secret-0123456789abcdef",
            SEND_WAIT_BUDGET: "200ms",
            SHUTDOWN_GRACE: "10s",
          },
          scriptShell,
        );
        await npm.waitForLine((line) => line["msg"] === "otp-email listening");
        const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
        const sent = await grpcUnary(client, sendOtp, { recipient: "ctrl-c@example.com", purpose: Purpose.LOGIN });
        client.close();
        expect(sent.state).toBe(DeliveryState.SENDING);

        npm.ctrlC();
        await npm.exited;
        // The prompt comes back with nothing left running: the service exited before npm did.
        expect(npm.groupAlive()).toBe(false);
        // One Ctrl-C is one stop, however many copies of it arrive: the send finished and was recorded.
        expect(npm.lines.some((line) => line["msg"] === "second signal: exiting now")).toBe(false);
        expect(npm.lines.some((line) => line["msg"] === "stopped")).toBe(true);
        expect(sink.messages).toHaveLength(1);
        const store = createRedisStore({ url: redisUrlForTests(), prefix, logger: createLogger({ level: "silent" }) });
        try {
          expect((await store.getRecord(sent.messageId))?.state).toBe("ACCEPTED");
        } finally {
          await store.close();
        }
        // The terminal says what is going on and how to stop at once.
        const shutdown = npm.lines.find((line) => /^shutting down: finishing in-flight sends/.test(String(line["msg"])));
        expect(shutdown).toMatchObject({ signal: "SIGINT" });
        expect(String(shutdown?.["msg"])).toMatch(/Ctrl-C again, exits at once/);
      } finally {
        await sink.close();
      }
    });
  }

  it("a second Ctrl-C stops the service at once, saying so, and npm returns with it", async () => {
    const sink = await startSmtpSink();
    const port = await freePort();
    try {
      sink.respondWith(behave.stall());
      const npm = startNpm(
        {
          NODE_ENV: "test",
          GRPC_ADDR: `127.0.0.1:${port}`,
          METRICS_ADDR: "off",
          REDIS_URL: redisUrlForTests(),
          REDIS_PREFIX: randomPrefix(),
          SMTP_URL: sink.url,
          OTP_SECRET: "process-test-secret-0123456789abcdef",
          SEND_WAIT_BUDGET: "200ms",
          SHUTDOWN_GRACE: "60s",
        },
        "bash",
      );
      await npm.waitForLine((line) => line["msg"] === "otp-email listening");
      const client = new GrpcOtpClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const sent = await grpcUnary(client, sendOtp, { recipient: "impatient@example.com", purpose: Purpose.LOGIN });
      client.close();
      expect(sent.state).toBe(DeliveryState.SENDING);

      npm.ctrlC();
      await npm.waitForLine((line) => /^shutting down/.test(String(line["msg"])));
      // Still draining (the relay never answers, the grace is a minute) a moment later.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(npm.groupAlive()).toBe(true);
      npm.ctrlC();
      const exit = await npm.exited;
      expect(exit.code === 0 && exit.signal === null).toBe(false);
      expect(npm.groupAlive()).toBe(false);
      expect(npm.lines.some((line) => line["msg"] === "second signal: exiting now")).toBe(true);
      expect(npm.lines.some((line) => line["msg"] === "stopped")).toBe(false);
    } finally {
      await sink.close();
    }
  });
});

describe("SIGHUP while the service's modules are still loading", () => {
  it("does not end the process (SIGHUP's default): start-up goes on and reads the certificate files once started", async () => {
    const port = await freePort();
    // As `npm start` and the image run it: the tracing bootstrap first; then a hook that holds app.js's loading.
    const child = spawn(process.execPath, ["--import", "./dist/src/telemetry/bootstrap.js", "--import", slowAppModule, "dist/src/main.js"], {
      cwd: fileURLToPath(new URL("../..", import.meta.url)),
      env: { PATH: process.env["PATH"] ?? "", NODE_ENV: "test", GRPC_ADDR: `127.0.0.1:${port}`, METRICS_ADDR: "off", BOUNCE_SMTP_ADDR: "off" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const { lines, stderr: stderrText, exited } = followOutput(child);
    try {
      await vi.waitFor(() => expect(stderrText()).toContain("loading app.js"), { timeout: 10_000, interval: 10 });
      child.kill("SIGHUP");
      await vi.waitFor(
        () => {
          expect(child.signalCode).toBeNull();
          expect(lines.some((line) => line["msg"] === "otp-email listening")).toBe(true);
        },
        { timeout: 15_000, interval: 50 },
      );
      expect(lines.some((line) => /SIGHUP during start-up/.test(String(line["msg"])))).toBe(true);
      await vi.waitFor(() => expect(lines.some((line) => line["msg"] === "SIGHUP: reading the certificate files, the AUTH_TOKENS file and TEMPLATES_DIR again")).toBe(true));
      child.kill("SIGTERM");
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  });
});

/** A child's JSON log lines (stdout) as they come, its stderr so far, and its exit. */
function followOutput(child: { stdout: NodeJS.ReadableStream; stderr: NodeJS.ReadableStream; on(event: "exit", listener: (code: number | null, signal: NodeJS.Signals | null) => void): unknown }): {
  lines: Record<string, unknown>[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
} {
  const lines: Record<string, unknown>[] = [];
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString("utf8");
    const complete = stdout.split("\n");
    stdout = complete.pop() ?? "";
    for (const line of complete) if (line.startsWith("{")) lines.push(JSON.parse(line) as Record<string, unknown>);
  });
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  return { lines, stderr: () => stderr, exited };
}
