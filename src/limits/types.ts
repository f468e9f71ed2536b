/**
 * The seam for rate limits. The core service admits every send through a
 * SendLimiter; the limits issue supplies the Redis-backed one.
 */
import type { CallContext } from "../otp/types.js";

export interface SendAdmission {
  /** The earliest time another send to this recipient and purpose will be admitted. */
  readonly resendAvailableAt: number;
}

export interface SendLimitRequest {
  /** Lower-cased recipient address. */
  readonly recipientKey: string;
  readonly purpose: string;
  /** "" when the caller did not say. */
  readonly endUserIp: string;
  readonly now: number;
}

export interface SendLimiter {
  /**
   * Admits one send or rejects with an OtpError of kind "resource_exhausted"
   * (naming the limit, with retryAfterMs). A rejected send consumes nothing.
   */
  admit(ctx: CallContext, request: SendLimitRequest): Promise<SendAdmission>;
}

/** No limits: every send is admitted and may be repeated at once. */
export const unlimited: SendLimiter = {
  admit: (_ctx, request) => Promise.resolve({ resendAvailableAt: request.now }),
};
