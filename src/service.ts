/**
 * Builds the running cache from a {@link Config}: index, store, upstream clients, router and the
 * web handler. The one place the parts are wired together (used by `main` and by tests).
 * @module
 */
import type { Config, RegistryConfig } from "./config.ts";
import { Flights } from "./download/flight.ts";
import { createApp } from "./http/app.ts";
import { openDb } from "./index/db.ts";
import { Index } from "./index/oci_index.ts";
import type { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { PullHandler } from "./oci/handler.ts";
import { Router } from "./oci/router.ts";
import { Upstream } from "./oci/upstream.ts";
import type { Handler, Runtime } from "./runtime/types.ts";
import { Cafs } from "./store/cafs.ts";

/** A cache ready to serve. */
export interface Service {
  handler: Handler;
  index: Index;
  cafs: Cafs;
  flights: Flights;
  /** The upstream client of each registry, by prefix. */
  upstreams: Map<string, Upstream>;
  metrics: Metrics;
  /** Wait for downloads in flight, then close the index. */
  close(): Promise<void>;
}

/** Options beyond the config (tests inject fetch and a clock). */
export interface ServiceOptions {
  fetch?: typeof fetch;
  now?: () => number;
}

/** Open the storage and the index and wire up the handler. */
export async function openService(config: Config, runtime: Runtime, log: Logger, opts: ServiceOptions = {}): Promise<Service> {
  const cafs = new Cafs(runtime.files, config.storage);
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
        },
        onBytes: (registry, n) => metrics.upstreamBytes.inc({ registry }, n),
      });
      upstreams.set(r.prefix, u);
    }
    return u;
  };
  const flights = new Flights();
  const pull = new PullHandler({
    index,
    cafs,
    files: runtime.files,
    flights,
    upstream: upstreamFor,
    log,
    now: opts.now,
    onStoreFailure: () => metrics.storeFailures.inc(),
  });
  metrics.gauge("ocicache_downloads_in_flight", "Upstream blob downloads streaming now.", () => flights.streaming().length);
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
  const handler = createApp({ router, pull, log, ready, metrics });
  return {
    handler,
    index,
    cafs,
    flights,
    upstreams,
    metrics,
    async close() {
      const active = await flights.active();
      await Promise.allSettled(active.map((f) => f.done));
      index.close();
    },
  };
}
