/** The in-memory store (dev mode) against the OtpStore contract, on a fake clock. */
import type { Clock } from "../../src/clock.js";
import { createMemoryStore } from "../../src/store/memory-store.js";
import { describeStoreContract, t0 } from "./store-contract.js";

describeStoreContract("memory", () => {
  let now = t0;
  const clock: Clock = { now: () => now };
  const store = createMemoryStore({ clock });
  return Promise.resolve({
    store,
    elapse: (ms: number) => {
      now += ms;
      return Promise.resolve();
    },
    teardown: () => store.close(),
  });
});
