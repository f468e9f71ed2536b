/**
 * The bounce intake's connection rate: at most `max` new connections per
 * peer within a sliding window, in memory bounded whatever the traffic.
 *
 * A peer is an IPv4 address or an IPv6 /64: one IPv6 host usually holds a
 * whole /64 and can connect from a fresh address every time, so counting
 * addresses would not limit it at all. The /64 keying is the per-IP send
 * limit's (LIMIT_END_USER_IP), so the two agree on who one peer is.
 *
 * Memory: one small counter per peer seen within the window (not one entry
 * per connection), forgotten once the window has passed, and at most
 * `maxKeys` peers: a flood from more peers than that (a botnet, or a large
 * IPv6 allocation walked /64 by /64) evicts the peers admitted longest ago.
 * Such a flood is past what a per-peer limit can stop anyway; the intake's
 * `maxClients` still bounds what runs at once.
 */
import { endUserIpSubject } from "../limits/end-user-ip.js";

export interface ConnectionRateOptions {
  /** Connections admitted per peer within `windowMs`. */
  readonly max: number;
  readonly windowMs: number;
  /** Most peers remembered at once (default 10 000, about 1.5 MB). */
  readonly maxKeys?: number | undefined;
  /** The clock (tests); default `Date.now`. */
  readonly now?: (() => number) | undefined;
}

export interface ConnectionRate {
  /** Counts a new connection from `remoteAddress`; false when its peer is over the limit (the connection is not counted). */
  admit(remoteAddress: string): boolean;
  /** Peers remembered now. */
  size(): number;
}

/**
 * The peer a remote address counts as: an IPv4 address as itself (also when
 * IPv4-mapped, `::ffff:192.0.2.1`), an IPv6 address as its /64
 * (`2001:db8:1:2::/64`, whatever form the address was written in), anything
 * else as itself.
 */
export function connectionRateKey(remoteAddress: string): string {
  const subject = endUserIpSubject(remoteAddress);
  return subject === "" ? remoteAddress : subject;
}

/** One peer's connections: a sliding-window counter (this window's count and the previous one's, weighted). */
interface Counter {
  /** Start of the current window. */
  start: number;
  current: number;
  previous: number;
  /** When a connection was last admitted. */
  last: number;
}

const defaultMaxKeys = 10_000;

export function createConnectionRate(options: ConnectionRateOptions): ConnectionRate {
  const { max, windowMs } = options;
  const maxKeys = options.maxKeys ?? defaultMaxKeys;
  const now = options.now ?? Date.now;
  // Insertion order is the order of last admission: the oldest peers come first.
  const peers = new Map<string, Counter>();

  function forgetQuietPeers(at: number): void {
    for (const [key, counter] of peers) {
      if (at - counter.last < windowMs) break;
      peers.delete(key);
    }
  }

  function roll(counter: Counter, at: number): void {
    const elapsed = at - counter.start;
    if (elapsed >= 2 * windowMs) Object.assign(counter, { start: at, current: 0, previous: 0 });
    else if (elapsed >= windowMs) Object.assign(counter, { start: counter.start + windowMs, current: 0, previous: counter.current });
  }

  return {
    admit(remoteAddress) {
      const at = now();
      const key = connectionRateKey(remoteAddress);
      forgetQuietPeers(at);
      let counter = peers.get(key);
      if (counter === undefined) {
        for (const oldest of peers.keys()) {
          if (peers.size < maxKeys) break;
          peers.delete(oldest);
        }
        counter = { start: at, current: 0, previous: 0, last: at };
      } else {
        roll(counter, at);
      }
      const weight = Math.max(0, 1 - (at - counter.start) / windowMs);
      if (counter.previous * weight + counter.current >= max) return false;
      counter.current++;
      counter.last = at;
      peers.delete(key);
      peers.set(key, counter);
      return true;
    },
    size: () => peers.size,
  };
}
