/**
 * Whether this instance can serve, from the health of what it depends on.
 *
 * Each component (storage, relay...) is up or down, as its probe last saw
 * it; the instance serves when every component is up. Nothing here knows
 * about gRPC: `rpc/health.ts` reports this state as grpc.health.v1, and
 * anything else (a metrics gauge, a log line) can listen to it too.
 */

/** One component as its probe last reported it. */
export interface ComponentHealth {
  readonly up: boolean;
  /** Why it is down (or ""), for logs and operators; never sent to callers. */
  readonly reason: string;
}

/** A component's up/down flip, as passed to `onChange` listeners. */
export interface HealthChange {
  readonly component: string;
  readonly up: boolean;
  readonly reason: string;
  /** `isServing()` after the change. */
  readonly serving: boolean;
}

export interface HealthState {
  /** True when every component is up (and so when there are none). */
  isServing(): boolean;
  /**
   * Records a component's health; adds the component if it is new. Listeners
   * hear of it only when `up` flips, so probes may report every time.
   */
  set(component: string, up: boolean, reason?: string): void;
  /** A snapshot of every component. */
  components(): ReadonlyMap<string, ComponentHealth>;
  /** Calls `listener` after every flip; returns the function that unsubscribes it. */
  onChange(listener: (change: HealthChange) => void): () => void;
}

export interface HealthStateOptions {
  /**
   * Components known from the start. They start down ("not yet probed"), so
   * an instance does not claim to serve before its dependencies answered.
   */
  readonly components?: readonly string[];
}

/** Creates the health state of one instance. */
export function createHealthState(options: HealthStateOptions = {}): HealthState {
  const components = new Map<string, ComponentHealth>();
  for (const name of options.components ?? []) {
    components.set(name, { up: false, reason: "not yet probed" });
  }
  const listeners = new Set<(change: HealthChange) => void>();

  const isServing = (): boolean => [...components.values()].every((c) => c.up);

  return {
    isServing,
    set(component, up, reason = "") {
      const before = components.get(component);
      components.set(component, { up, reason });
      if (before !== undefined && before.up === up) return;
      const change: HealthChange = { component, up, reason, serving: isServing() };
      // Copy first: a listener may unsubscribe itself while we iterate.
      for (const listener of [...listeners]) listener(change);
    },
    components: () => new Map(components),
    onChange(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
  };
}
