/** The --max-size bound: S3-FIFO eviction carried out on the real store. */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes, sha256, startFakeRegistry } from "./support/fake_registry.ts";
import { bytesOf, readRest, settle, startCache } from "./support/cache.ts";
import { diskUsage, renderDiskUsage } from "../src/cli/inspect.ts";
import { imageManifest } from "./support/fake_registry.ts";

const MiB = 1024 * 1024;

async function storeBytes(dir: string): Promise<number> {
  let n = 0;
  for (const sub of await readdir(join(dir, "blobs")).catch(() => [])) {
    for (const f of await readdir(join(dir, "blobs", sub))) n += (await stat(join(dir, "blobs", sub, f))).size;
  }
  return n;
}

/** A seeded skewed sequence: a few hot blobs and a long tail. */
function* workload(n: number, count: number, seed = 7): Generator<number> {
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const u = x / 0x7fffffff;
    yield Math.min(count - 1, Math.floor(count * u * u * u));
  }
}

describe("--max-size", () => {
  test("the bound holds across a workload several times larger than it; every body stays correct", async () => {
    const up = await startFakeRegistry();
    const digests = Array.from({ length: 40 }, (_, i) => up.putBlob(randomBytes(200_000 + (i % 5) * 100_000, 100 + i)));
    const total = 40 * 400_000;
    const cache = await startCache(up.url, { flags: ["--max-size", "4MiB"] });
    try {
      for (const i of workload(120, digests.length)) {
        const r = await fetch(`${cache.url}/v2/fake/ev/app/blobs/${digests[i]}`);
        assert.equal(sha256(await bytesOf(r)), digests[i]);
        await settle(cache);
        const indexed = (await cache.service.index.stats()).blobBytes;
        assert.ok(indexed <= 4 * MiB, `indexed ${indexed} bytes over the bound`);
        assert.ok(await storeBytes(cache.storage) <= 4 * MiB, "files over the bound");
      }
      assert.ok(total > 3 * 4 * MiB, "the workload is several times the bound");
      const f = cache.service.eviction!.figures();
      assert.ok(f.evictions > 0 && f.reclaimedBytes > 0, JSON.stringify(f));
      const m = await (await fetch(`${cache.url}/metrics`)).text();
      assert.match(m, /ocicache_eviction_main_bytes \d+/);
      assert.match(m, /ocicache_evictions_total [1-9]/);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("a blob evicted while it is being streamed is served whole", async () => {
    const up = await startFakeRegistry();
    const a = randomBytes(Math.floor(1.5 * MiB), 201);
    const b = randomBytes(Math.floor(1.5 * MiB), 202);
    const ad = up.putBlob(a);
    const bd = up.putBlob(b);
    const cache = await startCache(up.url, { flags: ["--max-size", "2MiB"] });
    try {
      await bytesOf(await fetch(`${cache.url}/v2/fake/ev/app/blobs/${ad}`));
      await settle(cache);
      const res = await fetch(`${cache.url}/v2/fake/ev/app/blobs/${ad}`);
      assert.equal(res.headers.get("x-cache"), "hit");
      const reader = res.body!.getReader();
      const chunks = [(await reader.read()).value!];
      // Admitting B pushes A out: row first, then file.
      await bytesOf(await fetch(`${cache.url}/v2/fake/ev/app/blobs/${bd}`));
      await settle(cache);
      assert.equal(await cache.service.index.getBlob(ad), null, "A was evicted");
      const all = await readRest(reader, chunks);
      assert.equal(sha256(all), ad, "the transfer in progress finished with the right bytes");
      up.reset();
      assert.equal(sha256(await bytesOf(await fetch(`${cache.url}/v2/fake/ev/app/blobs/${ad}`))), ad);
      assert.equal(up.count("blob", "GET"), 1, "fetched again on demand");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("a restart keeps the queue state", async () => {
    const up = await startFakeRegistry();
    const digests = Array.from({ length: 20 }, (_, i) => up.putBlob(randomBytes(300_000, 300 + i)));
    const first = await startCache(up.url, { flags: ["--max-size", "3MiB"] });
    const storage = first.storage;
    for (const i of workload(80, digests.length, 11)) {
      await bytesOf(await fetch(`${first.url}/v2/fake/ev/app/blobs/${digests[i]}`));
      await settle(first);
    }
    const before = first.service.eviction!.policy.snapshot().entries.map((e) => `${e.key}:${e.queue}:${e.freq}`).sort();
    await first.stop();
    const second = await startCache(up.url, { storage, flags: ["--max-size", "3MiB"] });
    try {
      const after = second.service.eviction!.policy.snapshot().entries.map((e) => `${e.key}:${e.queue}:${e.freq}`).sort();
      assert.deepEqual(after, before);
      // `ocicache du` shows the queues.
      const du = await diskUsage(second.service.index);
      assert.ok(du.queues.main.count > 0 && du.queues.ghost.count > 0, JSON.stringify(du.queues));
      assert.match(renderDiskUsage(du), /S3-FIFO QUEUE\s+BLOBS\s+BYTES\n(small|main)/);
      assert.ok(before.some((e) => e.includes(":main:")) && before.some((e) => e.includes(":ghost:")), "the state had all queues in use");
    } finally {
      await second.destroy();
      await up.stop();
    }
  });

  test("a blob larger than the whole bound is served whole and not kept", async () => {
    const up = await startFakeRegistry();
    const big = randomBytes(Math.floor(2.5 * MiB), 401);
    const d = up.putBlob(big);
    const cache = await startCache(up.url, { flags: ["--max-size", "2MiB"] });
    try {
      assert.equal(sha256(await bytesOf(await fetch(`${cache.url}/v2/fake/ev/app/blobs/${d}`))), d);
      await settle(cache);
      assert.equal(await cache.service.index.getBlob(d), null);
      assert.equal(await storeBytes(cache.storage), 0);
      assert.deepEqual(await readdir(join(cache.storage, "tmp")), []);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("--max-manifest-age drops manifests and their tags nobody pulled for that long; pulled ones stay", async () => {
    const up = await startFakeRegistry();
    const oci = "application/vnd.oci.image.manifest.v1+json";
    const ma = imageManifest({ digest: up.putBlob(randomBytes(100, 601)), size: 100 }, []);
    const mb = imageManifest({ digest: up.putBlob(randomBytes(100, 602)), size: 100 }, []);
    const da = up.putManifest("age/app", ma, oci, "a");
    const db = up.putManifest("age/app", mb, oci, "b");
    const cache = await startCache(up.url, { flags: ["--max-manifest-age", "1h"] });
    try {
      await (await fetch(`${cache.url}/v2/fake/age/app/manifests/a`)).arrayBuffer();
      await (await fetch(`${cache.url}/v2/fake/age/app/manifests/b`)).arrayBuffer();
      cache.clock.now += 30 * 60_000;
      await (await fetch(`${cache.url}/v2/fake/age/app/manifests/${da}`)).arrayBuffer(); // a is pulled again
      cache.clock.now += 45 * 60_000;
      const r = await cache.service.expireManifestsNow();
      assert.equal(r.manifests, 1);
      assert.ok(await cache.service.index.getManifest(da), "pulled 45 min ago: kept");
      assert.equal(await cache.service.index.getManifest(db), null, "pulled 75 min ago: dropped");
      assert.equal(await cache.service.index.getTagDigest("fake", "age/app", "b"), null, "its tag too");
      up.reset();
      const again = await fetch(`${cache.url}/v2/fake/age/app/manifests/b`);
      assert.deepEqual(new Uint8Array(await again.arrayBuffer()), mb);
      assert.equal(up.count("manifest", "GET"), 1, "fetched again on demand");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
});
