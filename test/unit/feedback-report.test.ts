/**
 * Feedback reports (RFC 5965 ARF) as data: what the parser keeps of each
 * sample (and never: the original's Subject or body, the full recipient),
 * how complaints weigh against DSNs in a record's state, and what the
 * explanation says.
 */
import { describe, expect, it } from "vitest";
import { feedbackReportFrom, looksLikeFeedbackReport, type FeedbackParseResult } from "../../src/bounce/arf.js";
import { explain } from "../../src/delivery/explain.js";
import type { DeliveryRecord, DeliveryReport } from "../../src/delivery/record.js";
import { stateFromReports, withReports } from "../../src/delivery/reports.js";
import { arfFixture, arfFixtureCode, arfFixtureMessageId, arfMessage } from "../support/arf-fixtures.js";
import { dsnMessage } from "../support/dsn-fixtures.js";

function parse(raw: Buffer): FeedbackParseResult {
  return feedbackReportFrom(raw);
}

const at = Date.UTC(2026, 10, 27, 9, 12, 4);

function report(overrides: Partial<DeliveryReport>): DeliveryReport {
  return { receivedAt: at, action: "complained", status: "", diagnosticCode: "", remoteMta: "", reportingMta: "", finalRecipient: "", envelopeId: "", ...overrides };
}

describe("parsing feedback reports", () => {
  it("Yahoo's CFL: type, agent, the draft's Received-Date, the masked recipient, and where it names the message", () => {
    const parsed = parse(arfFixture("yahoo-cfl"));
    expect(parsed).toEqual({
      ok: true,
      report: {
        feedbackType: "abuse",
        userAgent: "Yahoo!-Mail-Feedback/2.0",
        arrivalDate: "Fri, 27 Nov 2026 07:59:31 +0000",
        reportingMta: "",
        originalRcptTo: "rfc822; j***@yahoo.test",
        candidates: {
          originalMailFrom: `bounce+${arfFixtureMessageId}@bounces.acme.test`,
          returnPath: `bounce+${arfFixtureMessageId}@bounces.acme.test`,
          messageId: `${arfFixtureMessageId}@acme.test`,
        },
      },
    });
    expect(JSON.stringify(parsed)).not.toContain(arfFixtureCode);
  });

  it("JMRP: no Original-Mail-From, no Return-Path in the (base64) original, only its Message-ID", () => {
    const parsed = parse(arfFixture("microsoft-jmrp"));
    expect(parsed).toMatchObject({
      ok: true,
      report: { feedbackType: "abuse", userAgent: "Hotmail FBL", originalRcptTo: "", candidates: { originalMailFrom: "", returnPath: "", messageId: `${arfFixtureMessageId}@acme.test` } },
    });
  });

  it("headers only (text/rfc822-headers) are read the same way", () => {
    const parsed = parse(arfFixture("isp-rfc822-headers"));
    expect(parsed).toMatchObject({ ok: true, report: { feedbackType: "fraud", reportingMta: "dns; fbl.isp.example.test", candidates: { messageId: `${arfFixtureMessageId}@acme.test` } } });
    expect(JSON.stringify(parsed)).not.toContain(arfFixtureCode);
  });

  it("an unregistered type reads as other; auth-failure, a missing type or a missing report part is not a complaint", () => {
    const base = ["User-Agent: X/1", "Version: 1"];
    expect(parse(arfMessage({ to: "fbl@x.test", report: ["Feedback-Type: Opt-Out", ...base] }))).toMatchObject({ ok: true, report: { feedbackType: "other" } });
    expect(parse(arfMessage({ to: "fbl@x.test", report: ["Feedback-Type: auth-failure", ...base] }))).toEqual({
      ok: false,
      reason: "an authentication failure report (RFC 6591), not a complaint",
    });
    expect(parse(arfMessage({ to: "fbl@x.test", report: base }))).toEqual({ ok: false, reason: "feedback report without Feedback-Type" });
    expect(parse(dsnMessage({ to: "fbl@x.test", recipients: [{ action: "failed", status: "5.1.1" }] }))).toEqual({
      ok: false,
      reason: 'not a feedback report (Content-Type: multipart/report; report-type=delivery-status; boundary="B0UNDARY.1795766373/relay.local.test")',
    });
    expect(parse(arfMessage({ to: "fbl@x.test", report: [], contentType: "multipart/report; report-type=feedback-report; boundary=elsewhere" }))).toEqual({
      ok: false,
      reason: "no message/feedback-report part",
    });
  });

  it("user agent and dates are single-line and bounded", () => {
    const parsed = parse(arfMessage({ to: "fbl@x.test", report: ["Feedback-Type: abuse", `User-Agent: ${"A".repeat(5000)}`, "Arrival-Date: Fri,\u0007 27 Nov 2026"] }));
    expect(parsed.ok && parsed.report.userAgent).toHaveLength(200);
    expect(parsed.ok && parsed.report.arrivalDate).toBe("Fri, 27 Nov 2026");
  });

  it("masks an address in the user agent and the arrival date, as in the Reporting-MTA", () => {
    const parsed = parse(
      arfMessage({
        to: "fbl@x.test",
        report: ["Feedback-Type: abuse", "User-Agent: FBL/1 (for jane.doe@isp.test)", "Arrival-Date: Fri, 27 Nov 2026 (jane.doe@isp.test)", "Original-Rcpt-To: <jane.doe@isp.test>"],
      }),
    );
    expect(parsed).toMatchObject({ ok: true, report: { userAgent: "FBL/1 (for j***@isp.test)", arrivalDate: "Fri, 27 Nov 2026 (j***@isp.test)" } });
    expect(JSON.stringify(parsed)).not.toContain("jane.doe");
  });

  it("tells a feedback report from a DSN by its top-level Content-Type", () => {
    expect(looksLikeFeedbackReport(arfFixture("rfc5965-example"))).toBe(true);
    expect(looksLikeFeedbackReport(arfFixture("isp-rfc822-headers"))).toBe(true);
    expect(looksLikeFeedbackReport(dsnMessage({ to: "x@y.test", recipients: [{ action: "failed", status: "5.1.1" }] }))).toBe(false);
    expect(looksLikeFeedbackReport(Buffer.from("Subject: report-type=feedback-report\r\n\r\nmultipart/report; report-type=feedback-report\r\n"))).toBe(false);
  });
});

