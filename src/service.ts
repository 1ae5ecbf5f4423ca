/**
 * Builds the running cache from a {@link Config}: index, store, upstream clients, router and the
 * web handler. The one place the parts are wired together (used by `main` and by tests).
 * @module
 */
import type { Config, RegistryConfig } from "./config.ts";
import { Flights } from "./download/flight.ts";
import { DownloadLimit, LimitedFlights } from "./download/limit.ts";
import { createApp } from "./http/app.ts";
import { ClientAuth } from "./http/client_auth.ts";
import { openDb } from "./index/db.ts";
import { Index } from "./index/oci_index.ts";
import type { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { PullHandler } from "./oci/handler.ts";
import { Router } from "./oci/router.ts";
import { Upstream } from "./oci/upstream.ts";
import type { Handler, Runtime } from "./runtime/types.ts";
import { Blake3Pool } from "./store/blake3_pool.ts";
import { Cafs } from "./store/cafs.ts";
import { BlobEviction } from "./cache/eviction.ts";
import { expireManifests, PullTracker } from "./cache/manifest_age.ts";
import { StatusApi } from "./ui/stats.ts";
import { VERSION } from "./version.ts";
import { StoreMaintenance, TMP_OLDER_THAN_MS } from "./store/maintenance.ts";

/** A cache ready to serve. */
export interface Service {
  handler: Handler;
  index: Index;
  cafs: Cafs;
  flights: Flights;
  /** The upstream client of each registry, by prefix. */
  upstreams: Map<string, Upstream>;
  metrics: Metrics;
  /** The size bound (S3-FIFO), when `--max-size` is set. */
  eviction?: BlobEviction;
  /** The store check started at open (in the background) and gc, also run periodically. */
  maintenance: StoreMaintenance;
  /** Last-pulled times, written in batches. */
  pulls: PullTracker;
  /** Run the --max-manifest-age expiry now (tests). */
  expireManifestsNow(): Promise<{ manifests: number; bytes: number }>;
  /** Wait for downloads in flight, then close the index. */
  close(): Promise<void>;
}

/** Options beyond the config (tests inject fetch and a clock). */
export interface ServiceOptions {
  fetch?: typeof fetch;
  now?: () => number;
  /** Store maintenance timing (tests); see {@link StoreMaintenance}. */
  maintenance?: { intervalMs?: number; orphanGraceMs?: number; tmpOlderThanMs?: number };
}

/** Open the storage and the index and wire up the handler. */
export async function openService(config: Config, runtime: Runtime, log: Logger, opts: ServiceOptions = {}): Promise<Service> {
  // Files modified before this are from an earlier run (the store check at start relies on it).
  const startedAt = Date.now();
  const keys = new Blake3Pool({ onFallback: (reason) => log.warn("store keys", { reason }) });
  const cafs = new Cafs(runtime.files, config.storage, keys);
  await cafs.init();
  const index = new Index(await openDb(config.indexUrl, config.indexAuthToken));
  const metrics = new Metrics();
  const upstreams = new Map<string, Upstream>();
  const upstreamFor = (r: RegistryConfig) => {
    let u = upstreams.get(r.prefix);
    if (!u) {
      u = new Upstream(r, {
        ...config.upstream,
        fetch: opts.fetch,
        observe: (e) => {
          const failed = e.status === undefined || e.status >= 500;
          metrics.upstreamRequests.inc({ registry: e.registry, kind: e.kind, method: e.method, status: String(e.status ?? "none") });
          metrics.upstreamLatency.observe({ registry: e.registry }, e.seconds);
          if (failed) metrics.upstreamErrors.inc({ registry: e.registry });
          status?.upstream(e);
        },
        onBytes: (registry, n) => metrics.upstreamBytes.inc({ registry }, n),
      });
      upstreams.set(r.prefix, u);
    }
    return u;
  };
  // --max-downloads: new upstream downloads beyond the bound queue briefly, then get 503 + Retry-After.
  const downloadLimit = new DownloadLimit({ max: config.download.maxConcurrent, maxWaitMs: config.upstream.headersTimeoutMs });
  const flights: Flights = new LimitedFlights(downloadLimit);
  const pulls = new PullTracker(index, log);
  const eviction = config.maxSizeBytes !== null
    ? await BlobEviction.open({ capacity: config.maxSizeBytes, index, cafs, log })
    : undefined;
  const pull = new PullHandler({
    index,
    cafs,
    files: runtime.files,
    flights,
    upstream: upstreamFor,
    log,
    now: opts.now,
    onStoreFailure: (e) => {
      metrics.storeFailures.inc();
      status?.storeError(e.message);
    },
    maxDetachedBytes: config.download.maxDetachedBytes,
    trustSharedContent: config.trustSharedContent,
    onServed: (via, digest) => pulls.pulled(via, digest, (opts.now ?? Date.now)()),
    eviction,
  });
  if (eviction) {
    const fig = () => eviction.figures();
    for (const q of ["small", "main", "ghost"] as const) {
      metrics.gauge(`ocicache_eviction_${q}_bytes`, `Bytes in the S3-FIFO ${q} queue${q === "ghost" ? " (remembered, not stored)" : ""}.`, () => fig().queues[q].bytes);
    }
    metrics.gauge("ocicache_eviction_capacity_bytes", "The --max-size bound on blob bytes.", () => fig().capacity);
    metrics.gauge("ocicache_evictions_total", "Blobs evicted to keep the store under its bound (since start).", () => fig().evictions);
    metrics.gauge("ocicache_eviction_ghost_hits_total", "Misses admitted straight to the main queue because S3-FIFO remembered them (since start).", () => fig().ghostHits);
    metrics.gauge("ocicache_eviction_promotions_total", "Blobs moved from the small to the main queue (since start).", () => fig().promotions);
    metrics.gauge("ocicache_eviction_reclaimed_bytes_total", "Bytes of files removed by eviction (since start).", () => fig().reclaimedBytes);
  }
  metrics.gauge("ocicache_downloads_in_flight", "Upstream blob downloads streaming now.", () => flights.streaming().length);
  metrics.gauge("ocicache_downloads_queued", "Upstream blob downloads waiting for a --max-downloads slot.", () => downloadLimit.queued);
  metrics.gauge("ocicache_downloads_refused_total", "Upstream blob downloads refused with 503 by --max-downloads (since start).", () => downloadLimit.refused);
  metrics.gauge("ocicache_download_waiters", "Clients reading downloads in flight.", () =>
    flights.streaming().reduce((n, f) => n + f.readers, 0));
  let statsCache: { at: number; value: Awaited<ReturnType<Index["stats"]>> } | undefined;
  const stats = async () => {
    // One index query per scrape, not one per gauge.
    if (!statsCache || performance.now() - statsCache.at > 500) statsCache = { at: performance.now(), value: await index.stats() };
    return statsCache.value;
  };
  metrics.gauge("ocicache_store_bytes", "Bytes of blobs and manifests in the store.", async () => {
    const s = await stats();
    return s.blobBytes + s.manifestBytes;
  });
  metrics.gauge("ocicache_store_objects", "Blobs and manifests in the store.", async () => {
    const s = await stats();
    return s.blobs + s.manifests;
  });
  const router = new Router(config);
  const ready = async () => {
    await index.ping();
    const probe = await runtime.files.createTemp(cafs.tmpDir, "ready");
    await probe.close();
    await runtime.files.remove(probe.path);
  };
  // The status page's figures (GET /, /api/v1/…); fed by the app's request hook and `observe` above.
  const status = config.ui
    ? new StatusApi({
      version: VERSION,
      registries: config.registries,
      defaultRegistry: config.defaultRegistry,
      store: stats,
      storeBound: () => config.maxSizeBytes,
      evictions: () => eviction?.figures().evictions ?? 0,
      upstreamBytes: (registry) => metrics.upstreamBytes.get({ registry }),
      downloads: () => flights.streaming(),
      images: () => index.listImages(),
    })
    : undefined;
  const auth = config.clientAuth ? new ClientAuth(config.clientAuth, { log }) : undefined;
  const handler = createApp({ router, pull, log, ready, metrics, status, auth });
  // A live download's temp file is written to at least once per idle timeout; keep well clear.
  const { idleTimeoutMs, headersTimeoutMs } = config.upstream;
  const maintenance = new StoreMaintenance(index, cafs, {
    log,
    tmpOlderThanMs: Math.max(TMP_OLDER_THAN_MS, 4 * (idleTimeoutMs + headersTimeoutMs)),
    // Keep the size bound's view in step with what maintenance drops and re-indexes.
    onRowDropped: (row) => row.kind === "blob" && eviction?.forget(row.digest),
    onReindexed: (row) => eviction?.stored(row.digest, row.size),
    ...opts.maintenance,
  });
  maintenance.start(startedAt);
  // --max-manifest-age: drop manifests nobody pulled for that long, checked a few times per age.
  let expiry: ReturnType<typeof setInterval> | undefined;
  let expiring: Promise<void> = Promise.resolve();
  if (config.maxManifestAgeMs !== null) {
    const age = config.maxManifestAgeMs;
    const run = () => {
      expiring = expiring.then(async () => {
        await pulls.flush();
        const r = await expireManifests(index, cafs, age, (opts.now ?? Date.now)());
        if (r.manifests) log.info("dropped manifests not pulled within --max-manifest-age", { ...r, maxAgeMs: age });
      }).catch((e) => log.error("manifest expiry failed", { error: (e as Error).message }));
    };
    expiry = setInterval(run, Math.min(Math.max(age / 4, 60_000), 3_600_000));
    (expiry as { unref?: () => void }).unref?.();
    run();
  }
  return {
    handler,
    index,
    cafs,
    flights,
    upstreams,
    metrics,
    eviction,
    maintenance,
    pulls,
    async expireManifestsNow() {
      await pulls.flush();
      return expireManifests(index, cafs, config.maxManifestAgeMs ?? Infinity, (opts.now ?? Date.now)());
    },
    async close() {
      if (expiry !== undefined) clearInterval(expiry);
      await expiring;
      await pulls.close();
      const active = await flights.active();
      await Promise.allSettled(active.map((f) => f.done));
      await maintenance.close();
      await eviction?.flush();
      await keys.close();
      index.close();
    },
  };
}
