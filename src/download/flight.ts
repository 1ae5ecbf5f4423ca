/**
 * One upstream download per missing blob, however many clients ask. The bytes are written once
 * to a temp file in the store while both hashes are computed; every waiting client reads them
 * back from that file at its own pace, as soon as they land. The last chunk is held back from
 * clients until the digest checks out, so nobody ever sees a clean end of a wrong body.
 * @module
 */
import type { FileReader, Files } from "../runtime/types.ts";
import type { Cafs, StoredObject } from "../store/cafs.ts";
import type { Digest } from "../oci/digest.ts";

const READ_CHUNK = 256 * 1024;

/** How a finished flight ended. */
export type FlightOutcome = { ok: true; stored: StoredObject } | { ok: false; error: Error };

/** What a {@link Flight} needs. */
export interface FlightInit {
  digest: Digest;
  /** The upstream body (200). */
  body: ReadableStream<Uint8Array>;
  /** The size the upstream announced, if any. */
  size?: number;
  cafs: Cafs;
  files: Files;
  /** Index the stored object; runs after the file is in place and before clients see the end. */
  onStored: (obj: StoredObject) => Promise<void>;
}

/** A download in progress (or just finished). */
export class Flight {
  readonly digest: Digest;
  readonly size: number | undefined;
  /** Bytes written to the temp file. */
  received = 0;
  /** Bytes clients may read now (all but the newest chunk while running). */
  #available = 0;
  #state: "running" | "done" | "failed" = "running";
  #error: Error | undefined;
  /** The file that holds the bytes: the temp file, then the stored object. */
  #path = "";
  #tick = Promise.withResolvers<void>();
  /** Clients currently reading. */
  readers = 0;
  /** Settles when the download is stored or has failed. */
  readonly done: Promise<FlightOutcome>;

  constructor(private readonly init: FlightInit) {
    this.digest = init.digest;
    this.size = init.size;
    this.done = this.#run();
  }

  /** "running", "done" or "failed". */
  get state(): "running" | "done" | "failed" {
    return this.#state;
  }

  #notify() {
    const t = this.#tick;
    this.#tick = Promise.withResolvers<void>();
    t.resolve();
  }

  async #run(): Promise<FlightOutcome> {
    const { cafs, body, digest } = this.init;
    let writer;
    try {
      writer = await cafs.writer(digest.algorithm);
    } catch (e) {
      await body.cancel().catch(() => {});
      return this.#fail(e as Error);
    }
    this.#path = writer.path;
    const reader = body.getReader();
    try {
      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        if (value.length === 0) continue;
        await writer.write(value);
        this.#available = this.received;
        this.received += value.length;
        if (this.size !== undefined && this.received > this.size) {
          throw new Error(`upstream sent more than the ${this.size} bytes it announced`);
        }
        this.#notify();
      }
      if (this.size !== undefined && this.received !== this.size) {
        throw new Error(`upstream body ended after ${this.received} of ${this.size} bytes`);
      }
      const got = writer.ociDigest();
      if (got !== digest.value) throw new Error(`digest mismatch: upstream bytes hash to ${got}, expected ${digest.value}`);
      const stored = await writer.commit();
      this.#path = cafs.pathOf(stored.key);
      await this.init.onStored(stored);
      this.#state = "done";
      this.#available = this.received;
      this.#notify();
      return { ok: true, stored };
    } catch (e) {
      reader.cancel(e).catch(() => {});
      await writer.abort();
      return this.#fail(e as Error);
    }
  }

  #fail(e: Error): FlightOutcome {
    this.#state = "failed";
    this.#error = e;
    this.#notify();
    return { ok: false, error: e };
  }

  async #open(): Promise<FileReader> {
    // The temp file may be renamed (or dropped as a duplicate) between reading the path and
    // opening it; the content under the new path is the same, so try again there.
    for (let attempt = 0; ; attempt++) {
      const path = this.#path;
      try {
        return await this.init.files.openReader(path);
      } catch (e) {
        if (attempt >= 3 || this.#path === path) throw e;
      }
    }
  }

  /**
   * A stream of bytes `start..end` (inclusive; `end` omitted: to the end) for one client.
   * It errors if the download fails, so the client sees a broken transfer, never a clean end.
   */
  stream(start = 0, end?: number): ReadableStream<Uint8Array> {
    let pos = start;
    let file: FileReader | undefined;
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      this.readers--;
      await file?.close().catch(() => {});
    };
    this.readers++;
    return new ReadableStream<Uint8Array>({
      pull: async (ctrl) => {
        try {
          while (true) {
            if (this.#state === "failed") throw this.#error ?? new Error("download failed");
            const limit = end === undefined ? Infinity : end + 1;
            const avail = Math.min(this.#available, limit);
            if (pos < avail) {
              file ??= await this.#open();
              const buf = new Uint8Array(Math.min(READ_CHUNK, avail - pos));
              const n = await file.read(buf, pos);
              if (n <= 0) throw new Error("cached bytes vanished while reading");
              pos += n;
              ctrl.enqueue(n === buf.length ? buf : buf.subarray(0, n));
              return;
            }
            if (pos >= limit || (this.#state === "done" && pos >= this.received)) {
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
    const p = start().then((r) => {
      if (!r.ok) this.#running.delete(digest);
      else {
        this.#streaming.add(r.flight);
        r.flight.done.finally(() => {
          this.#running.delete(digest);
          this.#streaming.delete(r.flight);
        });
      }
      return r;
    }, (e) => {
      this.#running.delete(digest);
      throw e;
    });
    this.#running.set(digest, p);
    return { start: p, coalesced: false };
  }

  /** Downloads in flight (started or waiting for upstream headers). */
  get size(): number {
    return this.#running.size;
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
