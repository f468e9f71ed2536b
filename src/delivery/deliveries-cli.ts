/**
 * `npm run deliveries -- <address> [--json] [--limit N]`: what support needs
 * when a user says "I never got the code": the recent messages to an address,
 * newest first, each with its caller, purpose, state, the relay's reply or the
 * bounce, and the explanation GetDeliveryStatus gives; and whether SendOtp
 * refuses the address as suppressed now. Reads the service's own
 * configuration (REDIS_*, OTP_SECRET and, during a rotation,
 * OTP_SECRET_PREVIOUS / OTP_SECRET_ROTATED_AT) and keys the address exactly
 * as SendOtp does.
 *
 * Output never holds an address in clear, the one asked about included (it
 * is masked as the service's logs mask it): it ends up pasted into tickets.
 * Reading someone's delivery history is access to personal data, so every
 * lookup writes an audit line (JSON, stderr).
 *
 * Exit status: 0 listed, 3 nothing known for the address, 2 usage or an
 * address SendOtp would refuse, 69 Redis did not answer, 78 (EX_CONFIG)
 * configuration error, 1 anything else.
 */
import { openOperatorSession, operatorExit } from "../bounce/operator-session.js";
import type { KeyedSuppression } from "../bounce/suppression.js";
import { systemClock } from "../clock.js";
import type { Config } from "../config.js";
import { OtpError } from "../errors.js";
import { maskAddressesIn } from "../otp/address.js";
import { finishCommand, operatorAccount, printable, redisWhere, unavailableReason } from "../store/operator-access.js";
import { maxRecipientMessages } from "../store/types.js";
import { suppressionReason, type SuppressionEntry } from "./record.js";
import { createRecipientHistory, type RecipientHistory, type RecipientMessage } from "./recipient-history.js";
import { decisiveReport, reportStatus } from "./reports.js";

const defaultLimit = 10;

const usage = `usage: npm run --silent deliveries -- <address> [--json] [--limit N]

Lists the recent messages SendOtp sent (or refused) to <address>, newest
first: message_id, when, caller, purpose, state, the relay's reply or the
bounce's status and diagnostic, and the explanation GetDeliveryStatus gives;
and whether SendOtp refuses the address as suppressed now.

--limit N  at most N messages (1 to ${maxRecipientMessages}, default ${defaultLimit}); the service keeps the
           last ${maxRecipientMessages} per address, each for RECORD_RETENTION
--json     one JSON object instead of text

Every address in the output is masked, the one asked about too. Each lookup
writes an audit line to stderr.

Uses the service's environment: REDIS_URL, REDIS_CLUSTER,
REDIS_SENTINEL_MASTER, REDIS_SENTINEL_USERNAME, REDIS_SENTINEL_PASSWORD,
REDIS_PREFIX, REDIS_TLS_CA, REDIS_COMMAND_TIMEOUT, OTP_SECRET,
OTP_SECRET_PREVIOUS, OTP_SECRET_ROTATED_AT. The address is checked and keyed as SendOtp does
(case does not matter; another +subaddress is another address).
Exit status: 0 listed, 3 nothing known for the address, 2 usage or invalid
address, 69 Redis did not answer, 78 configuration.
`;

const prefix = "otp-email deliveries";

/** Exit statuses (sysexits.h where one fits). */
const exit = { ...operatorExit, nothingKnown: operatorExit.nothing } as const;

interface Invocation {
  readonly address: string;
  readonly json: boolean;
  readonly limit: number;
}

/** What the command line asks for: a lookup, the usage, or a usage error's sentence (never quoting an address). */
type Parsed = Invocation | { readonly help: true } | { readonly error: string };

/** Reads the arguments; `--` ends the options (an address may start with `-`). */
function parseArguments(argv: readonly string[]): Parsed {
  const positional: string[] = [];
  let json = false;
  let limit = defaultLimit;
  let optionsEnded = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (optionsEnded || !arg.startsWith("-") || arg === "-") positional.push(arg);
    else if (arg === "--") optionsEnded = true;
    else if (arg === "--json") json = true;
    else if (arg === "--help" || arg === "-h") return { help: true };
    else if (arg === "--limit" || arg.startsWith("--limit=")) {
      const value = arg === "--limit" ? argv[++i] : arg.slice("--limit=".length);
      if (value === undefined || !/^\d{1,3}$/.test(value) || Number(value) < 1 || Number(value) > maxRecipientMessages) {
        return { error: `--limit takes a whole number from 1 to ${maxRecipientMessages}` };
      }
      limit = Number(value);
    }
    // Named only when it looks like an option: it may be an address (put those after `--`).
    else return { error: /^--?[a-z][a-z-]{0,19}$/.test(arg) ? `unknown option ${arg}` : "unknown option (an address that starts with - goes after --)" };
  }
  const [address, ...extra] = positional;
  if (address === undefined) return { error: "the address is missing" };
  if (extra.length > 0) return { error: "one address at a time" };
  return { address, json, limit };
}

