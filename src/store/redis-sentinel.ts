/**
 * Redis Sentinel (REDIS_SENTINEL_MASTER): a client that asks the sentinels
 * where the master of a set is, connects to it, and leaves it as soon as it
 * stops being the master.
 *
 * ioredis resolves the master through the sentinels on every (re)connect and
 * refuses a node that reports itself a replica (its INFO role check). Left
 * alone, it would still stay connected to an old master that a failover
 * demoted, and writes there are lost: after a `SENTINEL FAILOVER` the old
 * master keeps taking writes until the sentinels get round to reconfiguring
 * it (8 s and more), and what it took is then thrown away when it syncs from
 * the new master. So:
 * - each sentinel's `+switch-master` announcement for our set drops the
 *   connection at once unless it is already to the node announced, and
 *   the reconnect asks the sentinels again (`watchFailovers`). Sentinels
 *   with `announce-hostnames` (the Bitnami chart's default) announce a
 *   node by name: the connection's peer is then compared with the name's
 *   addresses, or every announcement, the other sentinels' too, would drop
 *   a connection already on the new master, failing the commands in
 *   flight. An announcement heard while the client is not connected (it
 *   is looking the master up, or reconnecting) is kept: once connected, a
 *   client that a sentinel not yet switched sent to the old master leaves
 *   it once more (once per announcement, so no loop while the sentinels
 *   keep naming it). (ioredis' own `failoverDetector` is not used: it
 *   reacts to any master set's failover, and its sentinel connections have
 *   no error listener, so a sentinel restart would print ioredis' "Unhandled
 *   error event" to stderr, outside the JSON log.)
 * - a READONLY reply (a write that reached a node which is a replica now,
 *   say a demoted master whose connections were not dropped) reconnects too
 *   (`reconnectOnError`), the write itself failing as unavailable: it is
 *   never resent, as no command is.
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { ConnectionOptions } from "node:tls";
import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "../logger.js";
import { diagnoseSentinels, sentinelWording } from "./sentinel-diagnosis.js";

export interface SentinelOptions {
  /** The master set's name, as the sentinels monitor it (REDIS_SENTINEL_MASTER). */
  readonly master: string;
  /** The sentinels' own credentials (REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD), not the data nodes'. */
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  /**
   * Whether to follow the sentinels' failover announcements (default true).
   * A command that runs for a moment needs no such watch: it would only
   * open a connection to each sentinel and add their errors to its own.
   */
  readonly watchFailovers?: boolean;
}

/** Where one sentinel listens; also a data node as a sentinel announces it. */
export interface SentinelAddress {
  readonly host: string;
  readonly port: number;
}

/** The sentinels' default port, for a REDIS_URL entry that names none. */
export const defaultSentinelPort = 26379;

/** Host and port of each comma-separated REDIS_URL entry (26379 when an entry names no port). */
export function sentinelAddresses(urls: string): SentinelAddress[] {
  return urls.split(",").map((raw) => {
    const url = new URL(raw.trim());
    return { host: url.hostname.replace(/^\[|\]$/g, ""), port: url.port === "" ? defaultSentinelPort : Number(url.port) };
  });
}

/** Why no usable master was found: a log message and an error listing each sentinel's answer. */
export interface SentinelFailure {
  readonly message: string;
  readonly err: Error;
}

/** What `connectSentinel` opens: the client, the failover watch to stop with it, and why it fails to connect. */
export interface SentinelConnection {
  readonly redis: Redis;
  /**
   * Whether one of the client's "error" events says nothing: ioredis' "All
   * sentinels are unreachable" when no sentinel failed since it last said
   * so (it says that each time it reaches the end of its sentinel list,
   * which a reconnect may do). Called for every "error" event.
   */
  isNoise(error: unknown): boolean;
  /**
   * Why the client found no usable master, asked of the sentinels
   * themselves (sentinel-diagnosis.ts); undefined when one of them names a
   * master that answers as one (the failure was the connection's own, or is
   * over). Never rejects.
   */
  explainFailure(): Promise<SentinelFailure | undefined>;
  /** What to call the Redis this client reaches, for "... is unreachable". */
  readonly description: string;
  /** Stops watching the sentinels (the client itself is closed by its owner). */
  stop(): void;
}

