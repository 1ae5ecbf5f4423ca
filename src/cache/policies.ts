/**
 * Byte-bounded eviction policies behind one interface: the shared {@link EvictionPolicy} shape,
 * an intrusive doubly linked FIFO list they are built on, and the two baselines the benchmark
 * compares S3-FIFO with — {@link LruPolicy} (a hit moves the object to the tail) and
 * {@link FifoPolicy} (a hit changes nothing). S3-FIFO itself is in `./s3fifo.ts`.
 *
 * Everything here is synchronous, does no I/O and keeps only keys and sizes: the caller owns the
 * objects (files, index rows) and deletes the keys a call reports as evicted.
 * @module
 */

/** What one {@link EvictionPolicy.access} did. */
export interface AccessResult {
  /** The object was resident before this access. */
  hit: boolean;
  /**
   * The object is resident after this access. `false` only for a miss on an object larger than
   * the whole capacity: it is not admitted (serve it, do not keep it) and nothing is evicted.
   */
  admitted: boolean;
  /** Keys that left the cache to make room, oldest decision first. The caller deletes them. */
  evicted: string[];
}

/** A byte-bounded cache eviction policy. Keys are opaque strings (for ocicache: digests). */
export interface EvictionPolicy {
  /** Short name for reports: "s3fifo", "lru", "fifo". */
  readonly name: string;
  /** The byte bound. */
  readonly capacity: number;
  /** Bytes of the resident objects (never more than {@link capacity}). */
  readonly bytes: number;
  /** Number of resident objects. */
  readonly count: number;
  /**
   * A request for `key` of `size` bytes: a hit updates the policy's metadata; a miss admits the
   * object, evicting others first until it fits (or refuses it when `size > capacity`). A hit
   * whose `size` differs from the recorded one is handled as a removal plus a miss.
   */
  access(key: string, size: number): AccessResult;
  /** Whether `key` is resident. No side effects. */
  has(key: string): boolean;
  /** Forget a resident object (deleted from outside the policy). Returns whether it was resident. */
  remove(key: string): boolean;
  /** Resident keys, in the policy's eviction order (next victim first, roughly for S3-FIFO). */
  keys(): IterableIterator<string>;
}

/** A byte size the policies accept: a finite, non-negative integer. */
export function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`object size must be a non-negative integer, got ${size}`);
  }
}

/** A capacity the policies accept: a finite, positive integer number of bytes. */
export function checkCapacity(capacity: number): void {
  if (!Number.isSafeInteger(capacity) || capacity <= 0) {
    throw new RangeError(`cache capacity must be a positive integer number of bytes, got ${capacity}`);
  }
}

// ------------------------------------------------------------------ intrusive FIFO list

/** A list node: the fields every policy needs, plus S3-FIFO's queue tag and frequency. */
export class Node<Q extends string = string> {
  prev: Node<Q> | null = null;
  next: Node<Q> | null = null;
  constructor(
    public key: string,
    public size: number,
    public queue: Q,
    public freq = 0,
    /** Position stamp: larger = nearer the tail. Used by S3-FIFO's persistence. */
    public seq = 0,
  ) {}
}

/**
 * A doubly linked list with O(1) push at the tail, removal anywhere, and byte/count totals.
 * The head is the oldest entry (the next eviction candidate).
 */
export class NodeList<Q extends string = string> {
  head: Node<Q> | null = null;
  tail: Node<Q> | null = null;
  count = 0;
  bytes = 0;

  /** Append `n` (not in any list) at the tail. */
  push(n: Node<Q>): void {
    n.prev = this.tail;
    n.next = null;
    if (this.tail) this.tail.next = n;
    else this.head = n;
    this.tail = n;
    this.count++;
    this.bytes += n.size;
  }

  /** Unlink `n`, which must be in this list. */
  unlink(n: Node<Q>): void {
    if (n.prev) n.prev.next = n.next;
    else this.head = n.next;
    if (n.next) n.next.prev = n.prev;
    else this.tail = n.prev;
    n.prev = n.next = null;
    this.count--;
    this.bytes -= n.size;
  }

  /** Remove and return the head, or null when empty. */
  shift(): Node<Q> | null {
    const n = this.head;
    if (n) this.unlink(n);
    return n;
  }

  /** Nodes head (oldest) to tail. */
  *nodes(): IterableIterator<Node<Q>> {
    for (let n = this.head; n; n = n.next) yield n;
  }

  clear(): void {
    this.head = this.tail = null;
    this.count = 0;
    this.bytes = 0;
  }
}

// ------------------------------------------------------------------ LRU and FIFO

/** Shared body of the two single-queue baselines; they differ only in what a hit does. */
abstract class SingleQueuePolicy implements EvictionPolicy {
  abstract readonly name: string;
  readonly #map = new Map<string, Node>();
  protected readonly list = new NodeList();

  constructor(readonly capacity: number) {
    checkCapacity(capacity);
  }

  get bytes(): number {
    return this.list.bytes;
  }

  get count(): number {
    return this.list.count;
  }

  protected abstract onHit(n: Node): void;

  access(key: string, size: number): AccessResult {
    checkSize(size);
    const n = this.#map.get(key);
    if (n && n.size === size) {
      this.onHit(n);
      return { hit: true, admitted: true, evicted: [] };
    }
    if (n) this.remove(key);
    if (size > this.capacity) return { hit: false, admitted: false, evicted: [] };
    const evicted: string[] = [];
    while (this.list.bytes + size > this.capacity) {
      const victim = this.list.shift()!;
      this.#map.delete(victim.key);
      evicted.push(victim.key);
    }
    const node = new Node(key, size, "q");
    this.list.push(node);
    this.#map.set(key, node);
    return { hit: false, admitted: true, evicted };
  }

  has(key: string): boolean {
    return this.#map.has(key);
  }

  remove(key: string): boolean {
    const n = this.#map.get(key);
    if (!n) return false;
    this.list.unlink(n);
    this.#map.delete(key);
    return true;
  }

  *keys(): IterableIterator<string> {
    for (const n of this.list.nodes()) yield n.key;
  }
}

/** Least recently used: a hit moves the object to the tail; the head is evicted. */
export class LruPolicy extends SingleQueuePolicy {
  readonly name = "lru";
  protected onHit(n: Node): void {
    if (this.list.tail !== n) {
      this.list.unlink(n);
      this.list.push(n);
    }
  }
}

/** First in, first out: a hit changes nothing; the oldest admitted object is evicted. */
export class FifoPolicy extends SingleQueuePolicy {
  readonly name = "fifo";
  protected onHit(_n: Node): void {}
}
