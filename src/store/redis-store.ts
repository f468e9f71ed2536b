/**
 * The production OtpStore: Redis through ioredis, one Lua script per
 * operation so each is atomic across any number of service instances.
 *
 * Key layout (every key carries a TTL; the part in braces is a Redis Cluster
 * hash tag, and a script only touches keys of one tag):
 *
 *   <prefix>code:{<group>}:<setId>  hash   f = failures, c:<entryId> = <hmac>:<expiresAt>
 *   <prefix>fail:{<group>}:<logId>  zset   failed guesses of the group's sets (the verify cap)
 *   <prefix>msg:{<messageId>} string delivery record as JSON
 *   <prefix>idem:{<keyId>}   string idempotency claim as JSON {fingerprint, messageId}
 *   <prefix>dsn:{<messageId>} list  delivery reports (DSNs) as JSON, oldest first
 *   <prefix>sent:{<recipientHash>} list  the recipient's recent message ids, newest first
 *   <prefix>{limits}:supp:<recipientHash> string suppression entry as JSON
 *   <prefix>{limits}:<logId> zset   limit log: member = admission id, score = admitted at
 *
 * The limit logs all share the hash tag `{limits}`: one SendOtp checks and
 * consumes every limit it is subject to (recipient, caller, global...) in
 * one script, which Redis Cluster only allows within one slot. Every
 * SendOtp touches the global log anyway, so that slot's node sees every
 * send whatever the layout; keeping the small per-recipient logs beside it
 * buys exactness and one round trip for a little memory on that node. The
 * suppression list lives there too, for the same reason: the limits script
 * checks the recipient's suppression first, so a SendOtp needs no GET of
 * its own (and a suppressed send still spends no budget).
 *
 * A group (caller and recipient) keeps its code sets (one per purpose) and
 * its failure log under one hash tag: one script checks the cap, counts the
 * guess, compares it and consumes the code, so a VerifyOtp is one command.
 * Codes are compared in Lua as keyed HMACs: their timing says nothing an
 * attacker could use, since without the secret nobody can compute them.
 *
 * Times in scripts come from the caller's injected clock (`options.now`),
 * never from Redis TIME, and TTLs are set relative to that `now` (PEXPIRE,
 * not PEXPIREAT) so a skewed or fake application clock never makes Redis drop
 * a key early or keep it for ever.
 */
import { rootCertificates } from "node:tls";
import { Cluster, Redis, type RedisOptions } from "ioredis";
import { suppressionReason, type DeliveryRecord, type DeliveryReport, type SuppressionEntry } from "../delivery/record.js";
import { storageFull, storageUnavailable, type OtpError } from "../errors.js";
import type { Logger } from "../logger.js";
import { connectSentinel, type SentinelConnection, type SentinelOptions } from "./redis-sentinel.js";
import type {
  ClaimResult,
  CodeEntry,
  CodeSetOptions,
  CodeSetRef,
  ConsumeLimitsOptions,
  FullWindow,
  GuessOptions,
  GuessOutcome,
  IdempotencyClaim,
  LimitLog,
  LimitOutcome,
  LimitWindow,
  OtpStore,
} from "./types.js";
import { maxDeliveryReports, maxRecipientMessages } from "./types.js";

export interface RedisStoreOptions {
  /** `redis://[user:pass@]host:port[/db]` or `rediss://...` for TLS. */
  readonly url: string;
  /**
   * Prepended to every key (`otp:`). Keep braces out of it: a `{...}` in the
   * prefix would become the hash tag and put every key in one cluster slot.
   */
  readonly prefix: string;
  readonly logger: Logger;
  /** A command not answered within this many ms rejects as unavailable. Default 1000. */
  readonly commandTimeoutMs?: number;
  /** How long one connection attempt may take before it is retried. ioredis default (10 s) when unset. */
  readonly connectTimeoutMs?: number;
  /** Told of every failed operation (by name: `getRecord`...), for the Redis error metric. */
  readonly onCommandError?: ((operation: RedisOperation) => void) | undefined;
  /**
   * Told when Redis starts refusing writes for lack of memory (true: an OOM
   * reply) and when one of its writes goes through again (false), for the
   * "Redis is full" gauge.
   */
  readonly onFullChange?: ((full: boolean) => void) | undefined;
  /**
   * Redis Cluster: `url` is one or more comma-separated seed nodes
   * (`redis://a:7000,redis://b:7001`); the client discovers the rest.
   */
  readonly cluster?: boolean;
  /**
   * Redis Sentinel: `url` is one or more comma-separated sentinels
   * (`redis://:password@s1:26379,redis://s2:26379`), the first URL's user,
   * password and database the data nodes'; the client connects to the master
   * they name for `sentinel.master`, and follows it through failovers (see
   * redis-sentinel.ts). Exclusive with `cluster`.
   */
  readonly sentinel?: SentinelOptions | undefined;
  /**
   * PEM of a private CA that signs the server's certificate, trusted besides
   * the system's CAs (REDIS_TLS_CA). Only for `rediss://` URLs.
   */
  readonly tlsCa?: string | undefined;
}

/** Reconnect delays grow from 50 ms and never exceed this, so recovery is quick once Redis is back. */
const maxReconnectDelayMs = 2000;

// --- Lua scripts -----------------------------------------------------------
// Every script opens with a Redis 7 shebang (the very first line), which
// tells Redis before it runs what the script may do:
// - `#!lua`: it writes, so a full Redis (maxmemory reached, noeviction)
//   refuses it up front with OOM, as it does a plain SET. Without a shebang
//   Redis refuses a script only at its first write that may grow memory, and
//   lets it finish once it has written anything: the limits script, whose
//   first write is a trim, would spend the limits on a full Redis.
// - `flags=no-writes`: it only reads, and runs on a full Redis (and a replica).
// - `flags=allow-oom`: it only removes (refund, release), and runs on a full
//   Redis, where giving memory back is exactly what is wanted.
// With a shebang a script may touch only keys it is given (KEYS), all in one
// cluster slot: every script here does.
// A code is live strictly before its expiresAt (the expiry SendOtp and
// GetDeliveryStatus report); the set is dropped once now >= last expiry +
// keepExpiredMs.
// Entry values are "<hmac>:<expiresAt>"; the hmac is matched greedily up to
// the last colon, so it may itself contain colons.

/** KEYS[1] code set; ARGV entryId, hmac, expiresAt, maxFailures, now, keepExpiredMs. */
const addCodeLua = `#!lua
local key = KEYS[1]
local maxFailures = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local keep = tonumber(ARGV[6])
local failures = tonumber(redis.call('HGET', key, 'f') or 0)
if failures >= maxFailures then
  -- Locked: a fresh code starts over, the old ones go with the lock.
  redis.call('DEL', key)
  failures = 0
end
local lastExpiry = tonumber(ARGV[3])
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 'c:' then
    local expiry = tonumber(string.match(fields[i + 1], ':(%d+)$'))
    if expiry <= now then
      redis.call('HDEL', key, name)
    elseif expiry > lastExpiry then
      lastExpiry = expiry
    end
  end
end
redis.call('HSET', key, 'f', failures, 'c:' .. ARGV[1], ARGV[2] .. ':' .. ARGV[3])
local ttl = lastExpiry + keep - now
if ttl > 0 then
  redis.call('PEXPIRE', key, string.format('%d', ttl))
else
  redis.call('DEL', key)
end
return 1
`;

