/** The limits over the in-memory store (dev mode): the same contract as over Redis. */
import { createMemoryStore } from "../../src/store/memory-store.js";
import { describeLimitsContract, t0 } from "./limits-contract.js";

describeLimitsContract("memory", () => {
  // The store's own clock only drives its TTL sweep; the limits follow the `now` they are given.
  const store = createMemoryStore({ clock: { now: () => t0 } });
  return Promise.resolve({ store, teardown: () => store.close() });
});
