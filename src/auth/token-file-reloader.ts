/**
 * AUTH_TOKENS given as a file (a Kubernetes Secret mounted as a file,
 * updated in place): a caller added or a leaked token removed takes effect
 * without a restart.
 *
 * The file is read again every TLS_RELOAD_INTERVAL (the certificates'
 * cadence) and on SIGHUP (`reload`). When it changed, its text is checked
 * as at start-up (the same parser, see config.ts `parseTokenCallers`) and,
 * once it settled (below):
 * - applied: the list is swapped at once, so the next call is judged by it,
 *   on connections already open too (a token is checked on every call);
 * - refused: the list in use stays, and an error names AUTH_TOKENS, the
 *   line and the reason. Log lines name callers and lines, never a hash.
 * Each change is counted once in otp_auth_tokens_reloads_total, and
 * otp_auth_tokens_last_reload_successful is 0 while a refused file sits on
 * disk (a restart would fail on it).
 *
 * One start-up check is no refusal here: a file that no longer lists a
 * caller CALLER_PURPOSES names. At start-up that is a typo to stop on; at a
 * reload it is an operator cutting a caller off, perhaps a compromised one,
 * and refusing it would keep that caller in. So it is applied, and the log
 * line warns that CALLER_PURPOSES still names the caller, which stops the
 * next start-up (exit 78) until it is removed there. A log line is easily
 * missed, and a rolling update or an evicted pod then never comes back, so
 * otp_auth_tokens_unlisted_purpose_callers counts those callers while the
 * list in use lacks them (OtpCallerPurposesNamesUnlistedCaller).
 *
 * A file written in place (an editor, `cat > file`, a tool that does not
 * rename) can be read half-written, and cut at a line boundary it is still a
 * valid, shorter list: applied, it would refuse the callers of the missing
 * lines until the next poll. So a changed file is acted on only once it
 * reads the same twice, `settleMs` apart: applied if it passes the checks,
 * refused if not.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { Logger } from "../logger.js";
import { createSettler, startReloadLoop, type Settle } from "../reload-loop.js";
import type { Metrics } from "../telemetry/metrics.js";
import { unreadableReason } from "../tls/certificate-set.js";
import type { TokenCaller } from "./caller-identity.js";

export interface TokenFileReloaderOptions {
  /** The file AUTH_TOKENS names. */
  readonly path: string;
  /** Its text as read at start-up, and the list made of it. */
  readonly text: string;
  readonly tokens: readonly TokenCaller[];
  /**
   * The start-up checks: the file's list, or a thrown error whose message says why not (never a hash). The callers
   * of CALLER_PURPOSES it lacks are returned rather than thrown: such a file is applied, with a warning.
   */
  readonly parse: (text: string) => { readonly tokens: readonly TokenCaller[]; readonly unlistedPurposeCallers: readonly string[] };
  /** How often the file is read; undefined: only on `reload` (SIGHUP). */
  readonly intervalMs: number | undefined;
  /** How long a changed file must read the same before it is applied or refused (default 2 s). */
  readonly settleMs?: number | undefined;
  readonly metrics: Pick<Metrics, "authTokensReloads" | "authTokensLastReloadSuccessful" | "authTokensUnlistedPurposeCallers">;
  readonly logger: Logger;
}

export interface TokenFileReloader {
  /** The list calls are judged by now. */
  tokens(): readonly TokenCaller[];
  /**
   * Reads the file now (what SIGHUP does) and answers in the log whatever the
   * outcome. Resolves once a change, if any, is applied, refused or waiting to
   * settle; never rejects.
   */
  reload(): Promise<void>;
  /** Stops the poll and any pending re-read. */
  stop(): void;
}

/** The one series of otp_auth_tokens_last_reload_successful and otp_auth_tokens_unlisted_purpose_callers. */
const series = { variable: "AUTH_TOKENS" };

const defaultSettleMs = 2000;