/**
 * Sliding-window helpers shared by the limits and verify scripts. roomAt:
 * nil when the window has room for one more entry at `now`, else the time
 * it will.
 */
const windowLua = `
local function ms(value) return string.format('%d', value) end
local function roomAt(key, now, max, window)
  local since = '(' .. ms(now - window)
  local count = redis.call('ZCOUNT', key, since, '+inf')
  if count < max then return nil end
  local oldest = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT', count - max, 1)
  return tonumber(oldest[2]) + window
end
`;

/**
 * KEYS[1] code set, KEYS[2] failure log (when ARGV[5] is '1').
 * ARGV guess hmac, maxFailures, now, keepExpiredMs, 1 or 0, failure entry,
 * number of windows, then max and windowMs of each.
 * Returns {'none'} | {'expired'} | {'locked', failures} |
 * {'capped', window, retryAt, ...} (1-based windows) | {'invalid', failures} |
 * {'verified', entryId}. See OtpStore.verifyGuess.
 */
const verifyGuessLua = `#!lua
${windowLua}
local key = KEYS[1]
local guess = ARGV[1]
local maxFailures = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local fields = redis.call('HGETALL', key)
local failures = 0
local anyCode = false
local lastExpiry = 0
local live = {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'f' then
    failures = tonumber(fields[i + 1])
  elseif string.sub(name, 1, 2) == 'c:' then
    local hmac, expiryText = string.match(fields[i + 1], '^(.*):(%d+)$')
    local expiry = tonumber(expiryText)
    anyCode = true
    if expiry > lastExpiry then lastExpiry = expiry end
    if expiry > now then
      live[#live + 1] = {string.sub(name, 3), hmac}
    end
  end
end
if not anyCode then return {'none'} end
if #live == 0 then
  if now >= lastExpiry + keep then
    redis.call('DEL', key)
    return {'none'}
  end
  return {'expired'}
end
if failures >= maxFailures then return {'locked', failures} end
local capped = ARGV[5] == '1'
local windows = {}
local longest = 0
if capped then
  for j = 1, tonumber(ARGV[7]) do
    local max, window = tonumber(ARGV[6 + 2 * j]), tonumber(ARGV[7 + 2 * j])
    windows[j] = {max, window}
    if window > longest then longest = window end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms(now - longest))
  local full = {'capped'}
  for j = 1, #windows do
    local retryAt = roomAt(KEYS[2], now, windows[j][1], windows[j][2])
    if retryAt then
      full[#full + 1] = j
      full[#full + 1] = retryAt
    end
  end
  if #full > 1 then return full end
end
-- Every live code is compared, with no early exit.
local match = false
for i = 1, #live do
  if live[i][2] == guess and not match then match = live[i][1] end
end
if match then
  -- One-time use: every code of the set goes with the one that matched.
  redis.call('DEL', key)
  return {'verified', match}
end
failures = redis.call('HINCRBY', key, 'f', 1)
if capped then
  redis.call('ZADD', KEYS[2], ms(now), ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ms(longest))
end
return {'invalid', failures}
`;

/**
 * KEYS[1] idempotency key; ARGV claim JSON, ttlMs.
 * Returns {1} claimed, {2} claimed over an unreadable value, {0, existing JSON}.
 */
const claimLua = `#!lua
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
local existing = redis.call('GET', KEYS[1])
local ok, claim = pcall(cjson.decode, existing)
if ok and type(claim) == 'table' and type(claim.messageId) == 'string' and type(claim.fingerprint) == 'string' then
  return {0, existing}
end
-- Unreadable: nothing could ever match it, so it would block the key until it expires.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {2}
`;

/**
 * KEYS[1] idempotency key; ARGV messageId. Deletes only the owner's claim.
 * It only frees memory, so it runs on a full Redis too (allow-oom): a send
 * that failed there gives its key back for the retry.
 */
const releaseLua = `#!lua flags=allow-oom
local existing = redis.call('GET', KEYS[1])
if not existing then return 0 end
local ok, claim = pcall(cjson.decode, existing)
if ok and type(claim) == 'table' and claim.messageId == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`;

/**
 * KEYS: ARGV[3] suppression keys (0, 1, or 2 while OTP_SECRET rotates; the
 * first suppressed one answers), then the limit logs. ARGV: now, entry, the
 * number of suppression keys, then the windows of every log in one string of
 * space-separated whole numbers: per log the number of windows, then max and
 * windowMs of each (one argument rather than two or three per window: every
 * argument costs ioredis a few strings per send to write it). All-or-nothing
 * (see OtpStore.consumeLimits).
 * Returns {1, nextAt1, nextAt2, ...}, {0, log, window, retryAt, ...} with
 * 1-based log and window indices, or {2, suppression JSON} (nothing checked
 * or consumed).
 */
const consumeLimitsLua = `#!lua
${windowLua}
local now = tonumber(ARGV[1])
local entry = ARGV[2]
local first = tonumber(ARGV[3]) + 1
for i = 1, first - 1 do
  local suppressed = redis.call('GET', KEYS[i])
  if suppressed then
    -- An unreadable entry suppresses nothing, as getSuppression reads it.
    local ok, value = pcall(cjson.decode, suppressed)
    if ok and type(value) == 'table' and type(value.messageId) == 'string' then return {2, suppressed} end
  end
end
local spec = {}
for number in string.gmatch(ARGV[4], '%d+') do spec[#spec + 1] = tonumber(number) end
local logs = {}
local full = {0}
local pos = 1
for i = first, #KEYS do
  local windows = {}
  local longest = 0
  for j = 1, spec[pos] do
    local max, window = spec[pos + 2 * j - 1], spec[pos + 2 * j]
    windows[j] = {max, window}
    if window > longest then longest = window end
  end
  pos = pos + 1 + 2 * #windows
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ms(now - longest))
  for j = 1, #windows do
    local retryAt = roomAt(KEYS[i], now, windows[j][1], windows[j][2])
    if retryAt then
      full[#full + 1] = i - first + 1
      full[#full + 1] = j
      full[#full + 1] = retryAt
    end
  end
  logs[i] = {windows, longest}
end
if #full > 1 then return full end
local reply = {1}
for i = first, #KEYS do
  redis.call('ZADD', KEYS[i], ms(now), entry)
  redis.call('PEXPIRE', KEYS[i], ms(logs[i][2]))
  local nextAt = now
  for _, w in ipairs(logs[i][1]) do
    local at = roomAt(KEYS[i], now, w[1], w[2])
    if at and at > nextAt then nextAt = at end
  end
  reply[#reply + 1] = nextAt
end
return reply
`;