export interface ConnectSentinelOptions {
  /** REDIS_URL: the sentinels; the first URL's user, password and database are the data nodes'. */
  readonly urls: string;
  readonly sentinel: SentinelOptions;
  /** The store's options for a data node connection (timeouts, scripts, retry, TLS CA...). */
  readonly redisOptions: RedisOptions;
  readonly logger: Logger;
}

/**
 * A client of the master of `sentinel.master`, found through the sentinels
 * of `urls`. With rediss:// URLs both the sentinels and the data nodes are
 * reached over TLS, trusting `redisOptions.tls` (REDIS_TLS_CA) or the
 * system CAs.
 */
export function connectSentinel(options: ConnectSentinelOptions): SentinelConnection {
  const { sentinel, logger } = options;
  const addresses = sentinelAddresses(options.urls);
  const first = new URL(options.urls.split(",")[0]?.trim() ?? "");
  const { tls: tlsOption, ...nodeOptions } = options.redisOptions;
  // Node verifies against the system CAs when no `ca` is given (REDIS_TLS_CA adds its CA to them: redis-store.ts).
  const tls: ConnectionOptions | undefined = first.protocol === "rediss:" ? (tlsOption ?? {}) : undefined;
  const sentinelCredentials = {
    ...(sentinel.username === undefined ? {} : { username: sentinel.username }),
    ...(sentinel.password === undefined ? {} : { password: sentinel.password }),
  };
  const set = sentinel.master;
  const dataCredentials = {
    ...(first.username === "" ? {} : { username: decodeURIComponent(first.username) }),
    ...(first.password === "" ? {} : { password: decodeURIComponent(first.password) }),
  };

  // The master as the sentinel that named it said it (a hostname with announce-hostnames), for the log: the
  // connection only knows the address that name resolved to. ioredis hands every address a sentinel gives it (the
  // other sentinels', then the master's) to natMap just before it connects to the master; returning null keeps
  // each address as given.
  let lastNamed: string | undefined;
  let readOnlySeen = false;
  const redis = new Redis({
    ...nodeOptions,
    sentinels: addresses.map(({ host, port }) => ({ host, port })),
    name: set,
    role: "master",
    ...dataCredentials,
    db: Number(first.pathname.slice(1) || "0"),
    ...(sentinel.username === undefined ? {} : { sentinelUsername: sentinel.username }),
    ...(sentinel.password === undefined ? {} : { sentinelPassword: sentinel.password }),
    ...(tls === undefined ? {} : { tls, enableTLSForSentinelMode: true, sentinelTLS: tls }),
    // A sentinel that takes the connection but never answers must not hold up finding the master.
    ...(nodeOptions.commandTimeout === undefined ? {} : { sentinelCommandTimeout: nodeOptions.commandTimeout }),
    // The pause between rounds over every sentinel when none named a reachable master: the store's backoff.
    ...(typeof nodeOptions.retryStrategy === "function" ? { sentinelRetryStrategy: nodeOptions.retryStrategy } : {}),
    failoverDetector: false,
    natMap: (key: string) => {
      lastNamed = key;
      return null;
    },
    reconnectOnError: (error: Error) => {
      if (!/^READONLY\b/.test(error.message)) return false;
      if (!readOnlySeen) {
        readOnlySeen = true;
        logger.warn(
          { redis_master_set: set, ...masterFields() },
          "redis answered READONLY: the node this instance was writing to is a replica now (a demoted master); " +
            "reconnecting to the master the sentinels name",
        );
      }
      return true;
    },
  });

  /**
   * The node the client is connected to for the log: `master` as the
   * sentinel named it, and `master_address`, the address it reached, when
   * that is another (a name).
   */
  const masterFields = (): { master?: string; master_address?: string } => {
    const peer = connectedTo(redis);
    if (peer === undefined) return {};
    const named = lastNamed;
    // Only a name for this very port is the master's (a sentinel's would be for another).
    if (named === undefined || named === peer || portOf(named) !== portOf(peer)) return { master: peer };
    return { master: named, master_address: peer };
  };

  let master: string | undefined;
  redis.on("ready", () => {
    readOnlySeen = false;
    const now = masterFields();
    if (now.master === master) return;
    if (master === undefined) logger.info({ redis_master_set: set, ...now }, "redis: connected to the master the sentinels name");
    else logger.warn({ redis_master_set: set, ...now, previous_master: master }, "redis: the master moved (a Sentinel failover); connected to the new one");
    master = now.master;
  });

  const wording = sentinelWording({
    set,
    tls: tls !== undefined,
    privateCa: tlsOption?.ca !== undefined,
    commandTimeoutMs: nodeOptions.commandTimeout,
  });
  // Without a connect timeout of the store's own, ioredis' 10 s would let a sentinel that drops packets hold the
  // account back long after calls and the health PING failed (each within the command timeout): the command
  // timeout bounds the diagnosis's connections too, so it is told within a couple of them.
  const diagnosisConnectTimeout = nodeOptions.connectTimeout ?? nodeOptions.commandTimeout;
  const timeouts = {
    ...(diagnosisConnectTimeout === undefined ? {} : { connectTimeout: diagnosisConnectTimeout }),
    ...(nodeOptions.commandTimeout === undefined ? {} : { commandTimeout: nodeOptions.commandTimeout }),
  };
  const explainFailure = async (): Promise<SentinelFailure | undefined> => {
    const found = await diagnoseSentinels({
      sentinels: addresses,
      set,
      sentinelOptions: { ...sentinelCredentials, ...timeouts, ...(tls === undefined ? {} : { tls }) },
      nodeOptions: { ...dataCredentials, ...timeouts, ...(tls === undefined ? {} : { tls }) },
      wording,
    }).catch(() => undefined);
    if (found === undefined) return undefined;
    return {
      message: found.named ? `no master the redis sentinels name for ${set} can be used; retrying` : `no redis sentinel named the master of ${set}; retrying`,
      err: Object.assign(new Error(found.reasons.join("; ")), { name: "SentinelError" }),
    };
  };
  // Whether a sentinel failed to name a master since ioredis last said "All sentinels are unreachable".
  let sentinelFailed = false;
  redis.on("sentinelError", () => {
    sentinelFailed = true;
  });
  redis.on("ready", () => {
    sentinelFailed = false;
  });

  /** Whether the client is connected to `to` now: its peer is `to`'s IP, or one of its name's addresses. */
  const connectedToNode = async (to: SentinelAddress): Promise<boolean> => {
    // Named (announce-hostnames): the name's addresses, looked up as ioredis' connection looked them up. A name
    // that does not resolve now counts as elsewhere: better a needless reconnect than writes to an old master.
    const addresses = isIP(to.host) !== 0 ? [to.host] : await lookup(to.host, { all: true }).then((found) => found.map(({ address }) => address), () => []);
    const now = connectedTo(redis);
    return now !== undefined && addresses.some((address) => now === `${address}:${to.port}`);
  };
  // The latest master announced while the client was not connected (looking the master up, reconnecting): the
  // reconnect may have asked a sentinel that had not switched yet, and got the old master.
  let announcedWhileAway: SentinelAddress | undefined;
  const follow = (to: SentinelAddress): void => {
    void connectedToNode(to).then((there) => {
      // Already there (a reconnect that found the new master first, or another sentinel's announcement): stay.
      if (there) return;
      if (redis.status === "ready" || redis.status === "connect") redis.disconnect(true);
      else announcedWhileAway = to;
    });
  };
  // Once connected, to the master announced meanwhile or not. Once per announcement, so a reconnect that is
  // told the old master again (by sentinels that keep naming it) does not loop: their own announcement, when
  // they switch, or a READONLY reply after the demotion moves the client then.
  let warnedOf: string | undefined;
  redis.on("ready", () => {
    const announced = announcedWhileAway;
    announcedWhileAway = undefined;
    if (announced === undefined) return;
    void connectedToNode(announced).then((there) => {
      if (there || redis.status !== "ready") return;
      const to = `${announced.host}:${announced.port}`;
      if (warnedOf !== to) {
        warnedOf = to;
        logger.warn(
          { redis_master_set: set, ...masterFields(), announced: to },
          "redis: connected to a node other than the master announced while reconnecting (a sentinel that had not " +
            "switched yet named it); reconnecting",
        );
      }
      redis.disconnect(true);
    });
  });
  const stopWatching =
    sentinel.watchFailovers === false
      ? () => undefined
      : watchFailovers({
          addresses,
          set,
          redisOptions: {
            ...sentinelCredentials,
            ...(tls === undefined ? {} : { tls }),
            ...(nodeOptions.connectTimeout === undefined ? {} : { connectTimeout: nodeOptions.connectTimeout }),
          },
          logger,
          explain: (error) => wording.sentinel(error),
          onSwitch: follow,
        });

  return {
    redis,
    description: `the master of ${set} (REDIS_SENTINEL_MASTER)`,
    isNoise(error) {
      if (!(error instanceof Error) || !error.message.startsWith("All sentinels are unreachable")) return false;
      const noise = !sentinelFailed;
      sentinelFailed = false;
      return noise;
    },
    explainFailure,
    stop: stopWatching,
  };
}

