/**
 * What the status page and `/api/v1/stats` show: a {@link StatsAggregator} fed one call per
 * answered request and one per upstream exchange (minute buckets for the last hour in a ring,
 * totals since start, per-registry health, top images, recent errors), and a {@link StatusApi}
 * that joins it with the live parts (store usage, downloads in flight, configured registries)
 * into the JSON documented in the README ("Status page").
 *
 * Nothing here ever holds a credential: registries are described by prefix, URL (userinfo
 * stripped) and TTL only, and upstream errors by status and message.
 * @module
 */
import type { RegistryConfig } from "../config.ts";
import type { ImageInfo } from "../index/oci_index.ts";

/** One answered request, as the request log line has it. */
export interface RequestSample {
  /** manifest, blob, tags — other endpoints (base, healthz, metrics, the page itself) are not traffic. */
  endpoint: string;
  method: string;
  status: number;
  /** hit, miss, stale, coalesced, revalidated, pass, none. */
  cache: string;
  registry?: string;
  /** The repository name upstream (as the index keeps it). */
  repository?: string;
  /** Body bytes sent (the Content-Length; ≤ 0 when unknown or none). */
  bytes: number;
}

/** One upstream exchange. */
export interface UpstreamSample {
  registry: string;
  /** manifests, blobs, tags. */
  kind?: string;
  method?: string;
  /** The status, or undefined when no response came. */
  status?: number;
  /** Why it failed, when known. */
  message?: string;
}

/** The figures kept per minute (and in total). */
export interface Counts {
  /** Registry requests (manifest, blob, tags) answered. */
  requests: number;
  hit: number;
  miss: number;
  stale: number;
  coalesced: number;
  revalidated: number;
  pass: number;
  /** Requests answered with a 4xx or 5xx. */
  errors: number;
  /** Body bytes sent to clients. */
  bytesServed: number;
  /** Of those, bytes that did not come from the upstream for this request (hit, revalidated, stale, coalesced). */
  bytesSaved: number;
  /** Manifest GETs answered without a GET to the upstream. */
  manifestPullsSaved: number;
}

/** One minute of the last hour. */
export interface SeriesPoint extends Counts {
  /** Start of the minute (ms since epoch). */
  at: number;
  /** hit + revalidated + stale over those plus miss + coalesced; null without such requests. */
  hitRatio: number | null;
  /** Bytes served per second over the minute (so far, for the current minute). */
  bytesPerSecond: number;
}

/** Health of one upstream as seen from its exchanges. */
export interface RegistryHealth {
  /** ok: the last exchange worked; failing: it did not; idle: none yet. */
  state: "ok" | "failing" | "idle";
  lastSuccess: { at: number; status: number } | null;
  lastError: { at: number; message: string } | null;
  /** Upstream requests in the last hour, and how many failed. */
  requestsLastHour: number;
  errorsLastHour: number;
  /** errorsLastHour / requestsLastHour; null without requests. */
  errorRate: number | null;
}

/** A repository's traffic since start. */
export interface TopImage {
  registry: string;
  repository: string;
  /** Manifest GETs answered (a `docker pull` makes one or two). */
  pulls: number;
  /** Body bytes served for it. */
  bytes: number;
  lastAt: number;
}

/** An error worth showing; the same error again right after it (a retry, say) is counted, not repeated. */
export interface RecentError {
  /** When it last happened. */
  at: number;
  /** When the run of repeats began. */
  firstAt: number;
  /** Times it happened in a row. */
  count: number;
  source: "upstream" | "store";
  registry?: string;
  message: string;
}

const MINUTE = 60_000;
type CacheCount = "hit" | "miss" | "stale" | "coalesced" | "revalidated" | "pass";
const CACHE_RESULTS = new Set<string>(["hit", "miss", "stale", "coalesced", "revalidated", "pass"] satisfies CacheCount[]);
const TRAFFIC = new Set(["manifest", "blob", "tags"]);
const SAVED = new Set(["hit", "revalidated", "stale", "coalesced"]);

