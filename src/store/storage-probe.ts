/**
 * Whether storage answers, not only whether it is connected.
 *
 * A Redis that keeps the TCP connection but stops answering (`DEBUG SLEEP`,
 * a stopped process, `CLIENT PAUSE`, a stalled primary) looks connected to
 * the client, so connection events alone leave health SERVING while every
 * call times out. The probe PINGs at an interval, each PING bounded by the
 * store's command timeout (REDIS_COMMAND_TIMEOUT), and calls storage down
 * only after several PINGs in a row failed: one slow answer under load is
 * not an outage. One answered PING, or a fresh connection (whose handshake
 * Redis answered), makes it up again.
 */
import type { OtpStore } from "./types.js";

export interface StorageProbeOptions {
  readonly store: Pick<OtpStore, "ping" | "isReady" | "onReadyChange" | "unreadyReason">;
  /** Time between the end of one PING and the start of the next. Default 5 s. */
  readonly intervalMs?: number;
  /** PINGs failed in a row before storage is down. Default 3. */
  readonly failuresBeforeDown?: number;
  /**
   * Told the storage health whenever the probe or the connection says
   * something (it may repeat itself): up, or down with the reason.
   */
  readonly report: (up: boolean, reason: string) => void;
}

export interface StorageProbe {
  /** Stops the timer and every further report. Idempotent. */
  stop(): void;
}

/** Default interval and failure count: a Redis that stopped answering is down after about 3 x (5 s + the command timeout). */
export const storageProbeDefaults = { intervalMs: 5000, failuresBeforeDown: 3 } as const;

/** Starts probing `store` and reporting its health; the first PING follows one interval after start. */
export function startStorageProbe(options: StorageProbeOptions): StorageProbe {
  const { store, report } = options;
  const intervalMs = options.intervalMs ?? storageProbeDefaults.intervalMs;
  const failuresBeforeDown = options.failuresBeforeDown ?? storageProbeDefaults.failuresBeforeDown;
  if (!(intervalMs > 0) || !(Number.isInteger(failuresBeforeDown) && failuresBeforeDown > 0)) {
    throw new TypeError("startStorageProbe: intervalMs must be positive and failuresBeforeDown a positive integer");
  }
  let failures = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;

  const unreachable = (): string => {
    const why = store.unreadyReason?.();
    return why === undefined ? "storage is unreachable" : `storage is unreachable: ${why}`;
  };

  const publish = (): void => {
    if (stopped) return;
    if (!store.isReady()) report(false, unreachable());
    else if (failures >= failuresBeforeDown) report(false, `storage does not answer: ${failures} PINGs in a row failed`);
    else report(true, "");
  };

  const unsubscribe = store.onReadyChange((ready) => {
    // A new connection's handshake was answered: an old PING streak says nothing about it.
    if (ready) failures = 0;
    publish();
  });

  const probe = async (): Promise<void> => {
    timer = undefined;
    try {
      await store.ping();
      failures = 0;
    } catch {
      // Counted only while connected: a lost connection is already down, and says so itself.
      if (store.isReady()) failures += 1;
    }
    publish();
    schedule();
  };

  function schedule(): void {
    if (stopped) return;
    timer = setTimeout(() => void probe(), intervalMs);
    // Never what keeps the process alive.
    timer.unref();
  }

  publish();
  schedule();
  return {
    stop() {
      stopped = true;
      unsubscribe();
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
    },
  };
}
