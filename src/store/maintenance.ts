/**
 * Store maintenance: reconcile the index with the files in the store. One routine serves
 * `ocicache fsck`, `ocicache gc`, the check at start and the periodic collection in `serve`.
 *
 * What it does, in order:
 *
 * 1. **Rows.** Every blob and manifest row whose file is missing, or whose file's size differs
 *    from the row, is dropped (with its repository links; tags are kept — a tag whose manifest
 *    is gone is fetched again). With `verify`, every indexed file is re-hashed: BLAKE3 against
 *    its name and the OCI digest against the row. A file whose bytes do not match its name is
 *    corrupt: its rows go and the file goes. A row whose digest does not match intact bytes is
 *    dropped (the file is then judged as an orphan).
 * 2. **Orphans** (files in `blobs/` with no row). An orphan older than the grace period whose
 *    BLAKE3 matches its name is intact content — a crash between "rename into place" and "write
 *    the row" leaves exactly that — and is re-indexed as a blob under its sha256 digest (content
 *    addressed: any repository asking that digest gets the right bytes). One whose bytes do not
 *    match is removed, as is anything that is not named like a store object. Orphans younger
 *    than the grace period are left alone: a download or a manifest write may be between its
 *    rename and its row.
 * 3. **Temp files** in `tmp/` older than a limit are removed (a running download writes its temp
 *    file continuously, so an old one is a leftover). At start `Cafs.init` clears all of `tmp/`.
 *
 * Safe while serving: a file with a row is never removed unless `verify` proves its bytes wrong;
 * a row is dropped only when its file is missing or has the wrong size (re-checked right before
 * the drop, and dropped only if it still names the same file); a file that was just committed is
 * intact, so even past the grace period it would be re-indexed, never removed. The worst a race
 * can leave is a row without a file, which the pull path already treats as a miss.
 * @module
 */
import { createBLAKE3 } from "hash-wasm";
import { join } from "node:path";
import { clearInterval, setInterval } from "node:timers";
import { digester } from "../oci/digest.ts";
import type { Logger } from "../log.ts";
import type { Cafs } from "./cafs.ts";

/** A blob or manifest row as maintenance sees it. */
export interface StoredRow {
  kind: "blob" | "manifest";
  digest: string;
  key: string;
  size: number;
}

/** What maintenance needs from the index (the `Index` class provides it). */
export interface MaintenanceIndex {
  /** Every blob and manifest row. */
  listObjects(): Promise<StoredRow[]>;
  /** Whether any blob or manifest row names this store key. */
  keyInUse(key: string): Promise<boolean>;
  /** Drop a row if it still names `key`; resolves to whether a row went. */
  dropObject(kind: StoredRow["kind"], digest: string, key: string): Promise<boolean>;
  /** Record an intact orphan as a blob (an existing row for the digest wins). */
  adoptBlob(row: { digest: string; key: string; size: number }, now?: number): Promise<boolean>;
}

/** Options for {@link reconcile}. */
export interface ReconcileOptions {
  /** Re-hash every indexed file (BLAKE3 vs its name, OCI digest vs its row). Default false. */
  verify?: boolean;
  /** Hash orphans to re-index the intact ones; false: remove every orphan. Default true. */
  rehash?: boolean;
  /** Orphans modified less than this long before `now` are left alone. Default 10 min. */
  orphanGraceMs?: number;
  /** Temp files modified this long before `now` are removed; Infinity leaves tmp alone. Default 1 h. */
  tmpOlderThanMs?: number;
  /** Report what would be done; change nothing. */
  dryRun?: boolean;
  /** The reference time for the two ages (ms since epoch). Default: when the run starts. */
  now?: number;
  /** Stop early (the service is closing); the report covers what was done. */
  signal?: AbortSignal;
  /** Told of each row dropped (e.g. so the size bound forgets the blob). */
  onRowDropped?: (row: StoredRow) => void;
  /** Told of each orphan re-indexed as a blob (e.g. so the size bound admits it). */
  onReindexed?: (row: { digest: string; key: string; size: number }) => void;
}

