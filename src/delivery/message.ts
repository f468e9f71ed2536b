/**
 * Turns a rendered OTP email into a finished message for the transport:
 * From with display name, an explicit Message-ID at the sender's domain,
 * and the headers that mark it as an automatic, one-to-one message.
 */
import type { RenderedMessage } from "./render.js";
import type { OutgoingMail } from "./smtp-transport-types.js";

export interface BuildOtpMailOptions {
  readonly rendered: RenderedMessage;
  /** The recipient's address (already validated). */
  readonly to: string;
  /** Display name of the sender (`Acme`); any characters, quoted and encoded as needed. */
  readonly fromName: string;
  /** The sender's address (`no-reply@acme.example`); its domain also names the Message-ID. */
  readonly fromAddress: string;
  /** The delivery record's id; becomes `<messageId@sender-domain>`. */
  readonly messageId: string;
  /**
   * The domain whose MX receives bounces. When set, the envelope sender is
   * `bounce+<messageId>@<bounceDomain>` (VERP: a bounce names its message)
   * and a DSN is asked for on failure or delay, headers only, with the
   * message id as ENVID. When unset, the From address is the envelope sender.
   */
  readonly bounceDomain?: string | undefined;
  /** The code the message carries: kept out of the relay's replies as records and logs show them (OutgoingMail.redact). */
  readonly code?: string | undefined;
}

/** The VERP envelope sender of a message: `bounce+<messageId>@<bounceDomain>`. */
export function verpAddress(messageId: string, bounceDomain: string): string {
  return `bounce+${messageId}@${bounceDomain.toLowerCase()}`;
}

// RFC 5322 dot-atom-text, for the left part of the Message-ID.
const dotAtom = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
const plainAddress = /^[^\s@<>"(),;:\\[\]]+@([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$/;

/** Whether the message builder takes `address` as the From address (MAIL_FROM is checked with this at start-up). */
export function isSenderAddress(address: string): boolean {
  return plainAddress.test(address);
}

/** What a message takes from the sender's settings: checked and formatted once, not per message. */
interface SenderParts {
  readonly fromName: string;
  readonly fromAddress: string;
  readonly bounceDomain: string | undefined;
  readonly from: string;
  /** The From address's domain, lower-cased: the Message-ID's right side. */
  readonly messageIdDomain: string;
  /** The bounce domain, lower-cased. */
  readonly verpDomain: string | undefined;
}

// The sender's settings are the same for every message of a process: the
// last ones checked are kept, so a send costs no pattern matching for them.
let lastSender: SenderParts | undefined;

function senderParts(fromName: string, fromAddress: string, bounceDomain: string | undefined): SenderParts {
  const last = lastSender;
  if (last !== undefined && last.fromName === fromName && last.fromAddress === fromAddress && last.bounceDomain === bounceDomain) {
    return last;
  }
  const domain = plainAddress.exec(fromAddress)?.[1];
  if (domain === undefined) throw new Error(`buildOtpMail: fromAddress "${fromAddress}" is not a plain address`);
  if (bounceDomain !== undefined && !/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(bounceDomain)) {
    throw new Error(`buildOtpMail: bounceDomain "${bounceDomain}" is not a domain name`);
  }
  lastSender = {
    fromName,
    fromAddress,
    bounceDomain,
    from: formatFrom(fromName, fromAddress),
    messageIdDomain: domain.toLowerCase(),
    verpDomain: bounceDomain?.toLowerCase(),
  };
  return lastSender;
}

/**
 * Builds the message. Throws on a malformed sender address or message id
 * (configuration or programming errors, never user input).
 */
export function buildOtpMail(options: BuildOtpMailOptions): OutgoingMail {
  const sender = senderParts(options.fromName, options.fromAddress, options.bounceDomain);
  if (!dotAtom.test(options.messageId)) throw new Error(`buildOtpMail: messageId "${options.messageId}" is not a dot-atom`);
  const { rendered } = options;
  const { verpDomain } = sender;
  return {
    from: sender.from,
    to: options.to,
    subject: rendered.subject,
    text: rendered.text,
    html: rendered.html,
    // Set here: nodemailer would otherwise derive one from the envelope sender.
    messageId: `<${options.messageId}@${sender.messageIdDomain}>`,
    headers: {
      // RFC 3834: machine-generated, so auto-responders and vacation replies stay quiet.
      "Auto-Submitted": "auto-generated",
      // Exchange/Outlook's equivalent: out-of-office and other auto-replies
      // only. `All` would also ask Exchange to suppress its delivery and
      // non-delivery reports (MS-OXCMAIL 2.1.3.2.20), the bounces that
      // GetDeliveryStatus rests on.
      "X-Auto-Response-Suppress": "OOF, AutoReply",
      "Content-Language": rendered.locale,
    },
    ...(options.code === undefined || options.code === "" ? {} : { redact: [options.code] }),
    ...(verpDomain === undefined
      ? {}
      : {
          envelope: { from: verpAddress(options.messageId, verpDomain), to: options.to },
          // RET=HDRS: a bounce returns the headers, not the body; the intake
          // keeps nothing of the returned message (its Subject holds the code).
          dsn: { envelopeId: options.messageId, notify: ["FAILURE", "DELAY"], ret: "HDRS" },
        }),
  };
}

/**
 * `"Display Name" <address>`: the name as an RFC 5322 quoted-string (control
 * characters dropped, `"` and `\` escaped). nodemailer turns a non-ASCII
 * name into an encoded-word on the wire.
 */
function formatFrom(name: string, address: string): string {
  const clean = name.replace(/[\p{Cc}\p{Zl}\p{Zp}]+/gu, " ").trim();
  if (clean === "") return address;
  return `"${clean.replace(/["\\]/g, (char) => `\\${char}`)}" <${address}>`;
}