/** Starts watching the token file (and says so in the log). */
export function startTokenFileReloader(options: TokenFileReloaderOptions): TokenFileReloader {
  const { path, parse, intervalMs, metrics } = options;
  const logger = options.logger.child({ component: "auth_tokens" });
  const settleMs = options.settleMs ?? defaultSettleMs;
  let inUse = options.tokens;
  // Start-up refuses a list that lacks one, so the first list lacks none.
  let unlistedInUse: readonly string[] = [];
  let servedDigest = digestOf({ text: options.text });
  let refused: { digest: string; reason: string } | undefined;

  metrics.authTokensReloads.labels("applied").inc(0);
  metrics.authTokensReloads.labels("refused").inc(0);
  metrics.authTokensLastReloadSuccessful.set(series, 1);
  metrics.authTokensUnlistedPurposeCallers.set(series, unlistedInUse.length);
  logger.info(
    { file: path, interval_ms: intervalMs ?? null },
    intervalMs === undefined
      ? `AUTH_TOKENS file ${path} is re-read on SIGHUP only (TLS_RELOAD_INTERVAL=off)`
      : `AUTH_TOKENS file ${path} is re-read every ${intervalMs / 1000} s and on SIGHUP: token changes apply without a restart`,
  );

  const loop = startReloadLoop({
    intervalMs,
    poll: () => check(undefined, false),
    onError: (error) => logger.error({ err: error }, "reading the AUTH_TOKENS file failed unexpectedly"),
  });
  /** A changed file read once, read again after `settleMs` before it is applied or refused. */
  const settler = createSettler({ settleMs, loop, reread: (settle) => check(settle, false) });

  /**
   * Reads the file; `confirming`: the settle whose re-read this is (it confirms only if no other change
   * replaced it meanwhile); `requested`: an operator asked (SIGHUP), so the outcome is logged even when
   * nothing changed.
   */
  async function check(confirming: Settle | undefined, requested: boolean): Promise<void> {
    let read: { text: string } | { error: unknown };
    try {
      read = { text: await readFile(path, "utf8") };
    } catch (error) {
      read = { error };
    }
    const digest = digestOf(read);
    if (digest === servedDigest) {
      settler.stop();
      if (refused !== undefined) {
        refused = undefined;
        metrics.authTokensLastReloadSuccessful.set(series, 1);
        logger.info({ file: path }, `AUTH_TOKENS file ${path} holds the list in use again`);
      } else if (requested) {
        logger[unlistedInUse.length > 0 ? "warn" : "info"](
          { file: path, callers: callersOf(inUse), tokens: inUse.length, ...unlistedFields(unlistedInUse) },
          `AUTH_TOKENS file ${path} unchanged: ${describe(inUse)}${unlistedWarning(unlistedInUse)}`,
        );
      }
      return;
    }
    if (digest === refused?.digest) {
      settler.stop();
      if (requested) {
        logger.warn({ file: path, reason: refused.reason }, `AUTH_TOKENS file ${path} still not applied: ${refused.reason}. Calls are judged by the list in use; fix the file`);
      }
      return;
    }

    let outcome: { next: readonly TokenCaller[]; unlisted: readonly string[] } | { reason: string };
    try {
      if ("error" in read) throw new Error(`AUTH_TOKENS: cannot read ${path}: ${unreadableReason(read.error)}`);
      const list = parse(read.text);
      outcome = { next: list.tokens, unlisted: list.unlistedPurposeCallers };
    } catch (error) {
      outcome = { reason: error instanceof Error ? error.message : String(error) };
    }

    if (!settler.confirms(confirming, digest)) {
      // Perhaps caught while being written: a valid prefix would refuse the callers of the lines still to come.
      logger[requested ? "info" : "debug"](
        { file: path, settle_ms: settleMs, ...("reason" in outcome ? { reason: outcome.reason } : {}) },
        "reason" in outcome
          ? `AUTH_TOKENS file ${path} changed but does not pass the checks (yet?): reading it again within ${settleMs / 1000} s before refusing it`
          : `AUTH_TOKENS file ${path} changed: reading it again within ${settleMs / 1000} s before applying it`,
      );
      if (!settler.settling(digest)) settler.settle(digest);
      return;
    }
    settler.stop();

    if ("reason" in outcome) {
      const { reason } = outcome;
      refused = { digest, reason };
      metrics.authTokensReloads.inc({ result: "refused" });
      metrics.authTokensLastReloadSuccessful.set(series, 0);
      logger.error(
        { file: path, reason },
        `AUTH_TOKENS file ${path} changed but was not applied: ${reason}. ` +
          "Calls are judged by the list in use; fix the file (the service would not start with it either)",
      );
      return;
    }
    const { next, unlisted } = outcome;
    const before = new Set(callersOf(inUse));
    const after = callersOf(next);
    inUse = next;
    unlistedInUse = unlisted;
    servedDigest = digest;
    refused = undefined;
    metrics.authTokensReloads.inc({ result: "applied" });
    // Applied, so 1 even when a restart would stop on CALLER_PURPOSES: 0 means "calls are judged by the previous
    // list", and OtpAuthTokensReloadRefused says so. The other story is told by the warning below and, for an
    // alert, by the unlisted count: a log line alone is often read only at the restart that fails.
    metrics.authTokensLastReloadSuccessful.set(series, 1);
    metrics.authTokensUnlistedPurposeCallers.set(series, unlisted.length);
    // One line, a warning when a caller CALLER_PURPOSES names is gone: the revocation and what it leaves to do.
    logger[unlisted.length > 0 ? "warn" : "info"](
      {
        file: path,
        callers: after,
        tokens: next.length,
        added_callers: after.filter((caller) => !before.has(caller)),
        removed_callers: [...before].filter((caller) => !after.includes(caller)),
        ...unlistedFields(unlisted),
      },
      `AUTH_TOKENS file ${path} reloaded: ${describe(next)}; the next call is judged by it${unlistedWarning(unlisted)}`,
    );
  }

  return {
    tokens: () => inUse,
    reload: () => loop.enqueue(() => check(undefined, true)),
    stop() {
      loop.stop();
      settler.stop();
    },
  };
}

