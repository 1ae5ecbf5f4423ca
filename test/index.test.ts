/** The libSQL index: migrations, persistence, every Index method. */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { migrate, MIGRATIONS, openDb } from "../src/index/db.ts";
import { Index } from "../src/index/oci_index.ts";

const d = (c: string) => `sha256:${c.repeat(64)}`;
const k = (c: string) => c.repeat(64);
const HUB = "docker.io";
const NGINX = { registry: HUB, repository: "library/nginx" };
const ALPINE = { registry: HUB, repository: "library/alpine" };
const GH = { registry: "ghcr.io", repository: "owner/app" };

describe("openDb", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "ocicache-index-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test(":memory: opens at the newest schema version", async () => {
    const db = await openDb(":memory:");
    try {
      const v = await db.execute("SELECT max(version) AS v FROM schema_version");
      assert.equal(Number(v.rows[0].v), MIGRATIONS.length);
      const tables = await db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
      const names = tables.rows.map((r) => String(r.name));
      for (const t of ["blobs", "manifests", "repo_objects", "schema_version", "tags"]) assert.ok(names.includes(t), t);
    } finally {
      db.close();
    }
  });

  test("a file: URL persists across reopen; migrations are idempotent", async () => {
    const url = `file:${join(dir, "index.db")}`;
    const db1 = await openDb(url);
    const ix1 = new Index(db1);
    await ix1.putBlob({ digest: d("1"), key: k("a"), size: 10 }, NGINX, 1000);
    await ix1.setTagDigest(HUB, "library/nginx", "latest", d("2"), 2000);
    ix1.close();

    const db2 = await openDb(url);
    try {
      const ix2 = new Index(db2);
      assert.deepEqual(await ix2.getBlob(d("1")), { digest: d("1"), key: k("a"), size: 10 });
      assert.deepEqual(await ix2.getTagDigest(HUB, "library/nginx", "latest"), { digest: d("2"), checkedAt: 2000 });
      const versions = await db2.execute("SELECT version FROM schema_version ORDER BY version");
      assert.deepEqual(versions.rows.map((r) => Number(r.version)), MIGRATIONS.map((_, i) => i + 1));
      // Running migrate again is a no-op.
      assert.equal(await migrate(db2), MIGRATIONS.length);
      assert.equal((await db2.execute("SELECT count(*) AS n FROM schema_version")).rows[0].n, MIGRATIONS.length);
      assert.deepEqual(await ix2.getBlob(d("1")), { digest: d("1"), key: k("a"), size: 10 });
    } finally {
      db2.close();
    }
  });

  test("a schema newer than this build is refused", async () => {
    const db = await openDb(":memory:");
    try {
      await db.execute({ sql: "INSERT INTO schema_version (version) VALUES (?)", args: [MIGRATIONS.length + 1] });
      await assert.rejects(migrate(db), /newer than this ocicache knows/);
    } finally {
      db.close();
    }
  });
});

