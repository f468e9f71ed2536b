/**
 * The seams for rate limits. The OTP service admits every send through a
 * SendLimiter and every verification through a VerifyLimiter; `limiter.ts`
 * implements both over the store's atomic limit logs.
 */
import type { SuppressionEntry } from "../delivery/record.js";
import type { CallContext } from "../otp/types.js";
import type { FailureCap, FullWindow, LimitWindow } from "../store/types.js";

export type { LimitWindow };

export interface SendAdmission {
  /**
   * The earliest time the same send (caller, recipient, purpose, end-user IP)
   * will be admitted again: every limit it counted against has room by then.
   */
  readonly resendAvailableAt: number;
  /**
   * Takes this admission back out of every limit, for a send that is not
   * going to happen after all (storing its code or record failed). Only the
   * first call does anything; rejects with the store's error when the store
   * could not take it back.
   */
  refund(): Promise<void>;
}

/** Not admitted, and nothing spent: the recipient is suppressed (see SendLimitRequest.recipientHash). */
export interface SendSuppressed {
  readonly suppressedBy: SuppressionEntry;
}

export interface SendLimitRequest {
  /** Lower-cased recipient address. */
  readonly recipientKey: string;
  readonly purpose: string;
  /** "" when the caller did not say. */
  readonly endUserIp: string;
  readonly now: number;
  /**
   * The recipient's suppression-list hash, for a limiter whose
   * `checksSuppression` is true: when that recipient is suppressed, admit
   * checks no limit, spends nothing and resolves with `suppressedBy`.
   */
  readonly recipientHash?: string | undefined;
  /**
   * The recipient's hash under the previous OTP_SECRET while a rotation's
   * grace lasts: checked with `recipientHash`, in the same step (the
   * current one's entry wins when both are suppressed).
   */
  readonly previousRecipientHash?: string | undefined;
}

export interface SendLimiter {
  /**
   * Admits one send or rejects with an OtpError of kind "resource_exhausted"
   * (naming the limit, with retryAfterMs). A rejected send consumes nothing.
   */
  admit(ctx: CallContext, request: SendLimitRequest): Promise<SendAdmission | SendSuppressed>;
  /**
   * When admit would next admit this send, read without spending anything
   * (an idempotent replay answers it): `request.now` when every limit has
   * room. The suppression list is not looked at.
   */
  resendAvailableAt(ctx: CallContext, request: SendLimitRequest): Promise<number>;
  /**
   * True when admit checks `request.recipientHash` against the suppression
   * list itself, atomically and before any limit (the store limiter does,
   * in the same round trip as the limits). Otherwise the caller must check
   * the suppression list before admit.
   */
  readonly checksSuppression?: boolean;
}

export interface VerifyLimitRequest {
  /** Lower-cased recipient address. */
  readonly recipientKey: string;
  readonly now: number;
}

/** The cap on failed verifications of one caller for one recipient. */
export interface VerifyFailureCap extends FailureCap {
  /**
   * Throws the RESOURCE_EXHAUSTED error (naming verify_failures, with the
   * retry delay) for a guess the store refused because `full` windows of
   * the cap are full.
   */
  refuse(full: readonly FullWindow[]): never;
}

export interface VerifyLimiter {
  /**
   * The cap on failed verifications of (caller, recipient), or undefined when
   * there is none. The store checks it before the guess counts and records a
   * wrong guess in it, in the same atomic step as the guess itself
   * (OtpStore.verifyGuess), so concurrent guesses can never exceed it and a
   * right guess is never counted.
   */
  failureCap(ctx: CallContext, request: VerifyLimitRequest): VerifyFailureCap | undefined;
}

/**
 * Every limit, as configured. A list of windows is "at most `max` per
 * `windowMs`" for each of them; an empty list turns that limit off.
 */
export interface LimitsConfig {
  /** Sends to one recipient, whoever the caller and whatever the purpose (LIMIT_RECIPIENT). */
  readonly recipient: readonly LimitWindow[];
  /** Time between two sends by one caller to one recipient for one purpose; 0 is off (LIMIT_RESEND_COOLDOWN). */
  readonly resendCooldownMs: number;
  /** Sends for one end-user IP (an IPv6 /64 counts as one), when the caller gives it (LIMIT_END_USER_IP). */
  readonly endUserIp: readonly LimitWindow[];
  /** Sends by one caller (LIMIT_CALLER). */
  readonly caller: readonly LimitWindow[];
  /** Sends by the whole service: the sending domain's budget (LIMIT_GLOBAL). */
  readonly global: readonly LimitWindow[];
  /** Failed verifications of one caller for one recipient, across purposes and codes (LIMIT_VERIFY_FAILURES). */
  readonly verifyFailures: readonly LimitWindow[];
}

/** No limits: every send is admitted and may be repeated at once; every guess is allowed. */
export const unlimited: SendLimiter & VerifyLimiter = {
  admit: (_ctx, request) => Promise.resolve({ resendAvailableAt: request.now, refund: nothingToRefund }),
  resendAvailableAt: (_ctx, request) => Promise.resolve(request.now),
  failureCap: () => undefined,
};

/** SendAdmission.refund of an admission that spent nothing. */
export function nothingToRefund(): Promise<void> {
  return Promise.resolve();
}
