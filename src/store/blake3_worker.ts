/**
 * Worker entry: computes the BLAKE3 store key of files while they are being written, off the
 * serving thread. The main thread ({@link ./blake3_pool.ts}) tells it how far a file has been
 * written; the worker reads up to there (page cache) and hashes. Messages:
 *
 * - in: `{ op: "open", id, path }`, `{ op: "upTo", id, offset }`, `{ op: "end", id, size }`,
 *   `{ op: "drop", id }`
 * - out: `{ id, key }` once `end` is hashed, or `{ id, error }`
 *
 * It uses only web APIs, `node:fs` and hash-wasm, so it runs in Deno and Bun workers alike.
 * @module
 */
import { createBLAKE3 } from "hash-wasm";
import { closeSync, openSync, readlinkSync, readSync } from "node:fs";
import { setPriority } from "node:os";

/** A message to the worker. */
export type Blake3Request =
  | { op: "open"; id: number; path: string }
  | { op: "upTo"; id: number; offset: number }
  | { op: "end"; id: number; size: number }
  | { op: "drop"; id: number };

/** A message from the worker. */
export type Blake3Reply = { id: number; key: string } | { id: number; error: string };

type Hasher = Awaited<ReturnType<typeof createBLAKE3>>;

interface Job {
  fd: number;
  hasher: Hasher;
  /** Bytes hashed so far. */
  pos: number;
  /** Bytes known to be written. */
  target: number;
  /** The final size, once known. */
  end?: number;
}

const READ = 1024 * 1024;
/** Bytes hashed before the worker yields to take new messages. */
const SLICE = 8 * 1024 * 1024;

interface WorkerScope {
  onmessage: ((e: MessageEvent<Blake3Request>) => void) | null;
  postMessage(msg: Blake3Reply): void;
}
const scope = globalThis as unknown as WorkerScope;

const jobs = new Map<number, Job>();
const buf = new Uint8Array(READ);
let pumping = false;

function reply(msg: Blake3Reply) {
  scope.postMessage(msg);
}

function drop(id: number) {
  const job = jobs.get(id);
  if (!job) return;
  jobs.delete(id);
  try {
    closeSync(job.fd);
  } catch { /* already closed */ }
}

function fail(id: number, e: unknown) {
  drop(id);
  reply({ id, error: (e as Error)?.message ?? String(e) });
}

/** Hash what is written, one slice per job per turn, until every job has caught up. */
async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (true) {
      let worked = false;
      for (const [id, job] of [...jobs]) {
        const stop = Math.min(job.end ?? job.target, job.pos + SLICE);
        try {
          while (job.pos < stop) {
            const n = readSync(job.fd, buf, 0, Math.min(READ, stop - job.pos), job.pos);
            if (n <= 0) throw new Error(`file ended at ${job.pos} of ${stop} bytes`);
            job.hasher.update(buf.subarray(0, n));
            job.pos += n;
            worked = true;
          }
          if (job.end !== undefined && job.pos === job.end) {
            const key = job.hasher.digest("hex");
            drop(id);
            reply({ id, key });
          }
        } catch (e) {
          fail(id, e);
        }
      }
      if (!worked) return;
      // Let "upTo" and "end" messages in before the next slice.
      await new Promise((r) => setTimeout(r, 0));
    }
  } finally {
    pumping = false;
  }
}

/** Handle one message; messages are handled in order (opening a job awaits the WASM hasher). */
async function handle(msg: Blake3Request) {
  try {
    switch (msg.op) {
      case "open": {
        const hasher = await createBLAKE3();
        hasher.init();
        jobs.set(msg.id, { fd: openSync(msg.path, "r"), hasher, pos: 0, target: 0 });
        break;
      }
      case "upTo": {
        const job = jobs.get(msg.id);
        if (job) job.target = Math.max(job.target, msg.offset);
        break;
      }
      case "end": {
        const job = jobs.get(msg.id);
        if (!job) throw new Error("no such job");
        job.end = msg.size;
        job.target = msg.size;
        break;
      }
      case "drop":
        drop(msg.id);
        return;
    }
  } catch (e) {
    fail(msg.id, e);
    return;
  }
  pump();
}

/**
 * Run this thread at the lowest CPU priority (Linux: setpriority on the thread id), so hashing
 * takes the CPU the serving thread leaves over instead of competing with it. Clients are never
 * waiting for the store key (the flight lets them finish once the sha256 digest checks out).
 */
function lowerPriority() {
  try {
    const tid = Number(/task\/(\d+)/.exec(readlinkSync("/proc/thread-self"))?.[1]);
    if (tid > 0) setPriority(tid, 19);
  } catch { /* not Linux, or not allowed: run at normal priority */ }
}
lowerPriority();

let chain: Promise<void> = Promise.resolve();
// The handler is set synchronously: a message that arrives while an awaited module top level
// runs is lost on Bun (seen with 1.4).
scope.onmessage = (e: MessageEvent<Blake3Request>) => {
  chain = chain.then(() => handle(e.data));
};
