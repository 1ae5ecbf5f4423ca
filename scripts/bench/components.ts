/**
 * A reference for reading the cold numbers: what each step a caching proxy does per chunk costs
 * on this machine when done one after another on one JavaScript thread, with the ~64 KiB chunks
 * a fetch body delivers. Runs in the bench process (so on the bench's runtime), on the layer's
 * random bytes read from the page cache.
 * @module
 */
import { createHash } from "node:crypto";
import { open, rm } from "node:fs/promises";
import { createBLAKE3 } from "hash-wasm";
import { MiB } from "./util.ts";

/** One measured step. */
export interface ComponentRow {
  label: string;
  mibps: number;
  /** Seconds this step alone takes for the whole layer. */
  secondsPerLayer: number;
}

const CHUNK = 64 * 1024;

async function eachChunk(
  path: string,
  fn: (chunk: Uint8Array) => void | Promise<void>,
): Promise<{ bytes: number; ms: number }> {
  const fh = await open(path, "r");
  let bytes = 0;
  let ms = 0;
  try {
    const buf = new Uint8Array(4 * MiB);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      for (let off = 0; off < bytesRead; off += CHUNK) {
        const c = buf.subarray(off, Math.min(off + CHUNK, bytesRead));
        const t = performance.now();
        await fn(c);
        ms += performance.now() - t;
        bytes += c.length;
      }
    }
  } finally {
    await fh.close();
  }
  return { bytes, ms };
}

/** Time sha256 (node:crypto), BLAKE3 (hash-wasm) and 64 KiB file writes + fdatasync over `path`. */
export async function measureComponents(
  path: string,
  scratch: string,
): Promise<ComponentRow[]> {
  const rows: ComponentRow[] = [];
  const row = (label: string, bytes: number, ms: number) =>
    rows.push({
      label,
      mibps: bytes / MiB / (ms / 1000),
      secondsPerLayer: ms / 1000,
    });

  const sha = createHash("sha256");
  const s = await eachChunk(path, (c) => void sha.update(c));
  sha.digest();
  row("sha256 (node:crypto)", s.bytes, s.ms);

  const blake = await createBLAKE3();
  blake.init();
  const b = await eachChunk(path, (c) => void blake.update(c));
  blake.digest("hex");
  row("BLAKE3 (hash-wasm)", b.bytes, b.ms);

  const out = await open(scratch, "w");
  try {
    const w = await eachChunk(path, async (c) => {
      let off = 0;
      while (off < c.length) {
        off += (await out.write(c, off, c.length - off)).bytesWritten;
      }
    });
    const t = performance.now();
    await out.datasync();
    const syncMs = performance.now() - t;
    row("file write, 64 KiB chunks (node:fs)", w.bytes, w.ms);
    row("fdatasync of the written layer", w.bytes, syncMs);
  } finally {
    await out.close();
    await rm(scratch, { force: true });
  }
  return rows;
}
