/** Integration: manifests by tag and digest, Accept, freshness, stale-if-error, errors. */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { imageManifest, randomBytes, sha256, startFakeRegistry, type FakeRegistry } from "./support/fake_registry.ts";
import { startCache, type TestCache } from "./support/cache.ts";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";

describe("manifests", () => {
  let up: FakeRegistry;
  let cache: TestCache;
  let manDigest: string;
  let manBytes: Uint8Array;

  before(async () => {
    up = await startFakeRegistry();
    const cfg = randomBytes(100, 3);
    const layer = randomBytes(1000, 4);
    manBytes = imageManifest({ digest: up.putBlob(cfg), size: cfg.length }, [{ digest: up.putBlob(layer), size: layer.length }]);
    manDigest = up.putManifest("team/app", manBytes, OCI_MANIFEST, "1.0");
    cache = await startCache(up.url);
  });
  after(async () => {
    await cache.destroy();
    await up.stop();
  });

  test("GET /v2/ answers {} with the API version header", async () => {
    const res = await fetch(`${cache.url}/v2/`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("docker-distribution-api-version"), "registry/2.0");
    assert.deepEqual(await res.json(), {});
    const head = await fetch(`${cache.url}/v2/`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal((await head.arrayBuffer()).byteLength, 0);
  });

  test("by tag: first GET fetches and stores, the next within the TTL makes no upstream request", async () => {
    up.reset();
    const r1 = await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`, { headers: { accept: OCI_MANIFEST } });
    assert.equal(r1.status, 200);
    assert.deepEqual(new Uint8Array(await r1.arrayBuffer()), manBytes);
    assert.equal(r1.headers.get("content-type"), OCI_MANIFEST);
    assert.equal(r1.headers.get("docker-content-digest"), manDigest);
    assert.equal(r1.headers.get("content-length"), String(manBytes.length));
    assert.equal(up.count("manifest", "GET"), 1);
    assert.equal(up.requests.find((r) => r.kind === "manifest")?.accept, OCI_MANIFEST, "client Accept passed upstream");

    up.reset();
    const r2 = await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`, { headers: { accept: OCI_MANIFEST } });
    assert.equal(r2.status, 200);
    assert.deepEqual(new Uint8Array(await r2.arrayBuffer()), manBytes);
    assert.equal(r2.headers.get("docker-content-digest"), manDigest);
    assert.equal(up.requests.length, 0, "fresh tag served with zero upstream requests");

    const h = await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`, { method: "HEAD", headers: { accept: OCI_MANIFEST } });
    assert.equal(h.status, 200);
    assert.equal(h.headers.get("content-length"), String(manBytes.length));
    assert.equal(h.headers.get("docker-content-digest"), manDigest);
    assert.equal((await h.arrayBuffer()).byteLength, 0);
    assert.equal(up.requests.length, 0);
  });

  test("unprefixed path goes to the default registry", async () => {
    up.reset();
    const res = await fetch(`${cache.url}/v2/team/app/manifests/1.0`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("docker-content-digest"), manDigest);
    await res.arrayBuffer();
  });

  test("by digest: a hit makes zero upstream requests", async () => {
    up.reset();
    const res = await fetch(`${cache.url}/v2/fake/team/app/manifests/${manDigest}`);
    assert.equal(res.status, 200);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), manBytes);
    assert.equal(up.requests.length, 0);
  });

  test("stale tag: HEAD upstream, same digest → served from cache without a GET", async () => {
    cache.clock.now += 6 * 60_000;
    up.reset();
    const res = await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`);
    assert.equal(res.status, 200);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), manBytes);
    assert.equal(up.count("manifest", "HEAD"), 1);
    assert.equal(up.count("manifest", "GET"), 0);
    up.reset();
    await (await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`)).arrayBuffer();
    assert.equal(up.requests.length, 0, "refreshed: fresh again");
  });

  test("stale tag that moved upstream: GET the new manifest and move the tag", async () => {
    const other = imageManifest({ digest: up.putBlob(randomBytes(10, 9)), size: 10 }, []);
    const newDigest = up.putManifest("team/app", other, OCI_MANIFEST, "1.0");
    cache.clock.now += 6 * 60_000;
    up.reset();
    const res = await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`);
    assert.equal(res.headers.get("docker-content-digest"), newDigest);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), other);
    assert.equal(up.count("manifest", "GET"), 1);
    const row = await cache.service.index.getTagDigest("fake", "team/app", "1.0");
    assert.equal(row?.digest, newDigest);
    up.tag("team/app", "1.0", manDigest);
  });

  for (const [what, fault] of [
    ["503", { kind: "status", status: 503 }],
    ["429", { kind: "status", status: 429, headers: { "retry-after": "7" } }],
  ] as const) {
    test(`stale tag while the upstream answers ${what}: stale copy with a Warning`, async () => {
      cache.clock.now += 6 * 60_000;
      up.faultAll(fault);
      try {
        const res = await fetch(`${cache.url}/v2/fake/team/app/manifests/1.0`);
        assert.equal(res.status, 200);
        assert.match(res.headers.get("warning") ?? "", /110/);
        await res.arrayBuffer();
      } finally {
        up.faultAll(undefined);
      }
    });
  }

  test("Accept: a cached image manifest is not served to a client that only takes an index", async () => {
    const idx = new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ mediaType: OCI_MANIFEST, digest: manDigest, size: manBytes.length, platform: { os: "linux", architecture: "amd64" } }],
    }));
    const idxDigest = up.putManifest("team/multi", idx, OCI_INDEX, "latest");
    const res = await fetch(`${cache.url}/v2/fake/team/multi/manifests/latest`, { headers: { accept: `${OCI_INDEX}, ${OCI_MANIFEST}` } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), OCI_INDEX);
    assert.equal(res.headers.get("docker-content-digest"), idxDigest);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), idx);
    // A client that does not accept indexes does not get the cached index from the cache: it is asked upstream.
    up.reset();
    const r2 = await fetch(`${cache.url}/v2/fake/team/multi/manifests/latest`, { headers: { accept: DOCKER_MANIFEST } });
    await r2.arrayBuffer();
    assert.equal(up.count("manifest", "GET"), 1);
    assert.equal(up.requests.find((r) => r.kind === "manifest")?.accept, DOCKER_MANIFEST);
  });

  test("upstream manifest bytes that do not match the requested digest → 502 and nothing cached", async () => {
    const m = imageManifest({ digest: up.putBlob(randomBytes(20, 11)), size: 20 }, []);
    const d = up.putManifest("team/bad", m, OCI_MANIFEST);
    up.fault(d, { kind: "wrongBytes" });
    try {
      const res = await fetch(`${cache.url}/v2/fake/team/bad/manifests/${d}`);
      assert.equal(res.status, 502);
      assert.equal((await res.json()).errors[0].code, "DIGEST_INVALID");
      assert.equal(await cache.service.index.getManifest(d), null);
    } finally {
      up.fault(d, undefined);
    }
    const ok = await fetch(`${cache.url}/v2/fake/team/bad/manifests/${d}`);
    assert.equal(ok.status, 200);
    assert.deepEqual(new Uint8Array(await ok.arrayBuffer()), m);
  });

  test("by tag: an upstream Docker-Content-Digest that disagrees with the bytes → 502, nothing cached", async () => {
    const m = imageManifest({ digest: up.putBlob(randomBytes(30, 12)), size: 30 }, []);
    up.putManifest("team/liar", m, OCI_MANIFEST, "v1");
    up.announceDigest("team/liar", "v1", sha256(new Uint8Array([1, 2, 3])));
    const res = await fetch(`${cache.url}/v2/fake/team/liar/manifests/v1`);
    assert.equal(res.status, 502);
    assert.equal((await res.json()).errors[0].code, "DIGEST_INVALID");
    assert.equal(await cache.service.index.getTagDigest("fake", "team/liar", "v1"), null);
  });

  test("unknown manifest → 404 MANIFEST_UNKNOWN; HEAD of an uncached manifest asks upstream with HEAD", async () => {
    const res = await fetch(`${cache.url}/v2/fake/team/app/manifests/nope`);
    assert.equal(res.status, 404);
    assert.equal((await res.json()).errors[0].code, "MANIFEST_UNKNOWN");
    const m = imageManifest({ digest: up.putBlob(randomBytes(40, 13)), size: 40 }, []);
    const d = up.putManifest("team/headonly", m, OCI_MANIFEST, "x");
    up.reset();
    const h = await fetch(`${cache.url}/v2/fake/team/headonly/manifests/x`, { method: "HEAD" });
    assert.equal(h.status, 200);
    assert.equal(h.headers.get("docker-content-digest"), d);
    assert.equal(up.count("manifest", "HEAD"), 1);
    assert.equal(up.count("manifest", "GET"), 0, "a HEAD is never turned into a counted GET upstream");
  });

  test("a cached manifest or blob whose file went missing is fetched again, not a 500", async () => {
    const layer = randomBytes(5000, 14);
    const ld = up.putBlob(layer);
    const m = imageManifest({ digest: ld, size: layer.length }, []);
    const d = up.putManifest("team/gone", m, OCI_MANIFEST, "v1");
    await (await fetch(`${cache.url}/v2/fake/team/gone/manifests/v1`)).arrayBuffer();
    await (await fetch(`${cache.url}/v2/fake/team/gone/blobs/${ld}`)).arrayBuffer();
    await Promise.all((await cache.service.flights.active()).map((f) => f.done));
    const mrow = await cache.service.index.getManifest(d);
    const brow = await cache.service.index.getBlob(ld);
    await cache.service.cafs.remove(mrow!.key);
    await cache.service.cafs.remove(brow!.key);
    up.reset();
    const r1 = await fetch(`${cache.url}/v2/fake/team/gone/manifests/${d}`);
    assert.equal(r1.status, 200);
    assert.deepEqual(new Uint8Array(await r1.arrayBuffer()), m);
    const r2 = await fetch(`${cache.url}/v2/fake/team/gone/blobs/${ld}`);
    assert.equal(r2.status, 200);
    assert.deepEqual(new Uint8Array(await r2.arrayBuffer()), layer);
    assert.equal(up.count("manifest", "GET"), 1);
    assert.equal(up.count("blob", "GET"), 1);
  });

  test("containerd's way (HEAD the tag, GET by digest) makes the tag known: the next HEAD needs no upstream", async () => {
    const m = imageManifest({ digest: up.putBlob(randomBytes(60, 15)), size: 60 }, []);
    const d = up.putManifest("team/ctrd", m, OCI_MANIFEST, "v2");
    const h1 = await fetch(`${cache.url}/v2/fake/team/ctrd/manifests/v2?ns=${up.host}`, { method: "HEAD", headers: { accept: OCI_MANIFEST } });
    assert.equal(h1.headers.get("docker-content-digest"), d);
    const g = await fetch(`${cache.url}/v2/fake/team/ctrd/manifests/${d}?ns=${up.host}`, { headers: { accept: OCI_MANIFEST } });
    assert.deepEqual(new Uint8Array(await g.arrayBuffer()), m);
    up.reset();
    up.faultAll({ kind: "status", status: 503 });
    try {
      const h2 = await fetch(`${cache.url}/v2/fake/team/ctrd/manifests/v2?ns=${up.host}`, { method: "HEAD", headers: { accept: OCI_MANIFEST } });
      assert.equal(h2.status, 200);
      assert.equal(h2.headers.get("docker-content-digest"), d);
      assert.equal(h2.headers.get("x-cache"), "hit");
      assert.equal(up.requests.length, 0);
    } finally {
      up.faultAll(undefined);
    }
  });

  test("client mistakes get 4xx OCI errors", async () => {
    const cases: [string, string, number, string][] = [
      ["GET", "/v2/fake/Team/App/manifests/1.0", 400, "NAME_INVALID"],
      ["GET", "/v2/fake/team/app/manifests/sha256:abc", 400, "DIGEST_INVALID"],
      ["GET", "/v2/fake/team/app/blobs/md5:abc", 400, "DIGEST_INVALID"],
      ["PUT", "/v2/fake/team/app/manifests/1.0", 405, "UNSUPPORTED"],
      ["DELETE", "/v2/fake/team/app/manifests/1.0", 405, "UNSUPPORTED"],
      ["POST", "/v2/fake/team/app/blobs/uploads/", 405, "UNSUPPORTED"],
      ["GET", "/v2/fake/team/app/manifests/-bad", 404, "MANIFEST_UNKNOWN"],
      ["GET", "/v2/fake/team/app/manifests/1.0?ns=nowhere.example", 404, "NAME_UNKNOWN"],
    ];
    for (const [method, path, status, code] of cases) {
      const res = await fetch(`${cache.url}${path}`, { method });
      assert.equal(res.status, status, `${method} ${path}`);
      const body = await res.json();
      assert.equal(body.errors[0].code, code, `${method} ${path}`);
      assert.equal(typeof body.errors[0].message, "string");
    }
  });
});