/**
 * Why the configuration cannot reach the service's records, beyond what
 * loadConfig checks: both are fine for the service (its development mode).
 */
function unreachableRecords(config: Config): string | undefined {
  if (config.redis === undefined) {
    return (
      "REDIS_URL is not set: without it the service keeps delivery records in the memory of the running service process " +
      "(the development store), which no other process can reach. Run this command with the service's REDIS_URL"
    );
  }
  if (config.otp.secretGenerated) {
    return (
      "OTP_SECRET is not set: without it the service keys each address's messages with a random secret of its own process, " +
      "which this command cannot know. Run this command with the service's OTP_SECRET"
    );
  }
  return undefined;
}

const iso = (ms: number): string => new Date(ms).toISOString();
const secretName = (keyedBy: "current" | "previous"): string => (keyedBy === "current" ? "OTP_SECRET" : "OTP_SECRET_PREVIOUS");

/** The relay's last word on a message: its 2xx reply, or the last attempt's reply or connection error. */
function relayWords(record: RecipientMessage["record"]): string {
  if (record.relayReply !== undefined) return record.relayReply.text;
  const last = record.attempts.at(-1);
  if (last === undefined) return "";
  if (last.replyCode === 0) return last.errorCode === "" ? last.replyText : `${last.errorCode}: ${last.replyText}`;
  return /^\d{3}\b/.test(last.replyText) ? last.replyText : `${last.replyCode} ${last.replyText}`;
}

/**
 * Stored text as printed. What came from outside (relay replies, DSNs) was
 * masked when stored, the recipient's bare local part included; any whole
 * address is masked again here, and what a terminal would interpret dropped.
 */
const clean = (text: string): string => printable(maskAddressesIn(text));

/** Everything printed about one message. */
function messageView(message: RecipientMessage) {
  const { record } = message;
  const report = decisiveReport(record.reports ?? []);
  const cause = record.suppressedBy;
  return {
    messageId: record.messageId,
    keyedBy: secretName(message.keyedBy),
    createdAt: iso(record.createdAt),
    caller: printable(record.caller),
    purpose: record.purpose,
    state: record.state,
    recipient: clean(record.recipientMasked),
    relayReply: clean(relayWords(record)),
    attempts: record.attempts.length,
    bounce:
      report === undefined
        ? null
        : {
            action: report.action,
            status: reportStatus(report),
            feedbackType: clean(report.feedbackType ?? ""),
            diagnosticCode: clean(report.diagnosticCode),
            remoteMta: clean(report.remoteMta),
            receivedAt: iso(report.receivedAt),
          },
    suppressedBy:
      cause === undefined
        ? null
        : {
            reason: suppressionReason(cause),
            messageId: cause.messageId,
            status: clean(cause.status),
            feedbackType: clean(cause.feedbackType ?? ""),
            diagnosticCode: clean(cause.diagnosticCode),
            bouncedAt: iso(cause.bouncedAt),
          },
    explanation: clean(message.explanation),
  };
}

/** "the hard bounce of <id> (status 5.1.1)" or "the spam complaint about <id> (feedback type abuse)". */
function suppressionCause(entry: Pick<SuppressionEntry, "reason" | "messageId" | "status" | "feedbackType">): string {
  return suppressionReason(entry) === "complaint"
    ? `the spam complaint about ${entry.messageId} (feedback type ${clean(entry.feedbackType ?? "") || "abuse"})`
    : `the hard bounce of ${entry.messageId} (status ${clean(entry.status)})`;
}

function suppressionView(found: KeyedSuppression) {
  return {
    keyedBy: secretName(found.secret),
    reason: suppressionReason(found.entry),
    feedbackType: clean(found.entry.feedbackType ?? ""),
    messageId: found.entry.messageId,
    status: clean(found.entry.status),
    diagnosticCode: clean(found.entry.diagnosticCode),
    bouncedAt: iso(found.entry.bouncedAt),
    suppressedUntil: iso(found.entry.expiresAt),
  };
}