/** One thing reconcile found (and, unless a dry run, did). */
export interface ReconcileAction {
  action: "row-dropped" | "orphan-removed" | "orphan-reindexed" | "corrupt-removed" | "tmp-removed";
  path?: string;
  digest?: string;
  key?: string;
  reason: string;
}

/** What a reconcile run found and did. */
export interface ReconcileReport {
  /** Nothing needed repair and nothing failed. */
  consistent: boolean;
  dryRun: boolean;
  /** Index rows dropped: file missing, wrong size, or (verify) wrong bytes. */
  rowsDropped: number;
  /** Files with no row removed that were not proven corrupt: stray names, or `rehash: false`. */
  orphansRemoved: number;
  /** Intact files with no row, indexed as blobs under their sha256. */
  orphansReindexed: number;
  /** Files removed because their bytes do not hash to their name (orphans, or indexed with verify). */
  corruptRemoved: number;
  tmpRemoved: number;
  /** Bytes of every file removed. */
  bytesReclaimed: number;
  /** Files with no row left alone because they are younger than the grace period. */
  youngOrphansKept: number;
  /** Temp files left alone because they are younger than the limit (a download may be writing them). */
  tmpKept: number;
  checked: { rows: number; files: number; tmpFiles: number; verified: number };
  /** What was found, at most {@link MAX_ACTIONS} entries. */
  actions: ReconcileAction[];
  /** Operations that failed (the run goes on past them). */
  errors: string[];
  /** Stopped early by the signal. */
  aborted: boolean;
  durationMs: number;
}

/** Default grace period for files with no row. */
export const ORPHAN_GRACE_MS = 10 * 60_000;
/** Default age past which a temp file counts as a leftover. */
export const TMP_OLDER_THAN_MS = 60 * 60_000;
/** Cap on {@link ReconcileReport.actions}. */
export const MAX_ACTIONS = 1000;

const KEY = /^[0-9a-f]{64}$/;

/** A file that went away while we looked at it (eviction, or another gc): not an error. */
function isGone(e: unknown): boolean {
  return (e as { code?: string })?.code === "ENOENT" || (e as Error)?.name === "NotFound";
}
const HASH_CHUNK = 1024 * 1024;

/** BLAKE3 and OCI digests of a file, read in chunks. */
export async function hashFile(
  cafs: Cafs,
  path: string,
  algorithms: ("sha256" | "sha512")[] = ["sha256"],
): Promise<{ blake3: string; digests: Record<string, string>; size: number }> {
  const blake = await createBLAKE3();
  blake.init();
  const shas = algorithms.map((a) => [a, digester(a)] as const);
  const reader = await cafs.files.openReader(path);
  let size = 0;
  try {
    const buf = new Uint8Array(HASH_CHUNK);
    while (true) {
      const n = await reader.read(buf, size);
      if (n <= 0) break;
      const chunk = buf.subarray(0, n);
      blake.update(chunk);
      for (const [, h] of shas) h.update(chunk);
      size += n;
    }
  } finally {
    await reader.close().catch(() => {});
  }
  const digests: Record<string, string> = {};
  for (const [a, h] of shas) digests[a] = `${a}:${h.digest("hex")}`;
  return { blake3: blake.digest("hex"), digests, size };
}

