/**
 * The bad days: retries, resumed downloads, stale-if-error bounds, offline registries, clients
 * that leave or dawdle. Each case is driven by the fault-injecting fake upstream.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { imageManifest, randomBytes, sha256, startFakeRegistry } from "./support/fake_registry.ts";
import { bytesOf, readRest, settle, startCache } from "./support/cache.ts";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

describe("retries", () => {
  test("503 twice, then success: the client never sees the 503s", async () => {
    const up = await startFakeRegistry();
    const b = randomBytes(40_000, 61);
    const d = up.putBlob(b);
    const cache = await startCache(up.url);
    try {
      up.faultAll({ kind: "status", status: 503, times: 2 });
      const r = await fetch(`${cache.url}/v2/fake/r/app/blobs/${d}`);
      assert.equal(r.status, 200);
      assert.equal(sha256(await bytesOf(r)), d);
      assert.equal(up.count("blob", "GET"), 3);
      up.faultAll({ kind: "status", status: 502, times: 1 });
      up.putManifest("r/app", imageManifest({ digest: d, size: b.length }, []), OCI_MANIFEST, "v1");
      const m = await fetch(`${cache.url}/v2/fake/r/app/manifests/v1`);
      assert.equal(m.status, 200);
      await m.arrayBuffer();
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("429 with a short Retry-After is waited for; a long one is passed on at once", async () => {
    const up = await startFakeRegistry();
    const b = randomBytes(1000, 62);
    const d = up.putBlob(b);
    const cache = await startCache(up.url);
    try {
      up.faultAll({ kind: "status", status: 429, headers: { "retry-after": "1" }, times: 1 });
      const r = await fetch(`${cache.url}/v2/fake/r/app/blobs/${d}`);
      assert.equal(r.status, 200);
      assert.equal(sha256(await bytesOf(r)), d);
      assert.equal(up.count("blob", "GET"), 2);
      up.reset();
      up.faultAll({ kind: "status", status: 429, headers: { "retry-after": "3600" } });
      const r2 = await fetch(`${cache.url}/v2/fake/r/other/manifests/x`);
      assert.equal(r2.status, 429);
      assert.equal(r2.headers.get("retry-after"), "3600");
      await r2.arrayBuffer();
      assert.equal(up.count("manifest", "GET"), 1, "not retried");
    } finally {
      up.faultAll(undefined);
      await cache.destroy();
      await up.stop();
    }
  });

  test("--upstream-retries 1 turns retries off", async () => {
    const up = await startFakeRegistry();
    const cache = await startCache(up.url, { flags: ["--upstream-retries", "1"] });
    try {
      up.faultAll({ kind: "status", status: 503 });
      const r = await fetch(`${cache.url}/v2/fake/r/app/manifests/v1`);
      assert.equal(r.status, 503);
      await r.arrayBuffer();
      assert.equal(up.count("manifest", "GET"), 1);
    } finally {
      up.faultAll(undefined);
      await cache.destroy();
      await up.stop();
    }
  });
});

describe("resumed downloads", () => {
  for (const ignoreRange of [false, true]) {
    test(`a blob that breaks off mid-way is resumed${ignoreRange ? " (upstream ignores Range: bytes skipped)" : " with a Range request"}; the client sees one clean transfer`, async () => {
      const up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 1, ignoreRange });
      const b = randomBytes(1_500_000, 63);
      const d = up.putBlob(b);
      const cache = await startCache(up.url);
      try {
        up.fault(d, { kind: "dieAfter", bytes: 600_000, times: 1 });
        const r = await fetch(`${cache.url}/v2/fake/r/app/blobs/${d}`);
        assert.equal(r.status, 200);
        assert.equal(sha256(await bytesOf(r)), d);
        const gets = up.requests.filter((x) => x.kind === "blob" && x.method === "GET");
        assert.equal(gets.length, 2);
        if (!ignoreRange) assert.match(gets[1].range ?? "", /^bytes=\d+-$/);
        await settle(cache);
        assert.equal((await cache.service.index.getBlob(d))?.size, b.length);
      } finally {
        await cache.destroy();
        await up.stop();
      }
    });
  }

  test("a body that ends cleanly short of its Content-Length is resumed too", {
    // Bun's server drops Content-Length on a streamed body (oven-sh/bun#10507), so a fake upstream
    // running on Bun cannot announce a size and then fall short of it; without a size, such a
    // body is caught by the digest check instead (the wrong-bytes tests).
    skip: "Bun" in globalThis && "the fake upstream cannot announce a size on Bun",
  }, async () => {
    const up = await startFakeRegistry({ chunkSize: 64 * 1024 });
    const b = randomBytes(700_000, 70);
    const d = up.putBlob(b);
    const cache = await startCache(up.url);
    try {
      up.fault(d, { kind: "truncateAfter", bytes: 250_000, times: 1 });
      const r = await fetch(`${cache.url}/v2/fake/r/app/blobs/${d}`);
      assert.equal(sha256(await bytesOf(r)), d);
      const gets = up.requests.filter((x) => x.kind === "blob" && x.method === "GET");
      assert.ok(gets.length >= 2 && gets.some((g) => g.range !== null), "resumed with a Range request");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("a stalled body is resumed after the idle timeout", async () => {
    const up = await startFakeRegistry({ chunkSize: 64 * 1024 });
    const b = randomBytes(500_000, 64);
    const d = up.putBlob(b);
    const cache = await startCache(up.url, { flags: ["--idle-timeout", "300ms"] });
    try {
      up.fault(d, { kind: "stallAfter", bytes: 200_000, ms: 3000, times: 1 });
      const r = await fetch(`${cache.url}/v2/fake/r/app/blobs/${d}`);
      assert.equal(sha256(await bytesOf(r)), d);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
});

describe("stale-if-error bounds and offline registries", () => {
  test("--max-stale: a tag older than the bound is not served when the upstream fails", async () => {
    const up = await startFakeRegistry();
    up.putManifest("s/app", imageManifest({ digest: up.putBlob(randomBytes(10, 65)), size: 10 }, []), OCI_MANIFEST, "v1");
    const cache = await startCache(up.url, { flags: ["--max-stale", "1h"] });
    try {
      await (await fetch(`${cache.url}/v2/fake/s/app/manifests/v1`)).arrayBuffer();
      up.faultAll({ kind: "status", status: 503 });
      cache.clock.now += 30 * 60_000;
      const r1 = await fetch(`${cache.url}/v2/fake/s/app/manifests/v1`);
      assert.equal(r1.status, 200);
      assert.match(r1.headers.get("warning") ?? "", /110/);
      await r1.arrayBuffer();
      cache.clock.now += 60 * 60_000;
      const r2 = await fetch(`${cache.url}/v2/fake/s/app/manifests/v1`);
      assert.equal(r2.status, 503);
      await r2.arrayBuffer();
    } finally {
      up.faultAll(undefined);
      await cache.destroy();
      await up.stop();
    }
  });

  test("--offline: cached content served without any upstream request; a miss is 503", async () => {
    const up = await startFakeRegistry();
    const layer = randomBytes(3000, 66);
    const ld = up.putBlob(layer);
    up.putManifest("o/app", imageManifest({ digest: ld, size: layer.length }, []), OCI_MANIFEST, "v1");
    const online = await startCache(up.url);
    const storage = online.storage;
    await (await fetch(`${online.url}/v2/fake/o/app/manifests/v1`)).arrayBuffer();
    await (await fetch(`${online.url}/v2/fake/o/app/blobs/${ld}`)).arrayBuffer();
    await settle(online);
    await online.stop();
    const cache = await startCache(up.url, { storage, flags: ["--offline", "fake"] });
    try {
      up.reset();
      cache.clock.now += 24 * 3600_000;
      const m = await fetch(`${cache.url}/v2/fake/o/app/manifests/v1`);
      assert.equal(m.status, 200);
      assert.match(m.headers.get("warning") ?? "", /110/, "older than the TTL: marked stale");
      await m.arrayBuffer();
      const b = await fetch(`${cache.url}/v2/fake/o/app/blobs/${ld}`);
      assert.equal(sha256(await bytesOf(b)), ld);
      const t = await fetch(`${cache.url}/v2/fake/o/app/tags/list`);
      assert.deepEqual((await t.json()).tags, ["v1"]);
      const miss = await fetch(`${cache.url}/v2/fake/o/other/manifests/v1`);
      assert.equal(miss.status, 503);
      assert.match((await miss.json()).errors[0].message, /offline/);
      assert.equal(up.requests.length, 0, "an offline registry is never contacted");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
});

describe("clients that leave or dawdle", () => {
  test("a client that leaves mid-blob does not stop the download: it completes into the cache", async () => {
    const up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 5 });
    const b = randomBytes(1_200_000, 67);
    const d = up.putBlob(b);
    const cache = await startCache(up.url);
    try {
      const ctl = new AbortController();
      const r = await fetch(`${cache.url}/v2/fake/c/app/blobs/${d}`, { signal: ctl.signal });
      const reader = r.body!.getReader();
      await reader.read();
      ctl.abort();
      await reader.cancel().catch(() => {});
      await settle(cache);
      assert.equal((await cache.service.index.getBlob(d))?.size, b.length);
      assert.equal(up.count("blob", "GET"), 1);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("--max-detached: a larger download whose clients all left is cancelled cleanly", async () => {
    const up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 10 });
    const b = randomBytes(2_000_000, 68);
    const d = up.putBlob(b);
    const cache = await startCache(up.url, { flags: ["--max-detached", "1MiB"] });
    try {
      const ctl = new AbortController();
      const r = await fetch(`${cache.url}/v2/fake/c/app/blobs/${d}`, { signal: ctl.signal });
      const reader = r.body!.getReader();
      await reader.read();
      ctl.abort();
      await reader.cancel().catch(() => {});
      const flights = await cache.service.flights.active();
      const outcomes = await Promise.all(flights.map((f) => f.done));
      assert.ok(outcomes.every((o) => !o.ok), "cancelled");
      assert.equal(await cache.service.index.getBlob(d), null);
      assert.deepEqual(await readdir(join(cache.storage, "tmp")), []);
      // A later request downloads it afresh.
      const again = await fetch(`${cache.url}/v2/fake/c/app/blobs/${d}`);
      assert.equal(sha256(await bytesOf(again)), d);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("a slow client does not hold back a fast one on the same download", async () => {
    const up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 2 });
    const b = randomBytes(3_000_000, 69);
    const d = up.putBlob(b);
    const cache = await startCache(up.url);
    try {
      const [slow, fast] = await Promise.all([
        fetch(`${cache.url}/v2/fake/c/app/blobs/${d}`),
        fetch(`${cache.url}/v2/fake/c/app/blobs/${d}`),
      ]);
      const slowReader = slow.body!.getReader();
      const first = await slowReader.read(); // then the slow client stops reading for a while
      // The fast client must finish while the slow one is still paused (bounded: a coupling
      // between the two would leave it waiting forever).
      const fastBytes = await Promise.race([
        bytesOf(fast),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error("the fast client was held back by the slow one")), 20_000)),
      ]);
      assert.equal(sha256(fastBytes), d);
      assert.equal(sha256(await readRest(slowReader, [first.value!])), d);
      assert.equal(up.count("blob", "GET"), 1);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
});
