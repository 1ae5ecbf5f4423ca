/**
 * End to end with real tools: skopeo pulls through an ocicache child process that fronts a real
 * docker-registry. Upstream requests are counted from docker-registry's own access log (one line
 * per request it answered, with method, path and User-Agent).
 *
 * Needs `docker-registry` and `skopeo` (Debian packages of those names); skipped loudly when one
 * is missing, failed instead with OCICACHE_E2E_REQUIRED=1. Set OCICACHE_BIN to test a compiled
 * binary instead of the source.
 */
import { DEFAULT_ACCEPT } from "../src/oci/media_types.ts";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type LayoutInfo, makeImageLayout, makeIndexLayout } from "./support/fixtures.ts";
import { countByCache, type OcicacheProcess, requestLines, startOcicache } from "./support/ocicache_process.ts";
import {
  type AccessLogEntry,
  type E2ETool,
  e2eTools,
  isSyncMarker,
  type RealRegistry,
  requireOrSkip,
  startDockerRegistry,
  syncAccessLog,
} from "./support/real_registry.ts";
import { dirManifestDigest, pushLayout, type SkopeoResult, skopeoCopy, verifyDirCopy } from "./support/skopeo.ts";

const TOOLS: E2ETool[] = ["docker-registry", "skopeo"];
const TAG = "1.0";
const SKOPEO_TIMEOUT_MS = 30_000;
/** Every manifest type, as a registry client sends it. */
const ACCEPT = DEFAULT_ACCEPT;

/** One image pushed to the upstream. */
interface Fixture {
  name: string;
  repo: string;
  /** skopeo `--all` (multi-platform). */
  all: boolean;
  layout: LayoutInfo;
  /** Digest of the top manifest as stored upstream (the sha256 of its bytes there). */
  pushed: string;
  /** Every file digest a `dir:` copy must hold besides manifest.json (blobs + instance manifests). */
  files: string[];
  /** The blobs (configs and layers) of the image(s). */
  blobs: string[];
}

interface World {
  work: string;
  upstream: RealRegistry;
  oc: OcicacheProcess;
  fixtures: { oci: Fixture; index: Fixture; v2s2: Fixture; byDigest: Fixture };
}

let world: World | undefined;
const cleanups: (() => Promise<unknown>)[] = [];
let pulls = 0;

const sha256 = (b: Uint8Array) => "sha256:" + createHash("sha256").update(b).digest("hex");
const uniq = (xs: string[]) => [...new Set(xs)].sort();

/** GET a manifest straight from the upstream; checks the header against the bytes. */
async function upstreamManifest(reg: RealRegistry, repo: string, ref: string): Promise<{ digest: string; json: any }> {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(5000) });
  const bytes = new Uint8Array(await res.arrayBuffer());
  assert.equal(res.status, 200, `upstream ${repo}:${ref}`);
  const digest = sha256(bytes);
  assert.equal(res.headers.get("docker-content-digest"), digest);
  return { digest, json: JSON.parse(new TextDecoder().decode(bytes)) };
}

async function makeFixture(
  w: { work: string; upstream: RealRegistry },
  name: string,
  repo: string,
  layout: LayoutInfo,
  opts: { format?: "v2s2"; all?: boolean } = {},
): Promise<Fixture> {
  await pushLayout(layout.dir, layout.tag, w.upstream.hostPort, repo, opts);
  const top = await upstreamManifest(w.upstream, repo, TAG);
  const blobs = layout.images.flatMap((im) => [im.config.digest, ...im.layers.map((l) => l.digest)]);
  const instances: string[] = [];
  if (Array.isArray(top.json.manifests)) {
    for (const d of top.json.manifests) instances.push(d.digest);
  }
  if (!opts.format) assert.equal(top.digest, layout.top.digest, `${name}: an OCI push keeps the manifest bytes`);
  else assert.equal(top.json.mediaType, "application/vnd.docker.distribution.manifest.v2+json", `${name}: pushed as schema2`);
  return { name, repo, all: Boolean(opts.all), layout, pushed: top.digest, files: uniq([...blobs, ...instances]), blobs: uniq(blobs) };
}

