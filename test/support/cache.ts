/**
 * Runs ocicache in-process on a real loopback server for integration tests.
 * @module
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig, parseFlags } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { detectRuntime } from "../../src/runtime/mod.ts";
import type { Server } from "../../src/runtime/types.ts";
import { openService, type Service } from "../../src/service.ts";

/** A running in-process cache. */
export interface TestCache {
  url: string;
  service: Service;
  storage: string;
  /** A settable clock (ms) the cache reads for tag freshness. */
  clock: { now: number };
  /** Stop serving and close the index (storage is kept for a restart). */
  stop(): Promise<void>;
  /** Stop and delete the storage folder. */
  destroy(): Promise<void>;
}

/**
 * Start a cache fronting `upstreamUrl` as registry `fake` (also the default registry).
 * `flags` are extra command-line flags; `storage` reuses a folder (restart tests).
 */
export async function startCache(
  upstreamUrl: string,
  opts: { flags?: string[]; storage?: string; env?: Record<string, string>; configFile?: Record<string, unknown> } = {},
): Promise<TestCache> {
  const rt = detectRuntime();
  const storage = opts.storage ?? await mkdtemp(join(tmpdir(), "ocicache-test-"));
  const files = new Map<string, string>();
  const flags = [
    "--storage", storage,
    "--registry", `fake=${upstreamUrl}`,
    "--default-registry", "fake",
    "--log-level", "error",
    "--listen", "127.0.0.1:0",
    ...(opts.configFile ? ["--config", "/virtual/config.json"] : []),
    ...(opts.flags ?? []),
  ];
  if (opts.configFile) files.set("/virtual/config.json", JSON.stringify(opts.configFile));
  const config = await loadConfig({
    flags: parseFlags(flags),
    env: (n) => opts.env?.[n],
    readText: (p) => {
      const v = files.get(p);
      return v === undefined ? Promise.reject(new Error("no such file")) : Promise.resolve(v);
    },
  });
  const clock = { now: Date.now() };
  const service = await openService(config, rt, silentLogger, { now: () => clock.now });
  const server: Server = await rt.serve({ hostname: "127.0.0.1", port: 0, handler: service.handler });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await server.shutdown();
    await service.close();
  };
  return {
    url: `http://127.0.0.1:${server.port}`,
    service,
    storage,
    clock,
    stop,
    async destroy() {
      await stop();
      await rm(storage, { recursive: true, force: true });
    },
  };
}

/** Read the rest of a body whose `first` chunks were already read; rejects if the transfer broke. */
export async function readRest(reader: ReadableStreamDefaultReader<Uint8Array>, first: Uint8Array[] = []): Promise<Uint8Array> {
  const chunks = [...first];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return all;
}

/** Wait until every download in flight (and eviction work) has finished. */
export async function settle(cache: TestCache): Promise<void> {
  await Promise.all((await cache.service.flights.active()).map((f) => f.done));
  await cache.service.eviction?.flush();
}

/** Read a response body fully; resolves to the bytes or rejects if the transfer broke. */
export async function bytesOf(res: Response): Promise<Uint8Array> {
  return new Uint8Array(await res.arrayBuffer());
}
