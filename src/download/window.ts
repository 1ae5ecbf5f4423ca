/**
 * A window of a download's bytes held in memory: consecutive chunks from offset `start` on.
 * Views into it share the chunks' memory (no copy); chunks are never changed once added.
 * @module
 */

/** Consecutive chunks of a byte stream, from {@link ChunkWindow.start} on. */
export class ChunkWindow {
  #chunks: Uint8Array[] = [];
  #start = 0;
  #bytes = 0;

  /** The offset of the first byte held. */
  get start(): number {
    return this.#start;
  }

  /** Bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Forget everything and continue at `offset`. */
  reset(offset: number): void {
    this.#chunks = [];
    this.#start = offset;
    this.#bytes = 0;
  }

  /** Append the next chunk. */
  push(chunk: Uint8Array): void {
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
  }

  /** Drop whole chunks that end at or before `offset`; true when any was dropped. */
  dropBefore(offset: number): boolean {
    let dropped = false;
    while (this.#chunks.length && this.#start + this.#chunks[0].length <= offset) {
      this.#drop();
      dropped = true;
    }
    return dropped;
  }

  /** Drop the oldest chunks while the rest still hold at least `bytes`. */
  keepLast(bytes: number): void {
    while (this.#chunks.length > 1 && this.#bytes - this.#chunks[0].length >= bytes) this.#drop();
  }

  /** Up to `max` bytes at offset `pos` (a view, not a copy), or null when `pos` is not held. */
  view(pos: number, max: number): Uint8Array | null {
    if (pos < this.#start || max <= 0) return null;
    let start = this.#start;
    for (const c of this.#chunks) {
      if (pos < start + c.length) {
        const off = pos - start;
        return c.subarray(off, off + Math.min(max, c.length - off));
      }
      start += c.length;
    }
    return null;
  }

  #drop() {
    const c = this.#chunks.shift()!;
    this.#start += c.length;
    this.#bytes -= c.length;
  }
}

/** One buffer holding `chunks` in order (`total`: their length, when known); one chunk is returned as is. */
export function concat(chunks: Uint8Array[], total = chunks.reduce((n, c) => n + c.length, 0)): Uint8Array {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}
