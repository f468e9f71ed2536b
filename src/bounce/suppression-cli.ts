/**
 * `npm run suppression -- show|remove <address> [--json]`: what support needs
 * when a hard bounce (5.1.1...) suppressed a recipient who has since fixed
 * the mailbox, or was suppressed by a forged or mistaken report: see whether
 * and why SendOtp refuses an address, and lift it. Reads the service's own
 * configuration (REDIS_*, OTP_SECRET and, during a rotation,
 * OTP_SECRET_PREVIOUS / OTP_SECRET_ROTATED_AT) and keys the address exactly
 * as SendOtp does.
 *
 * Output never holds the address in clear (it is masked as the service's
 * logs mask it); `remove` writes an audit line (JSON, stderr).
 *
 * Exit status: 0 suppressed (show) or lifted (remove), 3 not suppressed
 * (nothing to lift), 2 usage or an address SendOtp would refuse, 69 Redis did
 * not answer, 78 (EX_CONFIG) configuration error, 1 anything else.
 */
import type { Config } from "../config.js";
import { suppressionReason, type SuppressionEntry } from "../delivery/record.js";
import { OtpError } from "../errors.js";
import { finishCommand, neverSent, operatorAccount, printable, redisWhere, unavailableReason } from "../store/operator-access.js";
import { openOperatorSession, operatorExit } from "./operator-session.js";
import type { KeyedSuppression } from "./suppression.js";

const usage = `usage: npm run --silent suppression -- show|remove <address> [--json]

show    whether SendOtp refuses <address> as suppressed (RECIPIENT_SUPPRESSED),
        and the hard bounce or spam complaint behind it: when, until when,
        status and diagnostic (or feedback type), the message concerned
remove  lifts that suppression (under OTP_SECRET and, during a rotation,
        OTP_SECRET_PREVIOUS), printing what it removed and writing an audit
        line to stderr

Uses the service's environment: REDIS_URL, REDIS_CLUSTER,
REDIS_SENTINEL_MASTER, REDIS_SENTINEL_USERNAME, REDIS_SENTINEL_PASSWORD,
REDIS_PREFIX, REDIS_TLS_CA, REDIS_COMMAND_TIMEOUT, OTP_SECRET,
OTP_SECRET_PREVIOUS, OTP_SECRET_ROTATED_AT. The address is checked and keyed as SendOtp does
(case does not matter; another +subaddress is another address).
Exit status: 0 suppressed / lifted, 3 not suppressed (nothing to lift),
2 usage or invalid address, 69 Redis did not answer, 78 configuration.
`;

const prefix = "otp-email suppression";

/** Exit statuses (sysexits.h where one fits). */
const exit = { ...operatorExit, notSuppressed: operatorExit.nothing } as const;

type Action = "show" | "remove";

interface Invocation {
  readonly action: Action;
  readonly address: string;
  readonly json: boolean;
}

/** What the command line asks for: an action, the usage, or a usage error's sentence. */
type Parsed = Invocation | { readonly help: true } | { readonly error: string };

/** Reads the arguments; `--` ends the options (an address may start with `-`). */
function parseArguments(argv: readonly string[]): Parsed {
  const positional: string[] = [];
  let json = false;
  let optionsEnded = false;
  for (const arg of argv) {
    if (optionsEnded || !arg.startsWith("-") || arg === "-") positional.push(arg);
    else if (arg === "--") optionsEnded = true;
    else if (arg === "--json") json = true;
    else if (arg === "--help" || arg === "-h") return { help: true };
    // Named only when it looks like an option: it may be an address (put those after `--`).
    else return { error: /^--?[a-z][a-z-]{0,19}$/.test(arg) ? `unknown option ${arg}` : "unknown option (an address that starts with - goes after --)" };
  }
  const [action, address, ...extra] = positional;
  if (action === undefined) return { error: "say show or remove, and the address" };
  if (action !== "show" && action !== "remove") return { error: "the first argument must be show or remove" };
  if (address === undefined) return { error: `${action}: the address is missing` };
  if (extra.length > 0) return { error: `${action}: one address at a time` };
  return { action, address, json };
}

/**
 * Why the configuration cannot reach the service's suppressions, beyond what
 * loadConfig checks: both are fine for the service (its development mode).
 */
function unreachableSuppressions(config: Config): string | undefined {
  if (config.redis === undefined) {
    return (
      "REDIS_URL is not set: without it the service keeps suppressions in the memory of the running service process " +
      "(the development store), which no other process can reach; restarting that process clears them. " +
      "Run this command with the service's REDIS_URL"
    );
  }
  if (config.otp.secretGenerated) {
    return (
      "OTP_SECRET is not set: without it the service keys suppressions with a random secret of its own process, " +
      "which this command cannot know. Run this command with the service's OTP_SECRET"
    );
  }
  return undefined;
}

const iso = (ms: number): string => new Date(ms).toISOString();
const secretName = (found: KeyedSuppression): string => (found.secret === "current" ? "OTP_SECRET" : "OTP_SECRET_PREVIOUS");

/** One suppression as --json prints it. */
function entryJson(found: KeyedSuppression) {
  const { entry } = found;
  return {
    keyedBy: secretName(found),
    reason: suppressionReason(entry),
    ...(entry.feedbackType === undefined ? {} : { feedbackType: entry.feedbackType }),
    messageId: entry.messageId,
    status: entry.status,
    diagnosticCode: entry.diagnosticCode,
    bouncedAt: iso(entry.bouncedAt),
    suppressedUntil: iso(entry.expiresAt),
  };
}