/**
 * KEYS[1] a recipient's message list; ARGV messageId, max entries, ttlMs.
 * One command rather than a MULTI of three (each one a command to send and
 * parse), written beside the record and code in SendOtp's round trip.
 */
const addRecipientMessageLua = `#!lua
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`;

/**
 * KEYS[1] a message's reports; ARGV report JSON, its identity ('' for none),
 * max reports, ttlMs. Returns 1 when appended (then capped and expired), 0
 * when a kept report has that identity: one script, so that two copies of a
 * DSN landing at once on two instances cannot both be appended (see
 * OtpStore.addDeliveryReport).
 */
const addReportLua = `#!lua
local identity = ARGV[2]
if identity ~= '' then
  for _, kept in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local ok, report = pcall(cjson.decode, kept)
    if ok and type(report) == 'table' and report.identity == identity then return 0 end
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], '-' .. ARGV[3], -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`;

/**
 * KEYS[1] a recipient's suppression; ARGV entry JSON, its message id, its
 * reason ('hard_bounce' or 'complaint'), ttlMs. Writes the entry unless the
 * one in force has the same cause (the same message and reason; an entry
 * without a reason is a hard bounce, as suppressionReason reads it), and
 * returns the entry in force: one script, so that the same report handled
 * at once on two instances cannot move the suppression's end (see
 * OtpStore.putSuppression).
 */
const putSuppressionLua = `#!lua
local kept = redis.call('GET', KEYS[1])
if kept then
  local ok, entry = pcall(cjson.decode, kept)
  if ok and type(entry) == 'table' and entry.messageId == ARGV[2] then
    local reason = entry.reason
    if type(reason) ~= 'string' then reason = 'hard_bounce' end
    if reason == ARGV[3] then return kept end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return ARGV[1]
`;

/**
 * KEYS[1] delivery record, KEYS[2] its reports (one hash tag: the message id).
 * Returns {record or false, {report, ...}}: GetDeliveryStatus in one command
 * rather than a GET and an LRANGE (each command is a Command object, a timer
 * and a promise in ioredis).
 */
const readRecordLua = `#!lua flags=no-writes
return {redis.call('GET', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
`;

/**
 * KEYS: the limit logs; ARGV: now, then their windows as the consume script
 * takes them. Returns {nextAt1, nextAt2, ...}: consume's nextAt without
 * adding the entry (see OtpStore.peekLimits). Flagged no-writes, so a
 * Redis refusing writes (full, noeviction) or a read-only replica still
 * runs it; the shebang must be its very first line.
 */
const peekLimitsLua = `#!lua flags=no-writes
${windowLua}
local now = tonumber(ARGV[1])
local spec = {}
for number in string.gmatch(ARGV[2], '%d+') do spec[#spec + 1] = tonumber(number) end
local reply = {}
local pos = 1
for i = 1, #KEYS do
  local nextAt = now
  local count = spec[pos]
  for j = 1, count do
    local at = roomAt(KEYS[i], now, spec[pos + 2 * j - 1], spec[pos + 2 * j])
    if at and at > nextAt then nextAt = at end
  end
  pos = pos + 1 + 2 * count
  reply[i] = nextAt
end
return reply
`;

/**
 * KEYS: limit logs; ARGV[1] the entry. See OtpStore.refundLimits. It only
 * frees memory, so it runs on a full Redis too (allow-oom): a send admitted
 * just before Redis filled up, whose record it then refused, still gets its
 * limits back.
 */
const refundLimitsLua = `#!lua flags=allow-oom
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
`;

/**
 * No keys, writes nothing, but declared as writing: a full Redis refuses it
 * up front, as it would any write. While Redis is known to be full, the
 * health probe runs it after its PING to learn, without waiting for a
 * call, when Redis has room again.
 */
const roomProbeLua = `#!lua
return 1
`;

const scripts = {
  otpConsumeLimits: { lua: consumeLimitsLua, numberOfKeys: undefined },
  otpRefundLimits: { lua: refundLimitsLua, numberOfKeys: undefined },
  otpPeekLimits: { lua: peekLimitsLua, numberOfKeys: undefined },
  otpAddCode: { lua: addCodeLua, numberOfKeys: 1 },
  otpVerifyGuess: { lua: verifyGuessLua, numberOfKeys: undefined },
  otpClaim: { lua: claimLua, numberOfKeys: 1 },
  otpRelease: { lua: releaseLua, numberOfKeys: 1 },
  otpReadRecord: { lua: readRecordLua, numberOfKeys: 2 },
  otpAddRecipientMessage: { lua: addRecipientMessageLua, numberOfKeys: 1 },
  otpAddReport: { lua: addReportLua, numberOfKeys: 1 },
  otpPutSuppression: { lua: putSuppressionLua, numberOfKeys: 1 },
  otpRoomProbe: { lua: roomProbeLua, numberOfKeys: 0 },
} as const;

type ScriptArg = string | number;
/** The commands ioredis adds for `scripts` (EVALSHA, falling back to EVAL on NOSCRIPT). */
type ScriptCommands = {
  readonly [name in keyof typeof scripts]: (...keysThenArgs: ScriptArg[]) => Promise<unknown>;
};

/**
 * Every storage operation the Redis store runs, as `onCommandError` names
 * them (`ping` is the health probe's): a closed set, so the failed-operation
 * counter can have all its series from the start.
 */
export const redisOperations = [
  "addCode",
  "verifyGuess",
  "putRecord",
  "getRecord",
  "addDeliveryReport",
  "getDeliveryReports",
  "addRecipientMessage",
  "getRecipientMessages",
  "putSuppression",
  "getSuppression",
  "removeSuppression",
  "claimIdempotencyKey",
  "releaseIdempotencyKey",
  "consumeLimits",
  "peekLimits",
  "refundLimits",
  "ping",
] as const;
export type RedisOperation = (typeof redisOperations)[number];

/**
 * Creates the Redis store. It connects at once and keeps reconnecting for
 * ever (backoff capped at 2 s); while Redis is unreachable every operation
 * rejects at once with `storageUnavailable` rather than queueing.
 */
