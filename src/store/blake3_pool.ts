/**
 * BLAKE3 store keys computed by worker threads, off the serving thread. A cold download writes
 * its bytes to a temp file; a worker follows that file as it grows and hashes it, so the thread
 * that receives, verifies (sha256) and serves the bytes does not also run BLAKE3 (hash-wasm's
 * BLAKE3 is ~3× slower than node:crypto's sha256 and was the largest cost of a cold fill).
 *
 * If a worker cannot start or dies, the key is computed on this thread by reading the file:
 * slower, never wrong.
 * @module
 */
import { createBLAKE3 } from "hash-wasm";
import { open } from "node:fs/promises";
import type { Blake3Reply, Blake3Request } from "./blake3_worker.ts";

/** Follows one file being written and yields its BLAKE3 hex once it is complete. */
export interface Blake3Follower {
  /** The file now holds at least `offset` bytes. */
  advance(offset: number): void;
  /** The file is complete at `size` bytes: its BLAKE3 hex. */
  finish(size: number): Promise<string>;
  /** Stop hashing (the write was abandoned). */
  cancel(): void;
}

/** Tell the worker of progress in steps of at least this many bytes. */
const ADVANCE_STEP = 1024 * 1024;

/** BLAKE3 of the first `size` bytes of a file, read on this thread. */
export async function blake3OfFile(path: string, size: number): Promise<string> {
  const hasher = await createBLAKE3();
  hasher.init();
  const fh = await open(path, "r");
  try {
    const buf = new Uint8Array(1024 * 1024);
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead <= 0) throw new Error(`${path} ended at ${pos} of ${size} bytes`);
      hasher.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hasher.digest("hex");
}

interface Slot {
  worker: Worker;
  /** Jobs waiting for a reply, by id. */
  pending: Map<number, { path: string; size: number; resolve: (key: string) => void; reject: (e: Error) => void }>;
  /** Jobs assigned (open until finished or cancelled). */
  jobs: number;
  /** The worker failed: its jobs fell back to this thread and it takes no more. */
  broken: boolean;
}

/** What {@link Blake3Pool} needs. */
export interface Blake3PoolOptions {
  /** Most workers to start (default: one fewer than the cores, at least 1, at most 4). */
  maxWorkers?: number;
  /** The worker script (tests point it somewhere broken to exercise the fallback). */
  workerUrl?: string | URL;
  /** Told when a worker fails and keys fall back to this thread. */
  onFallback?: (reason: string) => void;
}

/** Worker threads that compute BLAKE3 keys of files as they are written. */
export class Blake3Pool {
  readonly #slots: Slot[] = [];
  readonly #max: number;
  readonly #url: string | URL;
  #nextId = 1;
  #closed = false;
  /** A worker failed: workers are not used again (one warning, then keys on this thread). */
  #disabled = false;

  constructor(private readonly opts: Blake3PoolOptions = {}) {
    const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency ?? 2 : 2;
    this.#max = opts.maxWorkers ?? Math.max(1, Math.min(4, cores - 1));
    this.#url = opts.workerUrl ?? workerEntry();
  }

  /** Workers started so far. */
  get workers(): number {
    return this.#slots.filter((s) => !s.broken).length;
  }

  /** Start following the file at `path` (which exists, possibly empty). */
  follow(path: string): Blake3Follower {
    const slot = this.#slot();
    if (!slot) return inlineFollower(path);
    const id = this.#nextId++;
    slot.jobs++;
    let told = 0;
    let ended = false;
    const send = (msg: Blake3Request) => {
      if (!slot.broken) slot.worker.postMessage(msg);
    };
    const release = () => {
      if (ended) return;
      ended = true;
      slot.jobs--;
    };
    send({ op: "open", id, path });
    return {
      advance(offset) {
        if (offset - told < ADVANCE_STEP) return;
        told = offset;
        send({ op: "upTo", id, offset });
      },
      finish(size) {
        if (slot.broken) {
          release();
          return blake3OfFile(path, size);
        }
        const p = new Promise<string>((resolve, reject) => slot.pending.set(id, { path, size, resolve, reject }));
        send({ op: "end", id, size });
        return p.finally(release);
      },
      cancel() {
        slot.pending.delete(id);
        send({ op: "drop", id });
        release();
      },
    };
  }

  /** Stop the workers. Keys asked for afterwards are computed on this thread. */
  close(): Promise<void> {
    this.#closed = true;
    for (const s of this.#slots) {
      s.broken = true;
      s.worker.terminate();
      for (const [id, job] of s.pending) {
        s.pending.delete(id);
        job.reject(new Error("the BLAKE3 workers were stopped"));
      }
    }
    this.#slots.length = 0;
    return Promise.resolve();
  }

  /** The least busy worker, starting one while under the bound; null: hash on this thread. */
  #slot(): Slot | null {
    if (this.#closed || this.#disabled) return null;
    const live = this.#slots.filter((s) => !s.broken);
    const idle = live.find((s) => s.jobs === 0);
    if (idle) return idle;
    if (live.length < this.#max) {
      const s = this.#start();
      if (s) return s;
    }
    return live.reduce<Slot | null>((a, b) => (!a || b.jobs < a.jobs ? b : a), null);
  }

  #start(): Slot | null {
    let worker: Worker;
    try {
      worker = new Worker(this.#url, { type: "module" });
    } catch (e) {
      this.opts.onFallback?.(`cannot start a BLAKE3 worker: ${(e as Error).message}`);
      return null;
    }
    const slot: Slot = { worker, pending: new Map(), jobs: 0, broken: false };
    // A worker must not keep a CLI command or a test alive by itself.
    (worker as { unref?: () => void }).unref?.();
    worker.onmessage = (e: MessageEvent<Blake3Reply>) => {
      const msg = e.data;
      const job = slot.pending.get(msg.id);
      if (!job) return;
      slot.pending.delete(msg.id);
      if ("key" in msg) job.resolve(msg.key);
      else job.reject(new Error(`BLAKE3 of ${job.path}: ${msg.error}`));
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault?.();
      this.#broken(slot, e.message || "worker error");
    };
    this.#slots.push(slot);
    return slot;
  }

  /** A worker failed: finish its jobs on this thread. */
  #broken(slot: Slot, reason: string) {
    if (slot.broken) return;
    slot.broken = true;
    slot.worker.terminate();
    if (!this.#disabled) this.opts.onFallback?.(`BLAKE3 worker failed (${reason}); store keys are computed on the main thread from now on`);
    this.#disabled = true;
    for (const [id, job] of slot.pending) {
      slot.pending.delete(id);
      blake3OfFile(job.path, job.size).then(job.resolve, job.reject);
    }
  }
}

/**
 * The worker script's URL. From source it sits next to this module. In a binary compiled by
 * `bun build --compile` (scripts/bun_build.ts), modules live under a virtual `/$bunfs/root/`
 * that mirrors the entry points' common folder (`src/`), and `import.meta.url` names the binary
 * itself at that root.
 */
function workerEntry(): string {
  const here = import.meta.url;
  return here.includes("/$bunfs/") ? new URL("./store/blake3_worker.ts", here).href : new URL("./blake3_worker.ts", here).href;
}

/** Hash on this thread once the file is complete (no worker available). */
function inlineFollower(path: string): Blake3Follower {
  return {
    advance() {},
    finish: (size) => blake3OfFile(path, size),
    cancel() {},
  };
}
