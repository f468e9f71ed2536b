/**
 * What the operator commands that read the service's Redis from a process of
 * their own share (`npm run suppression`, `npm run deliveries`): the store
 * opened from the service's configuration with its warnings kept for the
 * error message, an operator's account of why Redis did not answer, the
 * operator's name for the audit line, and output hygiene.
 */
import { userInfo } from "node:os";
import type { Config } from "../config.js";
import type { OtpError } from "../errors.js";
import { createLogger } from "../logger.js";
import { defaultSentinelPort } from "./redis-sentinel.js";
import { createRedisStore } from "./redis-store.js";
import type { OtpStore } from "./types.js";

/** A store for one command, and the warnings it logged (for `unavailableReason`). */
export interface OperatorStore {
  readonly store: OtpStore;
  readonly storeLines: readonly Record<string, unknown>[];
}

/**
 * Opens the service's Redis as the service does (prefix, cluster or sentinel, TLS CA,
 * command timeout), waiting at most one command timeout to connect. Its
 * warnings are kept rather than printed as they come ("retrying" is the
 * service's story, not a command's).
 */
export function openOperatorStore(redis: NonNullable<Config["redis"]>): OperatorStore {
  const storeLines: Record<string, unknown>[] = [];
  const storeLogger = createLogger({
    level: "warn",
    destination: { write: (line: string) => void storeLines.push(JSON.parse(line) as Record<string, unknown>) },
  });
  const store = createRedisStore({
    url: redis.url,
    prefix: redis.prefix,
    logger: storeLogger,
    commandTimeoutMs: redis.commandTimeoutMs,
    connectTimeoutMs: redis.commandTimeoutMs,
    cluster: redis.cluster,
    // A command's moment needs no watch for failovers (a READONLY reply still moves it to the new master).
    sentinel: redis.sentinel === undefined ? undefined : { ...redis.sentinel, watchFailovers: false },
    tlsCa: redis.tlsCa,
  });
  return { store, storeLines };
}

/**
 * The Redis a command tried, without credentials, to start "... did not
 * answer": `Redis at host:port` for each REDIS_URL entry, or with Sentinel
 * `the Redis master of <set> (sentinels host:port, ...)`.
 */
export function redisWhere(redis: Pick<NonNullable<Config["redis"]>, "url" | "sentinel">): string {
  const defaultPort = redis.sentinel === undefined ? "6379" : String(defaultSentinelPort);
  const hosts = redis.url
    .split(",")
    .map((seed) => {
      try {
        const parsed = new URL(seed.trim());
        return `${parsed.hostname}:${parsed.port === "" ? defaultPort : parsed.port}`;
      } catch {
        return "?";
      }
    })
    .join(", ");
  return redis.sentinel === undefined ? `Redis at ${hosts}` : `the Redis master of ${redis.sentinel.master} (sentinels ${hosts})`;
}

/** Drops what a terminal would interpret (control and format characters) from stored text before printing it. */
export function printable(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, "?");
}

/** Who ran the command, for the audit line (the OS account; unknown in a container without one). */
export function operatorAccount(): string {
  try {
    return userInfo().username;
  } catch {
    return "unknown";
  }
}

/**
 * Why Redis did not answer, in an operator's words: the store's own warnings
 * (ECONNREFUSED, an untrusted certificate...) say more than the failed
 * command, which with nothing queued while disconnected only says it could
 * not be written.
 */
export function unavailableReason(error: OtpError, storeLines: readonly Record<string, unknown>[], commandTimeoutMs: number): string {
  // ioredis' words for "not connected" and "no reply in time", which the store also logs for the failed command.
  const notConnected = /isn't writeable|Connection is closed/i;
  const timedOut = /timed out/i;
  const reasons = new Set<string>();
  for (const line of storeLines) {
    const message = typeof line["msg"] === "string" ? line["msg"] : "";
    if (message.startsWith("redis TLS:")) reasons.add(message.replace(/; retrying$/, ""));
    const err = line["err"] as { message?: unknown } | undefined;
    if (typeof err?.message === "string" && err.message !== "" && !notConnected.test(err.message) && !timedOut.test(err.message)) {
      reasons.add(err.message);
    }
  }
  const cause = error.cause instanceof Error ? error.cause.message : "";
  if (timedOut.test(cause)) reasons.add(`no reply within REDIS_COMMAND_TIMEOUT (${commandTimeoutMs} ms)`);
  else if (/Cluster isn't ready/i.test(cause)) {
    // A cluster client that reached no node: ioredis keeps the nodes' own errors (ECONNREFUSED...) to itself.
    if (reasons.size === 0) reasons.add("no node of the Redis Cluster could be reached (REDIS_URL's seed nodes)");
  }
  else if (notConnected.test(cause)) {
    if (reasons.size === 0) reasons.add(`not connected within REDIS_COMMAND_TIMEOUT (${commandTimeoutMs} ms)`);
  } else if (cause !== "") reasons.add(cause);
  return reasons.size === 0 ? "storage unavailable" : [...reasons].join("; ");
}

/**
 * Whether a command that failed as unavailable never left this process: ioredis
 * queues nothing while it is not connected (standalone or cluster), so such a
 * command cannot have run; one that was sent and got no reply may have.
 */
export function neverSent(error: OtpError): boolean {
  return error.cause instanceof Error && /isn't writeable|Cluster isn't ready/i.test(error.cause.message);
}

/**
 * Exits once everything written is flushed. Not left to the event loop: a
 * socket to a Redis that hangs can outlive the store's close by seconds, and
 * the command is done.
 */
export function finishCommand(code: number): void {
  process.exitCode = code;
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}
