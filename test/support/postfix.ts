/**
 * A real Postfix relay for tests: a private instance with its own
 * config_directory, queue_directory, data_directory and maillog_file under a
 * fresh temporary folder, an smtpd on a free loopback port, and nothing
 * shared with the system's Postfix or with another test file's instance.
 *
 *   const relay = await startPostfix({
 *     smtpPort: await freePort(),
 *     localDomain: "local.test",                  // accepts any user, then bounces unknown ones (5.1.1)
 *     routes: { "bounces.acme.test": intakePort, "gmail.test": fakeMxPort },
 *     tls: { caCert, encrypt: ["bounces.acme.test"] }, // optional: only over TLS to these routes
 *   });
 *   ... send through smtp://127.0.0.1:<smtpPort>?starttls=off ...
 *   await relay.stop();
 *
 * Postfix must be installed (Debian package `postfix`) and the tests must run
 * as root (Postfix's master starts as root and drops privileges). Anything
 * missing fails with a how-to, never a skip. `postfix start` prints nothing
 * without a terminal, so start-up is judged by the maillog and the port.
 */
import { execFile, execFileSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

const run = promisify(execFile);

const postfixBinary = ["/usr/sbin/postfix", "/usr/local/sbin/postfix"].find((path) => existsSync(path));

const installHelp =
  "Postfix is not installed, and the bounce tests need a real Postfix relay. Install it without the interactive " +
  "setup (this is what .ci/run does):\n" +
  "  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections\n" +
  "  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix\n" +
  "No system configuration is needed: each test file runs a private instance.";

export interface PostfixOptions {
  /** Loopback port for the instance's smtpd (see freePort). */
  readonly smtpPort: number;
  /**
   * A domain Postfix treats as local (mydestination) with no recipient
   * check: it accepts any user at SMTP time, then bounces unknown ones with
   * 5.1.1, as a relay does for a mailbox that does not exist.
   */
  readonly localDomain: string;
  /** Domains whose mail goes to `smtp:[127.0.0.1]:<port>` (the bounce intake, fake MX hosts). */
  readonly routes: Readonly<Record<string, number>>;
  /** delay_warning_time: after how long a deferred message earns a DELAY DSN (default 1s). */
  readonly delayWarningTime?: string;
  /**
   * TLS to some routes: mail to the `encrypt` domains goes only over TLS
   * (`smtp_tls_security_level = encrypt` for their next hop; never in
   * clear), with `caCert` (PEM) trusted, so the maillog says `Trusted TLS
   * connection established` when the server's chain verifies. Other routes
   * stay plaintext.
   */
  readonly tls?: { readonly caCert: string; readonly encrypt: readonly string[] };
}

export interface PostfixRelay {
  /** smtp://127.0.0.1:<port>?starttls=off, for SMTP_URL. */
  readonly url: string;
  readonly port: number;
  /** The instance's folder (config, queue, data, maillog). */
  readonly dir: string;
  /** The maillog so far. */
  maillog(): string;
  /** Stops the instance and removes its folder (idempotent). */
  stop(): Promise<void>;
}

/** Instances still running, stopped if the test process exits without stop(). */
const running = new Map<string, string>();
process.once("exit", () => {
  for (const configDir of running.values()) {
    try {
      execFileSync(postfixBinary ?? "postfix", ["-c", configDir, "abort"], { stdio: "ignore", timeout: 5000 });
    } catch {
      // Best effort: the process is exiting anyway.
    }
  }
});

export async function startPostfix(options: PostfixOptions): Promise<PostfixRelay> {
  if (postfixBinary === undefined) throw new Error(installHelp);
  if (process.getuid?.() !== 0) {
    throw new Error("Postfix's master must start as root; run the bounce tests as root (CI does, in its container).");
  }
  const owner = postfixUser();
  const dir = mkdtempSync(join(tmpdir(), "otp-postfix-"));
  // mkdtemp makes it 0700; Postfix's daemons run as the postfix user and must reach their folders.
  chmodSync(dir, 0o755);
  const configDir = join(dir, "conf");
  const queueDir = join(dir, "queue");
  const dataDir = join(dir, "data");
  const maillog = join(dir, "maillog");
  for (const path of [configDir, queueDir, dataDir]) mkdirSync(path, { mode: 0o755 });
  chownSync(dataDir, owner.uid, owner.gid);

  const tlsSettings: string[] = [];
  if (options.tls !== undefined) {
    const policy = options.tls.encrypt.map((domain) => {
      const port = options.routes[domain];
      if (port === undefined) throw new Error(`startPostfix: tls.encrypt names ${domain}, which is not in routes`);
      // The policy table is looked up by the transport's next hop.
      return `[127.0.0.1]:${port} encrypt\n`;
    });
    writeFileSync(join(configDir, "tls-ca.pem"), options.tls.caCert);
    writeFileSync(join(configDir, "tls_policy"), policy.join(""));
    tlsSettings.push(
      `smtp_tls_CAfile = ${join(configDir, "tls-ca.pem")}`,
      `smtp_tls_policy_maps = texthash:${join(configDir, "tls_policy")}`,
      // Logs "Trusted/Untrusted TLS connection established to ..." per connection.
      "smtp_tls_loglevel = 1",
    );
  }
  const transport = Object.entries(options.routes)
    .map(([domain, port]) => `${domain}=smtp:[127.0.0.1]:${port}`)
    .join(", ");
  writeFileSync(
    join(configDir, "main.cf"),
    [
      "compatibility_level = 3.6",
      `config_directory = ${configDir}`,
      `queue_directory = ${queueDir}`,
      `data_directory = ${dataDir}`,
      // Where postfix-files and dynamicmaps.cf live: the package's.
      "meta_directory = /etc/postfix",
      `maillog_file = ${maillog}`,
      `maillog_file_prefixes = ${dir}`,
      "myhostname = relay.postfix.test",
      "mydomain = postfix.test",
      "myorigin = $mydomain",
      "inet_interfaces = 127.0.0.1",
      "inet_protocols = ipv4",
      "mynetworks = 127.0.0.0/8",
      `mydestination = ${options.localDomain}`,
      // Accept any local user at RCPT; local(8) bounces unknown ones with 5.1.1.
      "local_recipient_maps =",
      "alias_maps =",
      "alias_database =",
      `transport_maps = inline:{ ${transport} }`,
      "smtp_dns_support_level = disabled",
      "smtputf8_enable = no",
      "biff = no",
      // Postmaster notices would be local mail to a user that does not exist.
      "notify_classes =",
      // Retry deferred mail (and send the DELAY notice) within seconds, not minutes.
      "queue_run_delay = 1s",
      "minimal_backoff_time = 1s",
      "maximal_backoff_time = 2s",
      `delay_warning_time = ${options.delayWarningTime ?? "1s"}`,
      "smtp_connect_timeout = 5s",
      ...tlsSettings,
      "",
    ].join("\n"),
  );
  // No chroot anywhere: a private queue directory holds no copy of /etc.
  writeFileSync(
    join(configDir, "master.cf"),
    [
      `127.0.0.1:${options.smtpPort} inet n - n - - smtpd`,
      "pickup     unix  n - n 60 1 pickup",
      "cleanup    unix  n - n -  0 cleanup",
      "qmgr       unix  n - n 300 1 qmgr",
      "rewrite    unix  - - n -  - trivial-rewrite",
      "bounce     unix  - - n -  0 bounce",
      "defer      unix  - - n -  0 bounce",
      "trace      unix  - - n -  0 bounce",
      "verify     unix  - - n -  1 verify",
      "flush      unix  n - n 1000? 0 flush",
      "proxymap   unix  - - n -  - proxymap",
      "proxywrite unix  - - n -  1 proxymap",
      "smtp       unix  - - n -  - smtp",
      "relay      unix  - - n -  - smtp",
      "showq      unix  n - n -  - showq",
      "error      unix  - - n -  - error",
      "retry      unix  - - n -  - error",
      "discard    unix  - - n -  - discard",
      "local      unix  - n n -  - local",
      "anvil      unix  - - n -  1 anvil",
      "scache     unix  - - n -  1 scache",
      "postlog    unix-dgram n - n - 1 postlogd",
      // The smtp client's TLS session cache and entropy; without it "our TLS engine is unavailable".
      "tlsmgr     unix  - - n 1000? 1 tlsmgr",
      "",
    ].join("\n"),
  );

  const log = (): string => (existsSync(maillog) ? readFileSync(maillog, "utf8") : "");
  const fail = async (why: string): Promise<never> => {
    // Without a terminal Postfix writes its complaints to syslog only; `script` lends it one.
    const check = await run("script", ["-qec", `${postfixBinary} -c ${configDir} check`, "/dev/null"]).then(
      (result) => result.stdout,
      (error: { stdout?: string; message?: string }) => error.stdout ?? error.message ?? "",
    );
    await run(postfixBinary, ["-c", configDir, "abort"]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`Postfix did not start: ${why}\n--- postfix check ---\n${check}\n--- maillog ---\n${log()}`);
  };

  try {
    await run(postfixBinary, ["-c", configDir, "start"], { timeout: 30_000 });
  } catch (error) {
    return fail(`\`postfix -c ${configDir} start\` failed (${(error as Error).message})`);
  }
  running.set(dir, configDir);
  if (!(await listening(options.smtpPort, 15_000))) {
    running.delete(dir);
    return fail(`nothing listens on 127.0.0.1:${options.smtpPort} after 15 s`);
  }

  let stopping: Promise<void> | undefined;
  return {
    url: `smtp://127.0.0.1:${options.smtpPort}?starttls=off`,
    port: options.smtpPort,
    dir,
    maillog: log,
    stop() {
      stopping ??= (async () => {
        const pid = masterPid(queueDir);
        await run(postfixBinary, ["-c", configDir, "stop"], { timeout: 30_000 }).catch(() => undefined);
        // `stop` returns before the master is gone; its sockets live in our folder.
        const deadline = Date.now() + 10_000;
        while (pid !== undefined && alive(pid) && Date.now() < deadline) await sleep(50);
        if (pid !== undefined && alive(pid)) await run(postfixBinary, ["-c", configDir, "abort"]).catch(() => undefined);
        running.delete(dir);
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopping;
    },
  };
}

function postfixUser(): { uid: number; gid: number } {
  try {
    const uid = Number(execFileSync("id", ["-u", "postfix"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postfix"], { encoding: "utf8" }).trim());
    return { uid, gid };
  } catch {
    throw new Error(`the postfix user does not exist: is the Debian package installed?\n${installHelp}`);
  }
}

async function listening(port: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return true;
    await sleep(100);
  }
  return false;
}

function masterPid(queueDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(queueDir, "pid", "master.pid"), "utf8").trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Running, and not a zombie waiting for a parent that may never reap it (container init). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}