async function setup(): Promise<World> {
  const work = await mkdtemp(join(tmpdir(), "ocicache-e2e-skopeo-"));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const upstream = await startDockerRegistry({ accessLog: true });
  cleanups.push(() => upstream.stop());
  const w = { work, upstream };
  const [l1, l2, l3, l4] = await Promise.all([
    makeImageLayout(join(work, "layout-oci"), { seed: "e2e-skopeo-oci", layerSizes: [262144, 65536], tag: TAG }),
    makeIndexLayout(join(work, "layout-index"), {
      seed: "e2e-skopeo-index",
      platforms: [{ os: "linux", architecture: "amd64" }, { os: "linux", architecture: "arm64" }],
      layerSizes: [131072],
      tag: TAG,
    }),
    makeImageLayout(join(work, "layout-v2s2"), { seed: "e2e-skopeo-v2s2", layerSizes: [196608], tag: TAG }),
    makeImageLayout(join(work, "layout-digest"), { seed: "e2e-skopeo-digest", layerSizes: [98304], tag: TAG }),
  ]);
  const [oci, index, v2s2, byDigest] = await Promise.all([
    makeFixture(w, "single-platform OCI image", "e2e/oci-image", l1),
    makeFixture(w, "multi-arch OCI index", "e2e/multi-arch", l2, { all: true }),
    makeFixture(w, "Docker schema2 image", "e2e/docker-v2s2", l3, { format: "v2s2" }),
    makeFixture(w, "image pulled by digest first", "e2e/by-digest", l4),
  ]);
  assert.equal(index.files.length, 2 + 2 + 2 + 1, "index: 2 manifests, 2 configs, 2 own layers, 1 shared layer");

  const oc = await startOcicache(["--registry", `local=${upstream.url}`, "--default-registry", "local"]);
  cleanups.push(() => oc.stop());
  return { work, upstream, oc, fixtures: { oci, index, v2s2, byDigest } };
}

/** skopeo copy `src` → a fresh dir:; asserts success; returns the directory. */
async function copyToDir(src: string, extra: string[] = []): Promise<{ dir: string; result: SkopeoResult }> {
  const dir = join(world!.work, `pull-${++pulls}`);
  const result = await skopeoCopy(src, `dir:${dir}`, extra, { timeoutMs: SKOPEO_TIMEOUT_MS });
  assert.equal(result.code, 0, `skopeo copy ${src} failed (code ${result.code}${result.timedOut ? ", timed out" : ""}):\n${result.stderr}`);
  return { dir, result };
}

/** Byte-for-byte identity of a dir: copy with what was pushed. */
async function verifyCopy(f: Fixture, dir: string): Promise<void> {
  const verified = await verifyDirCopy(dir);
  assert.deepEqual(verified, f.files, `${f.name}: every file of the copy hashes to its name and nothing is missing`);
  assert.equal(await dirManifestDigest(dir), f.pushed, `${f.name}: top manifest is the pushed bytes`);
}

/** Runs `fn` and returns the upstream's access-log entries for requests made meanwhile. */
async function upstreamDuring(fn: () => Promise<void>): Promise<AccessLogEntry[]> {
  const reg = world!.upstream;
  await syncAccessLog(reg);
  const mark = reg.accessLog().length;
  await fn();
  await syncAccessLog(reg);
  return reg.accessLog().slice(mark).filter((e) => !isSyncMarker(e));
}

/** Runs `fn` and returns ocicache's log lines written meanwhile. */
async function ocicacheDuring(fn: () => Promise<void>): Promise<ReturnType<OcicacheProcess["logLines"]>> {
  const oc = world!.oc;
  await oc.sync();
  const mark = oc.logLines().length;
  await fn();
  await oc.sync();
  return oc.logLines().slice(mark);
}

const isBlobGet = (e: AccessLogEntry) => e.method === "GET" && /\/blobs\/sha256:[0-9a-f]{64}$/.test(e.uri);
const blobOf = (e: AccessLogEntry) => e.uri.slice(e.uri.lastIndexOf("/") + 1);
const show = (es: AccessLogEntry[]) => es.map((e) => `${e.method} ${e.uri} ${e.status} ${e.userAgent}`).join("\n");

function ready(t: { skip?: (m?: string) => void }): boolean {
  if (!requireOrSkip(t, TOOLS)) return false;
  assert.ok(world, "setup did not complete (see the before hook's error)");
  return true;
}

