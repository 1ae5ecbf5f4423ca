/**
 * When things were last pulled, and `--max-manifest-age`: manifests (and the tags that point at
 * them) nobody has pulled for longer than that are dropped from the cache.
 * @module
 */
import type { Index, RepoRef } from "../index/oci_index.ts";
import type { Logger } from "../log.ts";
import type { Cafs } from "../store/cafs.ts";

/**
 * Collects "pulled now" marks off the request path and writes them in one batch every few
 * seconds, so a hit costs a map update, not a database write.
 */
export class PullTracker {
  readonly #pending = new Map<string, { registry: string; repository: string; digest: string; at: number }>();
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly index: Index, private readonly log: Logger, intervalMs = 5_000) {
    this.#timer = setInterval(() => void this.flush(), intervalMs);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /** A cached object was served through this repository. */
  pulled(via: RepoRef, digest: string, at = Date.now()): void {
    this.#pending.set(`${via.registry}\n${via.repository}\n${digest}`, { ...via, digest, at });
  }

  /** Write the marks collected so far. */
  async flush(): Promise<void> {
    if (!this.#pending.size) return;
    const batch = [...this.#pending.values()];
    this.#pending.clear();
    try {
      await this.index.touch(batch);
    } catch (e) {
      this.log.warn("cannot record last-pulled times", { error: (e as Error).message });
    }
  }

  /** Flush and stop. */
  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}

/**
 * Drop manifests not pulled (nor stored) within `maxAgeMs`: their tags first, then the row, then
 * the file when no other row names the content. Returns what went.
 */
export async function expireManifests(
  index: Index,
  cafs: Cafs,
  maxAgeMs: number,
  now = Date.now(),
): Promise<{ manifests: number; bytes: number }> {
  let manifests = 0;
  let bytes = 0;
  for (const m of await index.manifestsNotPulledSince(now - maxAgeMs)) {
    await index.deleteTagsTo(m.digest);
    if (await index.dropObject("manifest", m.digest, m.key)) {
      manifests++;
      if (!(await index.keyInUse(m.key))) {
        await cafs.remove(m.key);
        bytes += m.size;
      }
    }
  }
  return { manifests, bytes };
}
