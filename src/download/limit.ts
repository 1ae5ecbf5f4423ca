/**
 * A bound on upstream blob downloads running at once (`--max-downloads`). A download beyond the
 * bound waits in a bounded queue (as many places as the bound, for at most `maxWaitMs`); past
 * that the client gets `503 UNAVAILABLE` with `Retry-After` instead of piling up sockets, memory
 * and file descriptors. Clients joining a download already running take no slot.
 * @module
 */
import { ociError } from "../http/errors.ts";
import { type FlightStart, Flights } from "./flight.ts";

/** Options of {@link DownloadLimit}. */
export interface DownloadLimitOptions {
  /** Downloads at once. */
  max: number;
  /** Downloads that may wait for a slot (default: `max`). */
  queue?: number;
  /** Longest wait for a slot (ms) before a 503 (default 30 s). */
  maxWaitMs?: number;
  /** Seconds a refused client is told to wait (Retry-After, default 5). */
  retryAfterSeconds?: number;
}

/** A counting semaphore with a bounded, time-limited queue. */
export class DownloadLimit {
  #running = 0;
  readonly #waiting: { grant: () => void; timer: ReturnType<typeof setTimeout> }[] = [];
  /** Downloads refused because the queue was full or the wait too long (since start). */
  refused = 0;

  constructor(readonly opts: DownloadLimitOptions) {}

  /** Downloads holding a slot now. */
  get running(): number {
    return this.#running;
  }

  /** Downloads waiting for a slot now. */
  get queued(): number {
    return this.#waiting.length;
  }

  /** Take a slot: resolves to a release function, or null when refused (queue full / waited too long). */
  acquire(): Promise<(() => void) | null> {
    if (this.#running < this.opts.max) {
      this.#running++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#waiting.length >= (this.opts.queue ?? this.opts.max)) {
      this.refused++;
      return Promise.resolve(null);
    }
    return new Promise((resolve) => {
      const entry = {
        grant: () => {
          clearTimeout(entry.timer);
          this.#running++;
          resolve(this.#releaser());
        },
        timer: setTimeout(() => {
          const i = this.#waiting.indexOf(entry);
          if (i >= 0) this.#waiting.splice(i, 1);
          this.refused++;
          resolve(null);
        }, this.opts.maxWaitMs ?? 30_000),
      };
      this.#waiting.push(entry);
    });
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#running--;
      this.#waiting.shift()?.grant();
    };
  }

  /** Run `start` under a slot; the slot is held until the flight ends (or `start` fails). */
  async run(start: () => Promise<FlightStart>): Promise<FlightStart> {
    const release = await this.acquire();
    if (!release) {
      const after = String(this.opts.retryAfterSeconds ?? 5);
      const max = this.opts.max;
      return {
        ok: false,
        response: () =>
          ociError(503, "UNAVAILABLE", `too many upstream downloads at once (--max-downloads ${max}); retry in ${after} s`, null, {
            "retry-after": after,
          }),
      };
    }
    let r: FlightStart;
    try {
      r = await start();
    } catch (e) {
      release();
      throw e;
    }
    if (!r.ok) release();
    else r.flight.done.then(release, release);
    return r;
  }
}

/** {@link Flights} whose new downloads each take a slot of a {@link DownloadLimit}. */
export class LimitedFlights extends Flights {
  constructor(readonly limit: DownloadLimit) {
    super();
  }

  override join(digest: string, start: () => Promise<FlightStart>): { start: Promise<FlightStart>; coalesced: boolean } {
    return super.join(digest, () => this.limit.run(start));
  }
}
