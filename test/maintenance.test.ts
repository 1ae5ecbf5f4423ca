/** Store maintenance (fsck / gc / the check at start): index and files reconciled, on a real store. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, truncate, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import { blake3 } from "hash-wasm";
import { openDb } from "../src/index/db.ts";
import { Index } from "../src/index/oci_index.ts";
import { detectRuntime } from "../src/runtime/mod.ts";
import { Cafs } from "../src/store/cafs.ts";
import { reconcile, summarize } from "../src/store/maintenance.ts";
import { bytesOf, settle, startCache } from "./support/cache.ts";
import { randomBytes, sha256, startFakeRegistry } from "./support/fake_registry.ts";

const runtime = detectRuntime();
const VIA = { registry: "fake", repository: "lib/app" };
const HOUR = 60 * 60_000;

/** Make a file look last written `ms` ago. */
async function age(path: string, ms: number) {
  const t = (Date.now() - ms) / 1000;
  await utimes(path, t, t);
}

async function exists(path: string): Promise<boolean> {
  return !!(await stat(path).catch(() => null));
}

describe("reconcile", () => {
  let root: string;
  let cafs: Cafs;
  let index: Index;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "ocicache-maint-test-"));
    cafs = new Cafs(runtime.files, root);
    await cafs.init();
    index = new Index(await openDb(`file:${join(root, "index.db")}`));
  });
  afterEach(async () => {
    index.close();
    await rm(root, { recursive: true, force: true });
  });

  /** Store bytes as an indexed blob, its file last written an hour ago. */
  async function blob(data: Uint8Array) {
    const stored = await cafs.putBytes(data);
    const row = { digest: sha256(data), key: stored.key, size: stored.size };
    await index.putBlob(row, VIA);
    await age(cafs.pathOf(stored.key), HOUR);
    return row;
  }

  /** An old file with no row: what a crash between rename and row leaves. */
  async function orphan(data: Uint8Array, ageMs = HOUR) {
    const stored = await cafs.putBytes(data);
    await age(cafs.pathOf(stored.key), ageMs);
    return { digest: sha256(data), key: stored.key, size: stored.size, path: cafs.pathOf(stored.key) };
  }

  test("a consistent store: nothing changes, the summary says so", async () => {
    await blob(randomBytes(1000, 1));
    const m = new TextEncoder().encode('{"schemaVersion":2}');
    const s = await cafs.putBytes(m);
    await index.putManifest({ digest: sha256(m), key: s.key, size: s.size, mediaType: "application/vnd.oci.image.manifest.v1+json" }, VIA);
    const r = await reconcile(index, cafs, { verify: true });
    assert.equal(r.consistent, true, JSON.stringify(r));
    assert.deepEqual(r.checked, { rows: 2, files: 2, tmpFiles: 0, verified: 2 });
    assert.deepEqual(r.errors, []);
    assert.match(summarize(r, "fsck"), /^fsck: consistent \(checked 2 rows, 2 files, 2 re-hashed\)$/);
  });

  test("rows whose file is missing are dropped (blob and manifest), with their repository links", async () => {
    const keep = await blob(randomBytes(500, 2));
    const gone = await blob(randomBytes(700, 3));
    const m = new TextEncoder().encode('{"schemaVersion":2,"x":1}');
    const s = await cafs.putBytes(m);
    const man = { digest: sha256(m), key: s.key, size: s.size, mediaType: "application/vnd.oci.image.manifest.v1+json" };
    await index.putManifest(man, VIA);
    await rm(cafs.pathOf(gone.key));
    await rm(cafs.pathOf(man.key));

    const dry = await reconcile(index, cafs, { dryRun: true });
    assert.equal(dry.rowsDropped, 2);
    assert.ok(await index.getBlob(gone.digest), "a dry run changes nothing");
    assert.match(summarize(dry, "gc"), /^gc: would repair: 2 index rows dropped/);

    const told: string[] = [];
    const r = await reconcile(index, cafs, { onRowDropped: (row) => told.push(`${row.kind} ${row.digest}`) });
    assert.equal(r.rowsDropped, 2);
    assert.equal(r.consistent, false);
    assert.deepEqual(told.sort(), [`blob ${gone.digest}`, `manifest ${man.digest}`].sort(), "the size bound is told");
    assert.equal(await index.getBlob(gone.digest), null);
    assert.equal(await index.getManifest(man.digest), null);
    assert.deepEqual(await index.getBlob(keep.digest), keep);
    const [img] = await index.listImages();
    assert.equal(img.objects, 1, "repository links of dropped objects go too");
    assert.deepEqual(r.actions.map((a) => a.action).sort(), ["row-dropped", "row-dropped"]);
    assert.equal((await reconcile(index, cafs)).consistent, true, "a second run finds nothing");
  });

  test("a row whose file has the wrong size is dropped, and the (corrupt) file removed", async () => {
    const data = randomBytes(4000, 4);
    const row = await blob(data);
    const path = cafs.pathOf(row.key);
    await truncate(path, 1000);
    await age(path, HOUR);
    const r = await reconcile(index, cafs, { orphanGraceMs: 0 });
    assert.equal(r.rowsDropped, 1);
    assert.equal(r.corruptRemoved, 1, "the truncated file no longer matches its name");
    assert.equal(r.bytesReclaimed, 1000);
    assert.equal(await index.getBlob(row.digest), null);
    assert.equal(await exists(path), false);
  });

  test("an old orphan whose BLAKE3 matches its name is re-indexed under its sha256", async () => {
    const data = randomBytes(300_000, 5);
    const o = await orphan(data);
    const told: unknown[] = [];
    const r = await reconcile(index, cafs, { onReindexed: (row) => told.push(row) });
    assert.equal(r.orphansReindexed, 1);
    assert.deepEqual(told, [{ digest: o.digest, key: o.key, size: data.length }]);
    assert.equal(r.orphansRemoved + r.corruptRemoved, 0);
    assert.deepEqual(await index.getBlob(o.digest), { digest: o.digest, key: o.key, size: data.length });
    assert.equal(o.key, await blake3(data));
    assert.equal(r.actions[0].digest, o.digest);
    assert.equal((await reconcile(index, cafs)).consistent, true);
  });

  test("an old orphan whose bytes do not match its name is removed", async () => {
    const o = await orphan(randomBytes(2000, 6));
    const bytes = new Uint8Array(await readFile(o.path));
    bytes[100] ^= 0x01;
    await writeFile(o.path, bytes);
    await age(o.path, HOUR);
    const r = await reconcile(index, cafs);
    assert.equal(r.corruptRemoved, 1);
    assert.equal(r.orphansReindexed, 0);
    assert.equal(r.bytesReclaimed, 2000);
    assert.equal(await exists(o.path), false);
    assert.equal(await index.getBlob(o.digest), null);
  });

  test("young orphans are left alone by gc; fsck (no grace) judges them; stray names go once old", async () => {
    const young = await orphan(randomBytes(100, 7), 1000);
    const strayOld = join(cafs.blobDir, young.key.slice(0, 2), "not-a-key");
    const strayYoung = join(cafs.blobDir, young.key.slice(0, 2), "also-not-a-key");
    await writeFile(strayOld, "junk!");
    await age(strayOld, HOUR);
    await writeFile(strayYoung, "junk");
    const gc = await reconcile(index, cafs); // default grace: 10 min
    assert.equal(gc.youngOrphansKept, 2);
    assert.equal(gc.orphansRemoved, 1);
    assert.equal(gc.bytesReclaimed, 5);
    assert.equal(await exists(young.path), true);
    assert.equal(await exists(strayYoung), true);
    assert.equal(await exists(strayOld), false);
    assert.equal(await index.getBlob(young.digest), null);
    assert.match(summarize(gc), /1 stray files removed.*2 unindexed files younger than the grace period left alone/);

    const fsck = await reconcile(index, cafs, { orphanGraceMs: 0 });
    assert.equal(fsck.orphansReindexed, 1);
    assert.equal(fsck.orphansRemoved, 1);
    assert.ok(await index.getBlob(young.digest));
  });

  test("rehash: false removes every old orphan instead of re-indexing it", async () => {
    const o = await orphan(randomBytes(100, 8));
    const r = await reconcile(index, cafs, { rehash: false });
    assert.equal(r.orphansRemoved, 1);
    assert.equal(await exists(o.path), false);
  });

  test("temp files older than the limit are removed, younger ones kept", async () => {
    const old = join(cafs.tmpDir, "obj-old.tmp");
    const young = join(cafs.tmpDir, "obj-young.tmp");
    await writeFile(old, "partial download");
    await age(old, 2 * HOUR);
    await writeFile(young, "in flight");
    const r = await reconcile(index, cafs, { tmpOlderThanMs: HOUR });
    assert.equal(r.tmpRemoved, 1);
    assert.equal(r.tmpKept, 1);
    assert.equal(r.bytesReclaimed, "partial download".length);
    assert.deepEqual(await readdir(cafs.tmpDir), ["obj-young.tmp"]);
    const none = await reconcile(index, cafs, { tmpOlderThanMs: Infinity });
    assert.equal(none.checked.tmpFiles, 0, "Infinity leaves tmp alone");
  });

  test("verify catches a flipped byte (same size) that a plain check cannot see", async () => {
    const data = randomBytes(50_000, 9);
    const row = await blob(data);
    const path = cafs.pathOf(row.key);
    const bytes = new Uint8Array(await readFile(path));
    bytes[12_345] ^= 0x80;
    await writeFile(path, bytes);
    await age(path, HOUR);
    assert.equal((await reconcile(index, cafs)).consistent, true, "size still matches");
    const r = await reconcile(index, cafs, { verify: true });
    assert.equal(r.rowsDropped, 1);
    assert.equal(r.corruptRemoved, 1);
    assert.equal(r.checked.verified, 1);
    assert.equal(await index.getBlob(row.digest), null);
    assert.equal(await exists(path), false);
  });

  test("verify drops a row whose digest does not match intact bytes; the file is re-indexed right", async () => {
    const data = randomBytes(3000, 10);
    const row = await blob(data);
    const wrong = "sha256:" + "0".repeat(64);
    await index.putBlob({ ...row, digest: wrong }, VIA);
    const sha512 = "sha512:" + createHash("sha512").update(data).digest("hex");
    await index.putBlob({ ...row, digest: sha512 }, VIA);
    const r = await reconcile(index, cafs, { verify: true, orphanGraceMs: 0 });
    assert.equal(r.rowsDropped, 1, JSON.stringify(r.actions));
    assert.equal(r.corruptRemoved, 0);
    assert.equal(await index.getBlob(wrong), null);
    assert.deepEqual(await index.getBlob(row.digest), row);
    assert.ok(await index.getBlob(sha512), "a sha512 row is checked with sha512");
  });
});