describe("e2e: skopeo through an ocicache process in front of docker-registry", () => {
  before(async () => {
    const tools = e2eTools();
    if (!tools.dockerRegistry || !tools.skopeo) return; // each test skips (or fails) loudly
    world = await setup();
  });

  after(async () => {
    // Stop in reverse order of start; every step bounded (ocicache: SIGKILL after 10 s, registry after 5 s).
    for (const c of cleanups.reverse()) await c().catch((e) => console.error("cleanup:", e));
  });

  test("first pull of each fixture through the prefixed route fetches each blob from upstream exactly once", async (t) => {
    if (!ready(t)) return;
    const { oc, fixtures } = world!;
    for (const f of [fixtures.oci, fixtures.index, fixtures.v2s2]) {
      let dir = "";
      const logs: ReturnType<OcicacheProcess["logLines"]>[] = [];
      const up = await upstreamDuring(async () => {
        logs.push(await ocicacheDuring(async () => {
          ({ dir } = await copyToDir(`docker://${oc.hostPort}/local/${f.repo}:${TAG}`, f.all ? ["--all"] : []));
        }));
      });
      await verifyCopy(f, dir);
      // The count is real: docker-registry logged these GETs, all from ocicache, one per blob.
      const blobGets = up.filter(isBlobGet);
      assert.deepEqual(blobGets.map(blobOf).sort(), f.blobs, `${f.name}: one upstream GET per blob\n${show(up)}`);
      assert.ok(up.every((e) => e.userAgent.startsWith("ocicache")), `${f.name}: only ocicache talked to upstream\n${show(up)}`);
      assert.ok(up.some((e) => e.method === "GET" && e.uri === `/v2/${f.repo}/manifests/${TAG}`), `${f.name}: tag fetched upstream`);
      const blobs = countByCache(logs[0], { kind: "blob", method: "GET" });
      assert.ok((blobs.miss ?? 0) + (blobs.coalesced ?? 0) >= 1, `${f.name}: blob misses logged: ${JSON.stringify(blobs)}`);
      assert.equal(blobs.pass ?? 0, 0, `${f.name}: blobs stored, not passed through`);
    }
  });

  test("second pull of each fixture is served from the cache: zero upstream requests", async (t) => {
    if (!ready(t)) return;
    const { oc, fixtures } = world!;
    const dirs: [Fixture, string][] = [];
    let logs: ReturnType<OcicacheProcess["logLines"]> = [];
    const up = await upstreamDuring(async () => {
      logs = await ocicacheDuring(async () => {
        for (const f of [fixtures.oci, fixtures.index, fixtures.v2s2]) {
          const { dir } = await copyToDir(`docker://${oc.hostPort}/local/${f.repo}:${TAG}`, f.all ? ["--all"] : []);
          dirs.push([f, dir]);
        }
      });
    });
    for (const [f, dir] of dirs) await verifyCopy(f, dir);
    assert.deepEqual(up.filter(isBlobGet), [], `no upstream blob GETs in round 2\n${show(up)}`);
    assert.deepEqual(up, [], `no upstream requests at all in round 2 (tags are fresh)\n${show(up)}`);
    const blobs = countByCache(logs, { kind: "blob" });
    const manifests = countByCache(logs, { kind: "manifest" });
    const expectedBlobs = fixtures.oci.blobs.length + fixtures.index.blobs.length + fixtures.v2s2.blobs.length;
    assert.deepEqual(Object.keys(blobs), ["hit"], `blobs: ${JSON.stringify(blobs)}`);
    assert.ok(blobs.hit >= expectedBlobs, `at least ${expectedBlobs} blob hits: ${JSON.stringify(blobs)}`);
    assert.deepEqual(Object.keys(manifests), ["hit"], `manifests: ${JSON.stringify(manifests)}`);
    assert.ok(manifests.hit >= 3 + 2, `manifest hits: ${JSON.stringify(manifests)}`);
  });

  test("unprefixed route (docker://HOST/REPO:TAG) goes to the default registry", async (t) => {
    if (!ready(t)) return;
    const { oc, fixtures } = world!;
    const f = fixtures.oci;
    let dir = "";
    let logs: ReturnType<OcicacheProcess["logLines"]> = [];
    const up = await upstreamDuring(async () => {
      logs = await ocicacheDuring(async () => {
        ({ dir } = await copyToDir(`docker://${oc.hostPort}/${f.repo}:${TAG}`));
      });
    });
    await verifyCopy(f, dir);
    const reqs = requestLines(logs).filter((l) => l.path !== "/v2/");
    assert.ok(reqs.length >= 1 + f.blobs.length, `requests logged:\n${JSON.stringify(reqs)}`);
    for (const r of reqs) {
      assert.ok(r.path.startsWith(`/v2/${f.repo}/`), `unprefixed path: ${r.path}`);
      assert.equal(r.registry, "local", `routed to the default registry: ${JSON.stringify(r)}`);
      assert.equal(r.cache, "hit", `same cache entries as the prefixed route: ${JSON.stringify(r)}`);
    }
    assert.deepEqual(up, [], `upstream not asked:\n${show(up)}`);
  });

  test("pull by digest: a cached index (--all) with zero upstream requests; an uncached image once", async (t) => {
    if (!ready(t)) return;
    const { oc, fixtures } = world!;
    // Cached: the multi-arch index, by its digest.
    {
      const f = fixtures.index;
      let dir = "";
      let logs: ReturnType<OcicacheProcess["logLines"]> = [];
      const up = await upstreamDuring(async () => {
        logs = await ocicacheDuring(async () => {
          ({ dir } = await copyToDir(`docker://${oc.hostPort}/local/${f.repo}@${f.pushed}`, ["--all"]));
        });
      });
      await verifyCopy(f, dir);
      assert.deepEqual(up, [], `cached index by digest: upstream not asked\n${show(up)}`);
      const top = requestLines(logs, { kind: "manifest" }).filter((l) => l.path.endsWith(`/manifests/${f.pushed}`));
      assert.ok(top.length >= 1 && top.every((l) => l.cache === "hit"), JSON.stringify(top));
    }
    // Never seen by ocicache: fetched by digest once, then served from the cache.
    {
      const f = fixtures.byDigest;
      const src = `docker://${oc.hostPort}/local/${f.repo}@${f.pushed}`;
      let dir = "";
      const up1 = await upstreamDuring(async () => {
        ({ dir } = await copyToDir(src));
      });
      await verifyCopy(f, dir);
      assert.ok(up1.some((e) => e.method === "GET" && e.uri === `/v2/${f.repo}/manifests/${f.pushed}`), `manifest by digest upstream\n${show(up1)}`);
      assert.deepEqual(up1.filter(isBlobGet).map(blobOf).sort(), f.blobs, `one GET per blob\n${show(up1)}`);
      assert.ok(!up1.some((e) => e.uri.includes(`/manifests/${TAG}`)), "no tag lookup for a digest pull");
      const up2 = await upstreamDuring(async () => {
        ({ dir } = await copyToDir(src));
      });
      await verifyCopy(f, dir);
      assert.deepEqual(up2, [], `second digest pull: upstream not asked\n${show(up2)}`);
    }
  });

  test("registries.conf mirror with a path (HOST/local) serves a pull of the upstream's own name", async (t) => {
    if (!ready(t)) return;
    const { oc, upstream, fixtures, work } = world!;
    const f = fixtures.v2s2;
    // skopeo 1.9.3 (containers-registries.conf(5)): a reference under `prefix` is rewritten to
    // the mirror's location, path included: UPSTREAM/e2e/docker-v2s2:1.0 → OCICACHE/local/e2e/docker-v2s2:1.0.
    // The mirror is tried first; the primary location only if the mirror fails.
    const conf = join(work, "registries.conf");
    await writeFile(
      conf,
      [
        "unqualified-search-registries = []",
        "",
        "[[registry]]",
        `prefix = "${upstream.hostPort}"`,
        `location = "${upstream.hostPort}"`,
        "insecure = true",
        "",
        "[[registry.mirror]]",
        `location = "${oc.hostPort}/local"`,
        "insecure = true",
        "",
      ].join("\n"),
    );
    let dir = "";
    let logs: ReturnType<OcicacheProcess["logLines"]> = [];
    const up = await upstreamDuring(async () => {
      logs = await ocicacheDuring(async () => {
        ({ dir } = await copyToDir(`docker://${upstream.hostPort}/${f.repo}:${TAG}`, ["--registries-conf", conf]));
      });
    });
    await verifyCopy(f, dir);
    const reqs = requestLines(logs, { pathIncludes: `/v2/local/${f.repo}/` });
    assert.ok(reqs.some((l) => l.path === `/v2/local/${f.repo}/manifests/${TAG}` && l.status === 200), `mirror got the tag:\n${JSON.stringify(reqs)}`);
    assert.deepEqual(
      requestLines(reqs, { kind: "blob" }).map((l) => l.path.slice(l.path.lastIndexOf("/") + 1)).sort(),
      f.blobs,
      "every blob came from the mirror",
    );
    assert.ok(reqs.every((l) => l.cache === "hit"), JSON.stringify(reqs));
    // skopeo never fell back to the primary: the upstream saw nothing at all (the image is cached).
    assert.deepEqual(up, [], `upstream not asked during the mirror pull:\n${show(up)}`);
    assert.equal(JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")).mediaType, "application/vnd.docker.distribution.manifest.v2+json");
  });

  test("SIGTERM stops ocicache cleanly: exit code 0, no error lines", async (t) => {
    if (!ready(t)) return;
    const { oc } = world!;
    const code = await oc.stop("SIGTERM");
    assert.equal(code, 0, oc.logs().slice(-2000));
    assert.deepEqual(oc.logLines().filter((l) => l.level === "error"), [], "ocicache logged no errors");
    assert.ok(oc.logLines().some((l) => l.msg === "stopped"), "logged its stop");
  });
});