/** The log field naming the callers of CALLER_PURPOSES the list lacks, only when there are some. */
function unlistedFields(unlisted: readonly string[]): { unlisted_purpose_callers?: readonly string[] } {
  return unlisted.length > 0 ? { unlisted_purpose_callers: unlisted } : {};
}

/** What a list lacking callers CALLER_PURPOSES names means now and at the next start-up ("" when it lacks none). */
function unlistedWarning(unlisted: readonly string[]): string {
  if (unlisted.length === 0) return "";
  const one = unlisted.length === 1;
  const names = one ? unlisted[0] : `${unlisted.slice(0, -1).join(", ")} and ${unlisted.at(-1)}`;
  return (
    `. CALLER_PURPOSES names ${names}, which the file no longer lists: ${one ? "its" : "their"} calls are refused (TOKEN_INVALID). ` +
    `A restart with this file stops at start-up (exit 78) while CALLER_PURPOSES names ${one ? "it" : "them"}: remove ${one ? "it" : "them"} there before the next restart`
  );
}

/** Each caller once, in the file's order. */
function callersOf(tokens: readonly TokenCaller[]): string[] {
  return [...new Set(tokens.map((token) => token.caller))];
}

function describe(tokens: readonly TokenCaller[]): string {
  const callers = callersOf(tokens);
  if (tokens.length === 0) return "no token caller";
  return `${tokens.length} token${tokens.length > 1 ? "s" : ""} of ${callers.length} caller${callers.length > 1 ? "s" : ""} (${callers.join(", ")})`;
}

/** The same file content (or the same read failure) gives the same digest. */
function digestOf(read: { text: string } | { error: unknown }): string {
  const text = "text" in read ? `=${read.text}` : `!${(read.error as NodeJS.ErrnoException | undefined)?.code ?? "error"}`;
  return createHash("sha256").update(text).digest("hex");
}
