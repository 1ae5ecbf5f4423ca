/**
 * Disk full: the store is a 2 MiB tmpfs. A blob that does not fit is still served whole and
 * correct to every client (from upstream, through a bounded memory window), the partial file is
 * removed, the failure is counted, and cached content keeps being served.
 * Needs root (mount); skips loudly otherwise, fails under OCICACHE_E2E_REQUIRED=1.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { randomBytes, sha256, startFakeRegistry } from "./support/fake_registry.ts";
import { bytesOf, startCache } from "./support/cache.ts";

function canMount(): string | null {
  if (typeof process.getuid === "function" && process.getuid() !== 0) return "not root";
  return null;
}

test("ENOSPC while storing: clients still get every byte, nothing partial is kept, hits go on", async (t) => {
  const why = canMount();
  if (why) {
    if (process.env.OCICACHE_E2E_REQUIRED === "1") throw new Error(`OCICACHE_E2E_REQUIRED=1 but the disk-full test cannot run: ${why}`);
    console.error(`\n*** SKIPPED: disk-full test needs root to mount a tmpfs (${why}) ***\n`);
    t.skip(why);
    return;
  }
  const base = await mkdtemp(join(tmpdir(), "ocicache-full-"));
  const store = join(base, "store");
  const indexDir = join(base, "index");
  await import("node:fs/promises").then(async (fs) => {
    await fs.mkdir(store);
    await fs.mkdir(indexDir);
  });
  execFileSync("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", store]);
  const up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 1 });
  // The index lives elsewhere: this is about blob bytes not fitting.
  const cache = await startCache(up.url, { storage: store, flags: ["--index-url", `file:${join(indexDir, "index.db")}`] });
  try {
    const small = randomBytes(200_000, 71);
    const sd = up.putBlob(small);
    assert.equal(sha256(await bytesOf(await fetch(`${cache.url}/v2/fake/full/app/blobs/${sd}`))), sd);
    await Promise.all((await cache.service.flights.active()).map((f) => f.done));
    assert.ok(await cache.service.index.getBlob(sd), "the small blob is cached");

    const big = randomBytes(6 * 1024 * 1024, 72);
    const bd = up.putBlob(big);
    const bodies = await Promise.all([1, 2].map(async () => bytesOf(await fetch(`${cache.url}/v2/fake/full/app/blobs/${bd}`))));
    for (const b of bodies) assert.equal(sha256(b), bd, "full, correct bytes despite the full disk");
    await Promise.all((await cache.service.flights.active()).map((f) => f.done));
    assert.equal(await cache.service.index.getBlob(bd), null, "not indexed");
    assert.deepEqual(await readdir(join(store, "tmp")), [], "the partial file is removed");
    assert.equal(cache.service.metrics.storeFailures.get(), 1, "counted");

    const hit = await fetch(`${cache.url}/v2/fake/full/app/blobs/${sd}`);
    assert.equal(hit.headers.get("x-cache"), "hit");
    assert.equal(sha256(await bytesOf(hit)), sd);
  } finally {
    await cache.stop();
    await up.stop();
    execFileSync("umount", [store]);
    await rm(base, { recursive: true, force: true });
  }
});
