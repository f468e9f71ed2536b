/**
 * The doctor's DNS: Node's c-ares resolver pointed at the configured servers
 * (or the system's), with a hard deadline on every lookup. It speaks the
 * `resolve(name, rrtype)` shape mailauth takes as its `resolver` option, so
 * mailauth's SPF, DKIM and DMARC code asks the same servers under the same
 * timeouts as our own lookups.
 */
import { Resolver } from "node:dns/promises";
import type { MxRecord } from "node:dns";

/** Options of {@link createDnsResolver}. */
export interface DnsResolverOptions {
  /**
   * Name servers as `ip`, `ip:port` or `[ipv6]:port` (tests: `127.0.0.1:PORT`).
   * Empty or undefined: the system's resolvers.
   */
  readonly servers?: readonly string[] | undefined;
  /** Upper bound on one lookup, retries included. */
  readonly timeoutMs: number;
}

/**
 * A lookup that did not produce records. `code` is Node's: ENOTFOUND (no
 * such name), ENODATA (the name exists, not this type), ETIMEOUT, ESERVFAIL,
 * EREFUSED, ECONNREFUSED...
 */
export class DnsLookupError extends Error {
  override readonly name = "DnsLookupError";
  constructor(
    readonly code: string,
    readonly query: string,
    readonly rrtype: string,
    message: string,
  ) {
    super(message);
  }
}

export interface DnsResolver {
  readonly timeoutMs: number;
  /**
   * One lookup with Node's result shapes (TXT: string[][], MX: MxRecord[],
   * A: string[]) and Node's error codes; what mailauth expects of a resolver.
   */
  resolve(name: string, rrtype: string): Promise<unknown>;
  /** TXT records, each still split into its character-strings. */
  txt(name: string): Promise<string[][]>;
  mx(name: string): Promise<MxRecord[]>;
  a(name: string): Promise<string[]>;
  aaaa(name: string): Promise<string[]>;
  /** Cancels lookups still running (a timed-out query must not keep the process alive). */
  close(): void;
}

/** Creates a resolver; throws on a malformed server entry. */
export function createDnsResolver(options: DnsResolverOptions): DnsResolver {
  const timeoutMs = options.timeoutMs;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error(`DNS resolver: timeoutMs must be positive, got ${timeoutMs}`);
  // Two tries inside the deadline: one lost UDP datagram is not a verdict.
  const resolver = new Resolver({ timeout: Math.max(50, Math.floor(timeoutMs / 2)), tries: 2 });
  if (options.servers !== undefined && options.servers.length > 0) resolver.setServers([...options.servers]);

  async function resolve(name: string, rrtype: string): Promise<unknown> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () => reject(new DnsLookupError("ETIMEOUT", name, rrtype, `${rrtype} ${name}: no answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([resolver.resolve(name, rrtype), deadline]);
    } catch (error) {
      throw toLookupError(error, name, rrtype);
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    timeoutMs,
    resolve,
    txt: (name) => resolve(name, "TXT") as Promise<string[][]>,
    mx: (name) => resolve(name, "MX") as Promise<MxRecord[]>,
    a: (name) => resolve(name, "A") as Promise<string[]>,
    aaaa: (name) => resolve(name, "AAAA") as Promise<string[]>,
    close: () => resolver.cancel(),
  };
}

function toLookupError(error: unknown, name: string, rrtype: string): DnsLookupError {
  if (error instanceof DnsLookupError) return error;
  const code = typeof (error as { code?: unknown }).code === "string" ? (error as { code: string }).code : "EUNKNOWN";
  const reason: Record<string, string> = {
    ENOTFOUND: "no such domain",
    ENODATA: "no record of this type",
    ETIMEOUT: "timed out",
    ESERVFAIL: "the server failed (SERVFAIL)",
    EREFUSED: "the server refused the query",
    ECONNREFUSED: "could not reach the name server",
  };
  return new DnsLookupError(code, name, rrtype, `${rrtype} ${name}: ${reason[code] ?? (error as Error).message}`);
}

/** True when the lookup says "no such record" (as opposed to "could not tell"). */
export function isNoRecord(error: unknown): boolean {
  return error instanceof DnsLookupError && (error.code === "ENOTFOUND" || error.code === "ENODATA");
}

/** TXT records at `name` joined from their character-strings; [] when there are none. */
export async function txtRecords(resolver: DnsResolver, name: string): Promise<string[]> {
  try {
    return (await resolver.txt(name)).map((chunks) => chunks.join(""));
  } catch (error) {
    if (isNoRecord(error)) return [];
    throw error;
  }
}