/** `host:port` of the node the client is connected to, or undefined. */
function connectedTo(redis: Redis): string | undefined {
  const stream = redis.stream as { remoteAddress?: string; remotePort?: number } | undefined;
  return stream?.remoteAddress === undefined ? undefined : `${stream.remoteAddress}:${stream.remotePort ?? ""}`;
}

/** The port of a `host:port`. */
function portOf(address: string): string {
  return address.slice(address.lastIndexOf(":") + 1);
}

interface WatchOptions {
  readonly addresses: readonly SentinelAddress[];
  readonly set: string;
  /** Credentials, TLS and connect timeout of a sentinel connection. */
  readonly redisOptions: RedisOptions;
  readonly logger: Logger;
  /** An error of a sentinel connection in an operator's words. */
  readonly explain: (error: unknown) => string;
  /** A sentinel announced that the set's master is now `to` (`host` an IP, or a name with announce-hostnames). */
  readonly onSwitch: (to: SentinelAddress) => void;
}

/**
 * Subscribes to `+switch-master` on every sentinel. Each sentinel announces
 * a failover once it has switched, so the last announcement comes after the
 * last sentinel has: a reconnect that asked a sentinel still naming the old
 * master is put right by that sentinel's own announcement. A sentinel that
 * cannot be reached is said once (the others still announce), and retried
 * every few seconds.
 */