export function createRedisStore(options: RedisStoreOptions): OtpStore {
  const { url, prefix } = options;
  if (url === "") throw new TypeError("createRedisStore: url is required");
  const commandTimeoutMs = options.commandTimeoutMs ?? 1000;
  if (!(Number.isInteger(commandTimeoutMs) && commandTimeoutMs > 0)) {
    throw new TypeError("createRedisStore: commandTimeoutMs must be a positive integer");
  }
  const logger = options.logger.child({ component: "redis-store" });

  const redisOptions: RedisOptions = {
    scripts,
    commandTimeout: commandTimeoutMs,
    // Fail fast instead of queueing while disconnected: the caller gets
    // UNAVAILABLE and can retry, rather than a request that hangs.
    enableOfflineQueue: false,
    // Reject commands in flight when the connection drops, and never resend
    // them after reconnecting: a resent verifyGuess would count a guess the
    // caller was already told failed.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    // Commands issued in the same event-loop turn (concurrent requests, or a
    // record and a code written together) leave in one socket write: at load
    // that saves a write syscall per command (bench/: about 5 % of SendOtp's
    // CPU and 25 % of VerifyOtp's). Per-command replies, timeouts and
    // failures are unchanged.
    enableAutoPipelining: true,
    retryStrategy: (attempt) => Math.min(50 * 2 ** Math.min(attempt - 1, 10) + Math.random() * 100, maxReconnectDelayMs),
  };
  if (options.connectTimeoutMs !== undefined) redisOptions.connectTimeout = options.connectTimeoutMs;
  // Node's TLS trusts only this CA when `ca` is given: add it to the system's, as SMTP_TLS_CA does.
  if (options.tlsCa !== undefined && /^rediss:/i.test(url.trim())) redisOptions.tls = { ca: [...rootCertificates, options.tlsCa] };
  if (options.cluster === true && options.sentinel !== undefined) throw new TypeError("createRedisStore: cluster and sentinel exclude each other");
  const sentinel = options.sentinel === undefined ? undefined : connectSentinel({ urls: url, sentinel: options.sentinel, redisOptions, logger });
  // ioredis defines the script commands from `scripts` in its constructor.
  const redis = (sentinel?.redis ?? (options.cluster === true ? connectCluster(url, redisOptions) : new Redis(url, redisOptions))) as (
    | Redis
    | Cluster
  ) &
    ScriptCommands;

  const readiness = trackReadiness(redis, logger, { enabled: /^rediss:/i.test(url.trim()), privateCa: options.tlsCa !== undefined }, sentinel);
  checkRedisOnConnect(redis, logger, options.sentinel?.master);
  const fullness = trackFullness(logger, options.onFullChange);

  const codeKey = (set: CodeSetRef): string => `${prefix}code:{${set.group}}:${set.id}`;
  const failureKey = (group: string, logId: string): string => `${prefix}fail:{${group}}:${logId}`;
  const recordKey = (messageId: string): string => `${prefix}msg:{${messageId}}`;
  const idempotencyKey = (keyId: string): string => `${prefix}idem:{${keyId}}`;
  const reportsKey = (messageId: string): string => `${prefix}dsn:{${messageId}}`;
  const recipientMessagesKey = (recipientHash: string): string => `${prefix}sent:{${recipientHash}}`;
  const suppressionKey = (recipientHash: string): string => `${prefix}{limits}:supp:${recipientHash}`;
  const limitKey = (logId: string): string => `${prefix}{limits}:${logId}`;

  /** A command answered: what `run` does with every reply (one function, not a closure per call). */
  function succeeded<T>(result: T): T {
    readiness.noteSuccess();
    return result;
  }

  /** `alsoFailed`: operations one command stands for besides `operation` (each counted as failed too). */
  function failed(operation: RedisOperation, error: unknown, alsoFailed: readonly RedisOperation[]): never {
    let unavailable: OtpError;
    if (isOutOfMemory(error)) {
      // Redis answers, it only refuses to store more: not an outage, and not one to call "unreachable".
      unavailable = storageFull(describe(error));
      fullness.noteFull(operation, unavailable.cause);
    } else {
      unavailable = toUnavailable(error);
      readiness.noteFailure(operation, unavailable);
    }
    options.onCommandError?.(operation);
    for (const other of alsoFailed) options.onCommandError?.(other);
    throw unavailable;
  }

  /**
   * Runs one Redis operation, turning any failure into storageUnavailable.
   * Plain promise chaining rather than an async function around an async
   * body: the operations of a SendOtp are the hottest path of the store,
   * and each async layer costs a promise and a tick per call.
   */
  function run<T>(operation: RedisOperation, body: () => Promise<T>, alsoFailed: readonly RedisOperation[] = []): Promise<T> {
    // Only the very first connection attempt is waited for (at most one
    // command timeout), so calls made right after start-up do not fail for
    // a handshake still in flight. Later outages fail fast: nothing queues.
    const firstAttempt = readiness.firstAttempt(commandTimeoutMs);
    let pending: Promise<T>;
    try {
      pending = firstAttempt === undefined ? body() : firstAttempt.then(body);
    } catch (error) {
      // A body that throws (JSON.stringify of a cyclic value...) fails like a command.
      pending = rejection(error);
    }
    // Only while Redis is known to be full: one of its writes answered means it has room again.
    const answered = fullness.isFull() && addsData.has(operation) ? roomAgain : succeeded;
    return pending.then(answered, (error: unknown) => failed(operation, error, alsoFailed));
  }

  function roomAgain<T>(result: T): T {
    fullness.noteRoom();
    return succeeded(result);
  }

  // Arguments are checked before `run`, so a programming error surfaces as
  // a TypeError rather than as a retryable "storage unavailable".
  return {
    async addCode(set: CodeSetRef, entry: CodeEntry, setOptions: CodeSetOptions): Promise<void> {
      const args = [entry.id, entry.hmac, wholeMs(entry.expiresAt), ...codeSetArgs(setOptions)];
      await run("addCode", () => redis.otpAddCode(codeKey(set), ...args));
    },

    verifyGuess(set: CodeSetRef, hmac: string, guessOptions: GuessOptions): Promise<GuessOutcome> {
      let keys: string[];
      let args: ScriptArg[];
      try {
        const [maxFailures, now, keep] = codeSetArgs(guessOptions);
        const cap = guessOptions.failureCap;
        keys = [codeKey(set)];
        args = [hmac, maxFailures, now, keep, 0];
        if (cap !== undefined) {
          keys.push(failureKey(set.group, cap.log.id));
          args[4] = 1;
          args.push(cap.entry, ...windowArgs(cap.log));
        }
      } catch (error) {
        return rejection(error);
      }
      return run("verifyGuess", () => redis.otpVerifyGuess(keys.length, ...keys, ...args).then(parseGuessOutcome));
    },

    async putRecord(record: DeliveryRecord, ttlMs: number): Promise<void> {
      const px = ttl(ttlMs);
      await run("putRecord", () => redis.set(recordKey(record.messageId), JSON.stringify(record), "PX", px));
    },

    getRecord(messageId: string): Promise<DeliveryRecord | undefined> {
      return run("getRecord", () =>
        redis.get(recordKey(messageId)).then((value) => {
          if (value === null) return undefined;
          const record = parseRecord(value);
          if (record === undefined) {
            logger.warn({ message_id: messageId }, "unreadable delivery record treated as absent");
          }
          return record;
        }),
      );
    },

    async addDeliveryReport(messageId: string, report: DeliveryReport, ttlMs: number): Promise<boolean> {
      const px = ttl(ttlMs);
      const value = JSON.stringify(report);
      return run("addDeliveryReport", async () => {
        const appended = await redis.otpAddReport(reportsKey(messageId), value, report.identity ?? "", maxDeliveryReports, px);
        return appended === 1;
      });
    },

    getDeliveryReports(messageId: string): Promise<readonly DeliveryReport[]> {
      return run("getDeliveryReports", () =>
        redis
          .lrange(reportsKey(messageId), 0, -1)
          .then((values) => values.flatMap((value) => parseJsonObject<DeliveryReport>(value, "action") ?? [])),
      );
    },

    getRecordWithReports(messageId: string): Promise<readonly [DeliveryRecord | undefined, readonly DeliveryReport[]]> {
      return run(
        "getRecord",
        () =>
          redis.otpReadRecord(recordKey(messageId), reportsKey(messageId)).then((reply) => {
            if (!Array.isArray(reply)) throw new Error("unexpected reply to the record script");
            // Lua's false (no record) arrives as null.
            const [value, values] = reply as [unknown, unknown];
            let record: DeliveryRecord | undefined;
            if (typeof value === "string") {
              record = parseRecord(value);
              if (record === undefined) logger.warn({ message_id: messageId }, "unreadable delivery record treated as absent");
            }
            const reports = Array.isArray(values)
              ? values.flatMap((report) => (typeof report === "string" ? (parseJsonObject<DeliveryReport>(report, "action") ?? []) : []))
              : [];
            return [record, reports] as const;
          }),
        // What failed is both reads, counted as each was when they were two commands.
        ["getDeliveryReports"],
      );
    },

    async addRecipientMessage(recipientHash: string, messageId: string, ttlMs: number): Promise<void> {
      const px = ttl(ttlMs);
      await run("addRecipientMessage", () => redis.otpAddRecipientMessage(recipientMessagesKey(recipientHash), messageId, maxRecipientMessages, px));
    },

    getRecipientMessages(recipientHash: string): Promise<readonly string[]> {
      return run("getRecipientMessages", () => redis.lrange(recipientMessagesKey(recipientHash), 0, -1));
    },

    async putSuppression(recipientHash: string, entry: SuppressionEntry, ttlMs: number): Promise<SuppressionEntry> {
      const px = ttl(ttlMs);
      const value = JSON.stringify(entry);
      return run("putSuppression", async () => {
        const inForce = await redis.otpPutSuppression(suppressionKey(recipientHash), value, entry.messageId, suppressionReason(entry), px);
        // The script answers `value` itself when it wrote it; only a kept entry needs reading.
        return inForce === value ? entry : (parseJsonObject<SuppressionEntry>(String(inForce), "messageId") ?? entry);
      });
    },

    getSuppression(recipientHash: string): Promise<SuppressionEntry | undefined> {
      return run("getSuppression", async () => {
        const value = await redis.get(suppressionKey(recipientHash));
        return value === null ? undefined : parseJsonObject<SuppressionEntry>(value, "messageId");
      });
    },

    removeSuppression(recipientHash: string): Promise<SuppressionEntry | undefined> {
      // GETDEL: what is removed is exactly what is reported, even with a bounce landing meanwhile.
      // Not refused by a full Redis (it frees memory), so a suppression can be lifted then too.
      return run("removeSuppression", async () => {
        const value = await redis.getdel(suppressionKey(recipientHash));
        return value === null ? undefined : parseJsonObject<SuppressionEntry>(value, "messageId");
      });
    },

    async claimIdempotencyKey(keyId: string, claim: IdempotencyClaim, ttlMs: number): Promise<ClaimResult> {
      const px = ttl(ttlMs);
      const value = JSON.stringify({ fingerprint: claim.fingerprint, messageId: claim.messageId });
      return run("claimIdempotencyKey", async () => {
        const reply = await redis.otpClaim(idempotencyKey(keyId), value, px);
        if (!Array.isArray(reply)) throw new Error("unexpected reply to the claim script");
        if (reply[0] === 2) logger.warn("unreadable idempotency claim replaced");
        if (reply[0] === 1 || reply[0] === 2) return { claimed: true };
        return { claimed: false, existing: parseClaim(reply[1]) };
      });
    },

    releaseIdempotencyKey(keyId: string, messageId: string): Promise<void> {
      return run("releaseIdempotencyKey", async () => {
        await redis.otpRelease(idempotencyKey(keyId), messageId);
      });
    },

    async consumeLimits(
      logs: readonly LimitLog[],
      entry: string,
      now: number,
      limitOptions?: ConsumeLimitsOptions,
    ): Promise<LimitOutcome> {
      const unlessSuppressed = limitOptions?.unlessSuppressed;
      if (logs.length === 0 && unlessSuppressed === undefined) return { admitted: true, nextAt: [] };
      const hashes = unlessSuppressed === undefined ? [] : typeof unlessSuppressed === "string" ? [unlessSuppressed] : unlessSuppressed;
      const args = limitArgs(logs, entry, now, hashes.length);
      const keys = logs.map((log) => limitKey(log.id));
      keys.unshift(...hashes.map(suppressionKey));
      return run("consumeLimits", () =>
        redis.otpConsumeLimits(keys.length, ...keys, ...args).then((reply) => parseLimitOutcome(reply, logs.length)),
      );
    },

    peekLimits(logs: readonly LimitLog[], now: number): Promise<readonly number[]> {
      if (logs.length === 0) return Promise.resolve([]);
      let args: ScriptArg[];
      try {
        args = [wholeMs(now), logs.map(windowSpec).join(" ")];
      } catch (error) {
        return rejection(error);
      }
      const keys = logs.map((log) => limitKey(log.id));
      return run("peekLimits", () =>
        redis.otpPeekLimits(keys.length, ...keys, ...args).then((reply) => {
          if (!Array.isArray(reply) || reply.length !== logs.length) throw new Error("unexpected reply to the peek script");
          return (reply as unknown[]).map(Number);
        }),
      );
    },

    refundLimits(logs: readonly LimitLog[], entry: string): Promise<void> {
      if (logs.length === 0) return Promise.resolve();
      const keys = logs.map((log) => limitKey(log.id));
      return run("refundLimits", async () => {
        await redis.otpRefundLimits(keys.length, ...keys, entry);
      });
    },

    ping(): Promise<void> {
      const pinged = run("ping", async () => {
        await redis.ping();
      });
      if (!fullness.isFull()) return pinged;
      // Still full is no failed PING: Redis answers, health stays up (the full gauge says the rest).
      return pinged.then(() =>
        redis.otpRoomProbe().then(
          () => fullness.noteRoom(),
          () => undefined,
        ),
      );
    },

    isReady: () => readiness.isReady(),

    unreadyReason: () => readiness.unreadyReason(),

    onReadyChange: (listener) => readiness.subscribe(listener),

    async close(): Promise<void> {
      if (readiness.isClosing()) return;
      const wasReady = redis.status === "ready";
      readiness.markClosed();
      sentinel?.stop();
      if (wasReady) {
        try {
          // QUIT lets replies already on their way arrive first.
          await redis.quit();
          return;
        } catch {
          // Lost meanwhile: disconnect below stops reconnecting all the same.
        }
      }
      redis.disconnect();
    },
  };
}