function renderText(recipient: string, history: RecipientHistory): string {
  const { messages, notShown, suppressions } = history;
  const lines: string[] = [];
  if (suppressions.length === 0) lines.push(`${recipient} is not suppressed: SendOtp sends to it`);
  else {
    const until = Math.max(...suppressions.map(({ entry }) => entry.expiresAt));
    lines.push(`${recipient} is suppressed until ${iso(until)}: SendOtp refuses it (RECIPIENT_SUPPRESSED)`);
    for (const found of suppressions) {
      const view = suppressionView(found);
      const cause =
        view.reason === "complaint"
          ? `  spam complaint about ${view.messageId} at ${view.bouncedAt}, feedback type ${view.feedbackType || "abuse"}`
          : `  hard bounce of ${view.messageId} at ${view.bouncedAt}, status ${view.status}` + `${view.diagnosticCode === "" ? "" : `: ${view.diagnosticCode}`}`;
      lines.push(`${cause} (keyed by ${view.keyedBy}; lift it with npm run suppression -- remove)`);
    }
  }
  if (messages.length === 0) {
    lines.push(`No message to ${recipient} on record (records are kept for RECORD_RETENTION).`);
  } else {
    const more = notShown === 0 ? "" : `; ${notShown} older not shown (--limit)`;
    lines.push(`${messages.length} message${messages.length === 1 ? "" : "s"} to ${recipient}, newest first${more}:`);
    const field = (name: string, value: string): string => `  ${name.padEnd(12)}${value}`;
    for (const message of messages) {
      const view = messageView(message);
      lines.push("", `${view.messageId}  ${view.createdAt}  ${view.state}`);
      lines.push(field("caller", view.caller), field("purpose", view.purpose));
      if (view.relayReply !== "") lines.push(field("relay reply", view.relayReply));
      if (view.bounce !== null) {
        const what = view.bounce.feedbackType === "" ? `${view.bounce.action} ${view.bounce.status}`.trim() : `${view.bounce.action} (${view.bounce.feedbackType})`;
        lines.push(field(view.bounce.feedbackType === "" ? "bounce" : "report", `${what} at ${view.bounce.receivedAt}`));
        if (view.bounce.diagnosticCode !== "") lines.push(field("diagnostic", view.bounce.diagnosticCode));
      }
      const cause = message.record.suppressedBy;
      if (cause !== undefined) lines.push(field("suppressed", `by ${suppressionCause(cause)}`));
      if (view.keyedBy !== "OTP_SECRET") lines.push(field("keyed by", view.keyedBy));
      lines.push(field("explanation", view.explanation));
    }
  }
  lines.push("", "Addresses are masked, as in the service's logs, the one asked about too.");
  return `${lines.join("\n")}\n`;
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
  const session = openOperatorSession({ prefix, component: "deliveries-cli", address: invocation.address, unreachable: unreachableRecords });
  if (typeof session === "number") return session;
  const { recipient, key, redis, audit, store, storeLines, suppression } = session;
  const history = createRecipientHistory({ store, suppression, clock: systemClock });

  try {
    const found = await history.lookup(key, invocation.limit);
    const known = found.messages.length > 0 || found.suppressions.length > 0;
    audit.info(
      {
        action: "lookup",
        recipient,
        operator: operatorAccount(),
        message_ids: found.messages.map(({ record }) => record.messageId),
        suppressed: found.suppressions.length > 0,
      },
      known ? "delivery history read" : "delivery history read: nothing known",
    );
    process.stdout.write(
      invocation.json
        ? `${JSON.stringify(
            {
              recipient,
              addressesMasked: true,
              suppressed: found.suppressions.length > 0,
              suppressions: found.suppressions.map((entry) => suppressionView(entry)),
              messages: found.messages.map((message) => messageView(message)),
              notShown: found.notShown,
            },
            null,
            2,
          )}\n`
        : renderText(recipient, found),
    );
    return known ? exit.done : exit.nothingKnown;
  } catch (error) {
    if (!(error instanceof OtpError) || error.kind !== "unavailable") throw error;
    const reason = unavailableReason(error, storeLines, redis.commandTimeoutMs);
    audit.warn({ action: "lookup", recipient, operator: operatorAccount(), reason }, "delivery history not read: Redis did not answer");
    process.stderr.write(`${prefix}: ${redisWhere(redis)} did not answer: ${reason}\n`);
    return exit.unavailable;
  } finally {
    await store.close();
  }
}

main(process.argv.slice(2)).then(finishCommand, (error: unknown) => {
  process.stderr.write(`${prefix}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  finishCommand(exit.failed);
});
