/** Integration: blobs — hits, ranges, coalesced cold downloads, verification, faults, auth, redirects, tags. */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes, sha256, startFakeRegistry, type FakeRegistry } from "./support/fake_registry.ts";
import { bytesOf, settle, startCache, type TestCache } from "./support/cache.ts";

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (e.isDirectory()) out.push(...await filesUnder(join(dir, e.name)));
    else out.push(join(dir, e.name));
  }
  return out;
}

/**
 * Fetch and read a body; "error" if the transfer broke instead of ending cleanly (on Bun a
 * stream that errors before its first flush resets the connection before the status line).
 */
async function outcome(res: Promise<Response>): Promise<Uint8Array | "error"> {
  try {
    return new Uint8Array(await (await res).arrayBuffer());
  } catch {
    return "error";
  }
}

describe("blobs", () => {
  let up: FakeRegistry;
  let cache: TestCache;
  const blob = randomBytes(3 * 1024 * 1024 + 17, 21);
  let digest: string;

  before(async () => {
    up = await startFakeRegistry({ chunkSize: 256 * 1024, chunkDelayMs: 5 });
    digest = up.putBlob(blob);
    cache = await startCache(up.url);
  });
  after(async () => {
    await cache.destroy();
    await up.stop();
  });

  test("N concurrent cold GETs → exactly one upstream GET, every body correct", async () => {
    up.reset();
    const N = 8;
    const responses = await Promise.all(Array.from({ length: N }, () => fetch(`${cache.url}/v2/fake/lib/base/blobs/${digest}`)));
    for (const r of responses) {
      assert.equal(r.status, 200);
      assert.equal(r.headers.get("docker-content-digest"), digest);
      assert.equal(r.headers.get("accept-ranges"), "bytes");
    }
    const bodies = await Promise.all(responses.map(bytesOf));
    for (const b of bodies) assert.equal(sha256(b), digest);
    assert.equal(up.count("blob", "GET"), 1);
    // Clients get the end once the bytes are verified; the store commit follows.
    await settle(cache);
    const row = await cache.service.index.getBlob(digest);
    assert.equal(row?.size, blob.length);
  });

  test("the first bytes reach a client before the download has finished", async () => {
    const b = randomBytes(2 * 1024 * 1024, 28);
    const d = up.putBlob(b);
    const res = await fetch(`${cache.url}/v2/fake/lib/base/blobs/${d}`);
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const first = await reader.read();
    assert.ok(first.value && first.value.length > 0);
    const flights = await cache.service.flights.active();
    assert.ok(flights.some((f) => f.digest.value === d && f.state === "running"), "still downloading when the first chunk arrived");
    let total = first.value!.length;
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
    }
    assert.equal(total, b.length);
  });

  test("a hit is served from the store with zero upstream requests, with Content-Length", async () => {
    up.reset();
    const res = await fetch(`${cache.url}/v2/fake/lib/base/blobs/${digest}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-length"), String(blob.length));
    assert.equal(sha256(await bytesOf(res)), digest);
    const head = await fetch(`${cache.url}/v2/fake/lib/base/blobs/${digest}`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-length"), String(blob.length));
    assert.equal(head.headers.get("docker-content-digest"), digest);
    assert.equal((await head.arrayBuffer()).byteLength, 0);
    assert.equal(up.requests.length, 0);
  });

  test("ranges on a hit: 206 with Content-Range; suffix and open ranges; 416", async () => {
    const get = (range: string) => fetch(`${cache.url}/v2/fake/lib/base/blobs/${digest}`, { headers: { range } });
    let r = await get("bytes=0-9");
    assert.equal(r.status, 206);
    assert.equal(r.headers.get("content-range"), `bytes 0-9/${blob.length}`);
    assert.deepEqual(await bytesOf(r), blob.subarray(0, 10));
    r = await get("bytes=-100");
    assert.equal(r.status, 206);
    assert.deepEqual(await bytesOf(r), blob.subarray(blob.length - 100));
    r = await get(`bytes=${blob.length - 5}-`);
    assert.equal(r.status, 206);
    assert.equal(r.headers.get("content-length"), "5");
    assert.deepEqual(await bytesOf(r), blob.subarray(blob.length - 5));
    r = await get("bytes=1000000-1999999");
    assert.equal(r.status, 206);
    assert.deepEqual(await bytesOf(r), blob.subarray(1000000, 2000000));
    r = await get(`bytes=${blob.length}-`);
    assert.equal(r.status, 416);
    assert.equal(r.headers.get("content-range"), `bytes */${blob.length}`);
    await r.arrayBuffer();
  });

  test("a range on a cold blob is served from the download as it arrives", async () => {
    // An upstream that announces the size (Bun's server drops Content-Length on streamed bodies,
    // so this fake sends whole buffers).
    const sized = await startFakeRegistry();
    const c2 = await startCache(sized.url);
    try {
      const b = randomBytes(700_000, 22);
      const d = sized.putBlob(b);
      const r = await fetch(`${c2.url}/v2/fake/lib/base/blobs/${d}`, { headers: { range: "bytes=500000-500099" } });
      assert.equal(r.status, 206);
      assert.equal(r.headers.get("content-range"), `bytes 500000-500099/${b.length}`);
      assert.deepEqual(await bytesOf(r), b.subarray(500000, 500100));
      // The whole blob is still downloaded into the cache.
      await Promise.all((await c2.service.flights.active()).map((f) => f.done));
      assert.equal((await c2.service.index.getBlob(d))?.size, b.length);
    } finally {
      await c2.destroy();
      await sized.stop();
    }
  });

  test("HEAD of an uncached blob asks upstream with HEAD and downloads nothing", async () => {
    const b = randomBytes(5000, 23);
    const d = up.putBlob(b);
    up.reset();
    const r = await fetch(`${cache.url}/v2/fake/lib/base/blobs/${d}`, { method: "HEAD" });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-length"), "5000");
    assert.equal(up.count("blob", "HEAD"), 1);
    assert.equal(up.count("blob", "GET"), 0);
    assert.equal(await cache.service.index.getBlob(d), null);
  });

  test("unknown blob → 404 BLOB_UNKNOWN", async () => {
    const r = await fetch(`${cache.url}/v2/fake/lib/base/blobs/${sha256(new Uint8Array([7, 7]))}`);
    assert.equal(r.status, 404);
    assert.equal((await r.json()).errors[0].code, "BLOB_UNKNOWN");
  });

  test("wrong bytes upstream: every client's transfer breaks, nothing indexed or stored", async () => {
    const b = randomBytes(600_000, 24);
    const d = up.putBlob(b);
    up.fault(d, { kind: "wrongBytes" });
    await Promise.all((await cache.service.flights.active()).map((f) => f.done));
    const before = (await filesUnder(join(cache.storage, "blobs"))).length;
    try {
      const outs = await Promise.all([
        ...[1, 2, 3].map(() => outcome(fetch(`${cache.url}/v2/fake/lib/base/blobs/${d}`))),
        // A range whose bytes arrive long before the end must not end cleanly either.
        outcome(fetch(`${cache.url}/v2/fake/lib/base/blobs/${d}`, { headers: { range: "bytes=0-99" } })),
      ]);
      for (const o of outs) assert.equal(o, "error", "a wrong body must never end cleanly");
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(await cache.service.index.getBlob(d), null);
      assert.equal((await filesUnder(join(cache.storage, "blobs"))).length, before);
      assert.deepEqual(await filesUnder(join(cache.storage, "tmp")), []);
    } finally {
      up.fault(d, undefined);
    }
    // The next request downloads again and succeeds.
    const ok = await fetch(`${cache.url}/v2/fake/lib/base/blobs/${d}`);
    assert.equal(sha256(await bytesOf(ok)), d);
  });

  test("upstream dies mid-blob and every resume dies too: the client's transfer breaks, nothing cached, a retry works", async () => {
    // An upstream that ignores Range and always dies at the same byte: resuming cannot get past it.
    const dying = await startFakeRegistry({ chunkSize: 64 * 1024, ignoreRange: true });
    const c2 = await startCache(dying.url);
    const b = randomBytes(900_000, 25);
    const d = dying.putBlob(b);
    dying.fault(d, { kind: "dieAfter", bytes: 300_000 });
    try {
      assert.equal(await outcome(fetch(`${c2.url}/v2/fake/lib/base/blobs/${d}`)), "error");
      await settle(c2);
      assert.equal(await c2.service.index.getBlob(d), null);
      assert.deepEqual(await filesUnder(join(c2.storage, "tmp")), []);
      assert.equal(dying.count("blob", "GET"), 4, "the first GET and three resumes");
      dying.fault(d, undefined);
      const ok = await fetch(`${c2.url}/v2/fake/lib/base/blobs/${d}`);
      assert.equal(sha256(await bytesOf(ok)), d);
    } finally {
      await c2.destroy();
      await dying.stop();
    }
  });

  test("a silent upstream body hits the idle timeout and resuming cannot get past the stall: the transfer breaks, no hang", async () => {
    const stalling = await startFakeRegistry({ chunkSize: 64 * 1024, ignoreRange: true });
    const quick = await startCache(stalling.url, { flags: ["--idle-timeout", "300ms"] });
    const b = randomBytes(400_000, 26);
    const d = stalling.putBlob(b);
    stalling.fault(d, { kind: "stallAfter", bytes: 100_000, ms: 1_000 });
    try {
      assert.equal(await outcome(fetch(`${quick.url}/v2/fake/lib/base/blobs/${d}`)), "error");
      await settle(quick);
      assert.equal(await quick.service.index.getBlob(d), null);
      assert.equal(stalling.count("blob", "GET"), 4, "the first GET and three resumes");
    } finally {
      stalling.fault(d, undefined);
      await quick.destroy();
      await stalling.stop();
    }
  });

  test("identical content in two repositories is stored once", async () => {
    const b = randomBytes(10_000, 27);
    const d = up.putBlob(b);
    await bytesOf(await fetch(`${cache.url}/v2/fake/one/blobs/${d}`));
    await bytesOf(await fetch(`${cache.url}/v2/fake/two/blobs/${d}`));
    await settle(cache);
    const row = await cache.service.index.getBlob(d);
    const files = (await filesUnder(join(cache.storage, "blobs"))).filter((f) => f.endsWith(row!.key));
    assert.equal(files.length, 1);
  });
});

describe("upstream auth and redirects", () => {
  test("token dance: one token per scope, reused; credentials go to the token endpoint", async () => {
    const up = await startFakeRegistry({ tokenAuth: true, credentials: { username: "bot", password: "s3cret" } });
    const b = randomBytes(50_000, 31);
    const d = up.putBlob(b);
    const cache = await startCache(up.url, {
      configFile: { registries: { fake: { url: up.url, username: "bot", passwordEnv: "FAKE_PW" } } },
      env: { FAKE_PW: "s3cret" },
    });
    try {
      const rs = await Promise.all([1, 2, 3, 4].map((i) => fetch(`${cache.url}/v2/fake/priv/app/blobs/${d}?i=${i}`)));
      for (const r of rs) assert.equal(sha256(await bytesOf(r)), d);
      const r2 = await fetch(`${cache.url}/v2/fake/priv/app/manifests/nope`);
      assert.equal(r2.status, 404);
      await r2.arrayBuffer();
      assert.equal(up.tokensIssued, 1, "one token for the scope, shared by concurrent and later requests");
      const r3 = await fetch(`${cache.url}/v2/fake/priv/other/blobs/${sha256(new Uint8Array([1]))}`);
      await r3.arrayBuffer();
      assert.equal(up.tokensIssued, 2, "a new scope gets its own token");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("wrong credentials: 401 UNAUTHORIZED to the client, not a 500", async () => {
    const up = await startFakeRegistry({ tokenAuth: true, credentials: { username: "bot", password: "right" } });
    const cache = await startCache(up.url, {
      configFile: { registries: { fake: { url: up.url, username: "bot", passwordEnv: "FAKE_PW" } } },
      env: { FAKE_PW: "wrong" },
    });
    try {
      const r = await fetch(`${cache.url}/v2/fake/priv/app/manifests/1`);
      assert.equal(r.status, 401);
      const body = await r.json();
      assert.equal(body.errors[0].code, "UNAUTHORIZED");
      assert.doesNotMatch(JSON.stringify(body), /wrong/, "the password never appears in errors");
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("blob redirects are followed without sending Authorization to the other host", async () => {
    const storage = await startFakeRegistry();
    const up = await startFakeRegistry({ tokenAuth: true, redirectBlobsTo: storage.url.replace("127.0.0.1", "localhost") });
    const b = randomBytes(20_000, 32);
    const d = up.putBlob(b);
    storage.putBlob(b);
    const cache = await startCache(up.url);
    try {
      const r = await fetch(`${cache.url}/v2/fake/lib/x/blobs/${d}`);
      assert.equal(r.status, 200);
      assert.equal(sha256(await bytesOf(r)), d);
      const redirected = storage.requests.filter((x) => x.kind === "redirected");
      assert.equal(redirected.length, 1);
      assert.equal(redirected[0].authorization, null);
      assert.ok(up.requests.some((x) => x.kind === "blob" && x.authorization?.startsWith("Bearer ")));
    } finally {
      await cache.destroy();
      await up.stop();
      await storage.stop();
    }
  });
});

describe("tags/list", () => {
  test("from upstream with n/last and a rewritten Link; from the index when upstream fails", async () => {
    const up = await startFakeRegistry();
    const man = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json", config: {}, layers: [] }));
    for (const t of ["a", "b", "c"]) up.putManifest("team/app", man, "application/vnd.oci.image.manifest.v1+json", t);
    const cache = await startCache(up.url);
    try {
      const r = await fetch(`${cache.url}/v2/fake/team/app/tags/list?n=2`);
      assert.equal(r.status, 200);
      assert.deepEqual(await r.json(), { name: "fake/team/app", tags: ["a", "b"] });
      assert.equal(r.headers.get("link"), `</v2/fake/team/app/tags/list?last=b&n=2>; rel="next"`);
      const r2 = await fetch(`${cache.url}/v2/fake/team/app/tags/list?n=2&last=b`);
      assert.deepEqual((await r2.json()).tags, ["c"]);
      const bad = await fetch(`${cache.url}/v2/fake/team/app/tags/list?n=x`);
      assert.equal(bad.status, 400);
      await bad.arrayBuffer();

      // Cache two tags, then take the upstream down.
      for (const t of ["a", "c"]) await (await fetch(`${cache.url}/v2/fake/team/app/manifests/${t}`)).arrayBuffer();
      up.faultAll({ kind: "status", status: 503 });
      const r3 = await fetch(`${cache.url}/v2/fake/team/app/tags/list`);
      assert.equal(r3.status, 200);
      assert.deepEqual((await r3.json()).tags, ["a", "c"]);
      const r4 = await fetch(`${cache.url}/v2/fake/team/app/tags/list?n=1`);
      assert.deepEqual((await r4.json()).tags, ["a"]);
      assert.match(r4.headers.get("link") ?? "", /last=a/);
      const r5 = await fetch(`${cache.url}/v2/fake/team/none/tags/list`);
      assert.equal(r5.status, 503);
      await r5.arrayBuffer();
      up.faultAll(undefined);
      const r6 = await fetch(`${cache.url}/v2/fake/team/none/tags/list`);
      assert.equal(r6.status, 404);
      assert.equal((await r6.json()).errors[0].code, "NAME_UNKNOWN");
    } finally {
      up.faultAll(undefined);
      await cache.destroy();
      await up.stop();
    }
  });
});