/** Reconcile the index and the store; see the module documentation for the rules. */
export async function reconcile(index: MaintenanceIndex, cafs: Cafs, opts: ReconcileOptions = {}): Promise<ReconcileReport> {
  const started = performance.now();
  const now = opts.now ?? Date.now();
  const dryRun = opts.dryRun ?? false;
  const rehash = opts.rehash ?? true;
  const orphanCutoff = now - (opts.orphanGraceMs ?? ORPHAN_GRACE_MS);
  const tmpLimit = opts.tmpOlderThanMs ?? TMP_OLDER_THAN_MS;
  const files = cafs.files;
  const r: ReconcileReport = {
    consistent: false,
    dryRun,
    rowsDropped: 0,
    orphansRemoved: 0,
    orphansReindexed: 0,
    corruptRemoved: 0,
    tmpRemoved: 0,
    bytesReclaimed: 0,
    youngOrphansKept: 0,
    tmpKept: 0,
    checked: { rows: 0, files: 0, tmpFiles: 0, verified: 0 },
    actions: [],
    errors: [],
    aborted: false,
    durationMs: 0,
  };
  const note = (a: ReconcileAction) => {
    if (r.actions.length < MAX_ACTIONS) r.actions.push(a);
  };
  const fail = (what: string, e: unknown) => r.errors.push(`${what}: ${(e as Error)?.message ?? e}`);
  const stop = () => {
    if (opts.signal?.aborted) r.aborted = true;
    return r.aborted;
  };
  const removeFile = async (path: string, size: number) => {
    if (!dryRun) await files.remove(path);
    r.bytesReclaimed += size;
  };
  const dropRow = async (row: StoredRow, reason: string) => {
    if (!dryRun && !(await index.dropObject(row.kind, row.digest, row.key))) return;
    if (!dryRun) opts.onRowDropped?.(row);
    r.rowsDropped++;
    note({ action: "row-dropped", digest: row.digest, key: row.key, reason: `${row.kind} ${reason}` });
  };

  // 1. Rows: each file once, however many rows name it.
  const referenced = new Set<string>();
  let rows: StoredRow[] = [];
  try {
    rows = await index.listObjects();
  } catch (e) {
    fail("listing the index", e);
  }
  const byKey = new Map<string, StoredRow[]>();
  for (const row of rows) byKey.set(row.key, [...(byKey.get(row.key) ?? []), row]);
  for (const [key, group] of byKey) {
    if (stop()) break;
    r.checked.rows += group.length;
    try {
      if (!KEY.test(key)) {
        for (const row of group) await dropRow(row, "names no valid store key");
        continue;
      }
      const path = cafs.pathOf(key);
      const st = await files.stat(path);
      const fits = (row: StoredRow) => !!st?.isFile && st.size === row.size;
      let kept = group.filter(fits);
      for (const row of group.filter((x) => !fits(x))) {
        // Re-check right before the drop: the file may have just been put in place.
        const again = dryRun ? st : await files.stat(path);
        if (again?.isFile && again.size === row.size) {
          kept.push(row);
          continue;
        }
        await dropRow(row, again?.isFile ? `file is ${again.size} bytes, the index says ${row.size}` : "file is missing");
      }
      if (opts.verify && kept.length) {
        const algorithms = [...new Set(kept.map((x) => (x.digest.startsWith("sha512:") ? "sha512" : "sha256") as "sha256" | "sha512"))];
        const h = await hashFile(cafs, path, algorithms);
        r.checked.verified++;
        if (h.blake3 !== key) {
          for (const row of kept) await dropRow(row, `file's bytes hash to BLAKE3 ${h.blake3}, not its name`);
          await removeFile(path, h.size);
          r.corruptRemoved++;
          note({ action: "corrupt-removed", path, key, reason: "bytes do not match the name (verify)" });
          kept = [];
        } else {
          const good: StoredRow[] = [];
          for (const row of kept) {
            const alg = row.digest.startsWith("sha512:") ? "sha512" : "sha256";
            if (h.digests[alg] === row.digest) good.push(row);
            else await dropRow(row, `bytes hash to ${h.digests[alg]}, not the row's digest`);
          }
          kept = good;
        }
      }
      if (kept.length) referenced.add(key);
    } catch (e) {
      if (!isGone(e)) fail(`checking ${key}`, e); // gone while re-hashing: the next run sees why
      referenced.add(key); // unknown: never treat it as an orphan
    }
  }

  // 2. Files with no row.
  const dirs = stop() ? [] : await files.list(cafs.blobDir).catch((e) => (fail("listing blobs", e), [] as string[]));
  outer: for (const dir of dirs) {
    const dirPath = join(cafs.blobDir, dir);
    let names: string[];
    try {
      const st = await files.stat(dirPath);
      if (!st) continue;
      if (!st.isDirectory) {
        r.checked.files++;
        await judgeStray(dirPath, st.size, st.mtimeMs);
        continue;
      }
      if (!/^[0-9a-f]{2}$/.test(dir)) continue; // not ours to judge; leave it
      names = await files.list(dirPath);
    } catch (e) {
      fail(`listing ${dirPath}`, e);
      continue;
    }
    for (const name of names) {
      if (stop()) break outer;
      const path = join(dirPath, name);
      try {
        const st = await files.stat(path);
        if (!st || st.isDirectory) continue;
        r.checked.files++;
        const isKey = KEY.test(name) && name.startsWith(dir);
        if (isKey && referenced.has(name)) continue;
        if (!isKey) {
          await judgeStray(path, st.size, st.mtimeMs);
          continue;
        }
        if (st.mtimeMs >= orphanCutoff) {
          r.youngOrphansKept++;
          continue;
        }
        // A row may have arrived since the listing (a download that dedupes onto this file).
        if (!dryRun && (await index.keyInUse(name))) continue;
        if (!rehash) {
          await removeFile(path, st.size);
          r.orphansRemoved++;
          note({ action: "orphan-removed", path, key: name, reason: "no index row" });
          continue;
        }
        const h = await hashFile(cafs, path, ["sha256"]);
        if (h.blake3 === name) {
          const row = { digest: h.digests.sha256, key: name, size: h.size };
          if (!dryRun) {
            // Eviction drops a row, then removes the file: do not bring back a file on its way out.
            if (!(await files.stat(path))) continue;
            if (!(await index.adoptBlob(row, now))) continue; // a download indexed it meanwhile
            if (!(await files.stat(path))) {
              await index.dropObject("blob", row.digest, row.key);
              continue;
            }
            opts.onReindexed?.(row);
          }
          r.orphansReindexed++;
          note({ action: "orphan-reindexed", path, key: name, digest: h.digests.sha256, reason: "no index row; bytes intact" });
        } else {
          await removeFile(path, h.size);
          r.corruptRemoved++;
          note({ action: "corrupt-removed", path, key: name, reason: `no index row; bytes hash to BLAKE3 ${h.blake3}` });
        }
      } catch (e) {
        if (!isGone(e)) fail(`checking ${path}`, e);
      }
    }
  }

  async function judgeStray(path: string, size: number, mtimeMs: number) {
    if (mtimeMs >= orphanCutoff) {
      r.youngOrphansKept++;
      return;
    }
    await removeFile(path, size);
    r.orphansRemoved++;
    note({ action: "orphan-removed", path, reason: "not named like a store object" });
  }

  // 3. Temp files.
  if (Number.isFinite(tmpLimit) && !stop()) {
    const tmpCutoff = now - tmpLimit;
    const names = await files.list(cafs.tmpDir).catch((e) => (fail("listing tmp", e), [] as string[]));
    for (const name of names) {
      if (stop()) break;
      const path = join(cafs.tmpDir, name);
      try {
        const st = await files.stat(path);
        if (!st || st.isDirectory) continue;
        r.checked.tmpFiles++;
        if (st.mtimeMs >= tmpCutoff) {
          r.tmpKept++;
          continue;
        }
        await removeFile(path, st.size);
        r.tmpRemoved++;
        note({ action: "tmp-removed", path, reason: `temp file last written ${Math.round((now - st.mtimeMs) / 1000)} s before` });
      } catch (e) {
        fail(`checking ${path}`, e);
      }
    }
  }

  r.consistent = r.errors.length === 0 &&
    r.rowsDropped + r.orphansRemoved + r.orphansReindexed + r.corruptRemoved + r.tmpRemoved === 0;
  r.durationMs = Math.round(performance.now() - started);
  return r;
}

