/**
 * The size bound of the blob store: S3-FIFO decides, this carries it out. Every stored blob is
 * admitted to the policy, every hit counts as an access; what the policy evicts loses its index
 * row first and then (when no other row names the same content) its file, in the background.
 * The queue state is kept in the index so a restart does not forget it.
 *
 * Manifests are small and not bounded here: they stay while cached (see the README).
 * @module
 */
import type { Index } from "../index/oci_index.ts";
import type { Logger } from "../log.ts";
import type { Cafs } from "../store/cafs.ts";
import { S3Fifo, type S3FifoChange, type S3FifoEntryInput, type S3FifoQueue } from "./s3fifo.ts";

/** What {@link BlobEviction} works with. */
export interface EvictionOptions {
  /** Bytes of blob content the store may hold. */
  capacity: number;
  index: Index;
  cafs: Cafs;
  log: Logger;
}

/** Figures for metrics and `du`. */
export interface EvictionFigures {
  capacity: number;
  bytes: number;
  queues: Record<"small" | "main" | "ghost", { count: number; bytes: number }>;
  evictions: number;
  evictedBytes: number;
  reclaimedBytes: number;
  ghostHits: number;
  promotions: number;
  rejected: number;
}

/** Keeps the blob store under its byte bound. */
export class BlobEviction {
  readonly policy: S3Fifo;
  #work: Promise<void> = Promise.resolve();
  #persist: Promise<void> = Promise.resolve();
  #pendingPuts = new Map<string, { key: string; size: number; queue: string; freq: number; seq: number }>();
  #pendingDeletes = new Set<string>();
  #persistScheduled = false;
  /** Bytes of files actually removed. */
  reclaimedBytes = 0;

  private constructor(private readonly opts: EvictionOptions) {
    this.policy = new S3Fifo({ capacity: opts.capacity, onChange: (c) => this.#record(c) });
  }

  /**
   * Load the persisted queue state, reconcile it with the blobs the index holds (rows the policy
   * does not know are admitted, queue entries without a blob are dropped), and evict what no
   * longer fits (after a restart with a smaller bound).
   */
  static async open(opts: EvictionOptions): Promise<BlobEviction> {
    const e = new BlobEviction(opts);
    const rows = await opts.index.evictionRows();
    const blobs = (await opts.index.listObjects()).filter((o) => o.kind === "blob");
    const sizes = new Map(blobs.map((b) => [b.digest, b.size]));
    const entries: S3FifoEntryInput[] = rows
      .filter((r) => r.queue === "ghost" || sizes.get(r.key) === r.size)
      .map((r) => ({ key: r.key, size: r.size, queue: r.queue as S3FifoQueue, freq: r.freq, seq: r.seq }));
    const { evicted } = e.policy.restore({ version: 1, entries });
    for (const b of blobs) {
      if (!e.policy.has(b.digest)) evicted.push(...e.policy.access(b.digest, b.size).evicted);
    }
    // The table now mirrors the policy exactly.
    e.#pendingPuts.clear();
    e.#pendingDeletes.clear();
    await opts.index.writeEvictionRows(e.policy.snapshot().entries, [], true);
    if (evicted.length) e.#evict(evicted, "the bound is smaller than what the store holds");
    await e.#work;
    return e;
  }

  /** Whether a blob of this size can be kept at all (larger than the whole bound: served, not kept). */
  fits(size: number): boolean {
    return size <= this.policy.capacity;
  }

  /** A cached blob was served. */
  hit(digest: string, size: number): void {
    const r = this.policy.access(digest, size);
    if (r.evicted.length) this.#evict(r.evicted, "admitting a blob");
  }

  /** A blob was stored and indexed: admit it, and evict what no longer fits. */
  stored(digest: string, size: number): void {
    const r = this.policy.access(digest, size);
    if (!r.admitted) this.#evict([digest], "larger than the whole bound");
    if (r.evicted.length) this.#evict(r.evicted, "admitting a blob");
  }

  /** Store maintenance dropped a blob's row: forget it. */
  forget(digest: string): void {
    this.policy.remove(digest);
  }

  /** Wait for evictions and queue writes in progress. */
  async flush(): Promise<void> {
    await this.#work;
    await this.#persist;
  }

  /** Current figures. */
  figures(): EvictionFigures {
    const s = this.policy.stats();
    return {
      capacity: s.capacity,
      bytes: s.bytes,
      queues: {
        small: { count: s.small.count, bytes: s.small.bytes },
        main: { count: s.main.count, bytes: s.main.bytes },
        ghost: { count: s.ghost.count, bytes: s.ghost.bytes },
      },
      evictions: s.counters.evictions,
      evictedBytes: s.counters.evictedBytes,
      reclaimedBytes: this.reclaimedBytes,
      ghostHits: s.counters.ghostHits,
      promotions: s.counters.promotions,
      rejected: s.counters.rejected,
    };
  }

  /** Remove evicted blobs: index row first, then the file when no other row names the content. */
  #evict(digests: string[], why: string): void {
    this.#work = this.#work.then(async () => {
      for (const digest of digests) {
        try {
          const row = await this.opts.index.getBlob(digest);
          if (!row) continue;
          await this.opts.index.dropObject("blob", digest, row.key);
          if (!(await this.opts.index.keyInUse(row.key))) {
            await this.opts.cafs.remove(row.key);
            this.reclaimedBytes += row.size;
          }
          this.opts.log.debug("evicted blob", { digest, size: row.size, why });
        } catch (e) {
          this.opts.log.error("eviction failed", { digest, error: (e as Error).message });
        }
      }
    });
  }

  /** Queue row changes; they are written in batches, in order, off the request path. */
  #record(changes: readonly S3FifoChange[]): void {
    for (const c of changes) {
      if (c.op === "put") {
        this.#pendingDeletes.delete(c.entry.key);
        this.#pendingPuts.set(c.entry.key, { ...c.entry });
      } else {
        this.#pendingPuts.delete(c.key);
        this.#pendingDeletes.add(c.key);
      }
    }
    if (this.#persistScheduled) return;
    this.#persistScheduled = true;
    this.#persist = this.#persist.then(async () => {
      await new Promise((r) => setTimeout(r, 20));
      this.#persistScheduled = false;
      const puts = [...this.#pendingPuts.values()];
      const deletes = [...this.#pendingDeletes];
      this.#pendingPuts.clear();
      this.#pendingDeletes.clear();
      try {
        await this.opts.index.writeEvictionRows(puts, deletes);
      } catch (e) {
        this.opts.log.error("cannot persist the eviction queue", { error: (e as Error).message });
      }
    });
  }
}