/**
 * Follows ioredis' connection events: readiness for health checks, and one
 * warning per outage (not one per reconnect attempt or failed command).
 */
function trackReadiness(
  redis: Redis | Cluster,
  logger: Logger,
  tls: { readonly enabled: boolean; readonly privateCa: boolean },
  sentinel: SentinelConnection | undefined,
) {
  const listeners = new Set<(ready: boolean) => void>();
  let ready = false;
  let down = false;
  let closing = false;
  // Why the store is not connected, when more is known than "unreachable" (with Sentinel: each sentinel's answer).
  let unreadyReason: string | undefined;
  let firstAttemptDone = false;
  let settleFirstAttempt = (): void => undefined;
  const firstAttemptSettled = new Promise<void>((resolve) => {
    settleFirstAttempt = (): void => {
      firstAttemptDone = true;
      resolve();
    };
    redis.once("ready", settleFirstAttempt);
    // With Sentinel, once the failure is explained (below): the first command then fails saying why.
    if (sentinel === undefined) {
      redis.once("error", settleFirstAttempt);
      redis.once("close", settleFirstAttempt);
    }
  });

  function setReady(next: boolean): void {
    if (ready === next) return;
    ready = next;
    for (const listener of listeners) {
      try {
        listener(next);
      } catch (error) {
        logger.error({ err: error }, "storage readiness listener threw");
      }
    }
  }

  function markDown(message: string, error?: unknown): void {
    if (down || closing) return;
    warnDown(message, error);
  }

  /** Says `message` even when the store is down already (a failed call said so first): an account of why. */
  function warnDown(message: string, error?: unknown): void {
    down = true;
    logger.warn({ err: describe(error, lastNodeError) }, message);
  }

  function markUp(message: string): void {
    if (!down) return;
    down = false;
    logger.info(message);
  }

  // Without an 'error' listener ioredis prints every failed reconnect to the console.
  // A cluster client's errors only say "Failed to refresh slots cache" (its nodes' TLS errors are not passed on):
  // over TLS without REDIS_TLS_CA, say what a private CA would need.
  const unreachable =
    redis instanceof Cluster && tls.enabled && !tls.privateCa
      ? "redis is unreachable; retrying (over TLS: if a private CA signs the nodes' certificates, set REDIS_TLS_CA to its PEM file)"
      : sentinel === undefined
        ? "redis is unreachable; retrying"
        : `redis is unreachable (${sentinel.description}); retrying`;
  // A cluster node's own connection error (ECONNREFUSED...), which the cluster's "error" does not carry.
  let lastNodeError: Error | undefined;
  if (redis instanceof Cluster) {
    redis.on("node error", (error: unknown) => {
      if (error instanceof Error) lastNodeError = error;
    });
  }
  // With Sentinel, an outage is explained by asking the sentinels (a round trip or two): ioredis' own errors ("All
  // sentinels are unreachable", a data node's ECONNREFUSED) name neither the sentinel nor the master at fault, and a
  // named master that answers as a replica is only closed, with no error at all. Once per outage (before the first
  // connection, or after a lost one), never two at once. What starts it is a failed connection attempt, not the loss
  // of a live connection: a failover's reconnect asks sentinels that have switched and succeeds at once, and a
  // diagnosis that finds a sentinel naming a master that answers as one says nothing anyway. A failed call while not
  // connected starts the outage's first diagnosis too: ioredis' attempt only fails after its connect timeout (10 s)
  // per sentinel that drops packets, long after calls and the health PING have failed.
  let explaining = false;
  // This outage's account was given (logged, and the reason for /readyz): no second one until connected again.
  let explained = false;
  // A diagnosis ran in this outage: a failed call starts only the first, the connection's failed attempts the others.
  let diagnosed = false;
  // Counts connections, so that a diagnosis finished after its outage ended does not speak for the next one.
  let outage = 0;
  function explain(error: unknown): void {
    if (sentinel === undefined || ready || closing || explaining || explained) return;
    explaining = true;
    diagnosed = true;
    const during = outage;
    void sentinel.explainFailure().then((found) => {
      explaining = false;
      if (ready || closing || during !== outage) return;
      if (found !== undefined) {
        explained = true;
        unreadyReason = `${found.message.replace(/; retrying$/, "")}: ${found.err.message}`;
        warnDown(found.message, found.err);
      } else if (error !== undefined) {
        markDown(untrustedCertificate(error, tls.privateCa) ?? unreachable, error);
      }
      settleFirstAttempt();
    });
  }
  redis.on("error", (error: unknown) => {
    if (sentinel === undefined) {
      markDown(untrustedCertificate(error, tls.privateCa) ?? unreachable, error);
      return;
    }
    // A live connection's own error (ECONNRESET...) is its loss, which the close that follows says: no failed attempt.
    if (!sentinel.isNoise(error) && !ready) explain(error);
  });
  redis.on("ready", () => {
    if (closing) return;
    outage += 1;
    explained = false;
    diagnosed = false;
    unreadyReason = undefined;
    markUp("redis connection restored");
    setReady(true);
  });
  redis.on("close", () => {
    if (ready) markDown("redis connection lost; retrying");
    // Closed before it was ready, with no error: the sentinel connector left a node that says it is a replica.
    else if (sentinel !== undefined) explain(undefined);
    setReady(false);
  });
  redis.on("end", () => setReady(false));

  return {
    isReady: () => ready,
    /** Why the store is not connected, when more is known than that it is unreachable. */
    unreadyReason: () => (ready ? undefined : unreadyReason),
    /**
     * Resolves when the first connection attempt succeeded or failed, or
     * after `timeoutMs`; undefined when there is nothing to wait for.
     */
    firstAttempt(timeoutMs: number): Promise<void> | undefined {
      if (firstAttemptDone || closing) return undefined;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      });
      return Promise.race([firstAttemptSettled, timeout]).then(() => clearTimeout(timer));
    },
    isClosing: () => closing,
    /** From now on the store is closed: unready, and no outage is reported. */
    markClosed: () => {
      closing = true;
      setReady(false);
    },
    subscribe(listener: (ready: boolean) => void): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    /** A command answered: a command-level failure streak (timeouts on a live connection) is over. */
    noteSuccess(): void {
      if (down && redis.status === "ready") markUp("redis answering again");
    },
    noteFailure(operation: string, error: OtpError): void {
      markDown(`redis ${operation} failed; storage unavailable`, error.cause);
      // Failed for want of a connection: the outage's first diagnosis need not wait for ioredis' attempt to fail.
      if (!ready && !diagnosed) explain(undefined);
    },
  };
}

