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
}

/** The VERP envelope sender of a message: `bounce+<messageId>@<bounceDomain>`. */
export function verpAddress(messageId: string, bounceDomain: string): string {
  return `bounce+${messageId}@${bounceDomain.toLowerCase()}`;
}

// RFC 5322 dot-atom-text, for the left part of the Message-ID.
const dotAtom = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
const plainAddress = /^[^\s@<>"(),;:\\[\]]+@([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$/;

/**
 * Builds the message. Throws on a malformed sender address or message id
 * (configuration or programming errors, never user input).
 */
export function buildOtpMail(options: BuildOtpMailOptions): OutgoingMail {
  const domain = plainAddress.exec(options.fromAddress)?.[1];
  if (domain === undefined) throw new Error(`buildOtpMail: fromAddress "${options.fromAddress}" is not a plain address`);
  if (!dotAtom.test(options.messageId)) throw new Error(`buildOtpMail: messageId "${options.messageId}" is not a dot-atom`);
  const { rendered, bounceDomain } = options;
  if (bounceDomain !== undefined && !/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(bounceDomain)) {
    throw new Error(`buildOtpMail: bounceDomain "${bounceDomain}" is not a domain name`);
  }
  return {
    from: formatFrom(options.fromName, options.fromAddress),
    to: options.to,
    subject: rendered.subject,
    text: rendered.text,
    html: rendered.html,
    // Set here: nodemailer would otherwise derive one from the envelope sender.
    messageId: `<${options.messageId}@${domain.toLowerCase()}>`,
    headers: {
      // RFC 3834: machine-generated, so auto-responders and vacation replies stay quiet.
      "Auto-Submitted": "auto-generated",
      // Exchange/Outlook's equivalent.
      "X-Auto-Response-Suppress": "All",
      "Content-Language": rendered.locale,
    },
    ...(bounceDomain === undefined
      ? {}
      : {
          envelope: { from: verpAddress(options.messageId, bounceDomain), to: options.to },
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
