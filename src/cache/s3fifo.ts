/**
 * S3-FIFO eviction for a byte-bounded object cache (Yang et al., "FIFO queues are all you need
 * for cache eviction", SOSP '23), written from the paper's description.
 *
 * Three FIFO queues:
 *
 * - **S** (small, probationary; its share is `smallRatio`, default 10 %, of the capacity in
 *   bytes): every new object enters here — unless the ghost queue remembers it.
 * - **M** (main, the rest of the capacity): objects that proved themselves.
 * - **G** (ghost): keys (and sizes, no data) of objects recently evicted from S, bounded to
 *   `ghostRatio` (default 90 %, i.e. about M's share) of the capacity in bytes and to
 *   `ghostMaxEntries` keys.
 *
 * Each resident object has a small counter `freq` (0‥`maxFreq`, default 3). A hit increments
 * it and changes nothing else — no reordering, which is what makes FIFO cheap. A miss admits the
 * object to M when its key is in G (a "ghost hit"), else to S, after evicting until it fits:
 *
 * - evict from **S** when S holds at least its share of bytes (or M is empty): the head of S
 *   moves to the tail of M with `freq` reset to 0 when it was hit at least `promoteThreshold`
 *   times while in S (default 1: "accessed more than once" in the paper's words), else it leaves
 *   the cache and its key goes to G; repeat until one object has left;
 * - otherwise evict from **M**: the head of M with `freq > 0` is reinserted at the tail with
 *   `freq − 1` (a 2-bit CLOCK), the first head with `freq = 0` leaves the cache.
 *
 * As in the paper, nothing is evicted until the cache is full, so S can hold more than its
 * share while the cache fills; the first evictions then drain it back.
 *
 * Byte sizes vary from KiB to GiB, so all bounds are in bytes:
 * - the resident bytes never exceed `capacity` after any call;
 * - an object larger than `capacity` is **not admitted** (`admitted: false`, counted in
 *   `counters.rejected`): serve it, do not keep it;
 * - an object larger than S's share but not than the capacity *is* admitted to S; S is then
 *   over its share and the next evictions come from S (oldest first) until it is back under.
 *
 * Every operation is synchronous and O(1) amortised: a hit is a counter increment; each
 * promotion pays for one insertion into S and each reinsertion in M for one earlier hit.
 *
 * Persistence: {@link S3Fifo.snapshot} gives a plain JSON value (every entry with its queue,
 * `freq` and a position stamp `seq`); {@link S3Fifo.restore} loads one. For cheap incremental
 * persistence, `onChange` receives after each operation the list of row changes it made — each
 * one an upsert or a delete of one `(key, size, queue, freq, seq)` row — so a table keyed by
 * `key` mirrors the state and `restore({ version: 1, entries: rows })` rebuilds it.
 * @module
 */
import { type AccessResult, checkCapacity, checkSize, type EvictionPolicy, Node, NodeList } from "./policies.ts";

/** The queue an entry is in. "ghost" entries are not resident (key and size only). */
export type S3FifoQueue = "small" | "main" | "ghost";

/** One entry of the state: a row of the persisted table. */
export interface S3FifoEntry {
  key: string;
  /** Bytes of the object. */
  size: number;
  queue: S3FifoQueue;
  /** Access counter 0‥maxFreq (always 0 in the ghost queue). */
  freq: number;
  /**
   * Position stamp: stamped from one counter that grows on every move to the tail of any queue,
   * so within a queue a smaller `seq` is nearer the head. A hit does not change it.
   */
  seq: number;
}

/** The whole queue state as a plain JSON-able value. */
export interface S3FifoSnapshot {
  version: 1;
  /** The capacity the state was taken at (informational; the restoring cache keeps its own). */
  capacity?: number;
  /** Entries in queue order: S head→tail, then M head→tail, then G head→tail. */
  entries: S3FifoEntry[];
}

/** An entry as {@link S3Fifo.restore} accepts it: `freq`/`seq` may be left out (see there). */
export type S3FifoEntryInput = Omit<S3FifoEntry, "freq" | "seq"> & { freq?: number; seq?: number };