/** Node's codes for a server certificate that did not verify (chain, self-signed, name, dates). */
const certificateErrorCodes = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/**
 * What to tell the operator when the connection failed because the
 * server's certificate did not verify: a retry will not fix that, a CA will.
 */
function untrustedCertificate(error: unknown, privateCa: boolean): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code !== "string" || !certificateErrorCodes.has(code)) return undefined;
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return "redis TLS: the server's certificate does not name the REDIS_URL host; connect by a name the certificate holds; retrying";
  }
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") {
    return "redis TLS: the server's certificate is outside its validity dates; retrying";
  }
  return privateCa
    ? "redis TLS: the server's certificate does not verify against REDIS_TLS_CA or the system CAs; check that REDIS_TLS_CA is the CA that signs it; retrying"
    : "redis TLS: the server's certificate is not signed by a CA this process trusts; set REDIS_TLS_CA to the PEM file of the CA that signs it; retrying";
}

/**
 * Checks the Redis we connected to, with one INFO (its default sections hold
 * both the server's version and its memory settings):
 * - Older than 7.0: it cannot run the scripts (their shebang flags are
 *   Redis 7's), so every call would fail with "Error compiling script".
 *   Said once, at error, with the version.
 * - It may evict keys under memory pressure (a maxmemory with a policy other
 *   than noeviction): limits, codes, idempotency keys and delivery records
 *   would vanish before their TTL, with no error anywhere. Under noeviction
 *   a full Redis refuses writes instead, which callers see as UNAVAILABLE.
 *   Warned once.
 * - With Sentinel, a first master with no replica: a failover would have
 *   nothing to promote. Warned once.
 * INFO may be disabled (some managed Redis): then there is nothing to say.
 */
