import { describe, expect, it } from "vitest";
import { parseDeliveryStatus, parseDsn } from "../../src/bounce/dsn.js";
import { explain } from "../../src/delivery/explain.js";
import type { DeliveryRecord, DeliveryReport } from "../../src/delivery/record.js";
import { classifyStatus, reportStatus, stateFromReports, suppresses, withReports } from "../../src/delivery/reports.js";
import {
  dsnMessage,
  gmailDmarcDiagnostic,
  postfixFixtureMessageId,
  postfixUnknownUserDsn,
} from "../support/dsn-fixtures.js";

const id = "01kbf3vq0m4x2c9d8e7f6g5h4j";
const to = `bounce+${id}@bounces.acme.test`;

describe("parseDsn (RFC 3464 over mailparser)", () => {
  it("reads a real Postfix bounce: envelope id, reporting MTA, action, status, masked diagnostic", async () => {
    const result = await parseDsn(postfixUnknownUserDsn());

    expect(result).toEqual({
      ok: true,
      dsn: {
        envelopeId: postfixFixtureMessageId,
        reportingMta: "dns; relay.local.test",
        arrivalDate: "Fri, 27 Nov 2026 07:59:33 +0000 (UTC)",
        recipients: [
          {
            action: "failed",
            status: "5.1.1",
            // Postfix quotes the local part alone; it is masked like an address.
            diagnosticCode: 'X-Postfix; unknown user: "n***"',
            remoteMta: "",
            finalRecipient: "rfc822; n***@local.test",
            lastAttemptDate: "",
          },
        ],
      },
    });
  });

  it("unfolds a folded Diagnostic-Code and keeps the remote MTA (Gmail's 5.7.26)", async () => {
    const raw = dsnMessage({
      to,
      envelopeId: id,
      recipients: [
        {
          action: "failed",
          status: "5.7.26",
          remoteMta: "dns; gmail-smtp-in.l.google.com",
          diagnosticCode: gmailDmarcDiagnostic,
        },
      ],
    });

    const result = await parseDsn(raw);

    expect(result.ok && result.dsn.recipients[0]).toEqual({
      action: "failed",
      status: "5.7.26",
      diagnosticCode:
        "smtp; 550-5.7.26 Unauthenticated email from acme.test is not accepted due to domain's DMARC policy. " +
        "Please contact the administrator of acme.test domain if this was a legitimate mail.",
      remoteMta: "dns; gmail-smtp-in.l.google.com",
      finalRecipient: "rfc822; j***@gmail.test",
      lastAttemptDate: "",
    });
  });

  it("masks addresses anywhere in the diagnostic", async () => {
    const raw = dsnMessage({
      to,
      recipients: [
        {
          action: "failed",
          status: "5.1.1",
          diagnosticCode: "smtp; 550 5.1.1 <jane.doe@gmail.test>: Recipient address rejected: jane.doe unknown",
        },
      ],
    });

    const result = await parseDsn(raw);

    expect(result.ok && result.dsn.recipients[0]?.diagnosticCode).toBe(
      "smtp; 550 5.1.1 <j***@gmail.test>: Recipient address rejected: j*** unknown",
    );
    expect(JSON.stringify(result)).not.toContain("jane.doe");
  });

  it("masks an address with an apostrophe, a lower-cased echo, and addresses at non-ASCII domains (RFC 6533)", async () => {
    const raw = dsnMessage({
      to,
      recipients: [
        {
          action: "failed",
          status: "5.1.1",
          finalRecipient: "Shaun.O'Connor@example.ie",
          diagnosticCode: "smtp; 550 5.1.1 <shaun.o'connor@example.ie>: unknown user: shaun.o'connor; see also <ana.maria@b\u00fccher.example>",
        },
      ],
    });

    const result = await parseDsn(raw);

    expect(result.ok && result.dsn.recipients[0]?.diagnosticCode).toBe(
      "smtp; 550 5.1.1 <s***@example.ie>: unknown user: s***; see also <a***@b\u00fccher.example>",
    );
    expect(JSON.stringify(result).toLowerCase()).not.toMatch(/connor|ana\.maria/);
  });

  it("masks the Original-Recipient's local part too, where an alias made the Final-Recipient another address", async () => {
    const raw = dsnMessage({
      to,
      recipients: [
        {
          action: "failed",
          status: "5.1.1",
          finalRecipient: "jd4711@mailhost.example.com",
          extra: ["Original-Recipient: rfc822;jane.doe@example.com"],
          diagnosticCode: "smtp; 550 5.1.1 unknown user: jane.doe (alias of jd4711)",
        },
      ],
    });

    const result = await parseDsn(raw);

    expect(result.ok && result.dsn.recipients[0]?.diagnosticCode).toBe("smtp; 550 5.1.1 unknown user: j*** (alias of j***)");
    expect(JSON.stringify(result)).not.toMatch(/jane\.doe|jd4711/);
  });

  it("masks the recipient in the Reporting-MTA too: it is free text, stored and logged like the others", async () => {
    const raw = dsnMessage({ to, reportingMta: "relay.test (for jane.doe@gmail.test)", recipients: [{ action: "failed", status: "5.1.1" }] });

    const result = await parseDsn(raw);

    expect(result.ok && result.dsn.reportingMta).toBe("dns; relay.test (for j***@gmail.test)");
  });

  it("decodes an xtext Original-Envelope-Id and reads every action", async () => {
    for (const action of ["failed", "delayed", "delivered", "relayed", "expanded"]) {
      const result = await parseDsn(
        dsnMessage({ to, envelopeId: "abc+2Bdef", recipients: [{ action: `${action.toUpperCase()} (extra words)`, status: "2.0.0" }] }),
      );
      expect(result).toMatchObject({ ok: true, dsn: { envelopeId: "abc+def", recipients: [{ action }] } });
    }
  });

  it("is not a DSN: plain bounce text, a report without the status part, an unknown action, an empty part", async () => {
    const plain = Buffer.from(
      "From: MAILER-DAEMON@x.test\r\nSubject: failure notice\r\n\r\nSorry, we were unable to deliver your message.\r\n",
    );
    const noAction = dsnMessage({ to, recipients: [{ action: "exploded", status: "5.1.1" }] });

    const notDsn = await parseDsn(plain);
    expect(notDsn.ok).toBe(false);
    expect(!notDsn.ok && notDsn.reason).toMatch(/^no message\/delivery-status part/);
    expect(await parseDsn(noAction)).toEqual({ ok: false, reason: "no per-recipient block has a valid Action (1 block(s) skipped)" });
    expect(parseDeliveryStatus("")).toEqual({ ok: false, reason: "empty delivery-status part" });
    expect(parseDeliveryStatus("Reporting-MTA: dns; x\r\n")).toEqual({
      ok: false,
      reason: "delivery-status part has no per-recipient fields",
    });
  });

  it("bounds what it keeps: long fields, many blocks, control characters", () => {
    const huge = "x".repeat(10_000);
    const blocks = Array.from({ length: 500 }, () => `Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; ${huge}\u0000\u001b[31m`);
    const result = parseDeliveryStatus(["Reporting-MTA: dns; relay", ...blocks].join("\r\n\r\n"));

    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.dsn.recipients).toHaveLength(50);
    expect(result.dsn.recipients[0]?.diagnosticCode.length).toBeLessThanOrEqual(1000);
    expect(result.dsn.recipients[0]?.diagnosticCode).not.toMatch(/\p{Cc}/u);
  });
});

