/**
 * The README's "What to retry" table is what a team integrating the service
 * codes its retries from: it must name every google.rpc.ErrorInfo reason the
 * service answers with, under the status code it comes with, and say which
 * answers must not be retried with the same idempotency key.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");

/** The section's table rows, each as `[answer, reason, retry?]`. */
function retryGuide(): string[][] {
  const start = readme.indexOf("\n### What to retry\n");
  if (start < 0) throw new Error('README has no "### What to retry" section');
  const section = readme.slice(start + 1, readme.indexOf("\n## ", start + 1));
  return section
    .split("\n")
    .filter((line) => line.startsWith("| ") && !line.startsWith("| answer "))
    .map((line) => line.slice(1, -1).split("|").map((cell) => cell.trim()));
}

/** Every ErrorInfo reason the service answers, by status code (INVALID_ARGUMENT's reason is the field's rule). */
const reasonsByCode: Record<string, string[]> = {
  UNAVAILABLE: ["STORAGE_UNAVAILABLE", "RELAY_UNAVAILABLE", "RELAY_AUTH_FAILED", "RELAY_TLS_FAILED", "RELAY_BACKLOG_FULL", "IDEMPOTENT_REQUEST_IN_PROGRESS"],
  RESOURCE_EXHAUSTED: ["RECIPIENT_RATE_LIMITED", "RESEND_COOLDOWN", "END_USER_IP_RATE_LIMITED", "CALLER_QUOTA_EXCEEDED", "GLOBAL_BUDGET_EXHAUSTED", "VERIFY_FAILURES_EXCEEDED"],
  FAILED_PRECONDITION: ["RELAY_REJECTED", "RECIPIENT_SUPPRESSED", "SEND_OUTCOME_UNKNOWN"],
  INVALID_ARGUMENT: ["MESSAGE_ID_INVALID", "MALFORMED_REQUEST"],
  NOT_FOUND: ["MESSAGE_NOT_FOUND"],
  ALREADY_EXISTS: ["IDEMPOTENCY_KEY_REUSED"],
  UNAUTHENTICATED: ["CREDENTIALS_MISSING", "TOKEN_INVALID", "AUTHORIZATION_MALFORMED", "CREDENTIALS_DISAGREE", "CERTIFICATE_UNNAMED"],
  PERMISSION_DENIED: ["PURPOSE_NOT_ALLOWED"],
  INTERNAL: ["INTERNAL"],
};

describe("the README tells a caller what to retry", () => {
  it("names every reason the service answers, under its status code", () => {
    const rows = retryGuide();
    for (const [code, reasons] of Object.entries(reasonsByCode)) {
      for (const reason of reasons) {
        const row = rows.find(([answer, named]) => answer?.includes(`\`${code}\``) && named?.includes(`\`${reason}\``));
        expect(row, `${code} ${reason}`).toBeDefined();
      }
    }
  });

  it("a refusal for good, and a send whose outcome is unknown, are not retried with the same key", () => {
    const rows = retryGuide();
    for (const reason of ["RELAY_REJECTED", "RECIPIENT_SUPPRESSED", "SEND_OUTCOME_UNKNOWN"]) {
      const verdict = rows.find(([, named]) => named?.includes(`\`${reason}\``))?.[2] ?? "";
      expect(verdict, reason).toMatch(/^(no|not with the same key)\b/);
    }
    expect(rows.find(([, named]) => named?.includes("`SEND_OUTCOME_UNKNOWN`"))?.[2]).toMatch(/new key/);
  });

  it("SENDING and RETRYING are not failures: the caller follows them with GetDeliveryStatus", () => {
    const row = retryGuide().find(([answer]) => answer?.includes("`SENDING`") && answer.includes("`RETRYING`"));
    expect(row?.[2]).toMatch(/^not a failure.*GetDeliveryStatus/);
  });
});
