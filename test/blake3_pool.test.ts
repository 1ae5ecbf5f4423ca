/** BLAKE3 store keys computed by worker threads that follow files as they are written. */
import assert from "node:assert/strict";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { blake3 } from "hash-wasm";
import { Blake3Pool } from "../src/store/blake3_pool.ts";
import { randomBytes } from "./support/fake_registry.ts";

const MiB = 1024 * 1024;

describe("Blake3Pool", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "ocicache-blake3-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Write `data` to a new file in pieces, telling the follower after each, as a download does. */
  async function writeFollowed(pool: Blake3Pool, name: string, data: Uint8Array, piece: number): Promise<string> {
    const path = join(dir, name);
    const fh = await open(path, "wx");
    const f = pool.follow(path);
    try {
      for (let off = 0; off < data.length; off += piece) {
        const chunk = data.subarray(off, Math.min(data.length, off + piece));
        await fh.write(chunk, 0, chunk.length, off);
        f.advance(off + chunk.length);
        // Let the worker run between writes sometimes, so it really follows a growing file.
        if ((off / piece) % 3 === 0) await new Promise((r) => setTimeout(r, 0));
      }
    } finally {
      await fh.close();
    }
    return await f.finish(data.length);
  }

  test("keys of growing files equal BLAKE3 of their bytes, also for several files at once", async () => {
    const warnings: string[] = [];
    const pool = new Blake3Pool({ maxWorkers: 2, onFallback: (w) => warnings.push(w) });
    try {
      const cases = [0, 1, 1023, 1024, 1025, MiB + 1, 9 * MiB + 7].map((n, i) => ({ n, data: randomBytes(n, 100 + i) }));
      const keys = await Promise.all(cases.map((c, i) => writeFollowed(pool, `f${i}`, c.data, 256 * 1024 + i)));
      for (const [i, c] of cases.entries()) assert.equal(keys[i], await blake3(c.data), `size ${c.n}`);
      assert.ok(pool.workers >= 1 && pool.workers <= 2, `workers started: ${pool.workers}`);
      assert.deepEqual(warnings, [], "the keys came from the workers");
    } finally {
      await pool.close();
    }
  });

  test("a worker that dies with a key pending: keys are computed on this thread, with one warning", async () => {
    const warnings: string[] = [];
    const pool = new Blake3Pool({ workerUrl: new URL("./support/broken_worker.ts", import.meta.url), onFallback: (w) => warnings.push(w) });
    try {
      const a = randomBytes(3 * MiB, 7);
      const b = randomBytes(2 * MiB + 3, 8);
      assert.equal(await writeFollowed(pool, "fb-a", a, 512 * 1024), await blake3(a));
      assert.equal(await writeFollowed(pool, "fb-b", b, 512 * 1024), await blake3(b));
      assert.equal(warnings.length, 1, warnings.join("\n"));
      assert.match(warnings[0], /BLAKE3 worker/);
    } finally {
      await pool.close();
    }
  });

  test("a file shorter than its announced size is an error, not a hang or a wrong key", async () => {
    const pool = new Blake3Pool({ maxWorkers: 1 });
    try {
      const path = join(dir, "short");
      await writeFile(path, randomBytes(1000, 3));
      const f = pool.follow(path);
      await assert.rejects(f.finish(5000), /ended at 1000/);
      // The worker goes on serving other files.
      const data = randomBytes(2 * MiB, 4);
      assert.equal(await writeFollowed(pool, "after-short", data, MiB), await blake3(data));
    } finally {
      await pool.close();
    }
  });

  test("a cancelled follow frees its worker; close rejects what is pending and later keys hash here", async () => {
    const pool = new Blake3Pool({ maxWorkers: 1 });
    const path = join(dir, "cancelled");
    await writeFile(path, randomBytes(4 * MiB, 5));
    const f = pool.follow(path);
    f.advance(4 * MiB);
    f.cancel();
    const data = randomBytes(MiB + 5, 6);
    assert.equal(await writeFollowed(pool, "next", data, 300_000), await blake3(data));
    const big = join(dir, "pending");
    await writeFile(big, randomBytes(32 * MiB, 9));
    const pending = pool.follow(big).finish(32 * MiB);
    await pool.close();
    await assert.rejects(pending, /stopped/);
    assert.equal(await pool.follow(big).finish(32 * MiB), await blake3(await readFile(big)));
  });
});
