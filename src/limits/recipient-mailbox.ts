/**
 * What one recipient counts as for the recipient limit: the mailbox, not
 * the address. Nearly every provider delivers `ana+anything@` to `ana@`
 * (subaddressing, RFC 5233), and Gmail ignores dots in the local part and
 * answers to googlemail.com too. Counted per address, an email bomber would
 * get the limit's sends for every such spelling, all into one inbox.
 *
 * Only the limit counts this way: codes stay bound to the address as given.
 */

/** Domains whose mailboxes ignore dots in the local part, and the one they stand for. */
const dotless: ReadonlyMap<string, string> = new Map([
  ["gmail.com", "gmail.com"],
  ["googlemail.com", "gmail.com"],
]);

/** The mailbox of a lower-cased address (`a.na+x@googlemail.com` -> `ana@gmail.com`). */
export function recipientMailbox(recipientKey: string): string {
  const at = recipientKey.lastIndexOf("@");
  let local = recipientKey.slice(0, at);
  let domain = recipientKey.slice(at + 1);
  const plus = local.indexOf("+");
  if (plus > 0) local = local.slice(0, plus);
  const gmail = dotless.get(domain);
  if (gmail !== undefined) {
    domain = gmail;
    local = local.replaceAll(".", "");
  }
  return `${local}@${domain}`;
}
