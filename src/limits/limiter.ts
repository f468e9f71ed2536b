/**
 * The limits of issue 3 over the store's atomic limit logs (sliding windows):
 * which logs a request is subject to, and what a caller is told when one is
 * full.
 *
 * A SendOtp is subject to up to five logs, checked and consumed together in
 * one store operation (one Redis round trip, all or nothing):
 *
 *   recipient        every send to the mailbox (subaddresses and Gmail's dots
 *                    are one mailbox), whoever the caller and purpose
 *   resend_cooldown  one caller's sends to the address for one purpose
 *   end_user_ip      sends for one end-user IP (an IPv6 /64), when given
 *   caller           one caller's sends
 *   global           every send: the sending domain's budget
 *
 * A VerifyOtp is subject to a cap on failed verifications of (caller,
 * recipient): the limiter names the log and its windows, and the store
 * checks it and records a wrong guess in the same atomic step as the guess
 * (OtpStore.verifyGuess), beside the code sets of that caller and recipient.
 *
 * Before any of them, the same store operation checks the recipient's
 * suppression (when given its hash): a suppressed send spends nothing.
 *
 * An admitted send says when the same send will be admitted again: when
 * every one of its logs has room. The end-user IP, caller and global logs
 * count as much as the recipient's: a resend they would refuse is no resend
 * (and a relay failure's RetryInfo, built on it, is then one the limits
 * honour, as a RESOURCE_EXHAUSTED's is). An idempotent replay reads the same
 * time from the logs without spending (resendAvailableAt), and an admission
 * whose send will not happen is taken back (SendAdmission.refund).
 *
 * Log ids are keyed HMACs: no address, IP or caller name appears in a key.
 */
import { createHmac, createSecretKey } from "node:crypto";
import { isStorageFull, OtpError, type QuotaViolation } from "../errors.js";
import type { Logger } from "../logger.js";
import type { CallContext } from "../otp/types.js";
import { createRandomPool, type RandomBytes } from "../random-pool.js";
import type { FullWindow, LimitLog, OtpStore } from "../store/types.js";
import { endUserIpSubject } from "./end-user-ip.js";
import { recipientMailbox } from "./recipient-mailbox.js";
import {
  nothingToRefund,
  type LimitsConfig,
  type LimitWindow,
  type SendLimiter,
  type SendLimitRequest,
  type VerifyFailureCap,
  type VerifyLimiter,
} from "./types.js";

export interface LimiterOptions {
  readonly store: Pick<OtpStore, "consumeLimits" | "refundLimits" | "peekLimits">;
  readonly limits: LimitsConfig;
  /** Keys the log ids (the OTP secret will do: each use of it has its own label). */
  readonly secret: Buffer;
  readonly logger: Logger;
}

/** The name a limit goes by in messages, ErrorInfo metadata and QuotaFailure ids. */
export type LimitName = "recipient" | "resend_cooldown" | "end_user_ip" | "caller" | "global" | "verify_failures";

interface LimitKind {
  /** ErrorInfo.reason when this limit is the one that decides the retry delay. */
  readonly reason: string;
  /** "codes per 15m <scope>" */
  readonly counted: string;
  readonly scope: string;
}

const kinds: Readonly<Record<LimitName, LimitKind>> = {
  recipient: { reason: "RECIPIENT_RATE_LIMITED", counted: "codes", scope: "to one recipient" },
  resend_cooldown: { reason: "RESEND_COOLDOWN", counted: "code", scope: "to one recipient for one purpose" },
  end_user_ip: { reason: "END_USER_IP_RATE_LIMITED", counted: "codes", scope: "for one end-user IP" },
  caller: { reason: "CALLER_QUOTA_EXCEEDED", counted: "codes", scope: "for this caller" },
  global: {
    reason: "GLOBAL_BUDGET_EXHAUSTED",
    counted: "codes",
    scope: "for the whole service (the sending domain's budget)",
  },
  verify_failures: { reason: "VERIFY_FAILURES_EXCEEDED", counted: "failed verifications", scope: "for one recipient" },
};

