import { describe, expect, it } from "vitest";
import { connectionRateKey, createConnectionRate } from "../../src/bounce/connection-rate.js";

describe("whom the bounce intake's connection rate counts as one peer", () => {
  it.each([
    ["192.0.2.7", "192.0.2.7"],
    // A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6: still the IPv4 address, not the ::/64 of ::1.
    ["::ffff:192.0.2.7", "192.0.2.7"],
    ["::FFFF:c000:0207", "192.0.2.7"],
    ["2001:db8:1:2::1", "2001:db8:1:2::/64"],
    ["2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"],
    ["2001:0DB8:0001:0002:0000:0000:0000:0009", "2001:db8:1:2::/64"],
    ["2001:db8:1:2:0:0:0:a", "2001:db8:1:2::/64"],
    ["fe80::1%eth0", "fe80:0:0:0::/64"],
    ["::1", "0:0:0:0::/64"],
  ])("%s counts as %s", (address, key) => {
    expect(connectionRateKey(address)).toBe(key);
  });

  it("keeps neighbouring /64s, and IPv4 addresses, apart", () => {
    const keys = ["2001:db8:1:2::1", "2001:db8:1:3::1", "2001:db8:1::1", "192.0.2.7", "192.0.2.8", "::1", "::ffff:127.0.0.1"];
    expect(new Set(keys.map(connectionRateKey)).size).toBe(keys.length);
  });

  it("counts an address it cannot read as itself (never as one shared empty key)", () => {
    expect(connectionRateKey("unix-socket")).toBe("unix-socket");
    expect(connectionRateKey("")).toBe("");
  });
});

describe("the bounce intake's connection rate", () => {
  function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
    let time = start;
    return { now: () => time, advance: (ms) => void (time += ms) };
  }

  it("one IPv6 host rotating addresses inside its /64 is one peer: the connection over the limit is refused", () => {
    const rate = createConnectionRate({ max: 3, windowMs: 60_000, now: clock().now });

    const admitted = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:a:b:c:d", "2001:db8:1:2::ffff"].map((address) =>
      rate.admit(address),
    );

    expect(admitted).toEqual([true, true, true, false]);
    // The neighbouring /64 is somebody else.
    expect(rate.admit("2001:db8:1:3::1")).toBe(true);
  });

  it("an IPv4 peer seen plain and IPv4-mapped is one peer", () => {
    const rate = createConnectionRate({ max: 2, windowMs: 60_000, now: clock().now });

    expect([rate.admit("192.0.2.7"), rate.admit("::ffff:192.0.2.7"), rate.admit("192.0.2.7")]).toEqual([true, true, false]);
    expect(rate.admit("192.0.2.8")).toBe(true);
  });

  it("admits the peer again once its window has passed", () => {
    const time = clock();
    const rate = createConnectionRate({ max: 2, windowMs: 60_000, now: time.now });
    rate.admit("192.0.2.7");
    rate.admit("192.0.2.7");
    expect(rate.admit("192.0.2.7")).toBe(false);

    time.advance(120_000);

    expect(rate.admit("192.0.2.7")).toBe(true);
  });

  it("counts the last minute, not the calendar minute: a burst just before a minute's end still counts just after it", () => {
    const time = clock();
    const rate = createConnectionRate({ max: 3, windowMs: 60_000, now: time.now });
    rate.admit("192.0.2.7");
    time.advance(59_000);
    rate.admit("192.0.2.7");
    rate.admit("192.0.2.7");

    time.advance(2_000);

    // The first connection is more than a minute old; the two of second 59 are not.
    expect([rate.admit("192.0.2.7"), rate.admit("192.0.2.7")]).toEqual([true, false]);
  });

  it("a flood from 200 000 addresses within one window keeps at most maxKeys peers in memory", () => {
    const rate = createConnectionRate({ max: 5, windowMs: 60_000, maxKeys: 1000, now: clock().now });

    for (let i = 0; i < 200_000; i++) {
      rate.admit(`2001:db8:${(i >>> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`);
    }

    expect(rate.size()).toBeLessThanOrEqual(1000);
  });

  it("forgets peers whose window has passed, so quiet peers cost nothing", () => {
    const time = clock();
    const rate = createConnectionRate({ max: 5, windowMs: 60_000, maxKeys: 1000, now: time.now });
    for (let i = 0; i < 250; i++) {
      rate.admit(`192.0.2.${i}`);
      rate.admit(`198.51.100.${i}`);
    }
    expect(rate.size()).toBe(500);

    time.advance(60_000);
    rate.admit("203.0.113.1");

    expect(rate.size()).toBe(1);
  });

  it("a peer over its limit stays refused while other peers come and go within the bound", () => {
    const time = clock();
    const rate = createConnectionRate({ max: 2, windowMs: 60_000, maxKeys: 100, now: time.now });
    rate.admit("192.0.2.7");
    rate.admit("192.0.2.7");
    for (let i = 0; i < 50; i++) {
      time.advance(100);
      rate.admit(`198.51.100.${i}`);
      expect(rate.admit("192.0.2.7")).toBe(false);
    }
    expect(rate.size()).toBe(51);
  });
});
