/**
 * What the file reloaders (tls/certificate-reloader.ts, delivery/template-reloader.ts,
 * auth/token-file-reloader.ts) share: when they read, never what they do with what they read.
 *
 * - One read at a time: a poll, a SIGHUP and a settle re-read queue behind each other, so two reads never
 *   interleave their updates of what is served.
 * - A poll that does not pile up: a tick waits for its read to start before the next one is queued, however
 *   slow the file system.
 * - A settle: content seen once is read again `settleMs` later, and that re-read confirms it only if it is
 *   the re-read of that very settle. A newer change seen meanwhile (by a poll or a SIGHUP) starts a settle
 *   of its own, and gets its own full `settleMs` even when the older settle's re-read was already queued.
 */

export interface ReloadLoopOptions {
  /** How often `poll` runs; undefined: never (reads happen only on `enqueue`, such as SIGHUP). */
  readonly intervalMs: number | undefined;
  /** One poll's read. */
  readonly poll: () => Promise<void>;
  /** Told what a queued read threw (a read is expected to handle its own failures: this is a bug). */
  readonly onError: (error: unknown) => void;
}

export interface ReloadLoop {
  /** Runs `work` after whatever is queued; resolves when it ran (or was skipped after `stop`), never rejects. */
  enqueue(work: () => Promise<void>): Promise<void>;
  /** Stops the poll; queued work is skipped. */
  stop(): void;
}

/** Starts the poll (unref'd: it never keeps the process alive). */
export function startReloadLoop(options: ReloadLoopOptions): ReloadLoop {
  const { intervalMs, poll, onError } = options;
  let stopped = false;
  let queue: Promise<void> = Promise.resolve();
  let tickQueued = false;

  const enqueue = (work: () => Promise<void>): Promise<void> => {
    queue = queue.then(() => (stopped ? undefined : work())).catch(onError);
    return queue;
  };

  const timer =
    intervalMs === undefined
      ? undefined
      : setInterval(() => {
          // A slow file system must not pile up reads.
          if (tickQueued) return;
          tickQueued = true;
          void enqueue(async () => {
            tickQueued = false;
            await poll();
          });
        }, intervalMs);
  timer?.unref();

  return {
    enqueue,
    stop() {
      stopped = true;
      if (timer !== undefined) clearInterval(timer);
    },
  };
}

/** One settle: the content seen, waiting for its re-read. Passed to that re-read, to tell it from any other read. */
export interface Settle {
  readonly digest: string;
}

export interface SettlerOptions {
  readonly settleMs: number;
  /** The loop the re-read is queued on. */
  readonly loop: Pick<ReloadLoop, "enqueue">;
  /** The re-read, `settleMs` after `settle`. */
  readonly reread: (settle: Settle) => Promise<void>;
}

export interface Settler {
  /** Reads again `settleMs` from now, for content with this digest; replaces any pending settle. */
  settle(digest: string): void;
  /** Cancels the pending settle, if any. */
  stop(): void;
  /** Whether a settle of this digest is pending. */
  settling(digest: string): boolean;
  /**
   * Whether a read confirms what its settle saw: it is the re-read of the pending settle (not of one a
   * newer change replaced) and it read the same content.
   */
  confirms(read: Settle | undefined, digest: string): boolean;
}

/** A settle timer (unref'd) for one set of files; several may share one loop. */
export function createSettler(options: SettlerOptions): Settler {
  const { settleMs, loop, reread } = options;
  let pending: { readonly settle: Settle; readonly timer: NodeJS.Timeout } | undefined;

  const stop = (): void => {
    if (pending !== undefined) clearTimeout(pending.timer);
    pending = undefined;
  };

  return {
    settle(digest) {
      stop();
      const settle: Settle = { digest };
      const timer = setTimeout(() => void loop.enqueue(() => reread(settle)), settleMs);
      timer.unref();
      pending = { settle, timer };
    },
    stop,
    settling: (digest) => pending?.settle.digest === digest,
    confirms: (read, digest) => read !== undefined && read === pending?.settle && read.digest === digest,
  };
}
