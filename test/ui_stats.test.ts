/**
 * The status page's figures: the aggregator (minute windows with an injected clock, ratios,
 * upstream health, top images, recent errors), and the page and its JSON API on a real cache —
 * never a credential in them, `--ui=false` turns them off, `/api/v1/images` is `ocicache ls --json`.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadConfig, parseFlags } from "../src/config.ts";
import { PAGE_CSP, PAGE_HTML } from "../src/ui/page.ts";
import { hitRatio, publicUrl, type RequestSample, StatsAggregator, type StatsJson } from "../src/ui/stats.ts";
import { startCache } from "./support/cache.ts";
import { imageManifest, randomBytes, startFakeRegistry } from "./support/fake_registry.ts";
import { ocicacheCommand, REPO_ROOT } from "./support/ocicache_process.ts";
import { silentLogger } from "../src/log.ts";
import { detectRuntime } from "../src/runtime/mod.ts";
import { openService } from "../src/service.ts";

const MIN = 60_000;
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

function clocked() {
  const clock = { now: T0 };
  const agg = new StatsAggregator({ now: () => clock.now });
  return { clock, agg };
}

const req = (o: Partial<RequestSample>): RequestSample => ({
  endpoint: "blob",
  method: "GET",
  status: 200,
  cache: "hit",
  registry: "docker.io",
  repository: "library/alpine",
  bytes: 100,
  ...o,
});

describe("StatsAggregator", () => {
  test("counts registry traffic only, by cache result, with bytes served and saved", () => {
    const { agg } = clocked();
    agg.request(req({ cache: "hit", bytes: 1000 }));
    agg.request(req({ cache: "miss", bytes: 500 }));
    agg.request(req({ cache: "coalesced", bytes: 500 }));
    agg.request(req({ endpoint: "manifest", cache: "revalidated", bytes: 10 }));
    agg.request(req({ endpoint: "manifest", cache: "stale", bytes: 10 }));
    agg.request(req({ endpoint: "manifest", method: "HEAD", cache: "hit", bytes: 10 }));
    agg.request(req({ endpoint: "blob", cache: "miss", status: 404, bytes: 50 }));
    for (const endpoint of ["base", "healthz", "metrics", "readyz", "ui", "api", "other"]) {
      agg.request(req({ endpoint, cache: "none" }));
    }
    const t = agg.totals();
    assert.equal(t.requests, 7);
    assert.deepEqual([t.hit, t.miss, t.coalesced, t.revalidated, t.stale], [2, 2, 1, 1, 1]);
    assert.equal(t.errors, 1);
    assert.equal(t.bytesServed, 1000 + 500 + 500 + 10 + 10 + 50, "HEAD bytes are not served");
    assert.equal(t.bytesSaved, 1000 + 500 + 10 + 10, "hit, coalesced, revalidated, stale");
    assert.equal(t.manifestPullsSaved, 2, "manifest GETs answered without an upstream GET");
    assert.deepEqual(agg.saved("docker.io"), { bytes: 1520, manifestPulls: 2 });
    assert.deepEqual(agg.saved("ghcr.io"), { bytes: 0, manifestPulls: 0 });
  });

  test("hit ratio: hit, revalidated and stale over those plus miss and coalesced; null without traffic", () => {
    const zero = { requests: 0, hit: 0, miss: 0, stale: 0, coalesced: 0, revalidated: 0, pass: 0, errors: 0, bytesServed: 0, bytesSaved: 0, manifestPullsSaved: 0 };
    assert.equal(hitRatio(zero), null);
    assert.equal(hitRatio({ ...zero, pass: 5 }), null, "pass-through requests are not cache decisions");
    assert.equal(hitRatio({ ...zero, hit: 3, miss: 1 }), 0.75);
    assert.equal(hitRatio({ ...zero, hit: 1, revalidated: 1, stale: 1, miss: 2, coalesced: 1 }), 0.5);
    const { agg } = clocked();
    assert.equal(agg.totals().hitRatio, null);
    agg.request(req({ cache: "hit" }));
    agg.request(req({ cache: "hit" }));
    agg.request(req({ cache: "hit" }));
    agg.request(req({ cache: "miss" }));
    assert.equal(agg.totals().hitRatio, 0.75);
  });

  test("the series is 60 minute points ending now; old minutes roll out and their ring slots are reused", () => {
    const { clock, agg } = clocked();
    agg.request(req({ cache: "miss", bytes: 6000 }));
    let s = agg.series();
    assert.equal(s.length, 60);
    assert.equal(s[59].at, Math.floor(T0 / MIN) * MIN);
    assert.equal(s[59].requests, 1);
    assert.equal(s[59].hitRatio, 0);
    assert.equal(s[0].at, s[59].at - 59 * MIN);
    assert.ok(s.slice(0, 59).every((p) => p.requests === 0 && p.hitRatio === null));
    // The current minute's rate is over the seconds gone so far (at least one).
    assert.equal(s[59].bytesPerSecond, 6000);

    clock.now += 30_000;
    agg.request(req({ cache: "hit", bytes: 0 }));
    s = agg.series();
    assert.equal(s[59].requests, 2);
    assert.equal(s[59].hitRatio, 0.5);
    assert.equal(s[59].bytesPerSecond, 6000 / 30);

    clock.now += MIN; // next minute: the old one is complete (÷ 60 s)
    agg.request(req({ cache: "hit", bytes: 120 }));
    s = agg.series();
    assert.equal(s[58].requests, 2);
    assert.equal(s[58].bytesPerSecond, 100);
    assert.equal(s[59].requests, 1);

    clock.now += 58 * MIN; // the first minute is now 59 minutes back: still in the window
    s = agg.series();
    assert.equal(s[0].requests, 2);
    clock.now += MIN; // and now it is out
    s = agg.series();
    assert.equal(s.reduce((n, p) => n + p.requests, 0), 1);
    // The same ring slot is reused for a new minute 60 minutes later: it starts from zero.
    clock.now = T0 + 60 * MIN;
    agg.request(req({ cache: "miss", bytes: 1 }));
    s = agg.series();
    assert.equal(s[59].requests, 1);
    assert.equal(s[59].miss, 1);
    assert.equal(s[59].hit, 0);
    // Totals are since start, not windowed.
    assert.equal(agg.totals().requests, 4);
  });

  test("upstream health: last success, last error, error rate over the last hour", () => {
    const { clock, agg } = clocked();
    assert.deepEqual(agg.health("docker.io"), {
      state: "idle", lastSuccess: null, lastError: null, requestsLastHour: 0, errorsLastHour: 0, errorRate: null,
    });
    agg.upstream({ registry: "docker.io", kind: "manifests", method: "GET", status: 200 });
    agg.upstream({ registry: "docker.io", kind: "blobs", method: "GET", status: 404 }); // an answer, not a failure
    clock.now += 1000;
    agg.upstream({ registry: "docker.io", kind: "manifests", method: "HEAD", status: undefined });
    let h = agg.health("docker.io");
    assert.equal(h.state, "failing");
    assert.deepEqual(h.lastSuccess, { at: T0, status: 404 });
    assert.deepEqual(h.lastError, { at: T0 + 1000, message: "HEAD manifests: no response (unreachable or timed out)" });
    assert.equal(h.requestsLastHour, 3);
    assert.equal(h.errorsLastHour, 1);
    assert.equal(h.errorRate, 1 / 3);

    agg.upstream({ registry: "docker.io", kind: "manifests", method: "GET", status: 429 });
    agg.upstream({ registry: "docker.io", kind: "blobs", method: "GET", status: 503, message: "Service Unavailable from the CDN" });
    h = agg.health("docker.io");
    assert.equal(h.errorsLastHour, 3);
    assert.equal(h.lastError!.message, "GET blobs: Service Unavailable from the CDN");
    agg.upstream({ registry: "docker.io", kind: "blobs", method: "GET", status: 200 });
    assert.equal(agg.health("docker.io").state, "ok");
    assert.equal(agg.health("ghcr.io").state, "idle", "registries are kept apart");

    clock.now += 61 * MIN;
    h = agg.health("docker.io");
    assert.equal(h.requestsLastHour, 0);
    assert.equal(h.errorRate, null);
    assert.ok(h.lastError, "the last error is kept after the window moves on");
  });

  test("top images by pulls and by bytes, top-N, HEADs and failures not counted", () => {
    const { clock, agg } = clocked();
    const pull = (repository: string, n: number, bytes = 0) => {
      for (let i = 0; i < n; i++) {
        clock.now += 1;
        agg.request(req({ endpoint: "manifest", repository, cache: "hit", bytes: 1 }));
      }
      if (bytes) agg.request(req({ endpoint: "blob", repository, cache: "miss", bytes }));
    };
    pull("a", 5, 10);
    pull("b", 2, 5000);
    pull("c", 9);
    pull("d", 1, 100);
    agg.request(req({ endpoint: "manifest", method: "HEAD", repository: "e" }));
    agg.request(req({ endpoint: "manifest", repository: "f", status: 404, bytes: 50 }));
    const top = agg.topImages(3);
    assert.deepEqual(top.byPulls.map((i) => [i.repository, i.pulls]), [["c", 9], ["a", 5], ["b", 2]]);
    assert.deepEqual(top.byBytes.map((i) => [i.repository, i.bytes]), [["b", 5002], ["d", 101], ["a", 15]]);
    assert.equal(top.byPulls[0].registry, "docker.io");
    assert.ok(!agg.topImages(50).byPulls.some((i) => i.repository === "e" || i.repository === "f"));
  });

  test("the images tracked are bounded: the least recently seen is dropped", () => {
    const clock = { now: T0 };
    const agg = new StatsAggregator({ now: () => clock.now, maxImages: 3 });
    for (const r of ["a", "b", "c"]) agg.request(req({ endpoint: "manifest", repository: r }));
    agg.request(req({ endpoint: "manifest", repository: "a" })); // a is now the most recent
    agg.request(req({ endpoint: "manifest", repository: "d" })); // drops b
    assert.deepEqual(agg.topImages(10).byPulls.map((i) => i.repository).sort(), ["a", "c", "d"]);
  });

  test("recent errors: upstream and store, newest first, the last 20 kept, repeats in a row counted", () => {
    const { clock, agg } = clocked();
    for (let i = 0; i < 25; i++) {
      clock.now += 1000;
      agg.upstream({ registry: "quay.io", kind: "blobs", method: "GET", status: 500 + (i % 5) });
    }
    clock.now += 1000;
    agg.storeError("digest mismatch: upstream bytes hash to sha256:aa, expected sha256:bb");
    let errs = agg.recentErrors();
    assert.equal(errs.length, 20);
    assert.deepEqual(errs[0], {
      at: clock.now, firstAt: clock.now, count: 1, source: "store", registry: undefined,
      message: "digest mismatch: upstream bytes hash to sha256:aa, expected sha256:bb",
    });
    assert.equal(errs[1].source, "upstream");
    assert.equal(errs[1].message, "GET blobs: answered HTTP 504");
    assert.ok(errs.every((e, i) => i === 0 || e.at <= errs[i - 1].at));

    // A retried request failing three times is one row, counted.
    const first = clock.now + 1000;
    for (let i = 0; i < 3; i++) {
      clock.now += 1000;
      agg.upstream({ registry: "quay.io", kind: "manifests", method: "GET", status: undefined });
    }
    errs = agg.recentErrors();
    assert.equal(errs.length, 20);
    assert.deepEqual(errs[0], {
      at: clock.now, firstAt: first, count: 3, source: "upstream", registry: "quay.io",
      message: "GET manifests: no response (unreachable or timed out)",
    });
    // The same message from another registry is another row.
    agg.upstream({ registry: "ghcr.io", kind: "manifests", method: "GET", status: undefined });
    assert.equal(agg.recentErrors()[0].registry, "ghcr.io");
    assert.equal(agg.recentErrors()[1].count, 3);
  });

  test("publicUrl keeps origin and path, never userinfo, query or fragment", () => {
    assert.equal(publicUrl("https://bot:s3cret@registry.example.com:8443/v2base/?token=abc#x"), "https://registry.example.com:8443/v2base");
    assert.equal(publicUrl("https://registry-1.docker.io"), "https://registry-1.docker.io");
    assert.equal(publicUrl("not a url"), "(invalid URL)");
  });
});

describe("--ui flag", () => {
  const load = (flags: string[], env: Record<string, string> = {}) =>
    loadConfig({ flags: parseFlags(flags), env: (n) => env[n], readText: () => Promise.reject(new Error("no file")) });
  test("defaults to true; --ui=false, --ui false and OCICACHE_UI=false turn it off; nonsense is a ConfigError", async () => {
    assert.equal((await load([])).ui, true);
    assert.equal((await load(["--ui=false"])).ui, false);
    assert.equal((await load(["--ui", "false"])).ui, false);
    assert.equal((await load(["--ui=true"])).ui, true);
    assert.equal((await load([], { OCICACHE_UI: "false" })).ui, false);
    await assert.rejects(load(["--ui=maybe"]), (e) => e instanceof ConfigError && /\bui\b/.test(e.message));
  });
});

describe("the page and its API on a running cache", () => {
  test("GET / is one self-contained page: no external resources, inline style and script allowed by hash only", async () => {
    const up = await startFakeRegistry();
    const cache = await startCache(up.url);
    try {
      const res = await fetch(`${cache.url}/`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type")!, /^text\/html; charset=utf-8/);
      assert.equal(res.headers.get("content-security-policy"), PAGE_CSP);
      assert.match(PAGE_CSP, /default-src 'none'/);
      assert.match(PAGE_CSP, /script-src 'sha256-[A-Za-z0-9+/]+=*'(;|$)/);
      const html = await res.text();
      assert.equal(html, PAGE_HTML);
      assert.doesNotMatch(html, /(src|href)=["']?(https?:)?\/\//i, "nothing loaded from another origin");
      assert.doesNotMatch(html, /@import|@font-face|url\(/i, "no fonts or stylesheets fetched");
      assert.match(html, /<th scope="col">/);
      assert.match(html, /<meta name="viewport"/);
      assert.equal((await fetch(`${cache.url}/`, { method: "POST" })).status, 405);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("a pull moves the API's counters; registries show no credentials; /api/v1/images is `ocicache ls --json`", async () => {
    const up = await startFakeRegistry({ tokenAuth: true, credentials: { username: "robot-user", password: "pw-S3cret-value" } });
    const layer = randomBytes(200_000, 7);
    const cfg = randomBytes(300, 8);
    const ld = up.putBlob(layer);
    const cd = up.putBlob(cfg);
    up.putManifest("team/app", imageManifest({ digest: cd, size: cfg.length }, [{ digest: ld, size: layer.length }]), "application/vnd.oci.image.manifest.v1+json", "v1");
    const cache = await startCache(up.url, {
      env: { FAKE_PW: "pw-S3cret-value" },
      configFile: { registries: { fake: { url: up.url, username: "robot-user", passwordEnv: "FAKE_PW" }, down: { url: "http://127.0.0.1:9" } } },
    });
    try {
      const get = async (path: string) => {
        const r = await fetch(`${cache.url}${path}`);
        await r.arrayBuffer();
        return r.status;
      };
      const stats = async () => (await (await fetch(`${cache.url}/api/v1/stats`)).json()) as StatsJson;
      const before = await stats();
      assert.equal(before.totals.requests, 0);
      assert.equal(before.series.points.length, 60);
      assert.equal(before.store.boundBytes, null);
      assert.equal(before.store.evictions, 0);

      assert.equal(await get("/v2/fake/team/app/manifests/v1"), 200);
      assert.equal(await get(`/v2/fake/team/app/blobs/${cd}`), 200);
      assert.equal(await get(`/v2/fake/team/app/blobs/${ld}`), 200);
      await Promise.all((await cache.service.flights.active()).map((f) => f.done));
      assert.equal(await get("/v2/fake/team/app/manifests/v1"), 200);
      assert.equal(await get(`/v2/fake/team/app/blobs/${ld}`), 200);
      assert.equal(await get("/v2/down/some/thing/manifests/latest"), 502);

      await new Promise((r) => setTimeout(r, 600)); // store figures are cached for 500 ms (one index query per scrape)
      const s = await stats();
      // The page's own requests (/, /api/v1/…) are not registry traffic.
      assert.equal(s.totals.requests, 6);
      assert.equal(s.totals.miss, 4, "3 fetched, and the one the unreachable upstream could not answer");
      assert.equal(s.totals.hit, 2);
      assert.equal(s.totals.errors, 1);
      assert.equal(s.totals.hitRatio, 2 / 6);
      assert.equal(s.totals.manifestPullsSaved, 1);
      assert.ok(s.totals.bytesSaved >= layer.length);
      assert.ok(s.totals.bytesServed >= 2 * layer.length);
      assert.ok(s.totals.bytesFromUpstream >= layer.length);
      assert.equal(s.series.points.reduce((n, p) => n + p.requests, 0), 6, "in the last hour's series (the test may straddle a minute)");
      assert.equal(s.store.objects, 3);
      assert.ok(s.store.bytes >= layer.length + cfg.length);

      const fake = s.registries.find((r) => r.prefix === "fake")!;
      assert.equal(fake.url, up.url);
      assert.equal(fake.default, true);
      assert.equal(fake.health.state, "ok");
      assert.ok(fake.health.lastSuccess);
      assert.deepEqual(fake.saved.manifestPulls, 1);
      const down = s.registries.find((r) => r.prefix === "down")!;
      assert.equal(down.health.state, "failing");
      assert.equal(down.health.errorRate, 1);
      assert.match(down.health.lastError!.message, /GET manifests/);
      assert.ok(s.recentErrors.some((e) => e.source === "upstream" && e.registry === "down"));
      assert.deepEqual(s.topImages.byPulls.map((i) => [i.registry, i.repository, i.pulls]), [["fake", "team/app", 2]]);
      assert.equal(s.topImages.byBytes[0].repository, "team/app");
      assert.equal(s.downloads.length, 0);

      const text = await (await fetch(`${cache.url}/api/v1/stats`)).text();
      for (const secret of ["robot-user", "pw-S3cret-value", "FAKE_PW", "tok-", "Bearer", "password", "username"]) {
        assert.ok(!text.includes(secret), `the stats JSON must not carry ${secret}`);
      }

      // /api/v1/images is what `ocicache ls --json` prints for the same store (read beside the running cache).
      const api = await (await fetch(`${cache.url}/api/v1/images`)).json();
      assert.equal(api.length, 1);
      assert.equal(api[0].repository, "team/app");
      assert.deepEqual(api[0].tags.map((t: { tag: string }) => t.tag), ["v1"]);
      const { cmd, args } = ocicacheCommand();
      const ls = await run(cmd, [...args, "ls", "--json", "--storage", cache.storage]);
      assert.equal(ls.code, 0, ls.err);
      assert.deepEqual(JSON.parse(ls.out), api);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("a store bound (--max-size) is reported; without one, null (the page says unbounded)", async () => {
    const up = await startFakeRegistry();
    const cache = await startCache(up.url, { flags: ["--max-size", "100MiB"] });
    try {
      const s = (await (await fetch(`${cache.url}/api/v1/stats`)).json()) as StatsJson;
      assert.equal(s.store.boundBytes, 100 * 1024 * 1024);
      assert.equal(s.store.evictions, 0);
      assert.equal(s.store.blobBytes, 0);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });

  test("with client authentication on, the page and its API need credentials like /v2/", async () => {
    const storage = await mkdtemp(join(tmpdir(), "ocicache-ui-auth-"));
    const token = "ui-test-token-0123456789abcdef";
    const files: Record<string, string> = { "/auth/tokens": `${token} alice\n` };
    const config = await loadConfig({
      flags: parseFlags(["--storage", storage, "--tokens", "/auth/tokens", "--registry", "local=http://127.0.0.1:9"]),
      env: () => undefined,
      readText: (p) => (p in files ? Promise.resolve(files[p]) : Promise.reject(new Error("no such file"))),
    });
    const rt = detectRuntime();
    const service = await openService(config, rt, silentLogger);
    const server = await rt.serve({ hostname: "127.0.0.1", port: 0, handler: service.handler });
    try {
      const base = `http://127.0.0.1:${server.port}`;
      for (const path of ["/", "/api/v1/stats", "/api/v1/images"]) {
        const anon = await fetch(`${base}${path}`);
        await anon.arrayBuffer();
        assert.equal(anon.status, 401, path);
        assert.match(anon.headers.get("www-authenticate") ?? "", /^Basic /, path);
        // What a browser sends after its Basic prompt (a token is also its user's Basic password).
        const basic = await fetch(`${base}${path}`, { headers: { authorization: "Basic " + btoa(`alice:${token}`) } });
        await basic.arrayBuffer();
        assert.equal(basic.status, 200, path);
      }
    } finally {
      await server.shutdown();
      await service.close();
      await rm(storage, { recursive: true, force: true });
    }
  });

  test("--ui=false: no page and no API (404), the registry API unaffected", async () => {
    const up = await startFakeRegistry();
    const cache = await startCache(up.url, { flags: ["--ui=false"] });
    try {
      for (const path of ["/", "/api/v1/stats", "/api/v1/images"]) {
        const res = await fetch(`${cache.url}${path}`);
        await res.arrayBuffer();
        assert.equal(res.status, 404, path);
      }
      const v2 = await fetch(`${cache.url}/v2/`);
      await v2.arrayBuffer();
      assert.equal(v2.status, 200);
    } finally {
      await cache.destroy();
      await up.stop();
    }
  });
});

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (b) => (out += b));
    p.stderr.on("data", (b) => (err += b));
    p.on("error", (e) => resolve({ code: null, out, err: err + String(e) }));
    p.on("close", (code) => resolve({ code, out, err }));
  });
}