describe("complaints in a record's state", () => {
  it("a complaint makes an accepted or delayed message DELIVERED; a final DSN keeps its word", () => {
    expect(stateFromReports([report({})])).toBe("DELIVERED");
    expect(stateFromReports([report({ action: "delayed", status: "4.4.1" }), report({})])).toBe("DELIVERED");
    expect(stateFromReports([report({}), report({ action: "delayed", status: "4.4.1" })])).toBe("DELIVERED");
    expect(stateFromReports([report({ action: "failed", status: "5.2.2" }), report({})])).toBe("BOUNCED");
    expect(stateFromReports([report({ action: "not_spam", feedbackType: "not-spam" })])).toBe("DELIVERED");
  });

  it("the explanation says who reported what, and whether the recipient is suppressed", () => {
    const base: DeliveryRecord = {
      messageId: "01jabc",
      caller: "test",
      state: "ACCEPTED",
      recipientMasked: "j***@yahoo.com",
      recipientDomain: "yahoo.com",
      purpose: "login",
      locale: "en",
      createdAt: at - 3_600_000,
      updatedAt: at - 3_600_000,
      expiresAt: at,
      attempts: [],
      traceId: "",
    };
    const complained = withReports(base, [report({ feedbackType: "abuse", userAgent: "Yahoo!-Mail-Feedback/2.0", arrivalDate: "Fri, 27 Nov 2026 07:59:31 +0000" })]);
    expect(explain(complained, at)).toBe(
      "The recipient's mailbox provider (Yahoo!-Mail-Feedback/2.0) reported at 2026-11-27 09:12:04 UTC a spam complaint (feedback type abuse) " +
        "about the message, which it received Fri, 27 Nov 2026 07:59:31 +0000: it reached the mailbox, and the recipient did not want it. " +
        "The recipient is suppressed: further codes to it are refused for a while (support can lift it).",
    );
    expect(explain(withReports(base, [report({ feedbackType: "virus" })]), at)).toContain("The recipient is not suppressed: only abuse and fraud complaints suppress.");
    expect(explain(withReports(base, [report({ action: "not_spam", feedbackType: "not-spam" })]), at)).toMatch(/marked the message as not spam: it reached the mailbox\. Nothing is suppressed\.$/);
    const suppressed: DeliveryRecord = {
      ...base,
      state: "SUPPRESSED",
      suppressedBy: { messageId: "01jold", status: "", diagnosticCode: "", reason: "complaint", feedbackType: "fraud", bouncedAt: at, expiresAt: at + 86_400_000 },
    };
    expect(explain(suppressed, at)).toBe(
      "Not sent: the recipient marked an earlier message as spam (their mailbox provider's feedback report, type fraud, at 2026-11-27 09:12:04 UTC; " +
        "message 01jold), so sends to it are refused until 2026-11-28 09:12:04 UTC. Nothing was sent and no rate budget was spent.",
    );
  });
});
