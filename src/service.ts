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
  const upstreams = new Map<string, Upstream>();
  const upstreamFor = (r: RegistryConfig) => {
    let u = upstreams.get(r.prefix);
    if (!u) {
      u = new Upstream(r, { ...config.upstream, fetch: opts.fetch });
      upstreams.set(r.prefix, u);
    }
    return u;
  };
  const flights = new Flights();
  const pull = new PullHandler({ index, cafs, files: runtime.files, flights, upstream: upstreamFor, log, now: opts.now });
  const router = new Router(config);
  const ready = async () => {
    await index.ping();
    const probe = await runtime.files.createTemp(cafs.tmpDir, "ready");
    await probe.close();
    await runtime.files.remove(probe.path);
  };
  const handler = createApp({ router, pull, log, ready });
  return {
    handler,
    index,
    cafs,
    flights,
    upstreams,
    async close() {
      const active = await flights.active();
      await Promise.allSettled(active.map((f) => f.done));
      index.close();
    },
  };
}
