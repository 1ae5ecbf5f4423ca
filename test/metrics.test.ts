/** Metrics: exposition format, and the counters a real pull moves. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Counter, Histogram, Metrics } from "../src/metrics.ts";
import { imageManifest, randomBytes, startFakeRegistry } from "./support/fake_registry.ts";
import { startCache } from "./support/cache.ts";

test("counter and histogram render Prometheus text with escaped labels", () => {
  const c = new Counter("x_total", "help");
  c.inc({ a: 'q"uote' });
  c.inc({ a: 'q"uote' }, 2);
  assert.match(c.render(), /^x_total\{a="q\\"uote"\} 3$/m);
  assert.equal(c.sum(), 3);
  const h = new Histogram("lat_seconds", "help", [0.1, 1]);
  h.observe({ r: "x" }, 0.05);
  h.observe({ r: "x" }, 0.5);
  h.observe({ r: "x" }, 5);
  const text = h.render();
  assert.match(text, /lat_seconds_bucket\{r="x",le="0.1"\} 1/);
  assert.match(text, /lat_seconds_bucket\{r="x",le="1"\} 2/);
  assert.match(text, /lat_seconds_bucket\{r="x",le="\+Inf"\} 3/);
  assert.match(text, /lat_seconds_count\{r="x"\} 3/);
});

test("a pull moves the request, cache, upstream and store figures on /metrics", async () => {
  const up = await startFakeRegistry();
  const layer = randomBytes(100_000, 41);
  const ld = up.putBlob(layer);
  up.putManifest("m/app", imageManifest({ digest: ld, size: layer.length }, []), "application/vnd.oci.image.manifest.v1+json", "v1");
  const cache = await startCache(up.url);
  try {
    await (await fetch(`${cache.url}/v2/fake/m/app/manifests/v1`)).arrayBuffer();
    await (await fetch(`${cache.url}/v2/fake/m/app/manifests/v1`)).arrayBuffer();
    await (await fetch(`${cache.url}/v2/fake/m/app/blobs/${ld}`)).arrayBuffer();
    await Promise.all((await cache.service.flights.active()).map((f) => f.done));
    await (await fetch(`${cache.url}/v2/fake/m/app/blobs/${ld}`)).arrayBuffer();
    const res = await fetch(`${cache.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
    const text = await res.text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    assert.equal(value(/ocicache_requests_total\{endpoint="manifest",status="200",cache="miss"\} (\d+)/), 1);
    assert.equal(value(/ocicache_requests_total\{endpoint="manifest",status="200",cache="hit"\} (\d+)/), 1);
    assert.equal(value(/ocicache_requests_total\{endpoint="blob",status="200",cache="miss"\} (\d+)/), 1);
    assert.equal(value(/ocicache_requests_total\{endpoint="blob",status="200",cache="hit"\} (\d+)/), 1);
    assert.ok(value(/ocicache_upstream_bytes_total\{registry="fake"\} (\d+)/) >= layer.length);
    assert.equal(value(/ocicache_upstream_requests_total\{registry="fake",kind="blobs",method="GET",status="200"\} (\d+)/), 1);
    assert.match(text, /ocicache_upstream_request_duration_seconds_count\{registry="fake"\} \d+/);
    assert.ok(value(/^ocicache_store_bytes (\d+)$/m) >= layer.length);
    assert.equal(value(/^ocicache_store_objects (\d+)$/m), 2);
    assert.equal(value(/^ocicache_downloads_in_flight (\d+)$/m), 0);
    assert.ok(value(/ocicache_served_bytes_total\{endpoint="blob",cache="hit"\} (\d+)/) >= layer.length);
  } finally {
    await cache.destroy();
    await up.stop();
  }
});

test("Metrics renders every family even before traffic", async () => {
  const m = new Metrics();
  m.gauge("g_x", "help", () => 7);
  const text = await m.render();
  for (const name of ["ocicache_requests_total", "ocicache_upstream_requests_total", "ocicache_upstream_request_duration_seconds", "g_x"]) {
    assert.match(text, new RegExp(`# TYPE ${name} `));
  }
  assert.match(text, /^g_x 7$/m);
});
