/**
 * The index: what the cache holds (blobs, manifests), which tag points where and when that was
 * last checked, and which repositories an object was pulled through. Rows are written only after
 * their file is in place in the store.
 * @module
 */
import type { Client, InValue } from "@libsql/client";

/** A stored blob. */
export interface BlobRow {
  digest: string;
  key: string;
  size: number;
}

/** A stored manifest. */
export interface ManifestRow extends BlobRow {
  mediaType: string;
}

/** Where a tag points and when the upstream last confirmed it (ms since epoch). */
export interface TagRow {
  digest: string;
  checkedAt: number;
}

/** The repository an object was pulled through. */
export interface RepoRef {
  registry: string;
  repository: string;
}

/** One cached image (repository) for listings. */
export interface ImageInfo extends RepoRef {
  tags: { tag: string; digest: string; checkedAt: number }[];
  /** Objects pulled through this repository. */
  objects: number;
  /** Bytes of those objects. */
  bytes: number;
  /** When something was last pulled through it (ms since epoch). */
  lastPulled: number;
}

/** The index API over libSQL. */
export class Index {
  constructor(private readonly db: Client) {}

  async #one(sql: string, args: InValue[]) {
    return (await this.db.execute({ sql, args })).rows[0];
  }

  /** The blob with this digest, or null. */
  async getBlob(digest: string): Promise<BlobRow | null> {
    const r = await this.#one("SELECT key, size FROM blobs WHERE digest = ?", [digest]);
    return r ? { digest, key: String(r.key), size: Number(r.size) } : null;
  }

  /** The manifest with this digest, or null. */
  async getManifest(digest: string): Promise<ManifestRow | null> {
    const r = await this.#one("SELECT key, size, media_type FROM manifests WHERE digest = ?", [digest]);
    return r ? { digest, key: String(r.key), size: Number(r.size), mediaType: String(r.media_type) } : null;
  }

  /** Where a tag points, or null when the cache has never resolved it. */
  async getTagDigest(registry: string, repository: string, tag: string): Promise<TagRow | null> {
    const r = await this.#one(
      "SELECT digest, checked_at FROM tags WHERE registry = ? AND repository = ? AND tag = ?",
      [registry, repository, tag],
    );
    return r ? { digest: String(r.digest), checkedAt: Number(r.checked_at) } : null;
  }

  /** Point a tag at a digest, confirmed by the upstream at `now`. */
  async setTagDigest(registry: string, repository: string, tag: string, digest: string, now = Date.now()) {
    await this.db.execute({
      sql: `INSERT INTO tags (registry, repository, tag, digest, checked_at) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (registry, repository, tag) DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at`,
      args: [registry, repository, tag, digest, now],
    });
  }

  /** The upstream confirmed the tag still points where it did. */
  async refreshTag(registry: string, repository: string, tag: string, now = Date.now()) {
    await this.db.execute({
      sql: "UPDATE tags SET checked_at = ? WHERE registry = ? AND repository = ? AND tag = ?",
      args: [now, registry, repository, tag],
    });
  }

  /** Forget a tag (the upstream says it no longer exists). */
  async deleteTag(registry: string, repository: string, tag: string) {
    await this.db.execute({
      sql: "DELETE FROM tags WHERE registry = ? AND repository = ? AND tag = ?",
      args: [registry, repository, tag],
    });
  }

  /** Tags known for a repository, sorted as the distribution registry sorts them (lexically). */
  async listTags(registry: string, repository: string): Promise<string[]> {
    const rs = await this.db.execute({
      sql: "SELECT tag FROM tags WHERE registry = ? AND repository = ? ORDER BY tag",
      args: [registry, repository],
    });
    return rs.rows.map((r) => String(r.tag));
  }

  /** Record a stored blob (its file is already in place) and the repository it came through. */
  async putBlob(row: BlobRow, via: RepoRef, now = Date.now()) {
    await this.db.batch([
      {
        sql: "INSERT INTO blobs (digest, key, size, stored_at) VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET key = excluded.key, size = excluded.size",
        args: [row.digest, row.key, row.size, now],
      },
      repoObject(via, row.digest, "blob", now),
    ], "write");
  }

  /** Record a stored manifest (its file is already in place) and the repository it came through. */
  async putManifest(row: ManifestRow, via: RepoRef, now = Date.now()) {
    await this.db.batch([
      {
        sql: "INSERT INTO manifests (digest, key, size, media_type, stored_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET key = excluded.key, size = excluded.size, media_type = excluded.media_type",
        args: [row.digest, row.key, row.size, row.mediaType, now],
      },
      repoObject(via, row.digest, "manifest", now),
    ], "write");
  }

  /** Every repository that has something cached, with its tags and sizes. */
  async listImages(): Promise<ImageInfo[]> {
    const objs = await this.db.execute(
      `SELECT o.registry, o.repository, count(*) AS objects, max(o.last_pulled) AS last_pulled,
              coalesce(sum(coalesce(b.size, m.size, 0)), 0) AS bytes
         FROM repo_objects o
         LEFT JOIN blobs b ON o.kind = 'blob' AND b.digest = o.digest
         LEFT JOIN manifests m ON o.kind = 'manifest' AND m.digest = o.digest
        GROUP BY o.registry, o.repository ORDER BY o.registry, o.repository`,
    );
    const tags = await this.db.execute(
      "SELECT registry, repository, tag, digest, checked_at FROM tags ORDER BY registry, repository, tag",
    );
    const byRepo = new Map<string, ImageInfo>();
    for (const r of objs.rows) {
      const info: ImageInfo = {
        registry: String(r.registry),
        repository: String(r.repository),
        tags: [],
        objects: Number(r.objects),
        bytes: Number(r.bytes),
        lastPulled: Number(r.last_pulled),
      };
      byRepo.set(`${info.registry}\n${info.repository}`, info);
    }
    for (const r of tags.rows) {
      const info = byRepo.get(`${r.registry}\n${r.repository}`);
      info?.tags.push({ tag: String(r.tag), digest: String(r.digest), checkedAt: Number(r.checked_at) });
    }
    return [...byRepo.values()];
  }

  /** Objects and bytes held, blobs and manifests. */
  async stats(): Promise<{ blobs: number; blobBytes: number; manifests: number; manifestBytes: number }> {
    const r = await this.#one(
      `SELECT (SELECT count(*) FROM blobs) AS b, (SELECT coalesce(sum(size), 0) FROM blobs) AS bb,
              (SELECT count(*) FROM manifests) AS m, (SELECT coalesce(sum(size), 0) FROM manifests) AS mb`,
      [],
    );
    return { blobs: Number(r.b), blobBytes: Number(r.bb), manifests: Number(r.m), manifestBytes: Number(r.mb) };
  }

  /** Per registry: repositories, distinct objects held and their bytes. */
  async usageByRegistry(): Promise<{ registry: string; repositories: number; objects: number; bytes: number }[]> {
    const rs = await this.db.execute(
      `SELECT x.registry AS registry, count(*) AS objects, coalesce(sum(x.size), 0) AS bytes,
              (SELECT count(DISTINCT r.repository) FROM repo_objects r WHERE r.registry = x.registry) AS repos
         FROM (SELECT o.registry, o.digest, max(coalesce(b.size, m.size)) AS size
                 FROM repo_objects o
                 LEFT JOIN blobs b ON b.digest = o.digest
                 LEFT JOIN manifests m ON m.digest = o.digest
                WHERE b.digest IS NOT NULL OR m.digest IS NOT NULL
                GROUP BY o.registry, o.digest) x
        GROUP BY x.registry ORDER BY x.registry`,
    );
    return rs.rows.map((r) => ({
      registry: String(r.registry),
      repositories: Number(r.repos),
      objects: Number(r.objects),
      bytes: Number(r.bytes),
    }));
  }

  /** The persisted eviction queue rows (S3-FIFO state), in no particular order. */
  async evictionRows(): Promise<{ key: string; size: number; queue: string; freq: number; seq: number }[]> {
    const rs = await this.db.execute("SELECT key, size, queue, freq, seq FROM eviction_queue");
    return rs.rows.map((r) => ({ key: String(r.key), size: Number(r.size), queue: String(r.queue), freq: Number(r.freq), seq: Number(r.seq) }));
  }

  /** Apply eviction queue row changes in one transaction; `replace` first empties the table. */
  async writeEvictionRows(
    puts: { key: string; size: number; queue: string; freq: number; seq: number }[],
    deletes: string[],
    replace = false,
  ): Promise<void> {
    const stmts = [
      ...(replace ? [{ sql: "DELETE FROM eviction_queue", args: [] }] : []),
      ...deletes.map((key) => ({ sql: "DELETE FROM eviction_queue WHERE key = ?", args: [key] })),
      ...puts.map((e) => ({
        sql: `INSERT INTO eviction_queue (key, size, queue, freq, seq) VALUES (?, ?, ?, ?, ?)
              ON CONFLICT (key) DO UPDATE SET size = excluded.size, queue = excluded.queue, freq = excluded.freq, seq = excluded.seq`,
        args: [e.key, e.size, e.queue, e.freq, e.seq],
      })),
    ];
    if (stmts.length) await this.db.batch(stmts, "write");
  }

  /** Bytes and entries per eviction queue (for `du`). */
  async evictionQueues(): Promise<Record<string, { count: number; bytes: number }>> {
    const rs = await this.db.execute("SELECT queue, count(*) AS n, coalesce(sum(size), 0) AS b FROM eviction_queue GROUP BY queue");
    return Object.fromEntries(rs.rows.map((r) => [String(r.queue), { count: Number(r.n), bytes: Number(r.b) }]));
  }

  /** Whether this repository is known (pulled through, or confirmed upstream) to have this digest. */
  async hasRepoObject(registry: string, repository: string, digest: string): Promise<boolean> {
    return Boolean(await this.#one(
      "SELECT 1 AS x FROM repo_objects WHERE registry = ? AND repository = ? AND digest = ?",
      [registry, repository, digest],
    ));
  }

  /** Remember that the upstream confirmed this repository has this digest. */
  async linkRepoObject(via: RepoRef, digest: string, kind: "blob" | "manifest", now = Date.now()): Promise<void> {
    await this.db.execute(repoObject(via, digest, kind, now));
  }

  /** Record pulls (batched by the caller): `last_pulled` only moves forward. */
  async touch(pulls: { registry: string; repository: string; digest: string; at: number }[]): Promise<void> {
    if (!pulls.length) return;
    await this.db.batch(pulls.map((p) => ({
      sql: "UPDATE repo_objects SET last_pulled = ? WHERE registry = ? AND repository = ? AND digest = ? AND last_pulled < ?",
      args: [p.at, p.registry, p.repository, p.digest, p.at],
    })), "write");
  }

  /** Manifests nobody has pulled (or that were stored) before `before` (ms since epoch). */
  async manifestsNotPulledSince(before: number): Promise<{ digest: string; key: string; size: number }[]> {
    const rs = await this.db.execute({
      sql: `SELECT m.digest, m.key, m.size FROM manifests m
             WHERE max(m.stored_at, coalesce((SELECT max(o.last_pulled) FROM repo_objects o WHERE o.digest = m.digest), 0)) < ?`,
      args: [before],
    });
    return rs.rows.map((r) => ({ digest: String(r.digest), key: String(r.key), size: Number(r.size) }));
  }

  /** Forget every tag that points at this digest. */
  async deleteTagsTo(digest: string): Promise<void> {
    await this.db.execute({ sql: "DELETE FROM tags WHERE digest = ?", args: [digest] });
  }

  /** Close the connection. */
  close(): void {
    this.db.close();
  }

  /** A cheap query that proves the index answers. */
  async ping(): Promise<void> {
    await this.db.execute("SELECT 1");
  }

  // --- Store maintenance (src/store/maintenance.ts) ---

  /** Every blob and manifest row: digest, store key, size. */
  async listObjects(): Promise<(BlobRow & { kind: "blob" | "manifest" })[]> {
    const rs = await this.db.execute(
      `SELECT 'blob' AS kind, digest, key, size FROM blobs
       UNION ALL SELECT 'manifest' AS kind, digest, key, size FROM manifests`,
    );
    return rs.rows.map((r) => ({
      kind: r.kind === "manifest" ? "manifest" as const : "blob" as const,
      digest: String(r.digest),
      key: String(r.key),
      size: Number(r.size),
    }));
  }

  /** Whether any blob or manifest row names this store key. */
  async keyInUse(key: string): Promise<boolean> {
    const r = await this.#one(
      "SELECT EXISTS (SELECT 1 FROM blobs WHERE key = ?) OR EXISTS (SELECT 1 FROM manifests WHERE key = ?) AS used",
      [key, key],
    );
    return Number(r?.used) === 1;
  }

  /**
   * Drop a blob or manifest row, only if it still names `key` (a row rewritten since is kept),
   * and the repository links of a digest nothing holds any more. Tags stay: a tag whose manifest
   * is gone is fetched again. Resolves to whether a row went.
   */
  async dropObject(kind: "blob" | "manifest", digest: string, key: string): Promise<boolean> {
    const table = kind === "manifest" ? "manifests" : "blobs";
    const [del] = await this.db.batch([
      { sql: `DELETE FROM ${table} WHERE digest = ? AND key = ?`, args: [digest, key] },
      {
        sql: `DELETE FROM repo_objects WHERE digest = ?
                AND NOT EXISTS (SELECT 1 FROM blobs WHERE digest = ?)
                AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?)`,
        args: [digest, digest, digest],
      },
    ], "write");
    return del.rowsAffected > 0;
  }

  /**
   * Record a blob found intact in the store without a row (a crash between its rename and its
   * row). No repository link: it was pulled through an unknown one. An existing row wins.
   */
  async adoptBlob(row: BlobRow, now = Date.now()): Promise<boolean> {
    const rs = await this.db.execute({
      sql: "INSERT INTO blobs (digest, key, size, stored_at) VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
      args: [row.digest, row.key, row.size, now],
    });
    return rs.rowsAffected > 0;
  }
}

function repoObject(via: RepoRef, digest: string, kind: string, now: number) {
  return {
    sql: `INSERT INTO repo_objects (registry, repository, digest, kind, last_pulled) VALUES (?, ?, ?, ?, ?)
          ON CONFLICT (registry, repository, digest) DO UPDATE SET last_pulled = excluded.last_pulled`,
    args: [via.registry, via.repository, digest, kind, now],
  };
}
