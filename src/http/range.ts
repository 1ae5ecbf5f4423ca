/**
 * Single-range `Range: bytes=…` parsing (RFC 9110 §14).
 * @module
 */

/** The outcome of looking at a Range header against a representation of `size` bytes. */
export type RangeResult =
  /** No usable Range: serve the whole body with 200 (absent, malformed, multi-range or not bytes). */
  | { kind: "full" }
  /** Serve bytes `start..end` (inclusive) with 206. */
  | { kind: "partial"; start: number; end: number }
  /** Syntactically valid but no byte of it exists: 416 with `Content-Range: bytes * /size`. */
  | { kind: "unsatisfiable" };

const SINGLE = /^bytes=(\d*)-(\d*)$/;

/**
 * Parse `header` for a body of `size` bytes. Malformed and multi-range headers are ignored
 * (a full 200), as RFC 9110 allows; a range starting past the end is unsatisfiable; an end past
 * the last byte is clamped; a suffix range `bytes=-N` takes the last N bytes.
 */
export function parseRange(header: string | null, size: number): RangeResult {
  if (header === null) return { kind: "full" };
  const m = SINGLE.exec(header.trim());
  if (!m) return { kind: "full" };
  const [, a, b] = m;
  if (a === "" && b === "") return { kind: "full" };
  if (a === "") {
    const n = Number(b);
    if (!Number.isSafeInteger(n)) return { kind: "full" };
    if (n === 0 || size === 0) return { kind: "unsatisfiable" };
    return { kind: "partial", start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  const end = b === "" ? size - 1 : Number(b);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end)) return { kind: "full" };
  if (start >= size) return { kind: "unsatisfiable" };
  if (end < start) return { kind: "full" };
  return { kind: "partial", start, end: Math.min(end, size - 1) };
}

/** The `Content-Range` value for a partial response or (without a range) a 416. */
export function contentRange(size: number, range?: { start: number; end: number }): string {
  return range ? `bytes ${range.start}-${range.end}/${size}` : `bytes */${size}`;
}
