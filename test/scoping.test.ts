/**
 * Repository scoping: content cached through one repository reaches another only once the
 * upstream confirms (in that repository's scope) that it has the digest.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { imageManifest, randomBytes, sha256, startFakeRegistry } from "./support/fake_registry.ts";
import { bytesOf, startCache } from "./support/cache.ts";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

describe("repository scoping", () => {
  test("a private repo's layer is refused through a repository the upstream denies; served (and remembered) through one it confirms", async () => {
    const up = await startFakeRegistry({ tokenAuth: true });
    const layer = randomBytes(50_000, 501);
    const d = up.putBlob(layer);
    const man = imageManifest({ digest: d, size: layer.length }, []);
    const md = up.putManifest("corp/private", man, OCI_MANIFEST, "v1");
    up.restrict(d, ["corp/private", "corp/also"]);
    up.restrict(md, ["corp/private", "corp/also"]);
    const cache = await startCache(up.url);
    try {
      // An authorised pull caches both.
      assert.equal(sha256(await bytesOf(await fetch(`${cache.url}/v2/fake/corp/private/blobs/${d}`))), d);
      assert.equal((await fetch(`${cache.url}/v2/fake/corp/private/manifests/v1`)).status, 200);
      await Promise.all((await cache.service.flights.active()).map((f) => f.done));

      // Another repository that the upstream says does not have it: refused, nothing served.
      up.reset();
      const b = await fetch(`${cache.url}/v2/fake/evil/probe/blobs/${d}`);
      assert.equal(b.status, 404);
      assert.equal((await b.json()).errors[0].code, "BLOB_UNKNOWN");
      const m = await fetch(`${cache.url}/v2/fake/evil/probe/manifests/${md}`);
      assert.equal(m.status, 404);
      await m.arrayBuffer();
      const heads = up.requests.filter((r) => r.method === "HEAD");
      assert.equal(heads.length, 2, "asked in the other repository's scope");
      assert.ok(heads.every((r) => r.path.startsWith("/v2/evil/probe/") && r.authorization?.startsWith("Bearer ")));
      assert.equal(up.count("blob", "GET"), 0, "no bytes fetched for the refused repository either");

      // A repository the upstream confirms: served from the cache, then remembered.
      up.reset();
      const ok = await fetch(`${cache.url}/v2/fake/corp/also/blobs/${d}`);
      assert.equal(ok.headers.get("x-cache"), "hit");
      assert.equal(sha256(await bytesOf(ok)), d);
      assert.equal(up.count("blob", "HEAD"), 1);
      assert.equal(up.count("blob", "GET"), 0);
      up.reset();
      await bytesOf(await fetch(`${cache.url}/v2/fake/corp/also/blobs/${d}`));
      assert.equal(up.requests.length, 0, "the confirmation is remembered");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("joining another repository's download needs the same confirmation", async () => {
    const up = await startFakeRegistry({ chunkSize: 32 * 1024, chunkDelayMs: 10 });
    const layer = randomBytes(600_000, 502);
    const d = up.putBlob(layer);
    up.restrict(d, ["corp/private"]);
    const cache = await startCache(up.url);
    try {
      const first = fetch(`${cache.url}/v2/fake/corp/private/blobs/${d}`);
      await new Promise((r) => setTimeout(r, 30));
      const other = await fetch(`${cache.url}/v2/fake/evil/probe/blobs/${d}`);
      assert.equal(other.status, 404);
      await other.arrayBuffer();
      assert.equal(sha256(await bytesOf(await first)), d);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("--trust-shared-content serves any repository from the cache without asking", async () => {
    const up = await startFakeRegistry();
    const layer = randomBytes(20_000, 503);
    const d = up.putBlob(layer);
    up.restrict(d, ["pub/a"]);
    const cache = await startCache(up.url, { flags: ["--trust-shared-content", "true"] });
    try {
      await bytesOf(await fetch(`${cache.url}/v2/fake/pub/a/blobs/${d}`));
      await Promise.all((await cache.service.flights.active()).map((f) => f.done));
      up.reset();
      const r = await fetch(`${cache.url}/v2/fake/pub/b/blobs/${d}`);
      assert.equal(sha256(await bytesOf(r)), d);
      assert.equal(up.requests.length, 0);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("when the upstream cannot confirm (down), another repository gets 503, the original one its hit", async () => {
    const up = await startFakeRegistry();
    const layer = randomBytes(20_000, 504);
    const d = up.putBlob(layer);
    const cache = await startCache(up.url, { flags: ["--upstream-retries", "1"] });
    try {
      await bytesOf(await fetch(`${cache.url}/v2/fake/x/a/blobs/${d}`));
      await Promise.all((await cache.service.flights.active()).map((f) => f.done));
      up.faultAll({ kind: "status", status: 503 });
      const other = await fetch(`${cache.url}/v2/fake/x/b/blobs/${d}`);
      assert.equal(other.status, 503);
      await other.arrayBuffer();
      const same = await fetch(`${cache.url}/v2/fake/x/a/blobs/${d}`);
      assert.equal(sha256(await bytesOf(same)), d);
    } finally {
      up.faultAll(undefined);
      await cache.destroy();
      await up.stop();
    }
  });
});