describe("upstream failures without a cached copy", () => {
  test("unreachable → 502, 429 → 429 with Retry-After, 503 → 503", async () => {
    const up = await startFakeRegistry();
    const cache = await startCache(up.url);
    const dead = await startCache("http://127.0.0.1:9", { flags: ["--upstream-timeout", "5s"] });
    try {
      const r1 = await fetch(`${dead.url}/v2/fake/x/manifests/1`);
      assert.equal(r1.status, 502);
      assert.equal((await r1.json()).errors[0].code, "UNAVAILABLE");

      up.faultAll({ kind: "status", status: 429, headers: { "retry-after": "42" } });
      const r2 = await fetch(`${cache.url}/v2/fake/x/manifests/1`);
      assert.equal(r2.status, 429);
      assert.equal(r2.headers.get("retry-after"), "42");
      assert.equal((await r2.json()).errors[0].code, "TOOMANYREQUESTS");
      const r2b = await fetch(`${cache.url}/v2/fake/x/blobs/${sha256(new Uint8Array([9]))}`);
      assert.equal(r2b.status, 429);
      assert.equal(r2b.headers.get("retry-after"), "42");
      await r2b.arrayBuffer();

      up.faultAll({ kind: "status", status: 503 });
      const r3 = await fetch(`${cache.url}/v2/fake/x/manifests/1`);
      assert.equal(r3.status, 503);
      await r3.arrayBuffer();
    } finally {
      up.faultAll(undefined);
      await dead.destroy();
      await cache.destroy();
      await up.stop();
    }
  });

  test("an upstream that sends no headers in time → 504, not a hang", async () => {
    // A TCP server that accepts and never answers.
    const net = await import("node:net");
    const sockets: import("node:net").Socket[] = [];
    const srv = net.createServer((s) => sockets.push(s));
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
    const port = (srv.address() as import("node:net").AddressInfo).port;
    const cache = await startCache(`http://127.0.0.1:${port}`, { flags: ["--upstream-timeout", "300ms"] });
    try {
      const res = await fetch(`${cache.url}/v2/fake/x/manifests/1`);
      assert.equal(res.status, 504);
      assert.equal((await res.json()).errors[0].code, "UNAVAILABLE");
    } finally {
      await cache.destroy();
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    }
  });
});
