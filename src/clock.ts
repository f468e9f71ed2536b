/** Wall-clock time in milliseconds since the epoch. Injected so tests need no sleeps. */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
