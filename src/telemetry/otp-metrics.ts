/**
 * Counts what the OTP domain answers, by wrapping an OtpService: SendOtp
 * outcomes, VerifyOtp results and rate-limit rejections. The domain stays
 * free of metrics; every label comes from a closed set.
 */
import type { DeliveryState } from "../delivery/record.js";
import { isReplay, OtpError } from "../errors.js";
import type { OtpService, VerifyResult } from "../otp/types.js";
import type { OnRefused } from "../rpc/otp-handlers.js";
import { purposeLabel, type Metrics, type SendOutcome, type VerifyResultLabel } from "./metrics.js";

type OtpMetrics = Pick<Metrics, "sends" | "verifications" | "rateLimitRejections" | "limitLabel">;

/** What a successful SendOtp's state says about the send. */
function sentOutcome(state: DeliveryState): SendOutcome {
  switch (state) {
    case "QUEUED":
    case "SENDING":
    case "RETRYING":
      return "pending";
    case "SUPPRESSED":
      return "suppressed";
    case "FAILED":
      return "relay_unavailable";
    case "ACCEPTED":
    case "DELAYED":
    case "DELIVERED":
    case "BOUNCED":
      return "accepted";
  }
}

function failedSendOutcome(error: unknown): SendOutcome {
  if (!(error instanceof OtpError)) return "error";
  // The first request's refusal (or "in progress") again: that request counted it.
  if (isReplay(error)) return "replayed";
  switch (error.kind) {
    // already_exists is only ever an idempotency_key reused for a different request: the caller's mistake.
    case "invalid_argument":
    case "already_exists":
      return "invalid";
    case "resource_exhausted":
      return "rate_limited";
    case "unauthenticated":
    case "permission_denied":
      return "denied";
    case "failed_precondition":
      // A suppressed recipient is refused with FAILED_PRECONDITION (nothing sent): its own outcome, not an error.
      if (error.reason === "RECIPIENT_SUPPRESSED") return "suppressed";
      // Given up at shutdown while the relay had it (or the replay of such a send): not the relay's failure, nor ours.
      // The relay had it whole and never answered: its outcome unknown too, but the relay's doing.
      if (error.reason === "SEND_OUTCOME_UNKNOWN") return error.metadata["attempt_outcome"] === "unanswered" ? "unanswered" : "abandoned";
      return error.reason === "RELAY_REJECTED" ? "relay_rejected" : "error";
    case "unavailable":
      if (error.reason === "RELAY_BACKLOG_FULL") return "backlog_full";
      return error.reason.startsWith("RELAY_") ? "relay_unavailable" : "error";
    case "not_found":
    case "internal":
      return "error";
  }
}

function failedVerifyResult(error: unknown): VerifyResultLabel {
  if (!(error instanceof OtpError)) return "error";
  if (error.kind === "resource_exhausted") return "rate_limited";
  if (error.kind === "invalid_argument") return "invalid_request";
  if (error.kind === "unauthenticated" || error.kind === "permission_denied") return "denied";
  return "error";
}

const verifyLabels: Readonly<Record<VerifyResult, VerifyResultLabel>> = {
  VERIFIED: "verified",
  INVALID: "invalid",
  EXPIRED: "expired",
  LOCKED: "locked",
  NOT_FOUND: "not_found",
};

/**
 * Counts the calls the rpc layer refused before they reached the domain (a
 * caller that could not be identified, UNAUTHENTICATED: `denied`, like the
 * callers the domain refuses; a request that did not decode: `invalid` and
 * `invalid_request`, purpose `unknown`), so that otp_sends_total and
 * otp_verifications_total count every SendOtp and VerifyOtp call.
 */
export function countRefusedCalls(metrics: Pick<Metrics, "sends" | "verifications">): OnRefused {
  return (method, purpose, error) => {
    if (method === "sendOtp") metrics.sends.inc({ purpose: purposeLabel(purpose), outcome: failedSendOutcome(error) });
    else if (method === "verifyOtp") metrics.verifications.inc({ purpose: purposeLabel(purpose), result: failedVerifyResult(error) });
  };
}

/** Wraps `otp`, counting into `metrics`; behaviour and errors pass through untouched. */
export function instrumentOtpService(otp: OtpService, metrics: OtpMetrics): OtpService {
  /** One count per limit that refused the request (QuotaFailure violations), else one for the error's reason. */
  function countRateLimit(rpc: "send" | "verify", error: unknown): void {
    if (!(error instanceof OtpError) || error.kind !== "resource_exhausted") return;
    const violations = (error as { quotaViolations?: readonly { readonly quotaId?: string }[] }).quotaViolations ?? [];
    const limits = violations.map((violation) => violation.quotaId ?? "").filter((id) => id !== "");
    for (const limit of limits.length > 0 ? new Set(limits) : [error.reason]) {
      metrics.rateLimitRejections.inc({ rpc, limit: metrics.limitLabel(limit) });
    }
  }

  return {
    // Whatever else the service offers passes through as it is.
    ...otp,

    async sendOtp(ctx, input) {
      const purpose = purposeLabel(input.purpose);
      try {
        const result = await otp.sendOtp(ctx, input);
        // A replay sent nothing: counted apart, so that `accepted` counts each mail the relay took once.
        metrics.sends.inc({ purpose, outcome: result.replayed === true ? "replayed" : sentOutcome(result.state) });
        return result;
      } catch (error) {
        metrics.sends.inc({ purpose, outcome: failedSendOutcome(error) });
        countRateLimit("send", error);
        throw error;
      }
    },

    async verifyOtp(ctx, input) {
      const purpose = purposeLabel(input.purpose);
      try {
        const result = await otp.verifyOtp(ctx, input);
        metrics.verifications.inc({ purpose, result: verifyLabels[result.result] });
        return result;
      } catch (error) {
        metrics.verifications.inc({ purpose, result: failedVerifyResult(error) });
        countRateLimit("verify", error);
        throw error;
      }
    },
  };
}
