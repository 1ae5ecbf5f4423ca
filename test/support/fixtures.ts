/**
 * Hand-built OCI image layouts for tests (no external tools).
 *
 * Everything is deterministic from a seed: layers are real gzip-compressed
 * ustar archives filled with seeded pseudo-random bytes (so gzip cannot shrink
 * them away), configs are real image configs whose `rootfs.diff_ids` are the
 * sha256 of the uncompressed tars, and manifests / indexes are OCI v1.
 * Observed: Deno 2.9.6 and Bun 1.4.5 produce byte-identical gzip output, so a
 * seed gives the same digests under both runtimes.
 */
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { concat } from "../../src/download/window.ts";

/** OCI media types used by the fixtures. */
export const MEDIA = {
  index: "application/vnd.oci.image.index.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layer: "application/vnd.oci.image.layer.v1.tar+gzip",
} as const;

/** An OS/architecture pair, as in an OCI platform object. */
export interface Platform {
  os: string;
  architecture: string;
}

/** A content descriptor of one blob written into the layout. */
export interface BlobInfo {
  mediaType: string;
  /** `sha256:<hex>` */
  digest: string;
  size: number;
}

/** A layer blob, with the digest of its uncompressed tar. */
export interface LayerInfo extends BlobInfo {
  diffId: string;
}

/** One single-platform image inside a layout. */
export interface ImageInfo {
  platform: Platform;
  manifest: BlobInfo;
  config: BlobInfo;
  layers: LayerInfo[];
}

/** What a make*Layout call wrote. */
export interface LayoutInfo {
  /** The layout directory (usable as `oci:DIR:TAG`). */
  dir: string;
  /** The `org.opencontainers.image.ref.name` of the top entry in index.json. */
  tag: string;
  /** The descriptor index.json points at: the image index, or the single manifest. */
  top: BlobInfo;
  /** The image index blob, for multi-platform layouts only. */
  index?: BlobInfo;
  /** The images, in platform order. */
  images: ImageInfo[];
  /** Every blob in blobs/sha256, deduplicated (a shared layer appears once). */
  blobs: BlobInfo[];
}

/** Options for {@link makeImageLayout}. */
export interface ImageLayoutOptions {
  seed: string;
  /** Random payload bytes per layer, e.g. `[65536, 262144]`. */
  layerSizes: number[];
  /** Default linux/amd64. */
  platform?: Platform;
  /** Ref name in index.json; default "latest". */
  tag?: string;
}

/** Options for {@link makeIndexLayout}. */
export interface IndexLayoutOptions {
  seed: string;
  /** One image per platform. */
  platforms: Platform[];
  /** Per-platform (distinct) layer payload sizes. */
  layerSizes: number[];
  /** Size of the layer shared by every platform (first layer); default 65536, 0 = none. */
  sharedLayerSize?: number;
  /** Ref name in index.json; default "latest". */
  tag?: string;
}

/** Fixed timestamp so configs are reproducible. */
const CREATED = "2024-01-01T00:00:00Z";
const MTIME = 1704067200;

/** sha256 of bytes as `sha256:<hex>`. */
export function sha256Digest(data: Uint8Array): string {
  return "sha256:" + createHash("sha256").update(data).digest("hex");
}

/** Deterministic pseudo-random bytes (xorshift128, seeded from sha256 of the seed). */
export function seededBytes(seed: string, size: number): Uint8Array {
  const h = createHash("sha256").update(seed).digest();
  const s = new Uint32Array([h.readUInt32LE(0), h.readUInt32LE(4), h.readUInt32LE(8), h.readUInt32LE(12) | 1]);
  const words = new Uint32Array(Math.ceil(size / 4));
  for (let i = 0; i < words.length; i++) {
    let t = s[3];
    const x = s[0];
    s[3] = s[2];
    s[2] = s[1];
    s[1] = x;
    t ^= t << 11;
    t ^= t >>> 8;
    s[0] = t ^ x ^ (x >>> 19);
    words[i] = s[0];
  }
  return new Uint8Array(words.buffer, 0, size);
}

/** A tar entry for {@link makeTar}: a directory (no data) or a regular file. */
export interface TarEntry {
  name: string;
  type: "dir" | "file";
  data?: Uint8Array;
}

function octal(buf: Uint8Array, off: number, len: number, value: number): void {
  const s = value.toString(8).padStart(len - 1, "0");
  for (let i = 0; i < len - 1; i++) buf[off + i] = s.charCodeAt(i);
  buf[off + len - 1] = 0;
}

function ascii(buf: Uint8Array, off: number, s: string): void {
  for (let i = 0; i < s.length; i++) buf[off + i] = s.charCodeAt(i);
}

/** Minimal ustar writer: fixed owner/mtime, names < 100 bytes, ends with two zero blocks. */
export function makeTar(entries: TarEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const data = e.type === "file" ? (e.data ?? new Uint8Array(0)) : new Uint8Array(0);
    const name = e.type === "dir" && !e.name.endsWith("/") ? e.name + "/" : e.name;
    if (name.length >= 100) throw new Error(`tar name too long: ${name}`);
    const h = new Uint8Array(512);
    ascii(h, 0, name);
    octal(h, 100, 8, e.type === "dir" ? 0o755 : 0o644);
    octal(h, 108, 8, 0);
    octal(h, 116, 8, 0);
    octal(h, 124, 12, data.length);
    octal(h, 136, 12, MTIME);
    h.fill(0x20, 148, 156); // checksum field counts as spaces
    h[156] = e.type === "dir" ? 0x35 : 0x30; // '5' dir, '0' file
    ascii(h, 257, "ustar\u000000");
    ascii(h, 265, "root");
    ascii(h, 297, "root");
    let sum = 0;
    for (const b of h) sum += b;
    octal(h, 148, 7, sum); // 6 digits + NUL, then the space already there
    parts.push(h, data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(1024));
  return concat(parts);
}

