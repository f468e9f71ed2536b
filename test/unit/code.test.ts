import { describe, expect, it } from "vitest";
import {
  codePattern,
  createHasher,
  generateCode,
  hmacEquals,
  messageIdPattern,
  messageIdTime,
  newMessageId,
  normalizeTypedCode,
} from "../../src/otp/code.js";
import { createRandomPool } from "../../src/random-pool.js";

describe("generateCode", () => {
  it("makes digits of the configured length, uniformly spread", () => {
    const counts = new Array<number>(10).fill(0);
    for (let i = 0; i < 2000; i++) {
      const code = generateCode(8);
      expect(code).toMatch(/^\d{8}$/);
      for (const digit of code) counts[Number(digit)] = (counts[Number(digit)] ?? 0) + 1;
    }
    // 16,000 digits: each should appear about 1,600 times.
    for (const count of counts) expect(count).toBeGreaterThan(1300);
    expect(codePattern.test(generateCode(4))).toBe(true);
  });
});

describe("normalizeTypedCode", () => {
  it("drops spaces and dashes and upper-cases letters", () => {
    expect(normalizeTypedCode(" 123 456 ")).toBe("123456");
    expect(normalizeTypedCode("ab-12-cd")).toBe("AB12CD");
  });

  it("reads full-width forms as ASCII and drops dashes of any kind", () => {
    expect(normalizeTypedCode("１２３４５６")).toBe("123456");
    expect(normalizeTypedCode("ａｂ１２ＣＤ")).toBe("AB12CD");
    expect(normalizeTypedCode("123\u3000456")).toBe("123456");
    expect(normalizeTypedCode("123–456")).toBe("123456");
    expect(normalizeTypedCode("123－456")).toBe("123456");
    expect(normalizeTypedCode("123ー456")).toBe("123456");
    expect(normalizeTypedCode("123\u2011456")).toBe("123456");
  });

  it("drops the invisible marks a copy carries (left-to-right and right-to-left marks, zero-width spaces, a BOM)", () => {
    expect(normalizeTypedCode("\u200E482913\u200E")).toBe("482913");
    expect(normalizeTypedCode("\u200F٤٨٢٩١٣")).toBe("482913");
    expect(normalizeTypedCode("\uFEFF123\u200B456\u2060")).toBe("123456");
    expect(normalizeTypedCode("\u061C123456")).toBe("123456");
  });

  it("reads the decimal digits of other scripts as ASCII", () => {
    expect(normalizeTypedCode("٤٨٢٩١٣")).toBe("482913"); // Arabic-Indic
    expect(normalizeTypedCode("۴۸۲ ۹۱۳")).toBe("482913"); // Persian (extended Arabic-Indic)
    expect(normalizeTypedCode("४८२९१३")).toBe("482913"); // Devanagari
    expect(normalizeTypedCode("০১২৩৪৫৬৭৮৯")).toBe("0123456789"); // Bengali
    expect(normalizeTypedCode("๐๙-ab")).toBe("09AB"); // Thai
    expect(normalizeTypedCode("\u{1D7D8}\u{1D7E2}")).toBe("00"); // mathematical digits, folded by NFKC
    expect(normalizeTypedCode("12é4")).toBe("12É4"); // a letter that is not a digit stays (and fails the pattern)
  });
});

describe("newMessageId", () => {
  it("is 26 lower-case base32 characters, sortable by time, and unique", () => {
    const a = newMessageId(1_700_000_000_000);
    const b = newMessageId(1_700_000_000_001);
    expect(a).toMatch(messageIdPattern);
    expect(a < b).toBe(true);
    const ids = new Set(Array.from({ length: 1000 }, () => newMessageId(1_700_000_000_000)));
    expect(ids.size).toBe(1000);
  });

  it("tells the time it was made", () => {
    for (const now of [0, 1_700_000_000_000, 1_800_000_123_456, 2 ** 48 - 1]) {
      expect(messageIdTime(newMessageId(now))).toBe(now);
    }
  });

  it("draws its randomness from the pool it is given", () => {
    const zeros = (size: number) => Buffer.alloc(size);
    expect(newMessageId(0, zeros)).toBe("0".repeat(26));
    const pooled = createRandomPool(64);
    const ids = new Set(Array.from({ length: 1000 }, () => newMessageId(1_700_000_000_000, pooled)));
    expect(ids.size).toBe(1000);
  });
});

describe("createRandomPool", () => {
  it("hands out every byte once, never changes bytes already handed out, and serves any size", () => {
    const random = createRandomPool(32);
    const first = random(20);
    const copy = Buffer.from(first);
    const chunks = Array.from({ length: 200 }, () => random(8).toString("hex"));
    // Refills happened meanwhile: the first bytes are still what they were.
    expect(first.equals(copy)).toBe(true);
    expect(new Set(chunks).size).toBe(200);
    expect(random(100)).toHaveLength(100);
    expect(random(32)).toHaveLength(32);
  });
});

describe("hasher", () => {
  const hasher = createHasher(Buffer.from("a test secret that is long enough!!"));
  it("binds a code's HMAC to its set and depends on the secret", () => {
    const set = hasher.codeSetId("caller", "ana@example.com", "login");
    const other = hasher.codeSetId("caller", "ana@example.com", "signup");
    expect(set).not.toBe(other);
    expect(set).not.toContain("ana");
    expect(hasher.codeHmac(set, "123456")).not.toBe(hasher.codeHmac(other, "123456"));
    const otherSecret = createHasher(Buffer.from("another secret, also long enough!!!"));
    expect(otherSecret.codeHmac(set, "123456")).not.toBe(hasher.codeHmac(set, "123456"));
  });

  it("groups a caller's code sets for one recipient, whatever the purpose", () => {
    const group = hasher.codeGroupId("caller", "ana@example.com");
    expect(group).toMatch(/^[0-9a-f]{32}$/);
    expect(group).not.toBe(hasher.codeSetId("caller", "ana@example.com", "login"));
    expect(hasher.codeGroupId("caller", "ana@example.com")).toBe(group);
    expect(hasher.codeGroupId("other", "ana@example.com")).not.toBe(group);
    expect(hasher.codeGroupId("caller", "bob@example.com")).not.toBe(group);
  });

  it("compares HMACs in constant time and rejects different lengths", () => {
    const mac = hasher.codeHmac("s", "123456");
    expect(hmacEquals(mac, mac)).toBe(true);
    expect(hmacEquals(mac, hasher.codeHmac("s", "123457"))).toBe(false);
    expect(hmacEquals(mac, mac.slice(0, 10))).toBe(false);
  });
});
