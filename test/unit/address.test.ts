import { describe, expect, it } from "vitest";
import { maskAddress, parseAddress } from "../../src/otp/address.js";

describe("parseAddress", () => {
  it.each([
    ["ana@example.com", "ana@example.com"],
    ["Ana.Lee+otp@Example.COM", "Ana.Lee+otp@example.com"],
    ["o'brien@example.co.uk", "o'brien@example.co.uk"],
    ["user@bücher.example", "user@xn--bcher-kva.example"],
    ["user@xn--bcher-kva.example", "user@xn--bcher-kva.example"],
    ["user@Bücher．Example", "user@xn--bcher-kva.example"],
    ["user@xn--zca.xn--p1ai", "user@xn--zca.xn--p1ai"],
  ])("accepts %s", (raw, address) => {
    const parsed = parseAddress(raw);
    expect(parsed).toMatchObject({ address });
    expect(typeof parsed === "object" && parsed.key).toBe(address.toLowerCase());
  });

  it.each([
    ["", /required/],
    ["ana@example.com\r\nBcc: victim@example.com", /CR, LF/],
    ["ana@example.com\n", /CR, LF/],
    ["ana\u0000@example.com", /control/],
    ["ana\u202e@example.com", /control/],
    ["ana\u200b@example.com", /control/],
    ["Ana <ana@example.com>", /spaces/],
    ["ana@", /local@domain/],
    ["@example.com", /local@domain/],
    ["ana", /local@domain/],
    ['"a b"@example.com', /spaces/],
    ['"ab"@example.com', /quoted/],
    ['"a@b"@example.com', /quoted/],
    ["a@b@example.com", /exactly one '@'/],
    ["a@@example.com", /exactly one '@'/],
    ["a@example.com,b@example.com", /not a list/],
    ["a@example.com, b@example.com", /not a list/],
    ["a@example.com;", /not a list/],
    ["<ana@example.com>", /angle brackets/],
    ["Ana<ana@example.com>", /angle brackets/],
    [".ana@example.com", /dot/],
    ["an..a@example.com", /dot/],
    ["ana.@example.com", /dot/],
    ["ánä@example.com", /SMTPUTF8/],
    ["ana@localhost", /host name/],
    ["ana@[127.0.0.1]", /literals/],
    ["ana@-bad.example", /host name/],
    ["ana@bad_domain.example", /host name/],
    ["ana@example.123", /host name/],
    [`${"a".repeat(65)}@example.com`, /64/],
    [`ana@${"a".repeat(250)}.com`, /254/],
    [`ana@${"a".repeat(64)}.com`, /host name/],
    // URL syntax: a URL host parser stops at "/", "?", "#" or "\\" and
    // percent-decodes, so these once passed as ana@gmail.com or ana@attacker.com.
    ["ana@attacker.example/gmail.com", /host name/],
    ["ana@gmail.com/", /host name/],
    ["ana@gmail.com?x=1", /host name/],
    ["ana@gmail.com#x", /host name/],
    ["ana@gmail.com\\x", /host name/],
    ["ana@gm%61il.com", /host name/],
    ["ana@gmail%2ecom", /host name/],
    // Punycode that decodes to no valid label.
    ["ana@xn--a.example", /host name/],
    ["ana@xn--abc.example", /host name/],
    ["ana@example.xn--0", /host name/],
  ])("rejects %j", (raw, rule) => {
    const parsed = parseAddress(raw);
    expect(typeof parsed).toBe("string");
    expect(parsed).toMatch(rule);
  });
});

describe("parseAddress, what a caller most often gets wrong", () => {
  // Each message names the mistake and the fix, and none repeats the address:
  // it reaches API answers, logs and spans.
  it.each([
    ["rcpt19@evil.com@example.com", "must contain exactly one '@' (one address, of the form local@domain)"],
    ["a@example.com,b@evil.com", "must be one address per request, not a list separated by ',' or ';'"],
    ["a@example.com;b@evil.com", "must be one address per request, not a list separated by ',' or ';'"],
    ["<rcpt17@example.com>", "must not contain angle brackets; send only the address (local@domain), without < >"],
    ["Rcpt <rcpt17@example.com>", "must not contain spaces; send only the address, without a display name"],
    ['"rcpt17"@example.com', "must be a plain address (no quoted local part)"],
  ])("%j: %s", (raw, message) => {
    const parsed = parseAddress(raw);
    expect(parsed).toBe(message);
    expect(parsed).not.toMatch(/rcpt|evil/);
  });
});

describe("parseAddress, a domain seen before", () => {
  it("answers as the first time, valid or not, also once more domains were seen than it remembers", () => {
    const first = ["ana@Bücher.example", "ana@bad_domain.example", "ana@example.123", "ana@Example.COM"].map((raw) => parseAddress(raw));
    for (let i = 0; i < 1500; i++) parseAddress(`ana@d${i}.example`);
    const again = ["bo@bücher.EXAMPLE", "bo@bad_domain.example", "bo@example.123", "bo@example.com"].map((raw) => parseAddress(raw));
    expect(first).toEqual([
      { address: "ana@xn--bcher-kva.example", key: "ana@xn--bcher-kva.example", domain: "xn--bcher-kva.example" },
      "domain is not a valid host name",
      "domain is not a valid host name",
      { address: "ana@example.com", key: "ana@example.com", domain: "example.com" },
    ]);
    expect(again).toEqual([
      { address: "bo@xn--bcher-kva.example", key: "bo@xn--bcher-kva.example", domain: "xn--bcher-kva.example" },
      "domain is not a valid host name",
      "domain is not a valid host name",
      { address: "bo@example.com", key: "bo@example.com", domain: "example.com" },
    ]);
    expect(parseAddress("bo@d1499.example")).toMatchObject({ domain: "d1499.example" });
  });
});

describe("maskAddress", () => {
  it("keeps the first character and the domain", () => {
    expect(maskAddress("john.doe@gmail.com")).toBe("j***@gmail.com");
    expect(maskAddress("j@gmail.com")).toBe("j***@gmail.com");
    expect(maskAddress("nonsense")).toBe("***");
  });
});
