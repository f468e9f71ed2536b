/**
 * The in-memory OtpStore for the zero-config dev mode: one process, nothing
 * shared, everything lost on restart. It mirrors the Redis store's semantics
 * (and passes the same contract suite), including TTLs, which follow the
 * injected clock: entries expire lazily when read, and a periodic sweep drops
 * the ones nobody reads again.
 *
 * Every operation runs synchronously between two awaits, so it is atomic
 * just as a Lua script is in Redis.
 */
import { timingSafeEqual } from "node:crypto";
import type { Clock } from "../clock.js";
import { sameSuppressionCause, type DeliveryRecord, type DeliveryReport, type SuppressionEntry } from "../delivery/record.js";
import { storageUnavailable } from "../errors.js";
import type {
  ClaimResult,
  CodeEntry,
  CodeSetOptions,
  CodeSetRef,
  ConsumeLimitsOptions,
  GuessOptions,
  GuessOutcome,
  LimitWindow,
  IdempotencyClaim,
  LimitLog,
  LimitOutcome,
  FullWindow,
  OtpStore,
} from "./types.js";
import { maxDeliveryReports, maxRecipientMessages } from "./types.js";

export interface MemoryStoreOptions {
  /** Drives every TTL; tests pass a fake clock. */
  readonly clock: Clock;
}

/** How often expired entries are swept; reads never return one in between. */
const sweepIntervalMs = 60_000;

/** A value and when it expires, on the injected clock's timeline. */
interface Slot<T> {
  value: T;
  expiresAt: number;
}

interface CodeSet {
  failures: number;
  /** entryId -> code; insertion order kept, as in a Redis hash of this size. */
  readonly entries: Map<string, { readonly hmac: string; readonly expiresAt: number }>;
}

/** One admission in a limit log. */
interface LimitEntry {
  readonly at: number;
  readonly entry: string;
}

/**
 * undefined when the window (entries younger than `windowMs`) has room for
 * one more; otherwise when it will: the entry whose departure leaves `max - 1`.
 */
function whenRoomFor(entries: readonly LimitEntry[], max: number, windowMs: number, now: number): number | undefined {
  const inWindow = entries.filter((e) => e.at > now - windowMs);
  if (inWindow.length < max) return undefined;
  return inWindow[inWindow.length - max].at + windowMs;
}

/** The map key of a code set: its group and id together. */
function codeSetKey(set: CodeSetRef): string {
  return `${set.group}\0${set.id}`;
}

/** The map key of a group's failure log, apart from the send limits' logs. */
function failureLogKey(group: string, logId: string): string {
  return `fail\0${group}\0${logId}`;
}

