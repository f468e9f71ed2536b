/**
 * Why the sentinels gave this process no usable master, in an operator's
 * words, one answer per sentinel: each sentinel of REDIS_URL is asked on a
 * connection of its own for the master of the set, and the master it names
 * is then reached the way the client reaches it (REDIS_URL's credentials,
 * TLS) and asked its role.
 *
 * ioredis' own lookup keeps most of this to itself: a sentinel it could not
 * reach fails with "Connection is closed." (not ECONNREFUSED, a timeout or a
 * certificate), a named master it could not reach fails with an error that
 * names no sentinel, and a named master that answers as a replica is left
 * without a word. So the service's log (at start-up, and in an outage
 * after it connected), its /readyz and the operator commands (which read
 * that log line) all say what this finds.
 */
import { Redis, type RedisOptions } from "ioredis";
import { hostPort } from "../host-port.js";
import type { SentinelAddress } from "./redis-sentinel.js";

export interface SentinelDiagnosisOptions {
  /** REDIS_URL's sentinels. */
  readonly sentinels: readonly SentinelAddress[];
  /** REDIS_SENTINEL_MASTER. */
  readonly set: string;
  /** A connection to a sentinel: REDIS_SENTINEL_USERNAME / PASSWORD, TLS, connect and command timeouts. */
  readonly sentinelOptions: RedisOptions;
  /** A connection to a data node: REDIS_URL's user and password, TLS, connect and command timeouts. */
  readonly nodeOptions: RedisOptions;
  readonly wording: Wording;
}

/** What the sentinels were found to say; undefined from `diagnoseSentinels` when one names a master that answers as one. */
export interface SentinelDiagnosis {
  /** Whether some sentinel named a master (one that could not be used): no sentinel named one otherwise. */
  readonly named: boolean;
  /** `sentinel host:port: <why>`, one per sentinel, in REDIS_URL's order. */
  readonly reasons: readonly string[];
}

/**
 * Asks every sentinel at once, and each master they name once. Never
 * rejects; takes at most a connect timeout and a command timeout or two.
 */
export async function diagnoseSentinels(options: SentinelDiagnosisOptions): Promise<SentinelDiagnosis | undefined> {
  // Several sentinels most often name the same master: it is checked once.
  const checked = new Map<string, Promise<string | undefined>>();
  const checkMaster = (master: SentinelAddress): Promise<string | undefined> => {
    const key = where(master);
    let check = checked.get(key);
    if (check === undefined) {
      check = masterProblem(master, options);
      checked.set(key, check);
    }
    return check;
  };
  const answers = await Promise.all(
    options.sentinels.map(async (sentinel) => {
      const named = await masterNamedBy(sentinel, options);
      if (typeof named === "string") return { sentinel, named: undefined, problem: named };
      return { sentinel, named, problem: await checkMaster(named) };
    }),
  );
  if (answers.some(({ problem }) => problem === undefined)) return undefined;
  return {
    named: answers.some(({ named }) => named !== undefined),
    reasons: answers.map(({ sentinel, named, problem }) =>
      named === undefined ? `sentinel ${where(sentinel)}: ${problem ?? ""}` : `sentinel ${where(sentinel)}: names ${where(named)} as the master, which ${problem ?? ""}`,
    ),
  };
}

/** The master a sentinel names for the set, or why it named none. */
async function masterNamedBy(sentinel: SentinelAddress, options: SentinelDiagnosisOptions): Promise<SentinelAddress | string> {
  try {
    const reply = await ask({ ...options.sentinelOptions, host: sentinel.host, port: sentinel.port }, (client) =>
      client.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", options.set),
    );
    if (!Array.isArray(reply) || reply.length < 2) return options.wording.noSuchMaster();
    return { host: String(reply[0]), port: Number(reply[1]) };
  } catch (error) {
    return options.wording.sentinel(error);
  }
}

/** Why the master a sentinel named cannot be used, or undefined when it answers as a master. */
async function masterProblem(master: SentinelAddress, options: SentinelDiagnosisOptions): Promise<string | undefined> {
  try {
    const info = await ask({ ...options.nodeOptions, host: master.host, port: master.port }, (client) => client.info("replication"));
    // ioredis refuses such a node the same way: its INFO says its role.
    const role = /^role:(\w+)/m.exec(info)?.[1];
    return role === undefined || role === "master" ? undefined : options.wording.replica();
  } catch (error) {
    return options.wording.node(error);
  }
}

/**
 * Connects a client of its own (no retry, nothing resent), asks, and
 * disconnects. Rejects with the connection's own error (ECONNREFUSED, a
 * certificate, WRONGPASS in the handshake) rather than ioredis' "Connection
 * is closed.", or with the question's.
 */