describe("Index", () => {
  let ix: Index;
  before(async () => {
    ix = new Index(await openDb(":memory:"));
  });
  after(() => ix.close());

  test("ping", async () => {
    await ix.ping();
  });

  test("blobs: miss, put, get, re-put updates", async () => {
    assert.equal(await ix.getBlob(d("b")), null);
    await ix.putBlob({ digest: d("b"), key: k("1"), size: 1234 }, NGINX, 100);
    assert.deepEqual(await ix.getBlob(d("b")), { digest: d("b"), key: k("1"), size: 1234 });
    await ix.putBlob({ digest: d("b"), key: k("2"), size: 1234 }, ALPINE, 200);
    assert.deepEqual(await ix.getBlob(d("b")), { digest: d("b"), key: k("2"), size: 1234 });
    // blobs and manifests are separate namespaces
    assert.equal(await ix.getManifest(d("b")), null);
  });

  test("blob sizes beyond 32 bits survive", async () => {
    const big = 5 * 1024 ** 3 + 7;
    await ix.putBlob({ digest: d("f"), key: k("f"), size: big }, { registry: "x", repository: "big" }, 1);
    assert.equal((await ix.getBlob(d("f")))!.size, big);
  });

  test("manifests: miss, put, get with media type, update", async () => {
    assert.equal(await ix.getManifest(d("c")), null);
    const mt = "application/vnd.oci.image.index.v1+json";
    await ix.putManifest({ digest: d("c"), key: k("3"), size: 512, mediaType: mt }, NGINX, 300);
    assert.deepEqual(await ix.getManifest(d("c")), { digest: d("c"), key: k("3"), size: 512, mediaType: mt });
    const mt2 = "application/vnd.docker.distribution.manifest.list.v2+json";
    await ix.putManifest({ digest: d("c"), key: k("3"), size: 512, mediaType: mt2 }, NGINX, 301);
    assert.equal((await ix.getManifest(d("c")))!.mediaType, mt2);
    assert.equal(await ix.getBlob(d("c")), null);
  });

  test("tags: set, get, move, refresh, delete; keyed by registry and repository", async () => {
    assert.equal(await ix.getTagDigest(HUB, "library/nginx", "1.27"), null);
    await ix.setTagDigest(HUB, "library/nginx", "1.27", d("c"), 1000);
    assert.deepEqual(await ix.getTagDigest(HUB, "library/nginx", "1.27"), { digest: d("c"), checkedAt: 1000 });
    // same tag elsewhere is separate
    assert.equal(await ix.getTagDigest("ghcr.io", "library/nginx", "1.27"), null);
    assert.equal(await ix.getTagDigest(HUB, "library/alpine", "1.27"), null);

    await ix.refreshTag(HUB, "library/nginx", "1.27", 2000);
    assert.deepEqual(await ix.getTagDigest(HUB, "library/nginx", "1.27"), { digest: d("c"), checkedAt: 2000 });

    await ix.setTagDigest(HUB, "library/nginx", "1.27", d("d"), 3000);
    assert.deepEqual(await ix.getTagDigest(HUB, "library/nginx", "1.27"), { digest: d("d"), checkedAt: 3000 });

    // refreshing an unknown tag creates nothing
    await ix.refreshTag(HUB, "library/nginx", "ghost", 4000);
    assert.equal(await ix.getTagDigest(HUB, "library/nginx", "ghost"), null);

    await ix.deleteTag(HUB, "library/nginx", "1.27");
    assert.equal(await ix.getTagDigest(HUB, "library/nginx", "1.27"), null);
    await ix.deleteTag(HUB, "library/nginx", "1.27"); // deleting again is fine
  });

  test("setTagDigest defaults checkedAt to now", async () => {
    const t0 = Date.now();
    await ix.setTagDigest("q", "r", "t", d("e"));
    const row = await ix.getTagDigest("q", "r", "t");
    assert.ok(row && row.checkedAt >= t0 && row.checkedAt <= Date.now());
  });

  test("listTags: byte order, only that repository", async () => {
    for (const t of ["v1.2", "latest", "Latest", "v1.10", "1.0", "_x"]) await ix.setTagDigest("ghcr.io", "owner/app", t, d("c"), 1);
    await ix.setTagDigest("ghcr.io", "owner/other", "zzz", d("c"), 1);
    await ix.setTagDigest("quay.io", "owner/app", "yyy", d("c"), 1);
    assert.deepEqual(await ix.listTags("ghcr.io", "owner/app"), ["1.0", "Latest", "_x", "latest", "v1.10", "v1.2"]);
    assert.deepEqual(await ix.listTags("ghcr.io", "nothing"), []);
  });
});

describe("Index.listImages", () => {
  test("aggregates objects, bytes, tags and lastPulled per repository", async () => {
    const ix = new Index(await openDb(":memory:"));
    try {
      assert.deepEqual(await ix.listImages(), []);
      const mt = "application/vnd.oci.image.manifest.v1+json";
      // nginx: a manifest (500) + two layers (1000, 2000); one layer shared with alpine
      await ix.putManifest({ digest: d("1"), key: k("1"), size: 500, mediaType: mt }, NGINX, 10);
      await ix.putBlob({ digest: d("2"), key: k("2"), size: 1000 }, NGINX, 20);
      await ix.putBlob({ digest: d("3"), key: k("3"), size: 2000 }, NGINX, 15);
      await ix.putBlob({ digest: d("3"), key: k("3"), size: 2000 }, ALPINE, 40);
      await ix.putManifest({ digest: d("4"), key: k("4"), size: 300, mediaType: mt }, ALPINE, 5);
      // pulling the same object again through nginx updates lastPulled, not the count
      await ix.putBlob({ digest: d("2"), key: k("2"), size: 1000 }, NGINX, 25);
      await ix.putManifest({ digest: d("5"), key: k("5"), size: 42, mediaType: mt }, GH, 7);

      await ix.setTagDigest(HUB, "library/nginx", "latest", d("1"), 11);
      await ix.setTagDigest(HUB, "library/nginx", "1.27", d("1"), 12);
      await ix.setTagDigest(HUB, "library/alpine", "3", d("4"), 13);

      const images = await ix.listImages();
      assert.deepEqual(images, [
        {
          registry: HUB,
          repository: "library/alpine",
          tags: [{ tag: "3", digest: d("4"), checkedAt: 13 }],
          objects: 2,
          bytes: 2300,
          lastPulled: 40,
        },
        {
          registry: HUB,
          repository: "library/nginx",
          tags: [
            { tag: "1.27", digest: d("1"), checkedAt: 12 },
            { tag: "latest", digest: d("1"), checkedAt: 11 },
          ],
          objects: 3,
          bytes: 3500,
          lastPulled: 25,
        },
        { registry: "ghcr.io", repository: "owner/app", tags: [], objects: 1, bytes: 42, lastPulled: 7 },
      ]);
    } finally {
      ix.close();
    }
  });
});
