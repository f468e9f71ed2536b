import { describe, expect, it } from "vitest";
import { createSuppressionList } from "../../src/bounce/suppression.js";
import { createMemoryStore } from "../../src/store/memory-store.js";

const cause = { messageId: "m1", status: "5.1.1", diagnosticCode: "smtp; 550 5.1.1 user unknown" };

describe("suppression list while OTP_SECRET rotates", () => {
  it("reads the previous secret's hash until `until`, then no longer", async () => {
    let now = 1_000_000;
    const clock = { now: () => now };
    const store = createMemoryStore({ clock });
    try {
      const oldSecret = Buffer.from("o".repeat(40));
      const before = createSuppressionList({ store, secret: oldSecret, ttlMs: 3_600_000, clock });
      await before.suppress(before.recipientHash("Jane@Example.com"), cause);

      const after = createSuppressionList({ store, secret: Buffer.from("n".repeat(40)), ttlMs: 3_600_000, clock, previous: { secret: oldSecret, until: now + 1000 } });
      const current = after.recipientHash("jane@example.com");
      const previous = after.previousRecipientHash("jane@example.com");
      expect(previous).toBe(before.recipientHash("jane@example.com"));
      expect(current).not.toBe(previous);
      expect(await after.check(current)).toBeUndefined();
      expect(await after.check(current, previous)).toMatchObject(cause);

      now += 1000;
      expect(after.previousRecipientHash("jane@example.com")).toBeUndefined();
      // Without a rotation there is no previous hash at all.
      expect(before.previousRecipientHash("jane@example.com")).toBeUndefined();
    } finally {
      await store.close();
    }
  });
});