function zero(): Counts {
  return {
    requests: 0, hit: 0, miss: 0, stale: 0, coalesced: 0, revalidated: 0, pass: 0, errors: 0,
    bytesServed: 0, bytesSaved: 0, manifestPullsSaved: 0,
  };
}

/** hit + revalidated + stale over all requests the cache decided (those plus miss and coalesced). */
export function hitRatio(c: Counts): number | null {
  const served = c.hit + c.revalidated + c.stale;
  const all = served + c.miss + c.coalesced;
  return all ? served / all : null;
}

/** Whether an upstream exchange counts as failed: no answer, 5xx, or 429 (rate limited). */
export function upstreamFailed(status: number | undefined): boolean {
  return status === undefined || status >= 500 || status === 429;
}

/** A ring of per-minute slots covering the last `size` minutes. */
class MinuteRing<T> {
  readonly #slots: ({ minute: number; value: T } | undefined)[];
  constructor(readonly size: number, private readonly make: () => T) {
    this.#slots = new Array(size);
  }

  /** The slot of `minute`, cleared if it held an older minute. */
  at(minute: number): T {
    const i = ((minute % this.size) + this.size) % this.size;
    const s = this.#slots[i];
    if (s && s.minute === minute) return s.value;
    const fresh = { minute, value: this.make() };
    this.#slots[i] = fresh;
    return fresh.value;
  }

  /** The value of `minute` if held (never creates). */
  peek(minute: number): T | undefined {
    const s = this.#slots[((minute % this.size) + this.size) % this.size];
    return s && s.minute === minute ? s.value : undefined;
  }

  /** Values of the last `size` minutes up to `current`, oldest first (undefined where none). */
  window(current: number): { minute: number; value: T | undefined }[] {
    const out = [];
    for (let m = current - this.size + 1; m <= current; m++) out.push({ minute: m, value: this.peek(m) });
    return out;
  }
}

interface RegistryState {
  lastSuccess: { at: number; status: number } | null;
  lastError: { at: number; message: string } | null;
  last: "ok" | "failing" | "idle";
  ring: MinuteRing<{ requests: number; errors: number }>;
  saved: { bytes: number; manifestPulls: number };
}

/** Options of {@link StatsAggregator}. */
export interface AggregatorOptions {
  /** The clock (ms since epoch); tests inject one. */
  now?: () => number;
  /** Minutes kept (default 60). */
  minutes?: number;
  /** Recent errors kept (default 20). */
  maxErrors?: number;
  /** Repositories tracked for the top lists (least recently seen dropped first; default 2000). */
  maxImages?: number;
}

/** Aggregates requests and upstream exchanges in memory. O(1) per call; bounded memory. */
export class StatsAggregator {
  readonly #now: () => number;
  readonly #minutes: number;
  readonly #maxErrors: number;
  readonly #maxImages: number;
  readonly #ring: MinuteRing<Counts>;
  readonly #totals = zero();
  readonly #registries = new Map<string, RegistryState>();
  readonly #images = new Map<string, TopImage>();
  readonly #errors: RecentError[] = [];
  readonly startedAt: number;

  constructor(opts: AggregatorOptions = {}) {
    this.#now = opts.now ?? Date.now;
    this.#minutes = opts.minutes ?? 60;
    this.#maxErrors = opts.maxErrors ?? 20;
    this.#maxImages = opts.maxImages ?? 2000;
    this.#ring = new MinuteRing(this.#minutes, zero);
    this.startedAt = this.#now();
  }

  #registry(prefix: string): RegistryState {
    let r = this.#registries.get(prefix);
    if (!r) {
      r = {
        lastSuccess: null,
        lastError: null,
        last: "idle",
        ring: new MinuteRing(this.#minutes, () => ({ requests: 0, errors: 0 })),
        saved: { bytes: 0, manifestPulls: 0 },
      };
      this.#registries.set(prefix, r);
    }
    return r;
  }