function watchFailovers(options: WatchOptions): () => void {
  const { set, logger } = options;
  let announced: string | undefined;
  const clients = options.addresses.map(({ host, port }) => {
    const where = `${host}:${port}`;
    const client = new Redis({
      ...options.redisOptions,
      host,
      port,
      enableReadyCheck: false,
      maxRetriesPerRequest: null,
      retryStrategy: (attempt) => Math.min(500 * attempt, 5000),
    });
    let down = false;
    client.on("error", (error: unknown) => {
      if (down) return;
      down = true;
      logger.warn(
        { sentinel: where, redis_master_set: set, err: new Error(options.explain(error)) },
        "redis sentinel unreachable: failovers are heard from the other sentinels; retrying",
      );
    });
    client.on("ready", () => {
      if (!down) return;
      down = false;
      logger.info({ sentinel: where, redis_master_set: set }, "redis sentinel reachable again");
    });
    client.on("message", (channel: string, message: string) => {
      // "<set> <old ip> <old port> <new ip> <new port>" (names instead of IPs with announce-hostnames)
      const [name, oldHost, oldPort, newHost, newPort] = message.split(" ");
      if (channel !== "+switch-master" || name !== set || newHost === undefined || newPort === undefined) return;
      const to = `${newHost}:${newPort}`;
      if (to !== announced) {
        announced = to;
        logger.warn({ sentinel: where, redis_master_set: set, from: `${oldHost ?? "?"}:${oldPort ?? "?"}`, to }, "redis sentinel announced a failover: moving to the new master");
      }
      options.onSwitch({ host: newHost, port: Number(newPort) });
    });
    // Queued until connected, and subscribed again after every reconnect.
    client.subscribe("+switch-master").catch(() => undefined);
    return client;
  });
  return () => {
    for (const client of clients) client.disconnect();
  };
}
