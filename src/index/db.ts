/**
 * The libSQL connection and versioned schema migrations.
 * @module
 */
import { type Client, createClient } from "@libsql/client";

/** Schema migrations, applied in order; the index of each is its version minus one. Never edit one that shipped. */
export const MIGRATIONS: readonly string[][] = [
  [
    `CREATE TABLE blobs (
       digest TEXT PRIMARY KEY,
       key TEXT NOT NULL,
       size INTEGER NOT NULL,
       stored_at INTEGER NOT NULL)`,
    `CREATE TABLE manifests (
       digest TEXT PRIMARY KEY,
       key TEXT NOT NULL,
       size INTEGER NOT NULL,
       media_type TEXT NOT NULL,
       stored_at INTEGER NOT NULL)`,
    `CREATE TABLE tags (
       registry TEXT NOT NULL,
       repository TEXT NOT NULL,
       tag TEXT NOT NULL,
       digest TEXT NOT NULL,
       checked_at INTEGER NOT NULL,
       PRIMARY KEY (registry, repository, tag))`,
    `CREATE TABLE repo_objects (
       registry TEXT NOT NULL,
       repository TEXT NOT NULL,
       digest TEXT NOT NULL,
       kind TEXT NOT NULL,
       last_pulled INTEGER NOT NULL,
       PRIMARY KEY (registry, repository, digest))`,
    `CREATE INDEX repo_objects_digest ON repo_objects (digest)`,
  ],
  [
    // S3-FIFO queue state of the blob size bound, one row per resident or ghost blob.
    `CREATE TABLE eviction_queue (
       key TEXT PRIMARY KEY,
       size INTEGER NOT NULL,
       queue TEXT NOT NULL,
       freq INTEGER NOT NULL,
       seq INTEGER NOT NULL)`,
  ],
];

/**
 * Open the index database. `url` is a libSQL URL: `file:/path/index.db` (the default, under the
 * storage folder), `:memory:`, or a `libsql://` / `http://` server.
 */
export async function openDb(url: string, authToken?: string): Promise<Client> {
  const db = createClient({ url, authToken });
  if (url.startsWith("file:")) {
    await db.execute("PRAGMA journal_mode = WAL");
    await db.execute("PRAGMA synchronous = NORMAL");
    await db.execute("PRAGMA busy_timeout = 5000");
  }
  await migrate(db);
  return db;
}

/** Bring the schema to the newest version. Returns the version reached. */
export async function migrate(db: Client): Promise<number> {
  await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
  const row = (await db.execute("SELECT max(version) AS v FROM schema_version")).rows[0];
  let version = Number(row?.v ?? 0);
  if (version > MIGRATIONS.length) {
    throw new Error(
      `index schema version ${version} is newer than this ocicache knows (${MIGRATIONS.length}); upgrade ocicache`,
    );
  }
  for (; version < MIGRATIONS.length; version++) {
    await db.batch(
      [...MIGRATIONS[version], { sql: "INSERT INTO schema_version (version) VALUES (?)", args: [version + 1] }],
      "write",
    );
  }
  return version;
}