class BlobWriter {
  blobs = new Map<string, BlobInfo>();
  constructor(readonly dir: string) {}
  async put(mediaType: string, data: Uint8Array): Promise<BlobInfo> {
    const digest = sha256Digest(data);
    if (!this.blobs.has(digest)) {
      await writeFile(join(this.dir, "blobs", "sha256", digest.slice(7)), data);
      this.blobs.set(digest, { mediaType, digest, size: data.length });
    }
    return { mediaType, digest, size: data.length };
  }
}

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

async function writeLayer(w: BlobWriter, seed: string, size: number): Promise<LayerInfo> {
  const dirName = "ocicache-" + createHash("sha256").update(seed).digest("hex").slice(0, 12);
  const a = Math.ceil(size / 2);
  const tar = makeTar([
    { name: dirName, type: "dir" },
    { name: `${dirName}/seed.txt`, type: "file", data: new TextEncoder().encode(seed + "\n") },
    { name: `${dirName}/a.bin`, type: "file", data: seededBytes(seed + "/a", a) },
    { name: `${dirName}/b.bin`, type: "file", data: seededBytes(seed + "/b", size - a) },
  ]);
  const blob = await w.put(MEDIA.layer, gzipSync(tar, { level: 6 }));
  return { ...blob, diffId: sha256Digest(tar) };
}

async function writeImage(w: BlobWriter, seed: string, platform: Platform, layers: LayerInfo[]): Promise<ImageInfo> {
  const config = await w.put(
    MEDIA.config,
    enc({
      created: CREATED,
      architecture: platform.architecture,
      os: platform.os,
      config: { Env: ["PATH=/usr/bin:/bin"], Cmd: ["/bin/true"], Labels: { "ocicache.seed": seed } },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((_, i) => ({ created: CREATED, created_by: `ocicache fixture ${seed} layer ${i}` })),
    }),
  );
  const manifest = await w.put(
    MEDIA.manifest,
    enc({
      schemaVersion: 2,
      mediaType: MEDIA.manifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  return { platform, manifest, config, layers };
}

async function begin(dir: string): Promise<BlobWriter> {
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  await writeFile(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  return new BlobWriter(dir);
}

async function finish(w: BlobWriter, top: BlobInfo, tag: string, platform?: Platform): Promise<void> {
  const entry: Record<string, unknown> = { ...top, annotations: { "org.opencontainers.image.ref.name": tag } };
  if (platform) entry.platform = platform;
  await writeFile(join(w.dir, "index.json"), enc({ schemaVersion: 2, mediaType: MEDIA.index, manifests: [entry] }));
}

/**
 * Writes a single-platform OCI image (application/vnd.oci.image.manifest.v1+json)
 * as an OCI layout in `dir` (created if needed), tagged `tag` (default "latest").
 */
export async function makeImageLayout(dir: string, opts: ImageLayoutOptions): Promise<LayoutInfo> {
  const platform = opts.platform ?? { os: "linux", architecture: "amd64" };
  const tag = opts.tag ?? "latest";
  const w = await begin(dir);
  const layers: LayerInfo[] = [];
  for (const [i, size] of opts.layerSizes.entries()) layers.push(await writeLayer(w, `${opts.seed}/layer${i}`, size));
  const image = await writeImage(w, opts.seed, platform, layers);
  await finish(w, image.manifest, tag, platform);
  return { dir, tag, top: image.manifest, images: [image], blobs: [...w.blobs.values()] };
}

/**
 * Writes a multi-platform OCI image index as an OCI layout in `dir`: one image per
 * platform with distinct layers, plus one layer shared by all platforms (dedupe tests).
 */
export async function makeIndexLayout(dir: string, opts: IndexLayoutOptions): Promise<LayoutInfo> {
  const tag = opts.tag ?? "latest";
  const sharedSize = opts.sharedLayerSize ?? 65536;
  const w = await begin(dir);
  const shared = sharedSize > 0 ? [await writeLayer(w, `${opts.seed}/shared`, sharedSize)] : [];
  const images: ImageInfo[] = [];
  for (const p of opts.platforms) {
    const pseed = `${opts.seed}/${p.os}/${p.architecture}`;
    const layers = [...shared];
    for (const [i, size] of opts.layerSizes.entries()) layers.push(await writeLayer(w, `${pseed}/layer${i}`, size));
    images.push(await writeImage(w, pseed, p, layers));
  }
  const index = await w.put(
    MEDIA.index,
    enc({
      schemaVersion: 2,
      mediaType: MEDIA.index,
      manifests: images.map((im) => ({ ...im.manifest, platform: im.platform })),
    }),
  );
  await finish(w, index, tag);
  return { dir, tag, top: index, index, images, blobs: [...w.blobs.values()] };
}
