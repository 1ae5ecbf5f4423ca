/**
 * `ocicache ls` and `ocicache du`: what the store holds, read from the index without a server.
 * @module
 */
import { existsSync } from "node:fs";
import type { Config } from "../config.ts";
import { openDb } from "../index/db.ts";
import { type ImageInfo, Index } from "../index/oci_index.ts";
import { formatAge, formatBytes, table } from "./format.ts";

/**
 * Open the index a config names (the same file a running `serve` uses; WAL lets both read).
 * A file index that does not exist is an error naming the storage, not a new empty cache.
 */
export async function openIndex(config: Config): Promise<Index> {
  if (config.indexUrl.startsWith("file:") && !existsSync(config.indexUrl.slice("file:".length))) {
    throw new Error(`no cache at ${config.storage} (no ${config.indexUrl.slice("file:".length)}); is --storage right?`);
  }
  return new Index(await openDb(config.indexUrl, config.indexAuthToken));
}

/** The `ls` listing: one row per cached repository. */
export function renderImages(images: ImageInfo[], now = Date.now()): string {
  if (!images.length) return "the cache holds no images yet";
  return table(
    ["REGISTRY", "REPOSITORY", "TAGS", "SIZE", "LAST PULLED"],
    images.map((i) => [
      i.registry,
      i.repository,
      i.tags.map((t) => t.tag).join(",") || "-",
      formatBytes(i.bytes),
      i.lastPulled ? formatAge(i.lastPulled, now) : "-",
    ]),
  );
}

/** Usage per registry and for the whole store. */
export interface DiskUsage {
  registries: { registry: string; repositories: number; objects: number; bytes: number }[];
  total: { blobs: number; blobBytes: number; manifests: number; manifestBytes: number };
  /** S3-FIFO queues of the size bound (empty when the store was never bounded). */
  queues: Record<string, { count: number; bytes: number }>;
}

/** Compute {@link DiskUsage}. Content shared by registries counts once in the total. */
export async function diskUsage(index: Index): Promise<DiskUsage> {
  return { registries: await index.usageByRegistry(), total: await index.stats(), queues: await index.evictionQueues() };
}

/** The `du` report. */
export function renderDiskUsage(du: DiskUsage): string {
  const rows = du.registries.map((r) => [r.registry, String(r.repositories), String(r.objects), formatBytes(r.bytes)]);
  const t = du.total;
  rows.push(["TOTAL (deduplicated)", "-", String(t.blobs + t.manifests), formatBytes(t.blobBytes + t.manifestBytes)]);
  const out = table(["REGISTRY", "REPOSITORIES", "OBJECTS", "BYTES"], rows);
  const queues = Object.entries(du.queues);
  if (!queues.length) return out;
  const order = ["small", "main", "ghost"];
  queues.sort(([a], [b]) => order.indexOf(a) - order.indexOf(b));
  return out + "\n\n" + table(
    ["S3-FIFO QUEUE", "BLOBS", "BYTES"],
    queues.map(([q, v]) => [q === "ghost" ? "ghost (remembered, not stored)" : q, String(v.count), formatBytes(v.bytes)]),
  );
}
