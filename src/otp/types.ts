/**
 * The OTP domain's public face. The rpc/ layer translates protobuf messages
 * to and from these types; nothing here knows about gRPC.
 */
import type { DeliveryRecord, DeliveryState } from "../delivery/record.js";

/** Who is calling and under which trace; passed to every operation. */
export interface CallContext {
  /** The authenticated caller's name; scopes codes, idempotency keys and records. */
  readonly caller: string;
  /** W3C trace id of the request, or "" when not traced. */
  readonly traceId: string;
  /** The request's span id (its SendOtp server span), or undefined when not traced. */
  readonly spanId?: string | undefined;
  /**
   * When the caller must have its answer (wall clock, `Date.now()` ms), from
   * its deadline less the time the answer needs to reach it; undefined when
   * the caller set no deadline. A send still in progress then answers with
   * its state, as it does when the wait budget runs out.
   */
  readonly answerBy?: number | undefined;
}

export interface SendOtpInput {
  readonly recipient: string;
  /** Domain purpose name (`login`); anything else is rejected as INVALID_ARGUMENT. */
  readonly purpose: string;
  /** BCP 47 tag or "" for the default. */
  readonly locale: string;
  /** "" to have the service generate one. */
  readonly code: string;
  /** undefined for the default TTL; NaN for a duration that is malformed (rejected as INVALID_ARGUMENT). */
  readonly ttlMs: number | undefined;
  /** "" for none. */
  readonly idempotencyKey: string;
  /** "" for none. */
  readonly endUserIp: string;
}

export interface SendOtpResult {
  readonly messageId: string;
  readonly state: DeliveryState;
  readonly expiresAt: number;
  readonly resendAvailableAt: number;
  /** True when this is the first request's answer to a repeated idempotency_key: nothing was sent for this call. */
  readonly replayed?: boolean;
}

/** A delivery record as a caller sees it: effective state and a plain-words explanation. */
export interface DeliveryStatus {
  /** The record with `state` already made effective (abandoned sends read FAILED). */
  readonly record: DeliveryRecord;
  readonly explanation: string;
}

export interface VerifyOtpInput {
  readonly recipient: string;
  readonly purpose: string;
  readonly code: string;
}

export type VerifyResult = "VERIFIED" | "INVALID" | "EXPIRED" | "LOCKED" | "NOT_FOUND";

export interface VerifyOtpResult {
  readonly result: VerifyResult;
  readonly attemptsRemaining: number;
}

/** All three operations reject only with OtpError. */
export interface OtpService {
  sendOtp(ctx: CallContext, input: SendOtpInput): Promise<SendOtpResult>;
  getDeliveryStatus(ctx: CallContext, messageId: string): Promise<DeliveryStatus>;
  verifyOtp(ctx: CallContext, input: VerifyOtpInput): Promise<VerifyOtpResult>;
}