describe("maintenance in a running service", () => {
  const big = randomBytes(8 * 1024 * 1024, 77);
  const small = randomBytes(20_000, 78);

  test("the check at start repairs what a crash left; gc during a download keeps its temp file", async () => {
    const up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 4 });
    const bigDigest = up.putBlob(big);
    const smallDigest = up.putBlob(small);
    const lost = randomBytes(1234, 79);
    const lostDigest = up.putBlob(lost);
    let cache = await startCache(up.url);
    const storage = cache.storage;
    try {
      // Fill the cache, then simulate a crash's leftovers: a file gone, an unindexed file.
      for (const d of [smallDigest, lostDigest]) {
        const res = await fetch(`${cache.url}/v2/fake/lib/app/blobs/${d}`);
        await bytesOf(res);
      }
      await settle(cache);
      const startReport = await cache.service.maintenance.startup;
      assert.equal(startReport?.consistent, true, "a fresh store is consistent");
      const lostRow = (await cache.service.index.getBlob(lostDigest))!;
      const smallRow = (await cache.service.index.getBlob(smallDigest))!;
      await cache.stop();
      {
        const idx = new Index(await openDb(`file:${join(storage, "index.db")}`));
        await idx.dropObject("blob", smallDigest, smallRow.key); // the row never got written
        idx.close();
      }
      const c = new Cafs(runtime.files, storage);
      await rm(c.pathOf(lostRow.key)); // the file went (and the row stayed)
      await writeFile(join(c.tmpDir, "obj-crashed.tmp"), "half");

      cache = await startCache(up.url, { storage });
      const r = await cache.service.maintenance.startup;
      assert.ok(r);
      assert.equal(r.rowsDropped, 1, JSON.stringify(r.actions));
      assert.equal(r.orphansReindexed, 1);
      assert.deepEqual(await cache.service.index.getBlob(smallDigest), { digest: smallDigest, key: smallRow.key, size: small.length });
      assert.equal(await cache.service.index.getBlob(lostDigest), null);
      assert.deepEqual(await readdir(c.tmpDir), [], "temp files of the crashed run are gone at start");

      // A download in flight while gc runs.
      up.reset();
      const res = await fetch(`${cache.url}/v2/fake/lib/app/blobs/${bigDigest}`);
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      const chunks: Uint8Array[] = [];
      let got = 0;
      while (got < 1024 * 1024) {
        const { done, value } = await reader.read();
        assert.equal(done, false);
        chunks.push(value!);
        got += value!.length;
      }
      const temps = await readdir(c.tmpDir);
      assert.equal(temps.length, 1, "the download's temp file");
      const stale = join(c.tmpDir, "obj-stale.tmp");
      await writeFile(stale, "leftover");
      await age(stale, 2 * HOUR);
      const orphanKey = (await unindexed(c, randomBytes(999, 80))).key;

      const gc = await cache.service.maintenance.gc({ orphanGraceMs: 0, tmpOlderThanMs: 2000 });
      assert.ok(gc);
      assert.equal(gc.tmpRemoved, 1, JSON.stringify(gc.actions));
      assert.equal(gc.tmpKept, 1);
      assert.equal(gc.orphansReindexed, 1, "an intact unindexed file is indexed, not removed");
      assert.ok(await exists(join(c.tmpDir, temps[0])), "the in-flight temp file is kept");
      assert.ok(await exists(c.pathOf(orphanKey)));

      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        got += value.length;
      }
      const body = new Uint8Array(got);
      let off = 0;
      for (const ch of chunks) {
        body.set(ch, off);
        off += ch.length;
      }
      assert.equal(sha256(body), bigDigest);
      assert.equal(up.count("blob", "GET"), 1);

      await settle(cache); // the client got the end once the bytes were verified; the commit follows
      const hit = await fetch(`${cache.url}/v2/fake/lib/app/blobs/${bigDigest}`);
      assert.equal(hit.headers.get("x-cache"), "hit");
      assert.equal(sha256(await bytesOf(hit)), bigDigest);
      const after = await cache.service.maintenance.gc({ orphanGraceMs: 0, verify: true });
      assert.equal(after?.consistent, true, JSON.stringify(after));
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
  test("with a size bound, what the check at start drops and re-indexes reaches the eviction policy", async () => {
    const up = await startFakeRegistry();
    const a = randomBytes(10_000, 81);
    const b = randomBytes(20_000, 82);
    const [da, db] = [up.putBlob(a), up.putBlob(b)];
    let cache = await startCache(up.url, { flags: ["--max-size", "64MiB"] });
    const storage = cache.storage;
    try {
      for (const d of [da, db]) await bytesOf(await fetch(`${cache.url}/v2/fake/lib/app/blobs/${d}`));
      await settle(cache);
      const ra = (await cache.service.index.getBlob(da))!;
      const rb = (await cache.service.index.getBlob(db))!;
      await cache.stop();
      const idx = new Index(await openDb(`file:${join(storage, "index.db")}`));
      await idx.dropObject("blob", da, ra.key); // a's row lost: its file is an orphan
      idx.close();
      await rm(new Cafs(runtime.files, storage).pathOf(rb.key)); // b's file lost
      cache = await startCache(up.url, { storage, flags: ["--max-size", "64MiB"] });
      const r = await cache.service.maintenance.startup;
      assert.equal(r?.orphansReindexed, 1);
      assert.equal(r?.rowsDropped, 1);
      const policy = cache.service.eviction!.policy;
      assert.equal(policy.has(da), true, "the re-indexed blob is admitted");
      assert.equal(policy.has(db), false, "the dropped blob is forgotten");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
});

/** Store bytes without a row (and so without the grace period's protection once aged). */
async function unindexed(c: Cafs, data: Uint8Array) {
  const s = await c.putBytes(data);
  await age(c.pathOf(s.key), HOUR);
  return s;
}
