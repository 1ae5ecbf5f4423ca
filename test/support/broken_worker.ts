/**
 * A stand-in for the BLAKE3 worker that fails: it throws when asked for a key, so a job is
 * pending when the worker dies (tests the fallback in src/store/blake3_pool.ts).
 * @module
 */
const scope = globalThis as unknown as { onmessage: ((e: MessageEvent<{ op: string }>) => void) | null };
scope.onmessage = (e) => {
  if (e.data.op === "end") throw new Error("this worker breaks on purpose");
};
