/**
 * The seams for rate limits. The OTP service admits every send through a
 * SendLimiter and every verification through a VerifyLimiter; `limiter.ts`
 * implements both over the store's atomic limit logs.
 */
import type { SuppressionEntry } from "../delivery/record.js";
import type { CallContext } from "../otp/types.js";
import type { LimitWindow } from "../store/types.js";

export type { LimitWindow };

export interface SendAdmission {
  /** The earliest time another send to this recipient and purpose will be admitted. */
  readonly resendAvailableAt: number;
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
}

export interface SendLimiter {
  /**
   * Admits one send or rejects with an OtpError of kind "resource_exhausted"
   * (naming the limit, with retryAfterMs). A rejected send consumes nothing.
   */
  admit(ctx: CallContext, request: SendLimitRequest): Promise<SendAdmission | SendSuppressed>;
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

/** A failed verification reserved before the guess is compared. */
export interface VerifyReservation {
  /** Gives the reservation back: the guess turned out not to be a failure. */
  release(): Promise<void>;
}

export interface VerifyLimiter {
  /**
   * Reserves one failed verification of (caller, recipient) before the
   * guess is compared, so concurrent guesses can never exceed the cap, or
   * rejects with an OtpError of kind "resource_exhausted" when it is used up.
   */
  reserveFailure(ctx: CallContext, request: VerifyLimitRequest): Promise<VerifyReservation>;
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

const admitNow: VerifyReservation = { release: () => Promise.resolve() };

/** No limits: every send is admitted and may be repeated at once; every guess is allowed. */
export const unlimited: SendLimiter & VerifyLimiter = {
  admit: (_ctx, request) => Promise.resolve({ resendAvailableAt: request.now }),
  reserveFailure: () => Promise.resolve(admitNow),
};
