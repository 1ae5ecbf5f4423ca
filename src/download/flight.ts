/**
 * One upstream download per missing blob, however many clients ask. The bytes are written once
 * to a temp file in the store (sha256 in the stream, the BLAKE3 key by a worker following the
 * file); every waiting client gets them as soon as they land, at its own pace: from memory while
 * it keeps up with the newest bytes, from the file once it falls behind (a slow client slows
 * nobody). The last byte is held back from clients until the digest checks out, so nobody ever
 * sees a clean end of a wrong body. Once it has, clients get the end at once, while the object is
 * committed to the store (key, fsync, rename, index row) behind them.
 *
 * When the upstream breaks off, the download resumes with a Range request from the last good
 * byte. When the store cannot take the bytes (disk full), the clients are served from a bounded
 * memory window instead and nothing is stored.
 * @module
 */
import type { FileReader, Files } from "../runtime/types.ts";
import type { Cafs, CafsWriter, StoredObject } from "../store/cafs.ts";
import type { Digest } from "../oci/digest.ts";
import { ChunkWindow, concat } from "./window.ts";

/** Most bytes one client read (pread) takes from the file at a time. */
const READ_CHUNK = 1024 * 1024;
/** The newest bytes written are also kept in memory for clients that keep up (no read back). */
const RECENT_BYTES = 4 * 1024 * 1024;
/** Received bytes waiting for the file beyond this make the download wait for the disk. */
const MAX_UNWRITTEN = 8 * 1024 * 1024;
const MAX_RESUMES = 3;

/** How a finished flight ended. `clientsServed`: the bytes were verified and served though not stored. */
export type FlightOutcome = { ok: true; stored: StoredObject } | { ok: false; error: Error; clientsServed: boolean };

/** What a {@link Flight} needs. */
export interface FlightInit {
  digest: Digest;
  /** The repository the download was started for (`registry/name`). */
  scope?: string;
  /** The upstream body (200). */
  body: ReadableStream<Uint8Array>;
  /** The size the upstream announced, if any. */
  size?: number;
  cafs: Cafs;
  files: Files;
  /** Index the stored object; runs after the file is in place and before clients see the end. */
  onStored: (obj: StoredObject) => Promise<void>;
  /** Ask the upstream for the body again from `offset` after a break; null when it cannot. */
  resume?: (offset: number) => Promise<ReadableStream<Uint8Array> | null>;
  /** Once every client has left, a download larger than this is cancelled (default: no limit). */
  maxDetachedBytes?: number;
  /** Memory held for clients when the store cannot take the bytes (default 32 MiB). */
  maxBufferBytes?: number;
  /** Why a blob of this announced size must not be kept (served only), or null to keep it. */
  refuse?: (size: number) => string | null;
  /** Told of notable events: a resume, a store write failure. */
  onEvent?: (event: "resumed" | "store-failed", detail: Record<string, unknown>) => void;
}

/** A download in progress (or just finished). */
export class Flight {
  readonly digest: Digest;
  readonly size: number | undefined;
  /** The repository the download was started for (`registry/name`). */
  readonly scope: string | undefined;
  /** Bytes received from upstream. */
  received = 0;
  /** Bytes clients may read now (all but the newest chunk while running). */
  #available = 0;
  /**
   * "verified": every byte is in and the digest checked out; clients may finish while the object
   * is being stored. "done": stored, or served without storing.
   */
  #state: "running" | "verified" | "done" | "failed" = "running";
  #error: Error | undefined;
  /** The file that holds the bytes: the temp file, then the stored object. */
  #path = "";
  #tick = Promise.withResolvers<void>();
  /** Bytes readable from the file; the rest is in memory (after a store failure). */
  #fileLimit = Infinity;
  /**
   * Bytes in memory: the newest ones written (clients that keep up take them from here instead
   * of reading the file back); after a store failure, every byte not yet read by all clients.
   */
  readonly #mem = new ChunkWindow();
  /** Where each client is. */
  readonly #positions = new Set<{ pos: number }>();
  #hadReader = false;
  /** Resolves when late clients can no longer join this flight (its memory window moved on). */
  readonly #unjoinable = Promise.withResolvers<void>();
  /** Settles when the download is stored, served without storing, or has failed. */
  readonly done: Promise<FlightOutcome>;