/** A log together with what it limits. */
interface NamedLog {
  readonly name: LimitName;
  /** QuotaFailure.Violation.subject: never an address or an IP. */
  readonly subject: string;
  readonly log: LimitLog;
}

/**
 * The quota ids (`recipient:15m`, `global:1d`...) that `limits` can refuse a
 * send or a verification with: what the metrics count refusals by, made at 0
 * from the start.
 */
export function limitIds(limits: LimitsConfig): { readonly send: readonly string[]; readonly verify: readonly string[] } {
  const ids = (name: LimitName, windows: readonly LimitWindow[]): string[] => windows.map((window) => `${name}:${formatWindow(window.windowMs)}`);
  return {
    send: [
      ...ids("recipient", limits.recipient),
      ...ids("resend_cooldown", limits.resendCooldownMs > 0 ? [{ max: 1, windowMs: limits.resendCooldownMs }] : []),
      ...ids("end_user_ip", limits.endUserIp),
      ...ids("caller", limits.caller),
      ...ids("global", limits.global),
    ],
    verify: ids("verify_failures", limits.verifyFailures),
  };
}

/** Creates the SendLimiter and VerifyLimiter over a store. */
export function createLimiter(options: LimiterOptions): SendLimiter & VerifyLimiter {
  const { store, limits } = options;
  const logger = options.logger.child({ component: "limits" });
  // A KeyObject, made once: createHmac given a Buffer costs several times the HMAC itself (see otp/code.ts).
  const key = createSecretKey(options.secret);
  const random = createRandomPool();
  const id = (label: string, ...parts: string[]): string =>
    createHmac("sha256", key).update(`limit-${label}\0${parts.join("\0")}`).digest("hex").slice(0, 32);

  // The log's id (an HMAC) is computed only for a limit that is on.
  const named = (name: LimitName, subject: string, logId: () => string, windows: readonly LimitWindow[]): NamedLog[] =>
    windows.length === 0 ? [] : [{ name, subject, log: { id: logId(), windows } }];

  // A caller's own log is the same for every one of its sends: made once per
  // caller (callers are the configured few; the cap only bounds a surprise).
  const callerLogs = new Map<string, NamedLog | undefined>();
  const maxCachedCallers = 1024;
  function callerLog(caller: string): NamedLog | undefined {
    if (callerLogs.has(caller)) return callerLogs.get(caller);
    const [log] = named("caller", `caller:${caller}`, () => `c:${id("caller", caller)}`, limits.caller);
    if (callerLogs.size < maxCachedCallers) callerLogs.set(caller, log);
    return log;
  }
  const [globalLog] = named("global", "global", () => "g", limits.global);
  const cooldown: LimitWindow[] = limits.resendCooldownMs > 0 ? [{ max: 1, windowMs: limits.resendCooldownMs }] : [];

  /** Every log a send is subject to (those of the limits that are on). */
  function sendLogs(ctx: CallContext, request: SendLimitRequest): NamedLog[] {
    const { recipientKey, purpose } = request;
    const ip = endUserIpSubject(request.endUserIp);
    const caller = callerLog(ctx.caller);
    return [
      ...named("recipient", "recipient", () => `r:${id("recipient", recipientMailbox(recipientKey))}`, limits.recipient),
      ...named("resend_cooldown", "recipient+purpose", () => `cd:${id("cooldown", ctx.caller, recipientKey, purpose)}`, cooldown),
      ...named("end_user_ip", "end_user_ip", () => `ip:${id("ip", ip)}`, ip === "" ? [] : limits.endUserIp),
      ...(caller === undefined ? [] : [caller]),
      ...(globalLog === undefined ? [] : [globalLog]),
    ];
  }

  /** Fails with RESOURCE_EXHAUSTED naming the full window that frees up last. */
  function refuse(logs: readonly NamedLog[], full: readonly FullWindow[], now: number, caller: string): never {
    const violations = full.map((f) => {
      const { name, subject, log } = logs[f.log];
      const window = log.windows[f.window];
      return { name, subject, window, retryAt: f.retryAt };
    });
    const binding = violations.reduce((a, b) => (b.retryAt > a.retryAt ? b : a));
    const retryAfterMs = Math.max(0, binding.retryAt - now);
    // Debug only: under an attack every refusal would be a line (metrics count them).
    logger.debug({ limit: binding.name, caller, retry_after_ms: retryAfterMs }, "request refused by a rate limit");
    const quotaViolations: QuotaViolation[] = violations.map((v) => ({
      subject: v.subject,
      description: describe(v.name, v.window),
      quotaId: `${v.name}:${formatWindow(v.window.windowMs)}`,
      quotaValue: v.window.max,
    }));
    throw new OtpError(
      "resource_exhausted",
      `limit ${binding.name} reached: ${describe(binding.name, binding.window)}; retry in ${Math.ceil(retryAfterMs / 1000)}s`,
      {
        reason: kinds[binding.name].reason,
        retryAfterMs,
        quotaViolations,
        metadata: {
          limit: binding.name,
          max: String(binding.window.max),
          window: formatWindow(binding.window.windowMs),
          retry_at: new Date(binding.retryAt).toISOString(),
        },
      },
    );
  }

  return {
    // The suppression key lives beside the limit logs: one script checks it first.
    checksSuppression: true,

    async admit(ctx: CallContext, request) {
      const { now, recipientHash, previousRecipientHash } = request;
      const logs = sendLogs(ctx, request);
      if (logs.length === 0 && recipientHash === undefined) return { resendAvailableAt: now, refund: nothingToRefund };
      const logList = logs.map((l) => l.log);
      const entry = newEntry(now, random);
      let outcome;
      try {
        const unlessSuppressed =
          recipientHash !== undefined && previousRecipientHash !== undefined ? [recipientHash, previousRecipientHash] : recipientHash;
        outcome = await store.consumeLimits(logList, entry, now, { unlessSuppressed });
      } catch (error) {
        // A full storage refused the script before it ran: nothing was spent, and a refund would be one more
        // command for a Redis that is already full.
        if (isStorageFull(error)) throw error;
        // No answer is not "not admitted": a Redis that stalled may run the script after the timeout.
        // The caller hears UNAVAILABLE, so take the admission back; queued behind the script, not awaited.
        // No admission reaches the caller, so nothing can refund it a second time.
        store.refundLimits(logList, entry).catch((refundError: unknown) => {
          logger.debug({ err: refundError }, "could not refund the limits of a send that got no answer from storage");
        });
        throw error;
      }
      if ("suppressed" in outcome) return { suppressedBy: outcome.suppressed };
      if (!outcome.admitted) refuse(logs, outcome.full, now, ctx.caller);
      let refunded = false;
      return {
        resendAvailableAt: Math.max(now, ...outcome.nextAt),
        refund: () => {
          if (refunded) return Promise.resolve();
          refunded = true;
          return store.refundLimits(logList, entry);
        },
      };
    },

    async resendAvailableAt(ctx: CallContext, request) {
      const logs = sendLogs(ctx, request);
      if (logs.length === 0) return request.now;
      const nextAt = await store.peekLimits(logs.map((l) => l.log), request.now);
      return Math.max(request.now, ...nextAt);
    },

    failureCap(ctx: CallContext, request): VerifyFailureCap | undefined {
      const { recipientKey, now } = request;
      const logs = named("verify_failures", "recipient", () => `vf:${id("verify", ctx.caller, recipientKey)}`, limits.verifyFailures);
      const [only] = logs;
      if (only === undefined) return undefined;
      return {
        log: only.log,
        entry: newEntry(now, random),
        refuse: (full) => refuse(logs, full, now, ctx.caller),
      };
    },
  };
}

/** A unique admission id: time first, so entries read in order in a dump. */
function newEntry(now: number, random: RandomBytes): string {
  return `${Math.floor(now).toString(36)}.${random(8).toString("hex")}`;
}

/** "at most 5 codes per 15m to one recipient" */
function describe(name: LimitName, window: LimitWindow): string {
  const kind = kinds[name];
  return `at most ${window.max} ${kind.counted} per ${formatWindow(window.windowMs)} ${kind.scope}`;
}

/** 900000 -> "15m", 86400000 -> "1d", 90000 -> "90s". */
export function formatWindow(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