/** Why a row changed. */
export type S3FifoChangeReason =
  /** put: a miss admitted the object (queue "small", or "main" after a ghost hit) */
  | "insert"
  /** put: a hit raised `freq` (a hit at `maxFreq` changes nothing and reports nothing) */
  | "hit"
  /** put: moved from the head of S to the tail of M with `freq` 0 */
  | "promote"
  /** put: moved from the head of M to its tail with `freq − 1` */
  | "reinsert"
  /** put: evicted from S, its key is now in the ghost queue (the object left the cache) */
  | "ghost"
  /** delete: evicted from M, or from S without a ghost entry (the object left the cache) */
  | "evict"
  /** delete: a ghost key fell off the ghost queue's bound (no object involved) */
  | "ghost-expire"
  /** delete: {@link S3Fifo.remove}, or a hit with a different size (followed by an "insert") */
  | "remove";

/** One row change: upsert `entry` (keyed by `entry.key`) or delete the row of `key`. */
export type S3FifoChange =
  | { op: "put"; reason: S3FifoChangeReason; entry: S3FifoEntry }
  | { op: "delete"; reason: S3FifoChangeReason; key: string };

/** Monotonic counters since construction. */
export interface S3FifoCounters {
  hits: number;
  misses: number;
  hitBytes: number;
  missBytes: number;
  /** Misses admitted to S. */
  insertsSmall: number;
  /** Misses admitted straight to M because their key was in G. */
  ghostHits: number;
  /** S → M moves. */
  promotions: number;
  /** M head → M tail moves with freq − 1. */
  reinsertions: number;
  /** Objects that left the cache to make room (from S or M). */
  evictions: number;
  evictionsSmall: number;
  evictionsMain: number;
  evictedBytes: number;
  /** Ghost keys dropped by the ghost bound. */
  ghostExpired: number;
  /** Misses not admitted because the object is larger than the whole capacity. */
  rejected: number;
  rejectedBytes: number;
  /** Resident objects dropped through {@link S3Fifo.remove} (or a size change). */
  removals: number;
}

/** Per-queue totals plus the counters. */
export interface S3FifoStats {
  capacity: number;
  bytes: number;
  count: number;
  small: { count: number; bytes: number; target: number };
  main: { count: number; bytes: number; target: number };
  ghost: { count: number; bytes: number; maxBytes: number; maxEntries: number };
  counters: S3FifoCounters;
}

/** Construction options. */
export interface S3FifoOptions {
  /** Byte bound of the resident objects. */
  capacity: number;
  /** S's share of the capacity, 0 < r < 1. Default 0.1 (the paper's choice). */
  smallRatio?: number;
  /** Ghost bound in bytes of the remembered objects, as a fraction of the capacity. Default 0.9; 0 disables G. */
  ghostRatio?: number;
  /** Ghost bound in keys, to cap memory when objects are tiny. Default 100 000. */
  ghostMaxEntries?: number;
  /** Hits while in S needed to move to M instead of G. Default 1. */
  promoteThreshold?: number;
  /** Counter ceiling. Default 3 (a 2-bit counter). */
  maxFreq?: number;
  /** Row changes of each operation, delivered once the state is consistent again (see the module doc). */
  onChange?: (changes: readonly S3FifoChange[]) => void;
}

type Q = S3FifoQueue;

const zeroCounters = (): S3FifoCounters => ({
  hits: 0,
  misses: 0,
  hitBytes: 0,
  missBytes: 0,
  insertsSmall: 0,
  ghostHits: 0,
  promotions: 0,
  reinsertions: 0,
  evictions: 0,
  evictionsSmall: 0,
  evictionsMain: 0,
  evictedBytes: 0,
  ghostExpired: 0,
  rejected: 0,
  rejectedBytes: 0,
  removals: 0,
});

/** S3-FIFO over keys and byte sizes. See the module documentation. */
export class S3Fifo implements EvictionPolicy {
  readonly name = "s3fifo";
  readonly capacity: number;
  /** S's share in bytes: S is evicted from when it holds at least this much. */
  readonly smallTarget: number;
  /** Bytes of remembered objects the ghost queue may hold. */
  readonly ghostMaxBytes: number;
  readonly ghostMaxEntries: number;
  readonly promoteThreshold: number;
  readonly maxFreq: number;
  /** Receives each operation's row changes; may be set or replaced at any time. Must not throw. */
  onChange: ((changes: readonly S3FifoChange[]) => void) | undefined;
  /** Statistics since construction. */
  readonly counters: S3FifoCounters = zeroCounters();

  readonly #map = new Map<string, Node<Q>>();
  readonly #small = new NodeList<Q>();
  readonly #main = new NodeList<Q>();
  readonly #ghost = new NodeList<Q>();
  #seq = 0;
  #changes: S3FifoChange[] | null = null;