function checkRedisOnConnect(redis: Redis | Cluster, logger: Logger, sentinelSet: string | undefined): void {
  let warnedVersion = false;
  let warnedEviction = false;
  // Only the first master is asked about its replicas: one a failover just promoted has none for a while.
  let replicasChecked = sentinelSet === undefined;
  redis.on("ready", () => {
    if (warnedVersion && warnedEviction && replicasChecked) return;
    redis.info().then(
      (info) => {
        const tooOld = redisTooOld(info);
        if (tooOld !== undefined && !warnedVersion) {
          warnedVersion = true;
          logger.error(
            { redis_version: tooOld },
            `Redis ${tooOld} is too old: OtpEmail needs Redis 7.0 or later (its scripts declare Redis 7 flags), ` +
              "and every call that reaches Redis fails until it is upgraded",
          );
        }
        if (!replicasChecked) {
          replicasChecked = true;
          const replicas = /^connected_slaves:(\d+)/m.exec(info)?.[1];
          if (replicas === "0") {
            logger.warn(
              { redis_master_set: sentinelSet },
              `the Redis master of ${sentinelSet ?? ""} has no replica connected: should it fail, the sentinels have none to promote, ` +
                "and storage stays down until it is back",
            );
          }
        }
        const policy = /^maxmemory_policy:(\S+)/m.exec(info)?.[1];
        const maxmemory = Number(/^maxmemory:(\d+)/m.exec(info)?.[1] ?? "0");
        if (warnedEviction || policy === undefined || policy === "noeviction" || maxmemory === 0) return;
        warnedEviction = true;
        logger.warn(
          { maxmemory_policy: policy, maxmemory },
          `Redis may evict keys when full (maxmemory-policy ${policy}): rate limits, codes, idempotency keys and ` +
            "delivery records could vanish early without an error; set maxmemory-policy noeviction",
        );
      },
      () => undefined,
    );
  });
}

/**
 * The version INFO reports when it is older than 7.0, the first release
 * whose scripts may declare flags; undefined for 7.0 and later (Valkey
 * reports a redis_version of 7.2) or when INFO does not say.
 */
export function redisTooOld(info: string): string | undefined {
  const version = /^redis_version:(\d+)(\.[^\s]*)?/m.exec(info);
  if (version === null) return undefined;
  return Number(version[1]) < 7 ? `${version[1]}${version[2] ?? ""}` : undefined;
}

/**
 * The operations Redis refuses when it is full (they may add data; see the
 * scripts' shebang flags): one of them answered means Redis has room.
 */
const addsData: ReadonlySet<string> = new Set([
  "consumeLimits",
  "addCode",
  "verifyGuess",
  "claimIdempotencyKey",
  "putRecord",
  "addDeliveryReport",
  "addRecipientMessage",
  "putSuppression",
]);

/**
 * Redis's refusal when used memory is over maxmemory and nothing may be
 * evicted: "OOM command not allowed when used memory > 'maxmemory'." A
 * MULTI with such a command fails with EXECABORT, the OOM among its
 * `previousErrors`.
 */
function isOutOfMemory(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  if (error.message.startsWith("OOM ")) return true;
  const previous = (error as { previousErrors?: unknown }).previousErrors;
  return Array.isArray(previous) && previous.some((inner) => inner instanceof Error && inner.message.startsWith("OOM "));
}

/**
 * Says once that Redis is full, in the operator's words, and once that it
 * takes writes again: not once per refused call, which on a busy service
 * would be every call.
 */
function trackFullness(logger: Logger, onChange: ((full: boolean) => void) | undefined) {
  let full = false;
  return {
    isFull: () => full,
    noteFull(operation: string, cause: unknown): void {
      if (full) return;
      full = true;
      onChange?.(true);
      logger.error(
        { err: cause, operation },
        "Redis is full: used memory is over maxmemory and Redis refuses every write (maxmemory-policy noeviction), " +
          "so SendOtp and VerifyOtp answer UNAVAILABLE, having spent and stored nothing, while reads still answer; " +
          "raise maxmemory or free memory (a shorter RECORD_RETENTION keeps fewer delivery records)",
      );
    },
    noteRoom(): void {
      if (!full) return;
      full = false;
      onChange?.(false);
      logger.info("Redis accepts writes again: no longer full");
    },
  };
}

/**
 * ioredis attaches the failed command, arguments included (HMACs, addresses
 * in records), to its errors. Keep only the words, so nothing sensitive
 * travels with the cause into logs.
 */
function toUnavailable(error: unknown): OtpError {
  return storageUnavailable(describe(error));
}

function describe(error: unknown, nodeError?: Error): Error | undefined {
  if (error === undefined) return undefined;
  if (!(error instanceof Error)) return new Error(typeof error === "string" ? error : "non-Error failure");
  // A cluster that reached no node says only "Failed to refresh slots cache." (its last node's error, most often
  // "Connection is closed."): the node's own error (ECONNREFUSED...) says why.
  const clusterFailure = "lastNodeError" in error;
  const cause = clusterFailure ? (nodeError ?? (error as { lastNodeError?: unknown }).lastNodeError) : undefined;
  const clean = new Error(cause instanceof Error ? `${error.message.replace(/\.$/, "")}: ${cause.message}` : error.message);
  clean.name = error.name;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string") Object.assign(clean, { code });
  return clean;
}