describe("what a report means", () => {
  const report = (action: DeliveryReport["action"], status: string, at: number, diagnosticCode = ""): DeliveryReport => ({
    receivedAt: at,
    action,
    status,
    diagnosticCode,
    remoteMta: "dns; mx.gmail.test",
    reportingMta: "dns; relay.acme.test",
    finalRecipient: "rfc822; j***@gmail.test",
    envelopeId: id,
  });

  it("classifies statuses: missing mailbox, policy, other permanent, transient", () => {
    expect(["5.1.1", "5.1.10", "5.1.2"].map(classifyStatus)).toEqual(["no_such_mailbox", "no_such_mailbox", "no_such_mailbox"]);
    expect(["5.7.26", "5.7.1", "5.7.0"].map(classifyStatus)).toEqual(["policy", "policy", "policy"]);
    expect(classifyStatus("5.2.2")).toBe("permanent");
    expect(classifyStatus("4.4.1")).toBe("transient");
    expect(classifyStatus("")).toBe("unknown");
  });

  it("prefers the diagnostic's specific status over a generic 5.0.0", () => {
    expect(reportStatus({ status: "5.0.0", diagnosticCode: "smtp; 550 5.1.1 User unknown" })).toBe("5.1.1");
    expect(reportStatus({ status: "5.7.26", diagnosticCode: "smtp; 550 5.1.1 x" })).toBe("5.7.26");
    expect(reportStatus({ status: "", diagnosticCode: "smtp; 451 4.7.1 greylisted" })).toBe("4.7.1");
  });

  it("suppresses on a failed 'no such mailbox' only, never on 5.7.x or a delay", () => {
    expect(suppresses(report("failed", "5.1.1", 1))).toBe(true);
    expect(suppresses(report("failed", "5.0.0", 1, "smtp; 550 5.1.10 null MX"))).toBe(true);
    expect(suppresses(report("failed", "5.7.26", 1))).toBe(false);
    expect(suppresses(report("delayed", "5.1.1", 1))).toBe(false);
  });

  it("the latest final report decides; a late delay notice never overrides it", () => {
    expect(stateFromReports([])).toBeUndefined();
    expect(stateFromReports([report("delayed", "4.4.1", 1)])).toBe("DELAYED");
    expect(stateFromReports([report("delayed", "4.4.1", 1), report("failed", "5.1.1", 2)])).toBe("BOUNCED");
    expect(stateFromReports([report("failed", "5.1.1", 1), report("delayed", "4.4.1", 2)])).toBe("BOUNCED");
    expect(stateFromReports([report("delivered", "2.0.0", 1), report("failed", "5.7.1", 2)])).toBe("BOUNCED");
    expect(stateFromReports([report("relayed", "2.0.0", 1)])).toBe("DELIVERED");
  });

  it("joins reports to a record (even one the sender still shows as SENDING), never to a SUPPRESSED one", () => {
    const base: DeliveryRecord = {
      messageId: id,
      caller: "test",
      state: "SENDING",
      recipientMasked: "j***@gmail.test",
      recipientDomain: "gmail.test",
      purpose: "login",
      locale: "en",
      createdAt: 1000,
      updatedAt: 1000,
      expiresAt: 601_000,
      attempts: [],
      traceId: "",
    };
    const bounced = withReports(base, [report("failed", "5.7.26", 5000)]);
    expect(bounced).toMatchObject({ state: "BOUNCED", updatedAt: 5000, reports: [{ status: "5.7.26" }] });
    expect(withReports({ ...base, state: "SUPPRESSED" }, [report("failed", "5.1.1", 5000)]).state).toBe("SUPPRESSED");
  });

  it("explains a 5.7.26 bounce as pointing at our DNS, and a 5.1.1 as a suppressed address", () => {
    const record = (reports: DeliveryReport[]): DeliveryRecord => ({
      messageId: id,
      caller: "test",
      state: "BOUNCED",
      recipientMasked: "j***@gmail.test",
      recipientDomain: "gmail.test",
      purpose: "login",
      locale: "en",
      createdAt: 0,
      updatedAt: 0,
      expiresAt: 600_000,
      attempts: [],
      traceId: "",
      reports,
    });
    const at = Date.UTC(2026, 10, 27, 10, 2, 3);

    expect(explain(record([report("failed", "5.7.26", at, "smtp; 550 5.7.26 DMARC policy")]), at)).toBe(
      "The relay accepted the message, but a delivery status notification from relay.acme.test at 2026-11-27 10:02:03 UTC " +
        'said delivery failed (status 5.7.26, "smtp; 550 5.7.26 DMARC policy", remote MTA mx.gmail.test). ' +
        "This is a policy or authentication rejection (5.7.x): it points at our sending domain's DNS (SPF, DKIM, DMARC) " +
        "or the relay's reputation, not at the recipient, so the recipient is not suppressed; " +
        "run `npm run doctor -- <sender domain>` to see what to fix.",
    );
    expect(explain(record([report("failed", "5.1.1", at)]), at)).toMatch(
      /said delivery failed \(status 5\.1\.1, remote MTA mx\.gmail\.test\)\. The address does not exist: the recipient is suppressed/,
    );
  });
});