  constructor(opts: S3FifoOptions) {
    checkCapacity(opts.capacity);
    const smallRatio = opts.smallRatio ?? 0.1;
    if (!(smallRatio > 0 && smallRatio < 1)) throw new RangeError(`smallRatio must be in (0, 1), got ${smallRatio}`);
    const ghostRatio = opts.ghostRatio ?? 0.9;
    if (!(ghostRatio >= 0 && Number.isFinite(ghostRatio))) throw new RangeError(`ghostRatio must be ≥ 0, got ${ghostRatio}`);
    const ghostMaxEntries = opts.ghostMaxEntries ?? 100_000;
    if (!Number.isSafeInteger(ghostMaxEntries) || ghostMaxEntries < 0) {
      throw new RangeError(`ghostMaxEntries must be a non-negative integer, got ${ghostMaxEntries}`);
    }
    const maxFreq = opts.maxFreq ?? 3;
    if (!Number.isSafeInteger(maxFreq) || maxFreq < 1) throw new RangeError(`maxFreq must be an integer ≥ 1, got ${maxFreq}`);
    const promoteThreshold = opts.promoteThreshold ?? 1;
    if (!Number.isSafeInteger(promoteThreshold) || promoteThreshold < 1 || promoteThreshold > maxFreq) {
      throw new RangeError(`promoteThreshold must be an integer in 1‥${maxFreq}, got ${promoteThreshold}`);
    }
    this.capacity = opts.capacity;
    this.smallTarget = Math.floor(opts.capacity * smallRatio);
    this.ghostMaxBytes = Math.floor(opts.capacity * ghostRatio);
    this.ghostMaxEntries = ghostMaxEntries;
    this.maxFreq = maxFreq;
    this.promoteThreshold = promoteThreshold;
    this.onChange = opts.onChange;
  }

  // ---------------------------------------------------------------- reading

  get bytes(): number {
    return this.#small.bytes + this.#main.bytes;
  }

  get count(): number {
    return this.#small.count + this.#main.count;
  }

  /** Whether `key` is resident (in S or M). */
  has(key: string): boolean {
    const n = this.#map.get(key);
    return n !== undefined && n.queue !== "ghost";
  }

  /** The queue `key` is in, or undefined when the policy does not know it. */
  queueOf(key: string): S3FifoQueue | undefined {
    return this.#map.get(key)?.queue;
  }

  /** The access counter of a resident key, or undefined. */
  freqOf(key: string): number | undefined {
    const n = this.#map.get(key);
    return n && n.queue !== "ghost" ? n.freq : undefined;
  }

  /** Keys of one queue, head (next to leave) first. */
  *queueKeys(queue: S3FifoQueue): IterableIterator<string> {
    for (const n of this.#list(queue).nodes()) yield n.key;
  }

  /** Resident keys: S head→tail, then M head→tail. */
  *keys(): IterableIterator<string> {
    yield* this.queueKeys("small");
    yield* this.queueKeys("main");
  }

  /** Per-queue totals and a copy of the counters. */
  stats(): S3FifoStats {
    return {
      capacity: this.capacity,
      bytes: this.bytes,
      count: this.count,
      small: { count: this.#small.count, bytes: this.#small.bytes, target: this.smallTarget },
      main: { count: this.#main.count, bytes: this.#main.bytes, target: this.capacity - this.smallTarget },
      ghost: {
        count: this.#ghost.count,
        bytes: this.#ghost.bytes,
        maxBytes: this.ghostMaxBytes,
        maxEntries: this.ghostMaxEntries,
      },
      counters: { ...this.counters },
    };
  }

  // ---------------------------------------------------------------- the policy

  access(key: string, size: number): AccessResult {
    checkSize(size);
    return this.#op(() => {
      const c = this.counters;
      const found = this.#map.get(key);
      if (found && found.queue !== "ghost") {
        if (found.size === size) {
          c.hits++;
          c.hitBytes += size;
          if (found.freq < this.maxFreq) {
            found.freq++;
            this.#put("hit", found);
          }
          return { hit: true, admitted: true, evicted: [] };
        }
        this.#dropResident(found); // a different size: forget it, then handle as a miss
      }
      c.misses++;
      c.missBytes += size;
      if (size > this.capacity) {
        c.rejected++;
        c.rejectedBytes += size;
        return { hit: false, admitted: false, evicted: [] };
      }
      const ghost = this.#map.get(key);
      if (ghost) {
        // In G (a resident key never is): admit straight to M. The "insert" put below replaces its row.
        this.#ghost.unlink(ghost);
        this.#map.delete(key);
        c.ghostHits++;
      } else {
        c.insertsSmall++;
      }
      const evicted: string[] = [];
      while (this.bytes + size > this.capacity) this.#evictOne(evicted);
      const node = new Node<Q>(key, size, ghost ? "main" : "small", 0, ++this.#seq);
      this.#list(node.queue).push(node);
      this.#map.set(key, node);
      this.#put("insert", node);
      return { hit: false, admitted: true, evicted };
    });
  }

  /** Forget a resident object (its file was deleted elsewhere). Ghost keys are kept. */
  remove(key: string): boolean {
    return this.#op(() => {
      const n = this.#map.get(key);
      if (!n || n.queue === "ghost") return false;
      this.#dropResident(n);
      return true;
    });
  }

