import { describe, expect, it } from "vitest";
import { certificateCallerName } from "../../src/auth/caller-identity.js";
import { createPurposePolicy } from "../../src/auth/purpose-policy.js";
import { endUserIpSubject } from "../../src/limits/end-user-ip.js";
import { recipientMailbox } from "../../src/limits/recipient-mailbox.js";

describe("the caller a client certificate names", () => {
  it.each([
    ["DNS:billing.internal, URI:spiffe://acme/billing", "billing-cn", "spiffe://acme/billing"],
    ["DNS:billing.internal, IP Address:10.0.0.1", "billing-cn", "billing.internal"],
    [undefined, "billing-cn", "billing-cn"],
    ['URI:"spiffe://acme/a,b", DNS:x.internal', "cn", "spiffe://acme/a,b"],
    ["email:a@b.example", "", undefined],
  ])("SAN %s, CN %s -> %s", (subjectaltname, cn, expected) => {
    const peer = { subjectaltname, subject: { CN: cn } } as Parameters<typeof certificateCallerName>[0];
    expect(certificateCallerName(peer)).toBe(expected);
  });
});

describe("purposes per caller", () => {
  it("restricts listed callers only", () => {
    const policy = createPurposePolicy(new Map([["web", ["login"]]]));
    expect(policy.allows("web", "login")).toBe(true);
    expect(policy.allows("web", "password_reset")).toBe(false);
    expect(policy.allows("billing", "password_reset")).toBe(true);
  });
});

describe("the end-user IP subject", () => {
  it.each([
    ["192.0.2.7", "192.0.2.7"],
    ["::ffff:192.0.2.7", "192.0.2.7"],
    ["::ffff:c000:207", "192.0.2.7"],
    ["2001:db8:1:2::1", "2001:db8:1:2::/64"],
    ["2001:0DB8:0001:0002:ffff:0:0:9", "2001:db8:1:2::/64"],
    ["fe80::1%eth0", "fe80:0:0:0::/64"],
    ["::1", "0:0:0:0::/64"],
    // NAT64 well-known prefix (RFC 6052): an IPv4 user seen through IPv4-to-IPv6 translation.
    ["64:ff9b::192.0.2.7", "192.0.2.7"],
    ["64:ff9b::c000:208", "192.0.2.8"],
    ["64:ff9b:0:0:1::7", "64:ff9b:0:0::/64"],
    ["not an ip", ""],
  ])("%s -> %s", (ip, subject) => {
    expect(endUserIpSubject(ip)).toBe(subject);
  });
});

describe("the recipient limit's mailbox", () => {
  it.each([
    ["ana@example.com", "ana@example.com"],
    ["ana+otp@example.com", "ana@example.com"],
    ["ana+a+b@example.com", "ana@example.com"],
    ["a.na+x@example.com", "a.na@example.com"],
    ["+ana@example.com", "+ana@example.com"],
    ["a.n.a@gmail.com", "ana@gmail.com"],
    ["a.na+promo@googlemail.com", "ana@gmail.com"],
    ["a.na@mail.gmail.com", "a.na@mail.gmail.com"],
  ])("%s -> %s", (key, mailbox) => {
    expect(recipientMailbox(key)).toBe(mailbox);
  });
});