function renderShow(recipient: string, found: readonly KeyedSuppression[]): string {
  if (found.length === 0) return `${recipient} is not suppressed: SendOtp sends to it\n`;
  const until = Math.max(...found.map(({ entry }) => entry.expiresAt));
  const lines = [`${recipient} is suppressed until ${iso(until)}: SendOtp refuses it (RECIPIENT_SUPPRESSED)`];
  const field = (name: string, value: string): string => `  ${name.padEnd(12)}${value}`;
  for (const keyed of found) {
    const entry: SuppressionEntry = keyed.entry;
    if (suppressionReason(entry) === "complaint") {
      lines.push(
        field("keyed by", secretName(keyed)),
        field("reason", `spam complaint (feedback type ${printable(entry.feedbackType ?? "abuse")})`),
        field("complained", iso(entry.bouncedAt)),
        field("until", iso(entry.expiresAt)),
        field("message_id", printable(entry.messageId)),
      );
      continue;
    }
    lines.push(
      field("keyed by", secretName(keyed)),
      field("bounced at", iso(entry.bouncedAt)),
      field("until", iso(entry.expiresAt)),
      field("message_id", printable(entry.messageId)),
      field("status", printable(entry.status)),
      field("diagnostic", printable(entry.diagnosticCode) || "(none)"),
    );
  }
  return `${lines.join("\n")}\n`;
}

function renderRemove(recipient: string, removed: readonly KeyedSuppression[]): string {
  if (removed.length === 0) return `${recipient} was not suppressed: nothing to lift\n`;
  const lines = removed.map((keyed) =>
    suppressionReason(keyed.entry) === "complaint"
      ? `lifted the suppression of ${recipient} (keyed by ${secretName(keyed)}): spam complaint ` +
        `(feedback type ${printable(keyed.entry.feedbackType ?? "abuse")}) ${iso(keyed.entry.bouncedAt)}, ` +
        `message_id ${printable(keyed.entry.messageId)}, was until ${iso(keyed.entry.expiresAt)}`
      : `lifted the suppression of ${recipient} (keyed by ${secretName(keyed)}): bounced ${iso(keyed.entry.bouncedAt)}, ` +
        `message_id ${printable(keyed.entry.messageId)}, status ${printable(keyed.entry.status)}, was until ${iso(keyed.entry.expiresAt)}`,
  );
  lines.push(`SendOtp sends to ${recipient} again; a new hard bounce or abuse complaint suppresses it again.`);
  return `${lines.join("\n")}\n`;
}

/** What the audit line says about each suppression lifted: never the address, never the diagnostic. */
function auditEntries(removed: readonly KeyedSuppression[]) {
  return removed.map((keyed) => ({
    keyed_by: secretName(keyed),
    reason: suppressionReason(keyed.entry),
    message_id: keyed.entry.messageId,
    status: keyed.entry.status,
    bounced_at: iso(keyed.entry.bouncedAt),
    suppressed_until: iso(keyed.entry.expiresAt),
  }));
}

async function main(argv: readonly string[]): Promise<number> {
  const invocation = parseArguments(argv);
  if ("help" in invocation) {
    process.stdout.write(usage);
    return exit.done;
  }
  if ("error" in invocation) {
    process.stderr.write(`${prefix}: ${invocation.error}\n${usage}`);
    return exit.usage;
  }
  const session = openOperatorSession({ prefix, component: "suppression-cli", address: invocation.address, unreachable: unreachableSuppressions });
  if (typeof session === "number") return session;
  const { recipient, key, redis, audit, store, storeLines, suppression } = session;
  try {
    if (invocation.action === "show") {
      const found = await suppression.find(key);
      process.stdout.write(
        invocation.json
          ? `${JSON.stringify({ recipient, suppressed: found.length > 0, entries: found.map(entryJson) }, null, 2)}\n`
          : renderShow(recipient, found),
      );
      return found.length > 0 ? exit.done : exit.notSuppressed;
    }
    const removed = await suppression.lift(key);
    audit.info(
      { action: "remove", recipient, operator: operatorAccount(), removed: auditEntries(removed) },
      removed.length > 0 ? "suppression lifted" : "suppression not lifted: none in force",
    );
    process.stdout.write(
      invocation.json
        ? `${JSON.stringify({ recipient, lifted: removed.length > 0, removed: removed.map(entryJson) }, null, 2)}\n`
        : renderRemove(recipient, removed),
    );
    return removed.length > 0 ? exit.done : exit.notSuppressed;
  } catch (error) {
    if (!(error instanceof OtpError) || error.kind !== "unavailable") throw error;
    const reason = unavailableReason(error, storeLines, redis.commandTimeoutMs);
    let outcome = "";
    if (invocation.action === "remove") {
      // Never written to Redis (no connection, nothing queued): nothing changed. Sent without a reply: it may have run.
      const notSent = neverSent(error);
      const fields = { action: "remove", recipient, operator: operatorAccount(), reason };
      if (notSent) audit.warn(fields, "suppression not lifted: Redis did not answer");
      else audit.warn(fields, "suppression lift failed: Redis did not answer, outcome unknown");
      outcome = notSent ? "; nothing was lifted" : "; whether the suppression was lifted is unknown: run show once Redis answers";
    }
    process.stderr.write(`${prefix}: ${redisWhere(redis)} did not answer: ${reason}${outcome}\n`);
    return exit.unavailable;
  } finally {
    await store.close();
  }
}

main(process.argv.slice(2)).then(finishCommand, (error: unknown) => {
  process.stderr.write(`${prefix}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  finishCommand(exit.failed);
});
