/**
 * A download's clients get the end as soon as the bytes are verified; storing the object (its
 * BLAKE3 key from a worker, fsync, rename, index row) follows behind them.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { blake3 } from "hash-wasm";
import { Flight, Flights } from "../src/download/flight.ts";
import { ChunkWindow } from "../src/download/window.ts";
import { parseDigest } from "../src/oci/digest.ts";
import { detectRuntime } from "../src/runtime/mod.ts";
import { Blake3Pool } from "../src/store/blake3_pool.ts";
import { Cafs, type StoredObject } from "../src/store/cafs.ts";
import { randomBytes } from "./support/fake_registry.ts";

const runtime = detectRuntime();
const MiB = 1024 * 1024;

/** A body that delivers `data` in `piece`-byte chunks. */
function bodyOf(data: Uint8Array, piece = 256 * 1024): ReadableStream<Uint8Array> {
  let off = 0;
  return new ReadableStream({
    pull(ctrl) {
      if (off >= data.length) return ctrl.close();
      ctrl.enqueue(data.slice(off, off + piece));
      off += piece;
    },
  });
}

async function readAll(s: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(s).arrayBuffer());
}

describe(`Flight on ${runtime.name}`, () => {
  let root: string;
  let cafs: Cafs;
  let pool: Blake3Pool;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "ocicache-flight-test-"));
    pool = new Blake3Pool();
    cafs = new Cafs(runtime.files, root, pool);
    await cafs.init();
  });
  after(async () => {
    await pool.close();
    await rm(root, { recursive: true, force: true });
  });

  function start(data: Uint8Array, onStored: (o: StoredObject) => Promise<void>, flights?: Flights): Flight {
    const digest = parseDigest("sha256:" + createHash("sha256").update(data).digest("hex"))!;
    const make = () => new Flight({ digest, body: bodyOf(data), size: data.length, cafs, files: runtime.files, onStored });
    if (!flights) return make();
    let flight: Flight | undefined;
    flights.join(digest.value, () => Promise.resolve({ ok: true, flight: flight = make() }));
    return flight!;
  }

  test("clients finish while the object is still being stored; a later HEAD can see it verified", async () => {
    const data = randomBytes(5 * MiB + 3, 41);
    const gate = Promise.withResolvers<void>();
    let storedAs: StoredObject | undefined;
    const flights = new Flights();
    const flight = start(data, async (o) => {
      storedAs = o;
      await gate.promise; // the index row is slow to write
    }, flights);
    const [a, b] = await Promise.all([readAll(flight.stream()), readAll(flight.stream(MiB, 2 * MiB))]);
    assert.deepEqual(a, data);
    assert.deepEqual(b, data.subarray(MiB, 2 * MiB + 1));
    // Wait until the commit reaches the index (the key comes from a worker).
    for (let i = 0; i < 500 && !storedAs; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(flight.state, "verified");
    assert.equal(flights.verified(flight.digest.value), flight);
    // A client arriving now reads the same verified bytes.
    assert.deepEqual(await readAll(flight.stream()), data);
    assert.ok(flights.has(flight.digest.value));
    gate.resolve();
    const outcome = await flight.done;
    assert.ok(outcome.ok);
    assert.equal(outcome.stored.key, await blake3(data));
    assert.equal(flight.state, "done");
    // The flights forget it once done (the index row was written before that).
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(flights.has(flight.digest.value), false);
    assert.equal(flights.verified(flight.digest.value), undefined);
    assert.deepEqual(await readdir(cafs.tmpDir), [], "no temp file is left");
  });

  test("storing fails after verification: clients keep their verified bytes, nothing is stored", async () => {
    const data = randomBytes(3 * MiB, 42);
    const flight = start(data, () => Promise.reject(new Error("index is read-only")));
    const got = await readAll(flight.stream());
    assert.deepEqual(got, data);
    const outcome = await flight.done;
    assert.equal(outcome.ok, false);
    assert.ok(!outcome.ok && outcome.clientsServed && /read-only/.test(outcome.error.message));
    assert.deepEqual(await readdir(cafs.tmpDir), []);
  });

  test("wrong bytes: no client sees a clean end, even one that keeps up from memory", async () => {
    const data = randomBytes(3 * MiB, 43);
    const digest = parseDigest("sha256:" + createHash("sha256").update(randomBytes(10, 1)).digest("hex"))!;
    const flight = new Flight({ digest, body: bodyOf(data), size: data.length, cafs, files: runtime.files, onStored: () => Promise.resolve() });
    const results = await Promise.allSettled([readAll(flight.stream()), readAll(flight.stream(2 * MiB)), readAll(flight.stream(0, 10))]);
    for (const r of results) assert.equal(r.status, "rejected");
    const outcome = await flight.done;
    assert.equal(outcome.ok, false);
    assert.deepEqual(await readdir(cafs.tmpDir), []);
  });
});

describe("ChunkWindow", () => {
  test("views span the chunks it holds; dropping and keeping move its start", () => {
    const w = new ChunkWindow();
    w.reset(100);
    w.push(Uint8Array.of(1, 2, 3));
    w.push(Uint8Array.of(4, 5));
    w.push(Uint8Array.of(6, 7, 8, 9));
    assert.equal(w.bytes, 9);
    assert.equal(w.view(99, 10), null, "before the window");
    assert.equal(w.view(109, 10), null, "past the end");
    assert.deepEqual([...w.view(101, 10)!], [2, 3], "a view ends with its chunk");
    assert.deepEqual([...w.view(103, 1)!], [4], "and at max");
    assert.equal(w.dropBefore(102), false, "the first chunk ends at 103");
    assert.equal(w.start, 100);
    assert.equal(w.dropBefore(105), true);
    assert.equal(w.start, 105);
    assert.deepEqual([...w.view(105, 10)!], [6, 7, 8, 9]);
    w.push(Uint8Array.of(10));
    w.keepLast(1);
    assert.equal(w.start, 109, "keeps at least the last byte, in whole chunks");
    assert.equal(w.bytes, 1);
    w.keepLast(0);
    assert.equal(w.bytes, 1, "never drops the newest chunk");
  });

  test("a view shares memory with the chunk (no copy)", () => {
    const w = new ChunkWindow();
    const c = new Uint8Array(8);
    w.push(c);
    const v = w.view(2, 4)!;
    assert.equal(v.buffer, c.buffer);
    assert.equal(v.byteOffset, 2);
  });
});