/** One line for people: what was found and done. */
export function summarize(r: ReconcileReport, name = "reconcile"): string {
  const done: string[] = [];
  const n = (count: number, what: string) => {
    if (count) done.push(`${count} ${what}`);
  };
  n(r.rowsDropped, "index rows dropped (file missing or wrong)");
  n(r.orphansReindexed, "orphan files re-indexed (intact)");
  n(r.orphansRemoved, "stray files removed");
  n(r.corruptRemoved, "corrupt files removed");
  n(r.tmpRemoved, "old temp files removed");
  const checked = `${r.checked.rows} rows, ${r.checked.files} files${r.checked.verified ? `, ${r.checked.verified} re-hashed` : ""}`;
  const kept: string[] = [];
  if (r.youngOrphansKept) kept.push(`${r.youngOrphansKept} unindexed files younger than the grace period left alone`);
  if (r.tmpKept) kept.push(`${r.tmpKept} recent temp files left alone`);
  const tail = kept.length ? `; ${kept.join(", ")}` : "";
  const aborted = r.aborted ? " (stopped early)" : "";
  if (r.errors.length) {
    return `${name}: ${r.errors.length} errors${done.length ? `; ${done.join(", ")}` : ""} (checked ${checked})${tail}${aborted}`;
  }
  if (!done.length) return `${name}: consistent (checked ${checked})${tail}${aborted}`;
  const verb = r.dryRun ? "would repair" : "repaired";
  const freed = r.bytesReclaimed ? `, ${r.bytesReclaimed} bytes ${r.dryRun ? "to reclaim" : "reclaimed"}` : "";
  return `${name}: ${verb}: ${done.join(", ")}${freed} (checked ${checked})${tail}${aborted}`;
}

