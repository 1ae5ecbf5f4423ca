/** The content-addressable store on the real runtime adapter. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { blake3 } from "hash-wasm";
import { detectRuntime } from "../src/runtime/mod.ts";
import { Cafs } from "../src/store/cafs.ts";

const runtime = detectRuntime();

/** Every file under `dir`, relative, sorted. */
async function walk(dir: string, base = dir): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p, base)));
    else out.push(p.slice(base.length + 1));
  }
  return out.sort();
}

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

const sha256 = (b: Uint8Array) => "sha256:" + createHash("sha256").update(b).digest("hex");

async function bodyBytes(body: BodyInit): Promise<Uint8Array> {
  return new Uint8Array(await new Response(body).arrayBuffer());
}

describe(`Cafs on ${runtime.name}`, () => {
  let root: string;
  let cafs: Cafs;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "ocicache-cafs-test-"));
    cafs = new Cafs(runtime.files, root);
    await cafs.init();
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test("writer → commit: blobs/xx/<blake3>, BLAKE3 and sha256 right, nothing visible before commit", async () => {
    const data = bytes(700_000, 7);
    const w = await cafs.writer();
    assert.ok(w.path.startsWith(join(root, "tmp") + "/"));
    // write in uneven chunks
    for (let off = 0; off < data.length;) {
      const n = Math.min(65_537, data.length - off);
      await w.write(data.subarray(off, off + n));
      off += n;
    }
    assert.equal(w.size, data.length);
    assert.deepEqual(await walk(join(root, "blobs")), []);
    assert.deepEqual(await readdir(join(root, "tmp")), [w.path.slice(join(root, "tmp").length + 1)]);

    assert.equal(w.ociDigest(), sha256(data));
    assert.equal(w.ociDigest(), sha256(data)); // idempotent
    const stored = await w.commit();
    const want = await blake3(data);
    assert.deepEqual(stored, { key: want, size: data.length });
    assert.match(stored.key, /^[0-9a-f]{64}$/);
    assert.deepEqual(await walk(join(root, "blobs")), [`${want.slice(0, 2)}/${want}`]);
    assert.equal(cafs.pathOf(want), join(root, "blobs", want.slice(0, 2), want));
    assert.deepEqual(new Uint8Array(await readFile(cafs.pathOf(want))), data);
    assert.deepEqual(await readdir(join(root, "tmp")), []);
    assert.equal(await cafs.size(want), data.length);
    assert.deepEqual(await cafs.readAll(want), data);
  });

  test("sha512 writer", async () => {
    const data = bytes(100, 3);
    const w = await cafs.writer("sha512");
    await w.write(data);
    assert.equal(w.ociDigest(), "sha512:" + createHash("sha512").update(data).digest("hex"));
    await w.commit();
  });

  test("abort removes the temp file and stores nothing", async () => {
    const before = await walk(join(root, "blobs"));
    const w = await cafs.writer();
    await w.write(bytes(1000, 99));
    assert.ok(await stat(w.path));
    await w.abort();
    await w.abort(); // twice is fine
    await assert.rejects(stat(w.path));
    assert.deepEqual(await readdir(join(root, "tmp")), []);
    assert.deepEqual(await walk(join(root, "blobs")), before);
  });

  test("identical content stored twice → one file; the second temp file is gone", async () => {
    const data = bytes(5000, 42);
    const key = await blake3(data);
    const w1 = await cafs.writer();
    const w2 = await cafs.writer();
    await w1.write(data);
    await w2.write(data.subarray(0, 2500));
    await w2.write(data.subarray(2500));
    assert.notEqual(w1.path, w2.path);
    const a = await w1.commit();
    const b = await w2.commit();
    assert.deepEqual(a, { key, size: 5000 });
    assert.deepEqual(b, a);
    const files = (await walk(join(root, "blobs"))).filter((p) => p.endsWith(key));
    assert.deepEqual(files, [`${key.slice(0, 2)}/${key}`]);
    assert.deepEqual(await readdir(join(root, "tmp")), []);
    assert.deepEqual(await cafs.readAll(key), data);
  });

  test("putBytes stores a small object", async () => {
    const m = new TextEncoder().encode('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}');
    const s = await cafs.putBytes(m);
    assert.deepEqual(s, { key: await blake3(m), size: m.length });
    assert.deepEqual(await cafs.readAll(s.key), m);
    assert.deepEqual(await readdir(join(root, "tmp")), []);
  });

  test("empty content", async () => {
    const s = await cafs.putBytes(new Uint8Array());
    assert.deepEqual(s, { key: await blake3(new Uint8Array()), size: 0 });
    assert.equal(await cafs.size(s.key), 0);
  });

  test("body(key, start, end) returns exactly those bytes", async () => {
    const data = bytes(600_000, 5); // larger than one read chunk
    const { key } = await cafs.putBytes(data);
    const cases: [number, number][] = [
      [0, data.length - 1],
      [0, 0],
      [0, 9],
      [10, 19],
      [data.length - 1, data.length - 1],
      [data.length - 5, data.length - 1],
      [1000, 300_000],
      [262_143, 262_145],
      [123, data.length - 1],
    ];
    for (const [s, e] of cases) {
      const got = await bodyBytes(await cafs.body(key, s, e));
      assert.equal(got.length, e - s + 1, `${s}-${e} length`);
      assert.deepEqual(got, data.subarray(s, e + 1), `${s}-${e}`);
    }
  });

  test("size of a missing object is null; bad keys are refused", async () => {
    assert.equal(await cafs.size("0".repeat(64)), null);
    assert.throws(() => cafs.pathOf("../../etc/passwd"), /not a store key/);
    assert.throws(() => cafs.pathOf("A".repeat(64)), /not a store key/);
    assert.throws(() => cafs.pathOf("a".repeat(63)), /not a store key/);
  });

  test("remove deletes an object", async () => {
    const { key } = await cafs.putBytes(new TextEncoder().encode("to be removed"));
    assert.equal(await cafs.size(key), 13);
    await cafs.remove(key);
    assert.equal(await cafs.size(key), null);
  });

  test("init() clears stale temp files and keeps blobs", async () => {
    const { key } = await cafs.putBytes(new TextEncoder().encode("survivor"));
    await writeFile(join(root, "tmp", "obj-stale1.tmp"), "partial");
    await writeFile(join(root, "tmp", "obj-stale2.tmp"), "partial");
    const open = await cafs.writer(); // an abandoned writer from "a previous run"
    await open.write(bytes(10));
    assert.equal((await readdir(join(root, "tmp"))).length, 3);
    const again = new Cafs(runtime.files, root);
    await again.init();
    assert.deepEqual(await readdir(join(root, "tmp")), []);
    assert.deepEqual(new TextDecoder().decode(await again.readAll(key)), "survivor");
    await open.abort();
  });

  test("init() on a fresh root creates blobs/ and tmp/", async () => {
    const fresh = join(root, "fresh", "nested");
    await new Cafs(runtime.files, fresh).init();
    assert.ok((await stat(join(fresh, "blobs"))).isDirectory());
    assert.ok((await stat(join(fresh, "tmp"))).isDirectory());
  });
});

test("a damaged file under an object's name (wrong size) is replaced by a new good write, not trusted", async () => {
  const { detectRuntime } = await import("../src/runtime/mod.ts");
  const { Cafs } = await import("../src/store/cafs.ts");
  const { mkdtemp, writeFile, readFile, rm } = await import("node:fs/promises");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const dir = await mkdtemp(join(tmpdir(), "ocicache-cafs-damaged-"));
  try {
    const cafs = new Cafs(detectRuntime().files, dir);
    await cafs.init();
    const bytes = new TextEncoder().encode("the real content of an object");
    const first = await cafs.putBytes(bytes);
    await writeFile(cafs.pathOf(first.key), bytes.subarray(0, 5)); // truncated behind our back
    const again = await cafs.putBytes(bytes);
    assert.equal(again.key, first.key);
    assert.deepEqual(new Uint8Array(await readFile(cafs.pathOf(first.key))), bytes);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
