/** Time, injected so tests need no sleeps. */
export interface Clock {
  /** Wall-clock time in milliseconds since the epoch: when something happened. */
  now(): number;
  /**
   * A monotonic reading in milliseconds from an arbitrary origin, for
   * durations only: unlike `now`, it never steps when the wall clock is set
   * (NTP), so a duration measured across a step is neither negative nor
   * hours long. A clock without it measures durations with performance.now().
   */
  monotonic?(): number;
}

export const systemClock: Clock = { now: () => Date.now(), monotonic: () => performance.now() };

/** The clock's monotonic reading, or performance.now() for a clock that has none. */
export function monotonicOf(clock: Clock): () => number {
  return clock.monotonic === undefined ? () => performance.now() : clock.monotonic.bind(clock);
}