async function ask<T>(options: RedisOptions, question: (client: Redis) => Promise<T>): Promise<T> {
  const client = new Redis({
    ...options,
    lazyConnect: true,
    enableReadyCheck: false,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  let connectionError: unknown;
  client.on("error", (error: unknown) => {
    connectionError ??= error;
  });
  try {
    await client.connect();
    return await question(client);
  } catch (error) {
    throw connectionError ?? error;
  } finally {
    client.disconnect();
  }
}

/** The sentences of a diagnosis (also those of the failover watch's warnings). */
export interface Wording {
  /** Why a sentinel named no master: it could not be reached, refused the credentials... */
  sentinel(error: unknown): string;
  /** A sentinel answered that it monitors no set of that name. */
  noSuchMaster(): string;
  /** Why the master a sentinel named cannot be used, to follow "names host:port as the master, which". */
  node(error: unknown): string;
  /** The same, for a named master that answers as a replica. */
  replica(): string;
}

export interface WordingOptions {
  readonly set: string;
  /** rediss:// URLs, and REDIS_TLS_CA: for what to check when a certificate does not verify. */
  readonly tls: boolean;
  readonly privateCa: boolean;
  /** REDIS_COMMAND_TIMEOUT, for a node that does not answer in time. */
  readonly commandTimeoutMs?: number | undefined;
}

/** Node's codes for a certificate that did not verify (chain, self-signed, name, dates). */
const certificateError = /CERT|SELF_SIGNED|UNABLE_TO_(VERIFY|GET_ISSUER)|ALTNAME/;

/**
 * What each failure means and what to check. Never the words "timed out",
 * "Connection is closed" or "isn't writeable": the operator commands take
 * those for ioredis' own "not connected" (operator-access.ts).
 */
export function sentinelWording(options: WordingOptions): Wording {
  const { set } = options;
  const within = options.commandTimeoutMs === undefined ? "in time" : `within REDIS_COMMAND_TIMEOUT (${options.commandTimeoutMs} ms)`;
  /** A connection that failed: unreachable, with the certificate's hint over TLS. */
  const unreachable = (error: unknown, whose: string): string => {
    const text = messageOf(error);
    if (/Command timed out/i.test(text)) return `did not answer ${within}`;
    // A TLS port reached with redis://, or another service on that port.
    if (/Unknown RESP type|Protocol error/i.test(text)) return "is reached, but does not answer as Redis does (a TLS port reached with redis://, or not Redis)";
    const said = `is unreachable (${text.replace(/\.$/, "").replace(/Connection is closed/i, "the connection closed")})`;
    const code = (error as { code?: unknown } | undefined)?.code;
    const certificate = (typeof code === "string" && certificateError.test(code)) || /certificate|self[- ]signed/i.test(text);
    if (!options.tls || !certificate) return said;
    return options.privateCa
      ? `${said} (check that REDIS_TLS_CA is the CA that signs the ${whose}' certificates)`
      : `${said} (if a private CA signs the ${whose}' certificates, set REDIS_TLS_CA to its PEM file)`;
  };
  const noSuchMaster = (): string => `monitors no master set named ${set}: check REDIS_SENTINEL_MASTER`;
  return {
    sentinel(error) {
      const text = messageOf(error);
      if (/No such master with that name/i.test(text)) return noSuchMaster();
      if (/^NOAUTH\b/.test(text)) return "requires a password: set REDIS_SENTINEL_PASSWORD (the sentinels' own, not REDIS_URL's)";
      if (/^WRONGPASS\b/.test(text)) return "refused REDIS_SENTINEL_PASSWORD (or REDIS_SENTINEL_USERNAME): check them (the sentinels' own, not REDIS_URL's)";
      // A data node listed in REDIS_URL instead of a sentinel: it knows no SENTINEL command.
      if (/unknown command/i.test(text)) return "answers, but is no sentinel: with REDIS_SENTINEL_MASTER, REDIS_URL lists the sentinels (port 26379), not the data nodes";
      if (isReplyError(error)) return text;
      return unreachable(error, "sentinels").replace(/^is /, "");
    },
    noSuchMaster,
    node(error) {
      const text = messageOf(error);
      if (/^NOAUTH\b/.test(text)) return "requires a password: put the data nodes' password on REDIS_URL's first entry (redis://:password@...)";
      if (/^WRONGPASS\b/.test(text)) return "refused REDIS_URL's password (WRONGPASS): check the data nodes' password on REDIS_URL's first entry (not REDIS_SENTINEL_PASSWORD)";
      if (isReplyError(error)) return `answered ${text}`;
      return unreachable(error, "data nodes");
    },
    replica: () => "answers as a replica (writes there fail READONLY): a failover is under way, or the sentinels and the data nodes disagree on who is master",
  };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A reply of the server (WRONGPASS, ERR...), as opposed to a failure of the connection. */
function isReplyError(error: unknown): boolean {
  return error instanceof Error && error.name === "ReplyError";
}

/** `host:port` of a sentinel or a node. */
function where(address: SentinelAddress): string {
  return hostPort(address.host, address.port);
}