/** maxFailures, now, keepExpiredMs: the tail of the add script's arguments and all of reserve's. */
function codeSetArgs(setOptions: CodeSetOptions): ScriptArg[] {
  if (!(Number.isInteger(setOptions.maxFailures) && setOptions.maxFailures > 0)) {
    throw new TypeError(`maxFailures must be a positive integer, got ${setOptions.maxFailures}`);
  }
  return [setOptions.maxFailures, wholeMs(setOptions.now), wholeMs(setOptions.keepExpiredMs)];
}

/** A thrown value as a rejected promise, for functions that answer with promises rather than throw. */
function rejection(error: unknown): Promise<never> {
  return Promise.reject(error instanceof Error ? error : new Error(String(error)));
}

/** Scripts take integer milliseconds. */
function wholeMs(value: number): number {
  if (!Number.isFinite(value)) throw new TypeError(`expected a finite number of milliseconds, got ${value}`);
  return Math.floor(value);
}

function ttl(ttlMs: number): number {
  if (!Number.isFinite(ttlMs)) throw new TypeError(`expected a finite TTL in milliseconds, got ${ttlMs}`);
  return Math.max(1, Math.ceil(ttlMs));
}

function parseGuessOutcome(reply: unknown): GuessOutcome {
  if (!Array.isArray(reply)) throw new Error("unexpected reply to the verify script");
  const [state, ...rest] = reply as unknown[];
  switch (state) {
    case "none":
      return { state: "none" };
    case "expired":
      return { state: "expired" };
    case "locked":
      return { state: "locked", failures: Number(rest[0]) };
    case "invalid":
      return { state: "invalid", failures: Number(rest[0]) };
    case "verified":
      return { state: "verified", id: String(rest[0]) };
    case "capped": {
      const full: FullWindow[] = [];
      for (let i = 0; i + 1 < rest.length; i += 2) full.push({ log: 0, window: Number(rest[i]) - 1, retryAt: Number(rest[i + 1]) });
      return { state: "capped", full };
    }
    default:
      throw new Error("unexpected state from the verify script");
  }
}

/** A JSON object that has string field `field`, or undefined for anything unreadable. */
function parseJsonObject<T>(value: string, field: string): T | undefined {
  try {
    const parsed: unknown = JSON.parse(value);
    if (typeof parsed === "object" && parsed !== null && typeof (parsed as Record<string, unknown>)[field] === "string") {
      return parsed as T;
    }
  } catch {
    // Fall through: unreadable.
  }
  return undefined;
}

function parseRecord(value: string): DeliveryRecord | undefined {
  try {
    const parsed: unknown = JSON.parse(value);
    if (typeof parsed === "object" && parsed !== null && typeof (parsed as { messageId?: unknown }).messageId === "string") {
      return parsed as DeliveryRecord;
    }
  } catch {
    // Fall through: unreadable.
  }
  return undefined;
}

function parseClaim(value: unknown): IdempotencyClaim {
  // The script only returns claims it could decode with both fields as strings.
  const parsed = JSON.parse(String(value)) as IdempotencyClaim;
  return { fingerprint: parsed.fingerprint, messageId: parsed.messageId };
}

/**
 * A Cluster client with the single-node client's failure behaviour (no
 * offline queue, no resending, capped reconnect backoff). Credentials and
 * TLS come from the first seed URL and apply to every node.
 */
function connectCluster(urls: string, redisOptions: RedisOptions): Cluster {
  const seeds = urls.split(",").map((url) => new URL(url.trim()));
  const first = seeds[0];
  const { retryStrategy, enableOfflineQueue, scripts: clusterScripts, tls, ...nodeOptions } = redisOptions;
  return new Cluster(
    seeds.map((seed) => ({ host: seed.hostname.replace(/^\[|\]$/g, ""), port: Number(seed.port === "" ? 6379 : seed.port) })),
    {
      scripts: clusterScripts,
      enableOfflineQueue,
      clusterRetryStrategy: retryStrategy ?? undefined,
      redisOptions: {
        ...nodeOptions,
        ...(first.username === "" ? {} : { username: decodeURIComponent(first.username) }),
        ...(first.password === "" ? {} : { password: decodeURIComponent(first.password) }),
        ...(first.protocol === "rediss:" ? { tls: tls ?? {} } : {}),
      },
    },
  );
}

/** ARGV of the consume script after the keys; validates every window. */
function limitArgs(logs: readonly LimitLog[], entry: string, now: number, suppressionKeys: number): ScriptArg[] {
  let windows = "";
  for (const log of logs) windows = windows === "" ? windowSpec(log) : `${windows} ${windowSpec(log)}`;
  return [wholeMs(now), entry, suppressionKeys, windows];
}

// A limiter hands the same windows list (its configuration) to every
// request: its text is made and checked once per list, not per send.
const windowSpecs = new WeakMap<readonly LimitWindow[], string>();

/** A log's windows as the consume script reads them: `count max windowMs ...`, validated. */
function windowSpec(log: LimitLog): string {
  let spec = windowSpecs.get(log.windows);
  if (spec === undefined) {
    spec = windowArgs(log).join(" ");
    windowSpecs.set(log.windows, spec);
  }
  return spec;
}

/** A log's windows as script arguments (count, then max and windowMs of each), validated. */
function windowArgs(log: LimitLog): ScriptArg[] {
  if (log.windows.length === 0) throw new TypeError(`limit log ${log.id} has no window`);
  const args: ScriptArg[] = [log.windows.length];
  for (const { max, windowMs } of log.windows) {
    if (!(Number.isInteger(max) && max > 0 && Number.isInteger(windowMs) && windowMs > 0)) {
      throw new TypeError(`limit log ${log.id}: max and windowMs must be positive integers`);
    }
    args.push(max, windowMs);
  }
  return args;
}

function parseLimitOutcome(reply: unknown, logCount: number): LimitOutcome {
  if (!Array.isArray(reply)) throw new Error("unexpected reply to the limits script");
  if (reply[0] === 2) return { admitted: false, suppressed: JSON.parse(String(reply[1])) as SuppressionEntry };
  const [admitted, ...rest] = (reply as unknown[]).map(Number);
  if (admitted === 1 && rest.length === logCount) return { admitted: true, nextAt: rest };
  if (admitted !== 0 || rest.length === 0 || rest.length % 3 !== 0) throw new Error("unexpected reply to the limits script");
  const full = [];
  for (let i = 0; i < rest.length; i += 3) {
    full.push({ log: rest[i] - 1, window: rest[i + 1] - 1, retryAt: rest[i + 2] });
  }
  return { admitted: false, full };
}