/** Options for {@link StoreMaintenance}. */
export interface MaintenanceOptions {
  log: Logger;
  /** How often `serve` collects garbage; 0 turns the periodic run off. Default 30 min. */
  intervalMs?: number;
  orphanGraceMs?: number;
  tmpOlderThanMs?: number;
  onRowDropped?: ReconcileOptions["onRowDropped"];
  onReindexed?: ReconcileOptions["onReindexed"];
}

/**
 * Maintenance for a running service: the check at start (in the background) and periodic gc.
 * Runs never overlap; {@link StoreMaintenance.close} stops the timer and waits for a run to stop.
 */
export class StoreMaintenance {
  #chain: Promise<unknown> = Promise.resolve();
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #abort = new AbortController();
  /** The check started at open; null once closed before it ran. */
  startup: Promise<ReconcileReport | null> = Promise.resolve(null);

  constructor(private readonly index: MaintenanceIndex, private readonly cafs: Cafs, private readonly opts: MaintenanceOptions) {}

  /**
   * Start the check at start: files with no row last written before `startedAt` are judged at
   * once — nothing this process writes is older, so no grace period is needed. Temp files are
   * left to `Cafs.init`, which removed them all before serving began. Then start periodic gc.
   */
  start(startedAt: number): void {
    this.startup = this.#run("store check at start", { now: startedAt, orphanGraceMs: 0, tmpOlderThanMs: Infinity }, true);
    const every = this.opts.intervalMs ?? 30 * 60_000;
    if (every > 0) {
      this.#timer = setInterval(() => void this.gc().catch(() => {}), every);
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  /** Collect garbage now (what the periodic run does); safe while serving. */
  gc(opts: Omit<ReconcileOptions, "signal"> = {}): Promise<ReconcileReport | null> {
    return this.#run("store gc", {
      orphanGraceMs: this.opts.orphanGraceMs ?? ORPHAN_GRACE_MS,
      tmpOlderThanMs: this.opts.tmpOlderThanMs ?? TMP_OLDER_THAN_MS,
      ...opts,
    }, false);
  }

  #run(msg: string, opts: ReconcileOptions, always: boolean): Promise<ReconcileReport | null> {
    const run = this.#chain.then(async () => {
      if (this.#abort.signal.aborted) return null;
      try {
        const report = await reconcile(this.index, this.cafs, {
          onRowDropped: this.opts.onRowDropped,
          onReindexed: this.opts.onReindexed,
          ...opts,
          signal: this.#abort.signal,
        });
        const fields = { ...report, actions: report.actions.slice(0, 20), summary: summarize(report, msg) };
        if (report.errors.length) this.opts.log.warn(msg, fields);
        else if (always || !report.consistent) this.opts.log.info(msg, fields);
        else this.opts.log.debug(msg, fields);
        return report;
      } catch (e) {
        this.opts.log.error(`${msg} failed`, { error: (e as Error)?.message ?? String(e) });
        throw e;
      }
    });
    this.#chain = run.catch(() => {});
    return run;
  }

  /** Stop the timer and any run in progress (it stops between files); resolves when it has. */
  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#abort.abort();
    await this.#chain;
  }
}