  constructor(private readonly init: FlightInit) {
    this.digest = init.digest;
    this.size = init.size;
    this.scope = init.scope;
    this.done = this.#run();
  }

  /** "running", "verified" (being stored), "done" or "failed". */
  get state(): "running" | "verified" | "done" | "failed" {
    return this.#state;
  }

  /** Clients currently reading. */
  get readers(): number {
    return this.#positions.size;
  }

  /** Resolves once new clients must start a download of their own. */
  get unjoinable(): Promise<void> {
    return this.#unjoinable.promise;
  }

  #notify() {
    const t = this.#tick;
    this.#tick = Promise.withResolvers<void>();
    t.resolve();
  }

  async #run(): Promise<FlightOutcome> {
    const { cafs, digest } = this.init;
    let writer: CafsWriter;
    try {
      writer = await cafs.writer(digest.algorithm, this.size);
    } catch (e) {
      await this.init.body.cancel().catch(() => {});
      return this.#fail(e as Error);
    }
    this.#path = writer.path;
    let reader = this.init.body.getReader();
    let resumes = 0;
    let storeError: Error | undefined;
    const refused = this.size !== undefined ? this.init.refuse?.(this.size) : null;
    if (refused) {
      // Serve it through the memory window from the first byte; never write it.
      storeError = new Error(refused);
      this.#fileLimit = 0;
      this.init.onEvent?.("store-failed", { digest: digest.value, offset: 0, error: refused });
    }
    // Received chunks go to the file in the background: one write at a time, taking every chunk
    // that arrived meanwhile, so receiving overlaps writing and a fast upstream gets big writes.
    let unwritten: Uint8Array[] = [];
    let unwrittenBytes = 0;
    /** Bytes written (or, after a store failure, held in memory). */
    let flushed = 0;
    let writing: Promise<void> | undefined;
    let writeError: Error | undefined;
    const store = async (data: Uint8Array) => {
      if (!storeError) {
        try {
          await writer.write(data);
        } catch (e) {
          storeError = e as Error;
          this.#fileLimit = flushed;
          this.#mem.reset(flushed);
          this.init.onEvent?.("store-failed", { digest: digest.value, offset: flushed, error: storeError.message });
        }
      } else {
        writer.hashOnly(data);
      }
      this.#mem.push(data);
      if (!storeError) this.#mem.keepLast(RECENT_BYTES);
      flushed += data.length;
      // The last byte stays back until the digest checks out: no client sees a clean end early.
      this.#available = this.size === undefined ? flushed : Math.min(flushed, this.size - 1);
      this.#notify();
      if (storeError) await this.#bound();
    };
    const drain = (): Promise<void> =>
      writing ??= (async () => {
        try {
          while (unwritten.length && !writeError) {
            const data = concat(unwritten, unwrittenBytes);
            unwritten = [];
            unwrittenBytes = 0;
            await store(data);
          }
        } catch (e) {
          writeError = e as Error;
        } finally {
          writing = undefined;
        }
      })();
    try {
      while (true) {
        let chunk: Uint8Array;
        try {
          const { done, value } = await reader.read();
          if (done) {
            // A body that ends cleanly short of its Content-Length is a break like any other.
            if (this.size !== undefined && this.received < this.size) {
              throw new Error(`upstream body ended after ${this.received} of ${this.size} bytes`);
            }
            break;
          }
          chunk = value;
        } catch (e) {
          const more = this.size === undefined || this.received < this.size;
          const again = more && this.init.resume && resumes < MAX_RESUMES ? await this.init.resume(this.received).catch(() => null) : null;
          if (!again) throw e;
          resumes++;
          this.init.onEvent?.("resumed", { digest: digest.value, offset: this.received, reason: (e as Error).message });
          reader = again.getReader();
          continue;
        }
        if (chunk.length === 0) continue;
        if (this.size !== undefined && this.received + chunk.length > this.size) {
          throw new Error(`upstream sent more than the ${this.size} bytes it announced`);
        }
        this.received += chunk.length;
        unwritten.push(chunk);
        unwrittenBytes += chunk.length;
        const w = drain();
        if (unwrittenBytes > MAX_UNWRITTEN || storeError) await w;
        if (writeError) throw writeError;
        this.#checkDetached();
      }
      if (this.size !== undefined && this.received !== this.size) {
        throw new Error(`upstream body ended after ${this.received} of ${this.size} bytes`);
      }
      while (writing || unwritten.length) await drain();
      if (writeError) throw writeError;
      const got = writer.ociDigest();
      if (got !== digest.value) throw new Error(`digest mismatch: upstream bytes hash to ${got}, expected ${digest.value}`);
      if (storeError) {
        // Verified and served to every client, but not stored.
        await writer.abort();
        this.#finish();
        return { ok: false, error: storeError, clientsServed: true };
      }
      // The bytes are right: let every client finish while the object is committed.
      this.#state = "verified";
      this.#available = this.received;
      this.#notify();
      let stored: StoredObject;
      try {
        stored = await writer.commit();
        this.#path = cafs.pathOf(stored.key);
        await this.init.onStored(stored);
      } catch (e) {
        // Clients reading the file (open, so still readable) finish with verified bytes; only
        // storing failed. Late joiners find the file gone and get a broken transfer, never wrong bytes.
        await writer.abort();
        this.#unjoinable.resolve();
        this.#finish();
        return { ok: false, error: e as Error, clientsServed: true };
      }
      this.#finish();
      return { ok: true, stored };
    } catch (e) {
      reader.cancel(e).catch(() => {});
      writeError ??= e as Error; // stops the background writes
      await writing;
      await writer.abort();
      return this.#fail(e as Error);
    }
  }

  #finish() {
    this.#state = "done";
    this.#available = this.received;
    this.#notify();
  }

  #fail(e: Error): FlightOutcome {
    this.#state = "failed";
    this.#error = e;
    this.#unjoinable.resolve();
    this.#notify();
    return { ok: false, error: e, clientsServed: false };
  }

  /** Cancel a download nobody waits for when it is over the detached bound. */
  #checkDetached() {
    const limit = this.init.maxDetachedBytes;
    if (limit === undefined || !this.#hadReader || this.readers > 0) return;
    const size = this.size ?? this.received;
    if (size > limit) {
      throw new Error(`every client left and the blob (${size} bytes) is over the detached-download bound (${limit} bytes); cancelled`);
    }
  }

  /** After a store failure: drop what every client has read, and wait while the window is full. */
  async #bound() {
    const max = this.init.maxBufferBytes ?? 32 * 1024 * 1024;
    for (let waited = 0; ; waited++) {
      this.#trim();
      if (this.readers === 0) {
        if (this.#hadReader) throw new Error("the store cannot take the bytes and no client is left to serve");
        return;
      }
      if (this.#mem.bytes <= max) return;
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  #trim() {
    let min = Infinity;
    for (const p of this.#positions) min = Math.min(min, p.pos);
    if (!Number.isFinite(min)) min = this.received;
    // Bytes before the window are in no file: a client from byte 0 cannot join any more.
    if (this.#mem.dropBefore(min)) this.#unjoinable.resolve();
  }

  async #open(): Promise<FileReader> {
    // The temp file may be renamed (or dropped as a duplicate) between reading the path and
    // opening it; the content under the new path is the same, so try again there.
    // Between the rename and the flight pointing at the new path (the directory fsync runs in
    // between), the old path is gone: wait for the flight to move on, then open the new one.
    for (let attempt = 0; ; attempt++) {
      const path = this.#path;
      const tick = this.#tick.promise;
      try {
        return await this.init.files.openReader(path);
      } catch (e) {
        if (attempt >= 3) throw e;
        if (this.#path === path) {
          if (this.#state === "done" || this.#state === "failed") throw e;
          await tick;
        }
      }
    }
  }

  /**
   * A stream of bytes `start..end` (inclusive; `end` omitted: to the end) for one client.
   * It errors if the download fails, so the client sees a broken transfer, never a clean end.
   */
  stream(start = 0, end?: number): ReadableStream<Uint8Array> {
    const me = { pos: start };
    const limit = end === undefined ? Infinity : end + 1;
    let file: FileReader | undefined;
    let closed = false;
    /** A range's last byte, kept back until the whole blob's digest has checked out. */
    let held: Uint8Array | undefined;
    const close = async () => {
      if (closed) return;
      closed = true;
      this.#positions.delete(me);
      await file?.close().catch(() => {});
    };
    this.#positions.add(me);
    this.#hadReader = true;
    return new ReadableStream<Uint8Array>({
      pull: async (ctrl) => {
        try {
          while (true) {
            if (this.#state === "failed") throw this.#error ?? new Error("download failed");
            const complete = this.#state === "done" || this.#state === "verified";
            if (held) {
              if (complete) {
                ctrl.enqueue(held);
                await close();
                ctrl.close();
                return;
              }
              await this.#tick.promise;
              continue;
            }
            const avail = Math.min(this.#available, limit);
            if (me.pos < avail) {
              // From memory when the bytes are still there (a client that keeps up), else the file.
              let out = this.#mem.view(me.pos, avail - me.pos);
              if (!out) {
                if (me.pos >= this.#fileLimit) throw new Error("bytes no longer in the download's memory window");
                file ??= await this.#open();
                const buf = new Uint8Array(Math.min(READ_CHUNK, avail - me.pos, this.#fileLimit - me.pos));
                const n = await file.read(buf, me.pos);
                if (n <= 0) throw new Error("cached bytes vanished while reading");
                out = n === buf.length ? buf : buf.subarray(0, n);
              }
              me.pos += out.length;
              if (me.pos >= limit && !complete) {
                // This completes the client's response (Content-Length): a range of a running
                // download keeps its last byte back until the digest checks out, and stops
                // pinning the memory window meanwhile.
                held = out.slice(out.length - 1);
                out = out.subarray(0, out.length - 1);
                me.pos = Infinity;
                if (!out.length) continue;
              }
              ctrl.enqueue(out);
              return;
            }
            if (complete && (me.pos >= limit || me.pos >= this.received)) {
              await close();
              ctrl.close();
              return;
            }
            await this.#tick.promise;
          }
        } catch (e) {
          await close();
          ctrl.error(abortLine(this.digest.value, e as Error));
        }
      },
      cancel: close,
    });
  }
}

/**
 * The reason a client's stream is errored with. Deno's server prints the reason of a response
 * stream that errors; as a JSON string it comes out as one log line like every other.
 */
function abortLine(digest: string, e: Error): string {
  return JSON.stringify({
    time: new Date().toISOString(),
    level: "warn",
    msg: "blob transfer to client aborted",
    digest,
    reason: e?.message ?? String(e),
  });
}

/** The error or the flight a request for a missing blob gets. */
export type FlightStart = { ok: true; flight: Flight } | { ok: false; response: () => Response };

/** Running downloads by digest: the coalescing point. */
export class Flights {
  readonly #running = new Map<string, Promise<FlightStart>>();
  readonly #streaming = new Set<Flight>();

  /**
   * Join the download of `digest`, or start one with `start` when none runs. `coalesced` tells
   * whether this caller joined an existing one.
   */
  join(digest: string, start: () => Promise<FlightStart>): { start: Promise<FlightStart>; coalesced: boolean } {
    const existing = this.#running.get(digest);
    if (existing) return { start: existing, coalesced: true };
    const forget = () => {
      if (this.#running.get(digest) === p) this.#running.delete(digest);
    };
    const p: Promise<FlightStart> = start().then((r) => {
      if (!r.ok) forget();
      else {
        this.#streaming.add(r.flight);
        // Late clients start a download of their own once this one cannot serve them from byte 0.
        r.flight.unjoinable.then(forget);
        r.flight.done.finally(() => {
          forget();
          this.#streaming.delete(r.flight);
        });
      }
      return r;
    }, (e) => {
      forget();
      throw e;
    });
    this.#running.set(digest, p);
    return { start: p, coalesced: false };
  }

  /** Downloads in flight (started or waiting for upstream headers). */
  get size(): number {
    return this.#running.size;
  }

  /** Whether a download of `digest` is running (or waiting for upstream headers). */
  has(digest: string): boolean {
    return this.#running.has(digest);
  }

  /** A download of `digest` whose bytes are all in and verified: being stored, or just done. */
  verified(digest: string): Flight | undefined {
    for (const f of this.#streaming) if (f.digest.value === digest && (f.state === "verified" || f.state === "done")) return f;
    return undefined;
  }

  /** The flights whose bytes are streaming now. */
  streaming(): Flight[] {
    return [...this.#streaming];
  }

  /** The flights whose bytes are streaming now, once those still waiting for headers have them. */
  async active(): Promise<Flight[]> {
    const all = await Promise.all([...this.#running.values()].map((p) => p.catch(() => null)));
    return all.flatMap((r) => (r && r.ok ? [r.flight] : []));
  }
}