/** Exact equality of two stored HMAC strings, in constant time for equal lengths. */
function sameHmac(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

function longestWindow(windows: readonly LimitWindow[]): number {
  return Math.max(...windows.map((w) => w.windowMs));
}

/** Creates an empty in-memory store. Development only. */
export function createMemoryStore(options: MemoryStoreOptions): OtpStore {
  const { clock } = options;
  const codeSets = new Map<string, Slot<CodeSet>>();
  // Records are kept serialized so a caller mutating its object (or the one
  // it got back) cannot change what is stored, as with Redis.
  const records = new Map<string, Slot<string>>();
  const claims = new Map<string, Slot<IdempotencyClaim>>();
  /** Limit logs: entries oldest first, as a Redis sorted set orders them. */
  const limitLogs = new Map<string, Slot<LimitEntry[]>>();
  /** DSNs per message and suppressions, serialized like records. */
  const reports = new Map<string, Slot<string[]>>();
  const suppressions = new Map<string, Slot<string>>();
  /** Each recipient's recent message ids, newest first. */
  const recipientMessages = new Map<string, Slot<string[]>>();
  const tables: readonly Map<string, Slot<unknown>>[] = [codeSets, records, claims, limitLogs, reports, suppressions, recipientMessages];
  const listeners = new Set<(ready: boolean) => void>();
  let closed = false;

  const sweep = setInterval(() => {
    const now = clock.now();
    for (const table of tables) {
      for (const [key, slot] of table) if (slot.expiresAt <= now) table.delete(key);
    }
  }, sweepIntervalMs);
  // The sweep alone must not keep the process alive.
  sweep.unref();

  function read<T>(table: Map<string, Slot<T>>, key: string): T | undefined {
    const slot = table.get(key);
    if (slot === undefined) return undefined;
    if (slot.expiresAt <= clock.now()) {
      table.delete(key);
      return undefined;
    }
    return slot.value;
  }

  /** Sets the TTL the way PEXPIRE does: `ttlMs` from now, gone at once when not positive. */
  function expireIn<T>(table: Map<string, Slot<T>>, key: string, value: T, ttlMs: number): void {
    if (ttlMs <= 0) table.delete(key);
    else table.set(key, { value, expiresAt: clock.now() + ttlMs });
  }

  /** Runs one operation like the Redis store would, rejecting once closed. */
  function run<T>(body: () => T): Promise<T> {
    return new Promise((resolve) => {
      if (closed) throw storageUnavailable(new Error("the memory store is closed"));
      resolve(body());
    });
  }

  return {
    addCode(set: CodeSetRef, entry: CodeEntry, setOptions: CodeSetOptions): Promise<void> {
      return run(() => {
        const { now, maxFailures, keepExpiredMs } = setOptions;
        const setKey = codeSetKey(set);
        let codes = read(codeSets, setKey);
        if (codes === undefined || codes.failures >= maxFailures) {
          // Locked (or new): a fresh code starts over.
          codes = { failures: 0, entries: new Map() };
        }
        let lastExpiry = entry.expiresAt;
        for (const [id, code] of codes.entries) {
          if (code.expiresAt <= now) codes.entries.delete(id);
          else lastExpiry = Math.max(lastExpiry, code.expiresAt);
        }
        codes.entries.set(entry.id, { hmac: entry.hmac, expiresAt: entry.expiresAt });
        expireIn(codeSets, setKey, codes, lastExpiry + keepExpiredMs - now);
      });
    },

    verifyGuess(set: CodeSetRef, hmac: string, guessOptions: GuessOptions): Promise<GuessOutcome> {
      return run((): GuessOutcome => {
        const { now, maxFailures, keepExpiredMs, failureCap } = guessOptions;
        const setKey = codeSetKey(set);
        const codes = read(codeSets, setKey);
        if (codes === undefined || codes.entries.size === 0) return { state: "none" };
        // A code is live strictly before its expiresAt, the expiry SendOtp and GetDeliveryStatus report.
        const live: CodeEntry[] = [];
        let lastExpiry = 0;
        for (const [id, code] of codes.entries) {
          lastExpiry = Math.max(lastExpiry, code.expiresAt);
          if (code.expiresAt > now) live.push({ id, hmac: code.hmac, expiresAt: code.expiresAt });
        }
        if (live.length === 0) {
          if (now >= lastExpiry + keepExpiredMs) {
            codeSets.delete(setKey);
            return { state: "none" };
          }
          return { state: "expired" };
        }
        if (codes.failures >= maxFailures) return { state: "locked", failures: codes.failures };

        let failures: LimitEntry[] = [];
        if (failureCap !== undefined) {
          const { windows } = failureCap.log;
          const longest = longestWindow(windows);
          failures = (read(limitLogs, failureLogKey(set.group, failureCap.log.id)) ?? []).filter((e) => e.at > now - longest);
          const full = windows.flatMap((w, window) => {
            const retryAt = whenRoomFor(failures, w.max, w.windowMs, now);
            return retryAt === undefined ? [] : [{ log: 0, window, retryAt }];
          });
          if (full.length > 0) return { state: "capped", full };
        }

        // Every live code is compared, with no early exit.
        let match: string | undefined;
        for (const code of live) {
          if (sameHmac(code.hmac, hmac) && match === undefined) match = code.id;
        }
        if (match !== undefined) {
          // One-time use: every code of the set goes with the one that matched.
          codeSets.delete(setKey);
          return { state: "verified", id: match };
        }
        codes.failures += 1;
        if (failureCap !== undefined) {
          const position = failures.findIndex((e) => e.at > now);
          failures.splice(position === -1 ? failures.length : position, 0, { at: now, entry: failureCap.entry });
          expireIn(limitLogs, failureLogKey(set.group, failureCap.log.id), failures, longestWindow(failureCap.log.windows));
        }
        return { state: "invalid", failures: codes.failures };
      });
    },

    putRecord(record: DeliveryRecord, ttlMs: number): Promise<void> {
      return run(() => expireIn(records, record.messageId, JSON.stringify(record), Math.max(1, ttlMs)));
    },

    getRecord(messageId: string): Promise<DeliveryRecord | undefined> {
      return run(() => {
        const value = read(records, messageId);
        return value === undefined ? undefined : (JSON.parse(value) as DeliveryRecord);
      });
    },

    addDeliveryReport(messageId: string, report: DeliveryReport, ttlMs: number): Promise<boolean> {
      return run(() => {
        const kept = read(reports, messageId) ?? [];
        const { identity } = report;
        if (identity !== undefined && kept.some((value) => (JSON.parse(value) as DeliveryReport).identity === identity)) return false;
        const list = [...kept, JSON.stringify(report)].slice(-maxDeliveryReports);
        expireIn(reports, messageId, list, Math.max(1, ttlMs));
        return true;
      });
    },

    getDeliveryReports(messageId: string): Promise<readonly DeliveryReport[]> {
      return run(() => (read(reports, messageId) ?? []).map((value) => JSON.parse(value) as DeliveryReport));
    },

    getRecordWithReports(messageId: string): Promise<readonly [DeliveryRecord | undefined, readonly DeliveryReport[]]> {
      return run(() => {
        const value = read(records, messageId);
        const record = value === undefined ? undefined : (JSON.parse(value) as DeliveryRecord);
        return [record, (read(reports, messageId) ?? []).map((report) => JSON.parse(report) as DeliveryReport)] as const;
      });
    },

    putSuppression(recipientHash: string, entry: SuppressionEntry, ttlMs: number): Promise<SuppressionEntry> {
      return run(() => {
        const value = read(suppressions, recipientHash);
        const kept = value === undefined ? undefined : (JSON.parse(value) as SuppressionEntry);
        if (kept !== undefined && sameSuppressionCause(kept, entry)) return kept;
        expireIn(suppressions, recipientHash, JSON.stringify(entry), Math.max(1, ttlMs));
        return entry;
      });
    },

    getSuppression(recipientHash: string): Promise<SuppressionEntry | undefined> {
      return run(() => {
        const value = read(suppressions, recipientHash);
        return value === undefined ? undefined : (JSON.parse(value) as SuppressionEntry);
      });
    },

    removeSuppression(recipientHash: string): Promise<SuppressionEntry | undefined> {
      return run(() => {
        const value = read(suppressions, recipientHash);
        suppressions.delete(recipientHash);
        return value === undefined ? undefined : (JSON.parse(value) as SuppressionEntry);
      });
    },

    addRecipientMessage(recipientHash: string, messageId: string, ttlMs: number): Promise<void> {
      return run(() => {
        const list = [messageId, ...(read(recipientMessages, recipientHash) ?? [])].slice(0, maxRecipientMessages);
        expireIn(recipientMessages, recipientHash, list, Math.max(1, ttlMs));
      });
    },

    getRecipientMessages(recipientHash: string): Promise<readonly string[]> {
      return run(() => [...(read(recipientMessages, recipientHash) ?? [])]);
    },

    claimIdempotencyKey(keyId: string, claim: IdempotencyClaim, ttlMs: number): Promise<ClaimResult> {
      return run((): ClaimResult => {
        const existing = read(claims, keyId);
        if (existing !== undefined) return { claimed: false, existing: { ...existing } };
        const value = { fingerprint: claim.fingerprint, messageId: claim.messageId };
        expireIn(claims, keyId, value, Math.max(1, ttlMs));
        return { claimed: true };
      });
    },

    releaseIdempotencyKey(keyId: string, messageId: string): Promise<void> {
      return run(() => {
        if (read(claims, keyId)?.messageId === messageId) claims.delete(keyId);
      });
    },

    consumeLimits(logs: readonly LimitLog[], entry: string, now: number, limitOptions?: ConsumeLimitsOptions): Promise<LimitOutcome> {
      return run((): LimitOutcome => {
        const { unlessSuppressed } = limitOptions ?? {};
        const hashes = unlessSuppressed === undefined ? [] : typeof unlessSuppressed === "string" ? [unlessSuppressed] : unlessSuppressed;
        const suppressed = hashes.map((hash) => read(suppressions, hash)).find((value) => value !== undefined);
        if (suppressed !== undefined) return { admitted: false, suppressed: JSON.parse(suppressed) as SuppressionEntry };
        const full: FullWindow[] = [];
        const current = logs.map((log, index) => {
          const longest = longestWindow(log.windows);
          const entries = (read(limitLogs, log.id) ?? []).filter((e) => e.at > now - longest);
          log.windows.forEach((w, window) => {
            const retryAt = whenRoomFor(entries, w.max, w.windowMs, now);
            if (retryAt !== undefined) full.push({ log: index, window, retryAt });
          });
          return { log, longest, entries };
        });
        if (full.length > 0) return { admitted: false, full };
        const nextAt = current.map(({ log, longest, entries }) => {
          const position = entries.findIndex((e) => e.at > now);
          entries.splice(position === -1 ? entries.length : position, 0, { at: now, entry });
          expireIn(limitLogs, log.id, entries, longest);
          return Math.max(now, ...log.windows.map((w) => whenRoomFor(entries, w.max, w.windowMs, now) ?? now));
        });
        return { admitted: true, nextAt };
      });
    },

    peekLimits(logs: readonly LimitLog[], now: number): Promise<readonly number[]> {
      return run(() =>
        logs.map((log) => {
          const entries = read(limitLogs, log.id) ?? [];
          return Math.max(now, ...log.windows.map((w) => whenRoomFor(entries, w.max, w.windowMs, now) ?? now));
        }),
      );
    },

    refundLimits(logs: readonly LimitLog[], entry: string): Promise<void> {
      return run(() => {
        for (const log of logs) {
          const entries = read(limitLogs, log.id);
          const index = entries?.findIndex((e) => e.entry === entry) ?? -1;
          if (index !== -1) entries?.splice(index, 1);
        }
      });
    },

    ping: () => run(() => undefined),

    isReady: () => !closed,

    onReadyChange(listener: (ready: boolean) => void): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },

    close(): Promise<void> {
      if (!closed) {
        closed = true;
        clearInterval(sweep);
        for (const table of tables) table.clear();
        for (const listener of listeners) listener(false);
      }
      return Promise.resolve();
    },
  };
}
