import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createSettler, startReloadLoop, type ReloadLoop, type Settle } from "../../src/reload-loop.js";

/** A promise resolved from outside: a read the test holds until it lets it finish. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open = (): void => undefined;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

const loops: ReloadLoop[] = [];
const start = (...args: Parameters<typeof startReloadLoop>): ReloadLoop => {
  const loop = startReloadLoop(...args);
  loops.push(loop);
  return loop;
};

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
});
afterEach(() => {
  for (const loop of loops.splice(0)) loop.stop();
  vi.useRealTimers();
});

describe("the reload loop", () => {
  it("runs one read at a time, in the order asked, and a read that throws does not stop the next", async () => {
    const errors: unknown[] = [];
    const loop = start({ intervalMs: undefined, poll: () => Promise.resolve(), onError: (error) => errors.push(error) });
    const events: string[] = [];
    const first = gate();
    const done = [
      loop.enqueue(async () => {
        events.push("first starts");
        await first.promise;
        events.push("first ends");
      }),
      loop.enqueue(() => {
        events.push("second runs");
        return Promise.reject(new Error("a bug"));
      }),
      loop.enqueue(() => {
        events.push("third runs");
        return Promise.resolve();
      }),
    ];
    await vi.advanceTimersByTimeAsync(0);
    expect(events).toEqual(["first starts"]);

    first.open();
    await Promise.all(done);
    expect(events).toEqual(["first starts", "first ends", "second runs", "third runs"]);
    expect(errors).toEqual([new Error("a bug")]);
  });

  it("queues at most one poll behind a slow read, and polls no more once stopped", async () => {
    let polls = 0;
    let read = gate();
    const loop = start({
      intervalMs: 100,
      poll: async () => {
        polls += 1;
        await read.promise;
      },
      onError: () => undefined,
    });

    // Ten ticks while the first read hangs: one read runs, one waits, the other eight are dropped.
    await vi.advanceTimersByTimeAsync(1000);
    expect(polls).toBe(1);
    const slow = read;
    read = gate();
    slow.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(polls).toBe(2);
    read.open();
    await vi.advanceTimersByTimeAsync(0);

    // With fast reads, every tick reads once.
    await vi.advanceTimersByTimeAsync(300);
    expect(polls).toBe(5);

    loop.stop();
    await vi.advanceTimersByTimeAsync(1000);
    expect(polls).toBe(5);
  });

  it("does not run work queued before stop", async () => {
    const loop = start({ intervalMs: undefined, poll: () => Promise.resolve(), onError: () => undefined });
    const first = gate();
    let ran = false;
    const done = [
      loop.enqueue(() => first.promise),
      loop.enqueue(() => {
        ran = true;
        return Promise.resolve();
      }),
    ];
    loop.stop();
    first.open();
    await Promise.all(done);
    expect(ran).toBe(false);
  });
});

/**
 * A file watched the way the reloaders watch theirs: a change is acted on once a re-read `settleMs` later,
 * queued by its own settle, finds the same content. `hold()` makes the next read wait until released.
 */
function watchedFile(settleMs: number) {
  const state = { content: "a", served: "a", confirmed: [] as { content: string; at: number }[] };
  let held: Promise<void> | undefined;
  const loop = start({ intervalMs: undefined, poll: () => check(undefined), onError: (error) => expect.fail(String(error)) });
  const settler = createSettler({ settleMs, loop, reread: (settle) => check(settle) });

  async function check(confirming: Settle | undefined): Promise<void> {
    if (held !== undefined) await held;
    const digest = state.content;
    if (digest === state.served) {
      settler.stop();
      return;
    }
    if (!settler.confirms(confirming, digest)) {
      if (!settler.settling(digest)) settler.settle(digest);
      return;
    }
    settler.stop();
    state.served = digest;
    state.confirmed.push({ content: digest, at: Date.now() });
  }

  return {
    state,
    settler,
    /** What SIGHUP does: a read now. */
    read: () => loop.enqueue(() => check(undefined)),
    hold(): () => void {
      const g = gate();
      held = g.promise;
      return () => {
        held = undefined;
        g.open();
      };
    },
  };
}

describe("the settle", () => {
  it("confirms a change read the same settleMs later, and one that changed again only settleMs after that", async () => {
    vi.setSystemTime(0);
    const file = watchedFile(1000);
    file.state.content = "b";
    await file.read();
    await vi.advanceTimersByTimeAsync(500);
    file.state.content = "c";
    await vi.advanceTimersByTimeAsync(500);
    // The re-read found "c", not "b": "c" now gets its own full settle.
    expect(file.state.confirmed).toEqual([]);
    await vi.advanceTimersByTimeAsync(999);
    expect(file.state.confirmed).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(file.state.confirmed).toEqual([{ content: "c", at: 2000 }]);
  });

  it("a settle re-read overtaken by a newer change does not confirm it: the change waits its own full settle", async () => {
    vi.setSystemTime(0);
    const file = watchedFile(1000);
    file.state.content = "b";
    await file.read();
    expect(file.settler.settling("b")).toBe(true);

    // Just before "b"'s settle ends, a read (a poll, a SIGHUP) starts and is slow; the file changes to "c".
    await vi.advanceTimersByTimeAsync(999);
    const release = file.hold();
    const sighup = file.read();
    file.state.content = "c";
    // "b"'s settle ends: its re-read is queued behind the slow read.
    await vi.advanceTimersByTimeAsync(1);
    release();
    await sighup;
    // The slow read saw "c" first and started its settle; "b"'s re-read then read "c" too, but it is not "c"'s re-read.
    await vi.advanceTimersByTimeAsync(0);
    expect(file.settler.settling("c")).toBe(true);
    expect(file.state.confirmed).toEqual([]);

    await vi.advanceTimersByTimeAsync(999);
    expect(file.state.confirmed).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(file.state.confirmed).toEqual([{ content: "c", at: 2000 }]);
  });

  it("stop cancels the pending re-read", async () => {
    const file = watchedFile(1000);
    file.state.content = "b";
    await file.read();
    file.settler.stop();
    expect(file.settler.settling("b")).toBe(false);
    await vi.advanceTimersByTimeAsync(5000);
    expect(file.state.confirmed).toEqual([]);
  });
});
