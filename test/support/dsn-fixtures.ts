/**
 * Delivery status notifications for tests, shaped like the ones Postfix
 * sends (multipart/report; report-type=delivery-status, with a text part, the
 * message/delivery-status part and the returned headers).
 */
import { readFileSync } from "node:fs";

export interface DsnRecipientFields {
  readonly action: string;
  readonly status: string;
  readonly finalRecipient?: string;
  readonly diagnosticCode?: string;
  readonly remoteMta?: string;
  /** Extra raw lines for this block. */
  readonly extra?: readonly string[];
}

export interface DsnMessageOptions {
  /** The VERP recipient, `bounce+<id>@<domain>`. */
  readonly to: string;
  /** Original-Envelope-Id; omitted when undefined. */
  readonly envelopeId?: string | undefined;
  readonly reportingMta?: string;
  readonly recipients: readonly DsnRecipientFields[];
}

/** A whole DSN message (CRLF line ends) like Postfix's. */
export function dsnMessage(options: DsnMessageOptions): Buffer {
  const boundary = "B0UNDARY.1795766373/relay.local.test";
  const perMessage = [
    `Reporting-MTA: dns; ${options.reportingMta ?? "relay.local.test"}`,
    ...(options.envelopeId === undefined ? [] : [`Original-Envelope-Id: ${options.envelopeId}`]),
    "Arrival-Date: Fri, 27 Nov 2026 07:59:33 +0000 (UTC)",
  ];
  const blocks = options.recipients.map((recipient) =>
    [
      `Final-Recipient: rfc822; ${recipient.finalRecipient ?? "jane.doe@gmail.test"}`,
      `Action: ${recipient.action}`,
      `Status: ${recipient.status}`,
      ...(recipient.remoteMta === undefined ? [] : [`Remote-MTA: ${recipient.remoteMta}`]),
      ...(recipient.diagnosticCode === undefined ? [] : [`Diagnostic-Code: ${recipient.diagnosticCode}`]),
      ...(recipient.extra ?? []),
    ].join("\r\n"),
  );
  return Buffer.from(
    [
      "From: Mail Delivery System <MAILER-DAEMON@relay.local.test>",
      `To: ${options.to}`,
      "Subject: Undelivered Mail Returned to Sender",
      "Auto-Submitted: auto-replied",
      "MIME-Version: 1.0",
      `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${boundary}"`,
      "",
      "This is a MIME-encapsulated message.",
      "",
      `--${boundary}`,
      "Content-Description: Notification",
      "Content-Type: text/plain; charset=us-ascii",
      "",
      "I'm sorry to have to inform you that your message could not be delivered.",
      "",
      `--${boundary}`,
      "Content-Description: Delivery report",
      "Content-Type: message/delivery-status",
      "",
      [perMessage.join("\r\n"), ...blocks].join("\r\n\r\n"),
      "",
      `--${boundary}`,
      "Content-Description: Undelivered Message Headers",
      "Content-Type: text/rfc822-headers",
      "",
      "From: \"Acme\" <no-reply@acme.test>",
      "Subject: 482913 is your Acme sign-in code",
      "",
      `--${boundary}--`,
      "",
    ].join("\r\n"),
  );
}

/** The folded Diagnostic-Code of Gmail's DMARC refusal, as Postfix reports it. */
export const gmailDmarcDiagnostic =
  "smtp; 550-5.7.26 Unauthenticated email from acme.test is not accepted due to\r\n" +
  "    domain's DMARC policy. Please contact the administrator of acme.test\r\n" +
  "    domain if this was a legitimate mail.";

/** A real Postfix bounce (unknown local user), captured from Postfix 3.7. */
export function postfixUnknownUserDsn(): Buffer {
  return readFileSync(new URL("../fixtures/dsn/postfix-unknown-user.eml", import.meta.url));
}

/** The message id inside postfixUnknownUserDsn(). */
export const postfixFixtureMessageId = "01kbf3vq0m4x2c9d8e7f6g5h4j";
