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
  const { rendered } = options;
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
