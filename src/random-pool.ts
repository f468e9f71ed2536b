/**
 * Random bytes from the CSPRNG, fetched in batches. A `randomBytes(10)` per
 * message id (or per limit entry) costs a call into the crypto binding each
 * time; one 4 KiB fill serves hundreds of them. Every byte comes from the
 * CSPRNG and is handed out once, so what callers get is exactly as
 * unpredictable as `randomBytes` (Node's `randomUUID` pools the same way).
 */
import { randomFillSync } from "node:crypto";

/** Returns `size` fresh random bytes. */
export type RandomBytes = (size: number) => Buffer;

/** Bytes per fill; requests larger than this bypass the pool. */
const defaultPoolSize = 4096;

/** A pool of random bytes; give each component its own (nothing is shared between pools). */
export function createRandomPool(poolSize = defaultPoolSize): RandomBytes {
  let pool = Buffer.alloc(0);
  let offset = 0;
  return (size) => {
    if (size > poolSize) return randomFillSync(Buffer.allocUnsafe(size));
    if (offset + size > pool.length) {
      // A new buffer rather than a refill in place: bytes already handed out
      // (views into the old one) must never change under their holder.
      pool = randomFillSync(Buffer.allocUnsafe(poolSize));
      offset = 0;
    }
    const bytes = pool.subarray(offset, offset + size);
    offset += size;
    return bytes;
  };
}