  /** Count one answered request (called where the request log line is written). */
  request(s: RequestSample): void {
    if (!TRAFFIC.has(s.endpoint)) return;
    const now = this.#now();
    const bucket = this.#ring.at(Math.floor(now / MINUTE));
    const bytes = s.method !== "HEAD" && s.bytes > 0 ? s.bytes : 0;
    const saved = SAVED.has(s.cache) ? bytes : 0;
    const pullSaved = s.endpoint === "manifest" && s.method === "GET" && s.status < 300 && SAVED.has(s.cache) ? 1 : 0;
    for (const c of [bucket, this.#totals]) {
      c.requests++;
      if (CACHE_RESULTS.has(s.cache)) c[s.cache as CacheCount]++;
      if (s.status >= 400) c.errors++;
      c.bytesServed += bytes;
      c.bytesSaved += saved;
      c.manifestPullsSaved += pullSaved;
    }
    if (s.registry && (saved || pullSaved)) {
      const r = this.#registry(s.registry);
      r.saved.bytes += saved;
      r.saved.manifestPulls += pullSaved;
    }
    if (s.registry && s.repository && s.status < 300) {
      const pull = s.endpoint === "manifest" && s.method === "GET" ? 1 : 0;
      if (!pull && !bytes) return;
      const key = `${s.registry}\n${s.repository}`;
      let img = this.#images.get(key);
      if (img) this.#images.delete(key); // re-insert: the Map's order is least recently seen first
      else img = { registry: s.registry, repository: s.repository, pulls: 0, bytes: 0, lastAt: now };
      img.pulls += pull;
      img.bytes += bytes;
      img.lastAt = now;
      this.#images.set(key, img);
      if (this.#images.size > this.#maxImages) this.#images.delete(this.#images.keys().next().value!);
    }
  }

  /** Count one upstream exchange (the upstream client's observe callback). */
  upstream(e: UpstreamSample): void {
    const now = this.#now();
    const r = this.#registry(e.registry);
    const slot = r.ring.at(Math.floor(now / MINUTE));
    slot.requests++;
    if (upstreamFailed(e.status)) {
      slot.errors++;
      const what = [e.method, e.kind].filter(Boolean).join(" ");
      const message = e.message ??
        (e.status === undefined ? "no response (unreachable or timed out)" : `answered HTTP ${e.status}`);
      r.lastError = { at: now, message: what ? `${what}: ${message}` : message };
      r.last = "failing";
      this.#error("upstream", e.registry, r.lastError.message);
    } else {
      r.lastSuccess = { at: now, status: e.status! };
      r.last = "ok";
    }
  }

  /** Record a download that was not stored (digest mismatch, broken upstream body, disk error). */
  storeError(message: string, registry?: string): void {
    this.#error("store", registry, message);
  }

  #error(source: RecentError["source"], registry: string | undefined, message: string): void {
    const at = this.#now();
    const last = this.#errors.at(-1);
    if (last && last.source === source && last.registry === registry && last.message === message) {
      last.count++;
      last.at = at;
      return;
    }
    this.#errors.push({ at, firstAt: at, count: 1, source, registry, message });
    if (this.#errors.length > this.#maxErrors) this.#errors.splice(0, this.#errors.length - this.#maxErrors);
  }

  /** Totals since start, with the hit ratio. */
  totals(): Counts & { hitRatio: number | null } {
    return { ...this.#totals, hitRatio: hitRatio(this.#totals) };
  }

  /** One point per minute of the window, oldest first, ending with the current minute. */
  series(): SeriesPoint[] {
    const now = this.#now();
    const current = Math.floor(now / MINUTE);
    return this.#ring.window(current).map(({ minute, value }) => {
      const c = value ?? zero();
      const seconds = minute === current ? Math.max(1, (now - minute * MINUTE) / 1000) : 60;
      return { at: minute * MINUTE, ...c, hitRatio: hitRatio(c), bytesPerSecond: c.bytesServed / seconds };
    });
  }

  /** Health of an upstream (idle when it has not been asked anything). */
  health(prefix: string): RegistryHealth {
    const r = this.#registries.get(prefix);
    if (!r) return { state: "idle", lastSuccess: null, lastError: null, requestsLastHour: 0, errorsLastHour: 0, errorRate: null };
    let requests = 0;
    let errors = 0;
    for (const { value } of r.ring.window(Math.floor(this.#now() / MINUTE))) {
      requests += value?.requests ?? 0;
      errors += value?.errors ?? 0;
    }
    return {
      state: r.last,
      lastSuccess: r.lastSuccess,
      lastError: r.lastError,
      requestsLastHour: requests,
      errorsLastHour: errors,
      errorRate: requests ? errors / requests : null,
    };
  }

  /** What the cache saved a registry since start: bytes and manifest GETs not sent to it. */
  saved(prefix: string): { bytes: number; manifestPulls: number } {
    return { ...(this.#registries.get(prefix)?.saved ?? { bytes: 0, manifestPulls: 0 }) };
  }

  /** The `n` repositories with the most pulls and with the most bytes served, since start. */
  topImages(n = 10): { byPulls: TopImage[]; byBytes: TopImage[] } {
    const all = [...this.#images.values()];
    const top = (key: "pulls" | "bytes") =>
      all.filter((i) => i[key] > 0)
        .sort((a, b) => b[key] - a[key] || b.lastAt - a.lastAt)
        .slice(0, n)
        .map((i) => ({ ...i }));
    return { byPulls: top("pulls"), byBytes: top("bytes") };
  }

  /** The recent errors, newest first. */
  recentErrors(): RecentError[] {
    return this.#errors.map((e) => ({ ...e })).reverse();
  }
}

/** A download in flight as {@link StatusApi} reads it (a structural view of `Flight`). */
export interface FlightView {
  digest: { value: string };
  received: number;
  size: number | undefined;
  readers: number;
}

/** What {@link StatusApi} reads the live parts from. */
export interface StatusSources {
  version: string;
  registries: RegistryConfig[];
  defaultRegistry: string | null;
  /** Bytes and objects in the store. */
  store: () => Promise<{ blobs: number; blobBytes: number; manifests: number; manifestBytes: number }>;
  /** The configured bound on the store's blob bytes, or null when there is none. */
  storeBound: () => number | null;
  /** Evictions since start (0 until eviction exists). */
  evictions: () => number;
  /** Bytes received from each upstream since start. */
  upstreamBytes: (registry: string) => number;
  /** Downloads streaming now. */
  downloads: () => FlightView[];
  /** The cached images, exactly as `ocicache ls --json` prints them. */
  images: () => Promise<ImageInfo[]>;
  now?: () => number;
}

/** The JSON of `GET /api/v1/stats`. */
export interface StatsJson {
  version: string;
  now: number;
  startedAt: number;
  refreshSeconds: number;
  totals: Counts & { hitRatio: number | null; bytesFromUpstream: number };
  series: { minuteMs: number; points: SeriesPoint[] };
  store: {
    bytes: number;
    objects: number;
    blobs: number;
    manifests: number;
    /** Blob content, the part the bound applies to. */
    blobBytes: number;
    manifestBytes: number;
    /** The bound on blob bytes (`--max-size`), or null: unbounded. */
    boundBytes: number | null;
    evictions: number;
  };
  registries: {
    prefix: string;
    url: string;
    default: boolean;
    offline: boolean;
    tagTtlSeconds: number;
    health: RegistryHealth;
    saved: { bytes: number; manifestPulls: number };
    bytesFromUpstream: number;
  }[];
  downloads: { digest: string; received: number; size: number | null; readers: number; bytesPerSecond: number | null }[];
  topImages: { byPulls: TopImage[]; byBytes: TopImage[] };
  recentErrors: RecentError[];
}

/** An upstream URL fit to show: no userinfo, query or fragment (config already refuses them). */
export function publicUrl(url: string): string {
  try {
    const u = new URL(url);
    return u.origin + u.pathname.replace(/\/+$/, "");
  } catch {
    return "(invalid URL)";
  }
}

/** How often the page refreshes itself. */
export const REFRESH_SECONDS = 5;

/** Joins the aggregator with the live parts of the service into the API's JSON. */
export class StatusApi {
  readonly aggregator: StatsAggregator;
  readonly #now: () => number;
  /** Last sample per download, for its rate. */
  readonly #rates = new Map<string, { at: number; received: number; rate: number | null }>();

  constructor(private readonly src: StatusSources) {
    this.#now = src.now ?? Date.now;
    this.aggregator = new StatsAggregator({ now: this.#now });
  }

  /** Feed one answered request. */
  request(s: RequestSample): void {
    this.aggregator.request(s);
  }

  /** Feed one upstream exchange. */
  upstream(e: UpstreamSample): void {
    this.aggregator.upstream(e);
  }

  /** Feed a download that was not stored. */
  storeError(message: string): void {
    this.aggregator.storeError(message);
  }

  /** The body of `GET /api/v1/stats`. */
  async stats(): Promise<StatsJson> {
    const now = this.#now();
    const a = this.aggregator;
    const s = await this.src.store();
    const registries = this.src.registries.map((r) => ({
      prefix: r.prefix,
      url: publicUrl(r.url),
      default: r.prefix === this.src.defaultRegistry,
      // Read defensively: the offline switch may not exist in every build of the config.
      offline: (r as { offline?: boolean }).offline === true,
      tagTtlSeconds: r.tagTtlMs / 1000,
      health: a.health(r.prefix),
      saved: a.saved(r.prefix),
      bytesFromUpstream: this.src.upstreamBytes(r.prefix),
    }));
    return {
      version: this.src.version,
      now,
      startedAt: a.startedAt,
      refreshSeconds: REFRESH_SECONDS,
      totals: { ...a.totals(), bytesFromUpstream: registries.reduce((n, r) => n + r.bytesFromUpstream, 0) },
      series: { minuteMs: MINUTE, points: a.series() },
      store: {
        bytes: s.blobBytes + s.manifestBytes,
        objects: s.blobs + s.manifests,
        blobs: s.blobs,
        manifests: s.manifests,
        blobBytes: s.blobBytes,
        manifestBytes: s.manifestBytes,
        boundBytes: this.src.storeBound(),
        evictions: this.src.evictions(),
      },
      registries,
      downloads: this.#downloads(now),
      topImages: a.topImages(10),
      recentErrors: a.recentErrors(),
    };
  }

  #downloads(now: number): StatsJson["downloads"] {
    const live = this.src.downloads();
    const seen = new Set<string>();
    const out = live.map((f) => {
      const d = f.digest.value;
      seen.add(d);
      const prev = this.#rates.get(d);
      let rate = prev?.rate ?? null;
      if (!prev) this.#rates.set(d, { at: now, received: f.received, rate: null });
      else if (now - prev.at >= 500) {
        rate = ((f.received - prev.received) * 1000) / (now - prev.at);
        this.#rates.set(d, { at: now, received: f.received, rate });
      }
      return { digest: d, received: f.received, size: f.size ?? null, readers: f.readers, bytesPerSecond: rate };
    });
    for (const d of this.#rates.keys()) if (!seen.has(d)) this.#rates.delete(d);
    return out;
  }

  /** The body of `GET /api/v1/images`: the same list `ocicache ls --json` prints. */
  images(): Promise<ImageInfo[]> {
    return this.src.images();
  }
}
