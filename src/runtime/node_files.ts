/**
 * File primitives both runtimes share, on `node:fs/promises` (supported by Deno and Bun).
 * @module
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import type { FileInfo, FileReader, Files, TempFile } from "./types.ts";

function isNotFound(e: unknown): boolean {
  return (e as { code?: string })?.code === "ENOENT" || (e as Error)?.name === "NotFound";
}

/** A unique temp file name in `dir`. */
export function tempName(dir: string, prefix: string): string {
  return join(dir, `${prefix}-${randomUUID()}.tmp`);
}

/** Create a temp file with node:fs (used by the Bun adapter). */
export async function nodeCreateTemp(dir: string, prefix: string): Promise<TempFile> {
  const path = tempName(dir, prefix);
  const fh = await open(path, "wx", 0o644);
  return {
    path,
    async write(chunk) {
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
        off += bytesWritten;
      }
    },
    sync: () => fh.datasync(),
    close: () => fh.close(),
  };
}

/** Positional reader on node:fs. */
export async function nodeOpenReader(path: string): Promise<FileReader> {
  const fh = await open(path, "r");
  return {
    async read(buf, position) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, position);
      return bytesRead;
    },
    close: () => fh.close(),
  };
}

/** The runtime-neutral part of {@link Files}. */
export const nodeFiles: Omit<Files, "body" | "createTemp"> = {
  async readAll(path) {
    return new Uint8Array(await readFile(path));
  },
  openReader: nodeOpenReader,
  rename: (from, to) => rename(from, to),
  async syncDir(path) {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  },
  async stat(path): Promise<FileInfo | null> {
    try {
      const s = await stat(path);
      return { size: s.size, mtimeMs: s.mtimeMs, isFile: s.isFile(), isDirectory: s.isDirectory() };
    } catch (e) {
      if (isNotFound(e)) return null;
      throw e;
    }
  },
  async remove(path) {
    await rm(path, { force: true });
  },
  async list(dir) {
    try {
      return await readdir(dir);
    } catch (e) {
      if (isNotFound(e)) return [];
      throw e;
    }
  },
  async mkdir(path) {
    await mkdir(path, { recursive: true });
  },
  async writeFile(path, data) {
    await writeFile(path, data);
  },
};
