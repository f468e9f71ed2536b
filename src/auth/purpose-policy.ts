/**
 * Which purposes each caller may use (CALLER_PURPOSES). A caller that is not
 * listed may use every purpose; one that is listed may use only its own.
 */
export interface PurposePolicy {
  allows(caller: string, purpose: string): boolean;
}

/** Every caller may use every purpose. */
export const anyPurpose: PurposePolicy = { allows: () => true };

/** A policy from `caller -> purposes` (callers not in the map are unrestricted). */
export function createPurposePolicy(restricted: ReadonlyMap<string, readonly string[]>): PurposePolicy {
  const sets = new Map([...restricted].map(([caller, purposes]) => [caller, new Set(purposes)]));
  return {
    allows: (caller, purpose) => sets.get(caller)?.has(purpose) ?? true,
  };
}