  /** Evict one object: from S when S holds its share (or M is empty), else from M. */
  #evictOne(evicted: string[]): void {
    if (this.#small.count > 0 && (this.#small.bytes >= this.smallTarget || this.#main.count === 0)) {
      if (this.#evictSmall(evicted)) return;
    }
    this.#evictMain(evicted);
  }

  /** Move hit heads of S to M until one head leaves the cache. False when S ran empty first. */
  #evictSmall(evicted: string[]): boolean {
    for (let n = this.#small.head; n; n = this.#small.head) {
      this.#small.unlink(n);
      if (n.freq >= this.promoteThreshold) {
        n.queue = "main";
        n.freq = 0;
        n.seq = ++this.#seq;
        this.#main.push(n);
        this.counters.promotions++;
        this.#put("promote", n);
        continue;
      }
      this.counters.evictions++;
      this.counters.evictionsSmall++;
      this.counters.evictedBytes += n.size;
      evicted.push(n.key);
      this.#toGhost(n);
      return true;
    }
    return false;
  }

  /** Reinsert heads of M with freq > 0 (freq − 1) until a head with freq 0 leaves the cache. */
  #evictMain(evicted: string[]): void {
    for (let n = this.#main.head; n; n = this.#main.head) {
      this.#main.unlink(n);
      if (n.freq > 0) {
        n.freq--;
        n.seq = ++this.#seq;
        this.#main.push(n);
        this.counters.reinsertions++;
        this.#put("reinsert", n);
        continue;
      }
      this.#map.delete(n.key);
      this.counters.evictions++;
      this.counters.evictionsMain++;
      this.counters.evictedBytes += n.size;
      evicted.push(n.key);
      this.#delete("evict", n.key);
      return;
    }
    throw new Error("S3Fifo: nothing left to evict (bytes accounting is broken)");
  }

  /** Remember an object just evicted from S (already unlinked) in G, then trim G to its bounds. */
  #toGhost(n: Node<Q>): void {
    if (this.ghostMaxEntries === 0 || n.size > this.ghostMaxBytes) {
      this.#map.delete(n.key);
      this.#delete("evict", n.key);
      return;
    }
    n.queue = "ghost";
    n.freq = 0;
    n.seq = ++this.#seq;
    this.#ghost.push(n);
    this.#put("ghost", n);
    this.#trimGhost();
  }

  #trimGhost(): void {
    while (this.#ghost.bytes > this.ghostMaxBytes || this.#ghost.count > this.ghostMaxEntries) {
      const g = this.#ghost.shift()!;
      this.#map.delete(g.key);
      this.counters.ghostExpired++;
      this.#delete("ghost-expire", g.key);
    }
  }

  #dropResident(n: Node<Q>): void {
    this.#list(n.queue).unlink(n);
    this.#map.delete(n.key);
    this.counters.removals++;
    this.#delete("remove", n.key);
  }

  #list(q: S3FifoQueue): NodeList<Q> {
    return q === "small" ? this.#small : q === "main" ? this.#main : this.#ghost;
  }

  // ---------------------------------------------------------------- change events

  /** Run one public operation, collecting its changes and delivering them once it is complete. */
  #op<T>(body: () => T): T {
    if (this.#changes) return body(); // nested (restore → evict): the outer op delivers
    this.#changes = [];
    let changes: S3FifoChange[];
    let out: T;
    try {
      out = body();
    } finally {
      changes = this.#changes;
      this.#changes = null;
    }
    if (changes.length > 0 && this.onChange) this.onChange(changes);
    return out;
  }

  #put(reason: S3FifoChangeReason, n: Node<Q>): void {
    if (this.onChange) this.#changes?.push({ op: "put", reason, entry: entryOf(n) });
  }

  #delete(reason: S3FifoChangeReason, key: string): void {
    if (this.onChange) this.#changes?.push({ op: "delete", reason, key });
  }

  // ---------------------------------------------------------------- persistence

  /** The whole state as a plain JSON-able value (entries in queue order S, M, G). */
  snapshot(): S3FifoSnapshot {
    const entries: S3FifoEntry[] = [];
    for (const q of ["small", "main", "ghost"] as const) {
      for (const n of this.#list(q).nodes()) entries.push(entryOf(n));
    }
    return { version: 1, capacity: this.capacity, entries };
  }

  /**
   * Replace the whole state with a snapshot — or with the rows a table kept by `onChange` holds,
   * in any order: within each queue, entries are ordered by `seq` (ties keep their input order).
   * When no entry has a `seq`, the input order is the queue order and stamps are assigned;
   * a mix of entries with and without `seq` is refused. `freq` defaults to 0 and is clamped to
   * `maxFreq`; ghost entries always have freq 0.
   *
   * Validation happens first: on a bad snapshot (unknown version or queue, bad size, duplicate
   * key) it throws and the state is unchanged. Counters are kept.
   *
   * When the restored residents exceed this cache's capacity (it was lowered), objects are
   * evicted by the normal rules until they fit, and the ghost queue is trimmed to its bounds;
   * the keys that left are returned (delete them) and reported through `onChange` like any
   * eviction. Nothing else is reported: the caller already holds what it restores.
   */
  restore(snapshot: { version: number; entries: readonly S3FifoEntryInput[] }): { evicted: string[] } {
    if (!snapshot || snapshot.version !== 1 || !Array.isArray(snapshot.entries)) {
      throw new TypeError(`not an S3-FIFO snapshot of version 1`);
    }
    const entries = snapshot.entries;
    const withSeq = entries.filter((e) => e.seq !== undefined).length;
    if (withSeq !== 0 && withSeq !== entries.length) {
      throw new TypeError("snapshot entries must all have a seq, or none");
    }
    const seen = new Set<string>();
    const byQueue: Record<Q, { e: S3FifoEntryInput; i: number }[]> = { small: [], main: [], ghost: [] };
    entries.forEach((e, i) => {
      if (typeof e.key !== "string") throw new TypeError(`snapshot entry ${i}: key must be a string`);
      if (seen.has(e.key)) throw new TypeError(`snapshot entry ${i}: duplicate key ${e.key}`);
      seen.add(e.key);
      const q = e.queue as string;
      if (q !== "small" && q !== "main" && q !== "ghost") {
        throw new TypeError(`snapshot entry ${i}: unknown queue ${JSON.stringify(q)}`);
      }
      checkSize(e.size);
      if (e.freq !== undefined && !(Number.isInteger(e.freq) && e.freq >= 0)) {
        throw new TypeError(`snapshot entry ${i}: freq must be a non-negative integer`);
      }
      if (e.seq !== undefined && !Number.isSafeInteger(e.seq)) {
        throw new TypeError(`snapshot entry ${i}: seq must be an integer`);
      }
      byQueue[q].push({ e, i });
    });

    this.#map.clear();
    this.#small.clear();
    this.#main.clear();
    this.#ghost.clear();
    let seq = 0;
    for (const q of ["small", "main", "ghost"] as const) {
      const list = byQueue[q];
      if (withSeq) list.sort((a, b) => a.e.seq! - b.e.seq! || a.i - b.i);
      for (const { e } of list) {
        const s = withSeq ? e.seq! : ++seq;
        if (s > seq) seq = s;
        const freq = q === "ghost" ? 0 : Math.min(e.freq ?? 0, this.maxFreq);
        const n = new Node<Q>(e.key, e.size, q, freq, s);
        this.#list(q).push(n);
        this.#map.set(e.key, n);
      }
    }
    this.#seq = seq;

    return this.#op(() => {
      const evicted: string[] = [];
      while (this.bytes > this.capacity) this.#evictOne(evicted);
      this.#trimGhost();
      return { evicted };
    });
  }
}

function entryOf(n: Node<Q>): S3FifoEntry {
  return { key: n.key, size: n.size, queue: n.queue, freq: n.freq, seq: n.seq };
}
