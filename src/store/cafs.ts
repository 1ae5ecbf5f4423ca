/**
 * Content-addressable file store: each distinct content is one file, named by its BLAKE3 hash,
 * under `<root>/blobs/<first two hex>/<hex>`. Files are written once — into `<root>/tmp`, fsynced,
 * then renamed into place — so a reader never sees a partial file under a final name.
 * @module
 */
import { createBLAKE3 } from "hash-wasm";
import { join } from "node:path";
import type { Hash } from "node:crypto";
import { digester, type Digest } from "../oci/digest.ts";
import type { Files, TempFile } from "../runtime/types.ts";
import type { Blake3Pool } from "./blake3_pool.ts";

/** What a finished write produced. */
export interface StoredObject {
  /** BLAKE3 hex of the content: its name in the store. */
  key: string;
  size: number;
}

/** How a writer computes the store key: in the write path, or by a worker following the file. */
interface KeyHash {
  /** `chunk` was appended; the file now holds `total` bytes. */
  wrote(chunk: Uint8Array, total: number): void;
  /** The BLAKE3 hex of the `size` bytes written. */
  finish(size: number): Promise<string>;
  cancel(): void;
}

/** Objects at least this big get their key from a worker (when the store has a pool). */
const WORKER_MIN_BYTES = 1024 * 1024;

async function inlineKeyHash(): Promise<KeyHash> {
  const blake = await createBLAKE3();
  blake.init();
  return {
    wrote: (chunk) => blake.update(chunk),
    finish: () => Promise.resolve(blake.digest("hex")),
    cancel() {},
  };
}

/**
 * One object being written: bytes go to a temp file while the OCI digest is computed in the same
 * pass; the BLAKE3 store key is computed in the same pass too, or, for a big object in a store
 * with a {@link Blake3Pool}, by a worker that follows the file. Nothing is visible under a final
 * name before {@link CafsWriter.commit}.
 */
export class CafsWriter {
  #size = 0;
  #ociDigest: string | undefined;
  #closed = false;

  /** @internal Use {@link Cafs.writer}. */
  constructor(
    private readonly cafs: Cafs,
    private readonly temp: TempFile,
    private readonly key: KeyHash,
    private readonly sha: Hash,
    private readonly algorithm: Digest["algorithm"],
  ) {}

  /** The temp file's path: readers may follow the bytes written so far. */
  get path(): string {
    return this.temp.path;
  }

  /** Bytes written so far. */
  get size(): number {
    return this.#size;
  }

  /**
   * Hash a chunk and append it to the temp file. If the write fails (disk full) the chunk is
   * already hashed: go on with {@link CafsWriter.hashOnly} for the rest, then {@link abort}.
   */
  async write(chunk: Uint8Array): Promise<void> {
    this.sha.update(chunk);
    await this.temp.write(chunk);
    this.#size += chunk.length;
    this.key.wrote(chunk, this.#size);
  }

  /**
   * Compute the OCI digest of a chunk without storing it (the store could not take the bytes;
   * the writer can then only be aborted, so the store key is not needed).
   */
  hashOnly(chunk: Uint8Array): void {
    this.sha.update(chunk);
  }

  /** The OCI digest (`algorithm:hex`) of everything written. Call once writing is done. */
  ociDigest(): string {
    this.#ociDigest ??= `${this.algorithm}:${this.sha.digest("hex")}`;
    return this.#ociDigest;
  }

  /**
   * fsync, close and rename into place. If identical content is already stored, the temp file
   * is dropped instead (dedupe). Returns the store key and size.
   */
  async commit(): Promise<StoredObject> {
    const [key] = await Promise.all([this.key.finish(this.#size), this.temp.sync()]);
    await this.#close();
    await this.cafs.adopt(this.temp.path, key, this.#size);
    return { key, size: this.#size };
  }

  /** Close and remove the temp file; nothing is stored. Safe to call more than once. */
  async abort(): Promise<void> {
    this.key.cancel();
    await this.#close().catch(() => {});
    await this.cafs.files.remove(this.temp.path);
  }

  async #close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.temp.close();
  }
}

/** The content-addressable store. */
export class Cafs {
  /** Where temp files live: same filesystem as the blobs, so rename is atomic. */
  readonly tmpDir: string;
  readonly blobDir: string;

  /**
   * `pool`: worker threads that compute the keys of big objects off the calling thread (the
   * service passes one; without it every key is computed in the write path).
   */
  constructor(readonly files: Files, readonly root: string, private readonly pool?: Blake3Pool) {
    this.tmpDir = join(root, "tmp");
    this.blobDir = join(root, "blobs");
  }

  /** Create the folders and clear temp files a previous run left behind. */
  async init(): Promise<void> {
    await this.files.mkdir(this.blobDir);
    await this.files.mkdir(this.tmpDir);
    for (const name of await this.files.list(this.tmpDir)) {
      await this.files.remove(join(this.tmpDir, name));
    }
  }

  /** The path of the object with this key. */
  pathOf(key: string): string {
    if (!/^[0-9a-f]{64}$/.test(key)) throw new Error(`not a store key: ${key}`);
    return join(this.blobDir, key.slice(0, 2), key);
  }

  /**
   * Start writing a new object; `algorithm` is the OCI digest computed alongside. `expectedSize`
   * (when known) lets a big object's key be computed by a worker.
   */
  async writer(algorithm: Digest["algorithm"] = "sha256", expectedSize?: number): Promise<CafsWriter> {
    const temp = await this.files.createTemp(this.tmpDir, "obj");
    const key = this.pool && (expectedSize ?? 0) >= WORKER_MIN_BYTES ? this.#follow(temp.path) : await inlineKeyHash();
    return new CafsWriter(this, temp, key, digester(algorithm), algorithm);
  }

  #follow(path: string): KeyHash {
    const f = this.pool!.follow(path);
    return { wrote: (_chunk, total) => f.advance(total), finish: (size) => f.finish(size), cancel: () => f.cancel() };
  }

  /** Store a small object held in memory (a manifest). */
  async putBytes(bytes: Uint8Array): Promise<StoredObject> {
    const w = await this.writer();
    try {
      await w.write(bytes);
      return await w.commit();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  /**
   * @internal Move a finished temp file to the final name for `key`, or drop it when an intact
   * copy is there already. A file of the wrong size under that name (damaged) is replaced.
   */
  async adopt(tempPath: string, key: string, size: number): Promise<void> {
    const dest = this.pathOf(key);
    if ((await this.files.stat(dest))?.size === size) {
      await this.files.remove(tempPath);
      return;
    }
    const dir = join(this.blobDir, key.slice(0, 2));
    await this.files.mkdir(dir);
    await this.files.rename(tempPath, dest);
    // The rename is durable only once the directory is: index rows follow, and must not outlive the file.
    await this.files.syncDir(dir);
  }

  /** Size of a stored object, or null when it is not there. */
  async size(key: string): Promise<number | null> {
    const s = await this.files.stat(this.pathOf(key));
    return s?.isFile ? s.size : null;
  }

  /** A response body of bytes `start..end` (inclusive). */
  body(key: string, start: number, end: number): Promise<BodyInit> {
    return this.files.body(this.pathOf(key), start, end);
  }

  /** Read a whole (small) object. */
  readAll(key: string): Promise<Uint8Array> {
    return this.files.readAll(this.pathOf(key));
  }

  /** Delete an object. */
  remove(key: string): Promise<void> {
    return this.files.remove(this.pathOf(key));
  }
}
