/**
 * A bounded soak: 32 client loops pull images through one in-process cache fronting one fake
 * upstream (chunked, slightly delayed blob bodies, so downloads overlap and coalesce) for
 * OCICACHE_SOAK_SECONDS (default 20), while new image versions and fresh blobs keep arriving
 * upstream and faults are injected at seeded random moments: a 503, a 502, a 429 with
 * `Retry-After: 0` (each once, retried by the cache), a blob that dies part-way (resumed), a blob
 * with wrong bytes (its clients must see a broken transfer), and a ~1 s upstream outage (stale
 * tags served with a Warning; misses may fail).
 *
 * Every response is checked (sha256 of every 200 body against its digest, 206 bytes against the
 * slice, manifests against the tag's history) and classified. At the end: no wrong bytes, no 5xx
 * on a cached object, every fault fired, and the store passes `reconcile --verify` untouched.
 * Figures go to stderr (one line) and to `$OCICACHE_TEST_OUTPUT/soak-<runtime>.json`.
 *
 * OCICACHE_SOAK_SEED changes the seed (content, popularity, fault schedule); the interleaving
 * of 32 concurrent loops is of course not reproducible.
 */
import { prng } from "./support/prng.ts";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { imageManifest, randomBytes, sha256, startFakeRegistry } from "./support/fake_registry.ts";
import { startCache } from "./support/cache.ts";
import { reconcile, type ReconcileReport } from "../src/store/maintenance.ts";
import { concat } from "../src/download/window.ts";

const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const OUT = resolve(REPO_ROOT, process.env.OCICACHE_TEST_OUTPUT ?? "test-output");
const SECONDS = Number(process.env.OCICACHE_SOAK_SECONDS ?? 20);
const SEED = Number(process.env.OCICACHE_SOAK_SEED ?? 20261127) >>> 0;
const LOOPS = 32;
const IMAGES = 30;
/** Per request (headers and body). A request that takes this long is a hang: counted and failed. */
const REQUEST_TIMEOUT_MS = 20_000;
const KiB = 1024;
const MiB = 1024 * KiB;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT = `${OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json`;
/** An outage may still reach a request this long after it ended (a retry or a joined download start in flight). */
const OUTAGE_GRACE_MS = 250;
/**
 * Ranged requests on the wrong-bytes blob too: a range of a running download ends cleanly only
 * once the whole blob's digest has checked out, so a wrong download breaks ranged clients off
 * like the rest.
 */
const RANGES_ON_WRONG_BYTES = true;

assert.ok(Number.isFinite(SECONDS) && SECONDS >= 10, `OCICACHE_SOAK_SECONDS must be at least 10, got ${process.env.OCICACHE_SOAK_SECONDS}`);


const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Log-uniform size in [lo, hi]. */
function logSize(rnd: () => number, lo: number, hi: number): number {
  return Math.round(Math.exp(Math.log(lo) + rnd() * (Math.log(hi) - Math.log(lo))));
}

type Kind =
  | "ok"
  | "ok-stale"
  | "aborted"
  | "4xx"
  | "5xx-on-miss"
  | "5xx-on-hit"
  | "wrong-bytes"
  | "timeout"
  | "client-left";

/** A request that did not simply succeed, kept for judging against the fault timeline. */
interface Event {
  kind: Kind;
  t0: number;
  t1: number;
  method: string;
  path: string;
  status?: number;
  cache?: string | null;
  digest?: string;
  detail?: string;
}

interface Image {
  repo: string;
  /** Every digest the tag `latest` has pointed to (stale answers may name an older one). */
  history: Set<string>;
}

interface PoolEntry {
  digest: string;
  size: number;
  addedAt: number;
  /** A fault target: picked more often while live. */
  featured: boolean;
  noRange: boolean;
  /** Live this long after being added. */
  liveMs: number;
}

test(`soak: ${LOOPS} clients for ${SECONDS} s through one cache, with faults; no wrong bytes, no 5xx on hits, store consistent`, async () => {
  const testStarted = Date.now();
  const content = prng(SEED);
  const up = await startFakeRegistry({ chunkSize: 64 * KiB, chunkDelayMs: 4 });
  const cache = await startCache(up.url, { flags: ["--tag-ttl", "1s"] });
  // The cache reads its clock from `cache.clock.now`; let it follow real time so tags age.
  Object.defineProperty(cache.clock, "now", { get: () => Date.now(), configurable: true });
  const metrics = cache.service.metrics;

  // --- Content ----------------------------------------------------------------------------
  const blobs = new Map<string, Uint8Array>();
  const manifests = new Map<string, Uint8Array>();
  let nextSeed = (SEED % 100_000) * 1000 + 7;
  const newBlob = (size: number): string => {
    for (;;) {
      const bytes = randomBytes(size, nextSeed++);
      const d = sha256(bytes);
      if (blobs.has(d)) continue;
      blobs.set(d, bytes);
      up.putBlob(bytes);
      return d;
    }
  };
  const ref = (d: string) => ({ digest: d, size: blobs.get(d)!.length });
  const publish = (img: Image, config: string, layers: string[]) => {
    const bytes = imageManifest(ref(config), layers.map(ref));
    const d = up.putManifest(img.repo, bytes, OCI_MANIFEST, "latest");
    manifests.set(d, bytes);
    img.history.add(d);
  };
  const shared = Array.from({ length: 4 }, () => newBlob(logSize(content, 256 * KiB, 3 * MiB)));
  const images: Image[] = [];
  const layersOf = new Map<Image, string[]>();
  for (let i = 0; i < IMAGES; i++) {
    const img: Image = { repo: `soak/app-${String(i).padStart(2, "0")}`, history: new Set() };
    const n = 2 + Math.floor(content() * 3); // 2–4 layers
    const layers: string[] = [];
    for (let j = 0; j < n; j++) {
      layers.push(j === 0 && content() < 0.5 ? shared[Math.floor(content() * shared.length)] : newBlob(logSize(content, KiB, 3 * MiB)));
    }
    publish(img, newBlob(logSize(content, KiB, 4 * KiB)), layers);
    images.push(img);
    layersOf.set(img, layers);
  }
  const initialBlobs = blobs.size;

  // --- Figures ------------------------------------------------------------------------------
  const counts: Record<Kind, number> = {
    ok: 0, "ok-stale": 0, aborted: 0, "4xx": 0, "5xx-on-miss": 0, "5xx-on-hit": 0, "wrong-bytes": 0, timeout: 0, "client-left": 0,
  };
  const events: Event[] = [];
  const violations: string[] = [];
  const violate = (msg: string) => {
    if (violations.length < 50) violations.push(msg);
  };
  let requests = 0;
  let bytesServed = 0;
  let ranged = 0;
  let rangeIgnored = 0;
  const byCache: Record<string, number> = {};
  let heads = 0;
  const okByDigest = new Map<string, number>();
  /** Digests some client received completely (200, verified): cached from then on. */
  const completed = new Set<string>();
  /**
   * Digests served whole per repository: content cached through another repository is
   * confirmed upstream first (repository scoping), so it is only "known cached" for the same one.
   */
  const completedIn = new Set<string>();
  const repoOf = (path: string) => path.replace(/\/(blobs|manifests)\/[^/]+$/, "");
  const outages: { start: number; end: number }[] = [];
  const pool: PoolEntry[] = [];
  let freshBlobs = 0;
  let newVersions = 0;

  const runStarted = Date.now();
  const deadline = runStarted + SECONDS * 1000;

  /** One request, verified and classified. Returns the manifest bytes or header digest when asked. */
  async function ask(o: {
    method: "GET" | "HEAD";
    path: string;
    /** Content digest the answer must have (by digest), or undefined (by tag: checked against `tagOf`). */
    digest?: string;
    tagOf?: Image;
    range?: { header: string; start: number; end: number; size: number };
    /** A Range header sent as is (a deliberate 416). */
    rawRange?: string;
    /** A deliberate 404/416. */
    expectStatus?: number;
    /** Read one chunk, then go away. */
    leave?: boolean;
    /** Keep the body (manifests). */
    keep?: boolean;
  }): Promise<{ ok: boolean; digest?: string; body?: Uint8Array }> {
    requests++;
    const t0 = Date.now();
    const knownCached = o.digest !== undefined && completedIn.has(`${repoOf(o.path)}|${o.digest}`);
    const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    const headers: Record<string, string> = { accept: ACCEPT };
    if (o.range) headers.range = o.range.header;
    if (o.rawRange) headers.range = o.rawRange;
    const ev = (kind: Kind, extra: Partial<Event> = {}) => {
      counts[kind]++;
      if (kind !== "ok") events.push({ kind, t0, t1: Date.now(), method: o.method, path: o.path, digest: o.digest, ...extra });
    };
    let res: Response;
    try {
      res = await fetch(`${cache.url}${o.path}`, { method: o.method, headers, signal });
    } catch (e) {
      ev(signal.aborted ? "timeout" : "aborted", { detail: `no response: ${(e as Error)?.message ?? e}` });
      return { ok: false };
    }
    const status = res.status;
    const xcache = res.headers.get("x-cache");
    byCache[xcache ?? "none"] = (byCache[xcache ?? "none"] ?? 0) + 1;
    const hitLike = xcache === "hit" || xcache === "revalidated" || xcache === "stale";
    // Once a client has had a blob whole, it is a hit, or (while its commit still runs behind the
    // clients) served from that verified download: never fetched from upstream again.
    if (knownCached && xcache !== "hit" && xcache !== "coalesced") {
      violate(`${o.method} ${o.path}: already cached, but X-Cache ${xcache} (status ${status})`);
    }
    if (status >= 400) {
      await res.arrayBuffer().catch(() => {});
      if (status >= 500) {
        ev(hitLike || knownCached ? "5xx-on-hit" : "5xx-on-miss", { status, cache: xcache });
      } else {
        ev("4xx", { status, cache: xcache });
        if (status !== o.expectStatus) violate(`${o.method} ${o.path}: unexpected ${status} (X-Cache ${xcache})`);
      }
      return { ok: false };
    }
    if (o.expectStatus !== undefined) violate(`${o.method} ${o.path}: expected ${o.expectStatus}, got ${status}`);
    const stale = xcache === "stale";
    const warning = res.headers.get("warning");
    if (stale && !/^110 /.test(warning ?? "")) violate(`${o.path}: X-Cache stale without a 110 Warning (${warning})`);
    if (!stale && warning) violate(`${o.path}: Warning ${warning} on a ${xcache} answer`);
    const hdrDigest = res.headers.get("docker-content-digest");

    // The body: hashed as it streams; kept for manifests and ranges.
    const hash = createHash("sha256");
    const chunks: Uint8Array[] = [];
    let n = 0;
    const keep = o.keep || !!o.range;
    if (res.body && o.method === "GET") {
      const reader = res.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          hash.update(value);
          n += value.length;
          if (keep) chunks.push(value);
          if (o.leave) {
            await reader.cancel().catch(() => {});
            bytesServed += n;
            ev("client-left", { status, cache: xcache });
            return { ok: false };
          }
        }
      } catch (e) {
        bytesServed += n;
        ev(signal.aborted ? "timeout" : "aborted", { status, cache: xcache, detail: `after ${n} bytes: ${(e as Error)?.message ?? e}` });
        return { ok: false };
      }
    } else if (res.body) {
      await res.body.cancel().catch(() => {});
    }
    bytesServed += n;
    const got = "sha256:" + hash.digest("hex");
    const wrong = (why: string) => {
      ev("wrong-bytes", { status, cache: xcache, detail: why });
      violate(`WRONG BYTES ${o.method} ${o.path} (status ${status}, X-Cache ${xcache}): ${why}`);
      return { ok: false };
    };
    const body = () => concat(chunks, n);

    let digest = o.digest;
    if (o.range && status === 200) {
      // RFC 9110 lets a server ignore Range. ocicache does so for a download whose size the
      // upstream did not announce (the fake on Bun streams without Content-Length): the whole
      // blob, verified like any 200. A cached blob's size is known: there it must be a 206.
      if (xcache === "hit") return wrong(`asked ${o.range.header} of a cached blob, got a whole 200`);
      if (got !== digest) return wrong(`range ignored; the whole body hashes to ${got} (${n} bytes), expected ${digest}`);
      rangeIgnored++;
    } else if (o.range) {
      const { start, end, size } = o.range;
      if (status !== 206) return wrong(`asked ${o.range.header}, got ${status}`);
      const cr = res.headers.get("content-range");
      if (cr !== `bytes ${start}-${end}/${size}`) return wrong(`Content-Range ${cr}, expected bytes ${start}-${end}/${size}`);
      const want = blobs.get(o.digest!)!.subarray(start, end + 1);
      const have = body();
      if (have.length !== want.length || !Buffer.from(have).equals(Buffer.from(want))) {
        return wrong(`206 body (${have.length} bytes) is not bytes ${start}-${end} of the blob`);
      }
      ranged++;
    } else if (status !== 200) {
      return wrong(`unexpected status ${status}`);
    } else if (o.tagOf) {
      // By tag: the digest the answer names must be one the tag has pointed to.
      digest = hdrDigest ?? undefined;
      if (!digest || !o.tagOf.history.has(digest)) return wrong(`Docker-Content-Digest ${hdrDigest} was never ${o.tagOf.repo}:latest`);
      if (o.method === "GET" && got !== digest) return wrong(`manifest bytes hash to ${got}, header says ${digest}`);
      if (o.method === "HEAD" && res.headers.get("content-length") !== String(manifests.get(digest)!.length)) {
        return wrong(`HEAD Content-Length ${res.headers.get("content-length")}, manifest is ${manifests.get(digest)!.length}`);
      }
    } else if (o.method === "GET") {
      if (got !== digest) return wrong(`body hashes to ${got} (${n} bytes), expected ${digest}`);
      if (hdrDigest !== digest) return wrong(`Docker-Content-Digest ${hdrDigest}`);
    } else {
      const size = blobs.get(digest!)?.length ?? manifests.get(digest!)?.length;
      if (res.headers.get("content-length") !== String(size)) return wrong(`HEAD Content-Length ${res.headers.get("content-length")}, expected ${size}`);
      if (hdrDigest !== digest) return wrong(`HEAD Docker-Content-Digest ${hdrDigest}`);
    }
    if (o.method === "HEAD") heads++;
    ev(stale ? "ok-stale" : "ok", { status, cache: xcache });
    if (digest) okByDigest.set(digest, (okByDigest.get(digest) ?? 0) + 1);
    if (o.method === "GET" && (!o.range || status === 200) && digest) {
      completed.add(digest);
      completedIn.add(`${repoOf(o.path)}|${digest}`);
    }
    return { ok: true, digest, body: o.keep ? body() : undefined };
  }

  /** A Range header in one of the three forms, valid for `size`. */
  function pickRange(rnd: () => number, size: number): { header: string; start: number; end: number; size: number } {
    const form = rnd();
    if (form < 0.4) {
      const start = Math.floor(rnd() * size);
      const end = Math.min(size - 1, start + Math.floor(rnd() * Math.min(size - start, 512 * KiB)));
      return { header: `bytes=${start}-${end}`, start, end, size };
    }
    if (form < 0.7) {
      const start = Math.floor(rnd() * size);
      return { header: `bytes=${start}-`, start, end: size - 1, size };
    }
    const len = 1 + Math.floor(rnd() * Math.min(size, 256 * KiB));
    return { header: `bytes=-${len}`, start: size - len, end: size - 1, size };
  }

  /** `faulted`: a fault target. No HEAD: the fake counts a HEAD against a fault's `times`, so it would never fire. */
  function pullBlob(rnd: () => number, repo: string, d: string, opts: { noRange?: boolean; faulted?: boolean } = {}) {
    const size = blobs.get(d)!.length;
    const path = `/v2/fake/${repo}/blobs/${d}`;
    const p = rnd();
    const noRange = opts.noRange ?? false;
    if (p < 0.03 && !opts.faulted) return ask({ method: "HEAD", path, digest: d });
    if (p < 0.05) return ask({ method: "GET", path, digest: d, leave: true });
    if (p < 0.2 && !noRange) return ask({ method: "GET", path, digest: d, range: pickRange(rnd, size) });
    return ask({ method: "GET", path, digest: d });
  }

  /** Skewed popularity: a few hot images, a long tail. */
  const pickImage = (rnd: () => number) => images[Math.min(IMAGES - 1, Math.floor(IMAGES * rnd() ** 3))];

  async function pullImage(rnd: () => number) {
    const img = pickImage(rnd);
    let manifest: Uint8Array | undefined;
    if (rnd() < 0.2) {
      // containerd's way: HEAD the tag, then GET the manifest by digest.
      const h = await ask({ method: "HEAD", path: `/v2/fake/${img.repo}/manifests/latest`, tagOf: img });
      if (!h.ok || !h.digest) return;
      const g = await ask({ method: "GET", path: `/v2/fake/${img.repo}/manifests/${h.digest}`, digest: h.digest, keep: true });
      manifest = g.body;
    } else {
      manifest = (await ask({ method: "GET", path: `/v2/fake/${img.repo}/manifests/latest`, tagOf: img, keep: true })).body;
    }
    if (!manifest) return;
    const m = JSON.parse(new TextDecoder().decode(manifest)) as { config: { digest: string }; layers: { digest: string }[] };
    const want = [m.config.digest, ...m.layers.filter(() => rnd() < 0.6).map((l) => l.digest)];
    if (want.length === 1) want.push(m.layers[Math.floor(rnd() * m.layers.length)].digest);
    // Like docker: the blobs of one image in parallel.
    await Promise.all(want.map((d) => pullBlob(rnd, img.repo, d)));
  }

  function livePool(): PoolEntry[] {
    const now = Date.now();
    return pool.filter((e) => now - e.addedAt < e.liveMs);
  }

  async function pullFresh(rnd: () => number, live: PoolEntry[]) {
    const featured = live.filter((e) => e.featured);
    const e = featured.length && rnd() < 0.6 ? featured[Math.floor(rnd() * featured.length)] : live[Math.floor(rnd() * live.length)];
    await pullBlob(rnd, "soak/fresh", e.digest, { noRange: e.noRange, faulted: e.featured });
  }

  async function clientLoop(i: number) {
    const rnd = prng(SEED * 31 + i + 1);
    while (Date.now() < deadline) {
      const r = rnd();
      const live = livePool();
      if (r < 0.015) {
        await ask({ method: "GET", path: `/v2/fake/soak/app-${String(Math.floor(rnd() * IMAGES)).padStart(2, "0")}/manifests/nope-${Math.floor(rnd() * 5)}`, expectStatus: 404 });
      } else if (r < 0.025) {
        // Past the end of a cached blob (a download of unannounced size may ignore Range instead).
        const d = shared[Math.floor(rnd() * shared.length)];
        if (completed.has(d)) await ask({ method: "GET", path: `/v2/fake/soak/base/blobs/${d}`, digest: d, rawRange: `bytes=${blobs.get(d)!.length}-`, expectStatus: 416 });
      } else if (r < 0.25 && live.length) {
        await pullFresh(rnd, live);
      } else {
        await pullImage(rnd);
      }
      await sleep(rnd() * 5);
    }
  }

  // --- Fresh content during the run ----------------------------------------------------------
  async function pusher() {
    const rnd = prng(SEED ^ 0x5eed);
    while (Date.now() < deadline - 1000) {
      await sleep(250 + rnd() * 350);
      if (rnd() < 0.6) {
        // A new version of an image (hot ones more often): new config, new top layer; the tag moves.
        const img = pickImage(rnd);
        const layers = [...layersOf.get(img)!];
        const top = newBlob(logSize(rnd, 16 * KiB, 2 * MiB));
        layers[layers.length - 1] = top;
        layersOf.set(img, layers);
        publish(img, newBlob(logSize(rnd, KiB, 4 * KiB)), layers);
        newVersions++;
        pool.push({ digest: top, size: blobs.get(top)!.length, addedAt: Date.now(), featured: false, noRange: false, liveMs: 3000 });
      } else {
        const d = newBlob(logSize(rnd, 16 * KiB, 3 * MiB));
        pool.push({ digest: d, size: blobs.get(d)!.length, addedAt: Date.now(), featured: false, noRange: false, liveMs: 3000 });
      }
      freshBlobs++;
    }
  }

  // --- Faults at seeded moments ----------------------------------------------------------------
  const until = async (cond: () => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (cond()) return true;
      await sleep(10);
    }
    return cond();
  };
  const upstreamStatus = (s: number) => metrics.upstreamRequests.sum({ status: String(s) });
  const faults = {
    "503-once": { fired: 0, at: 0 },
    "502-once": { fired: 0, at: 0 },
    "429-once": { fired: 0, at: 0 },
    "die-after": { fired: 0, at: 0, digest: "", resumes: 0 },
    "wrong-bytes": { fired: 0, at: 0, digest: "", failedAt: 0 },
    outage: { fired: 0, at: 0, ms: 0, upstream503: 0 },
  };
  type FaultName = keyof typeof faults;

  async function oneShot(name: "503-once" | "502-once" | "429-once", status: number, headers?: Record<string, string>) {
    const before = upstreamStatus(status);
    up.faultAll({ kind: "status", status, headers, times: 1 });
    if (await until(() => upstreamStatus(status) > before, 5000)) faults[name].fired++;
    else up.faultAll(undefined);
  }

  async function inject(name: FaultName, rnd: () => number) {
    faults[name].at = Date.now() - testStarted;
    switch (name) {
      case "503-once":
        return oneShot(name, 503);
      case "502-once":
        return oneShot(name, 502);
      case "429-once":
        return oneShot(name, 429, { "retry-after": "0" });
      case "die-after": {
        const size = logSize(rnd, 1 * MiB, 3 * MiB);
        const d = newBlob(size);
        faults["die-after"].digest = d;
        up.fault(d, { kind: "dieAfter", bytes: Math.floor(size * (0.2 + rnd() * 0.5)), times: 1 });
        pool.push({ digest: d, size, addedAt: Date.now(), featured: true, noRange: false, liveMs: 4000 });
        const resumed = () => up.requests.filter((x) => x.kind === "blob" && x.method === "GET" && x.range && x.path.endsWith(d)).length;
        if (await until(() => resumed() > 0, 5000)) faults["die-after"].fired++;
        return;
      }
      case "wrong-bytes": {
        const size = logSize(rnd, 1 * MiB, 3 * MiB);
        const d = newBlob(size);
        faults["wrong-bytes"].digest = d;
        const before = metrics.storeFailures.sum();
        up.fault(d, { kind: "wrongBytes", times: 1 });
        pool.push({ digest: d, size, addedAt: Date.now(), featured: true, noRange: !RANGES_ON_WRONG_BYTES, liveMs: 4000 });
        if (await until(() => metrics.storeFailures.sum() > before, 5000)) {
          faults["wrong-bytes"].fired++;
          faults["wrong-bytes"].failedAt = Date.now();
          // However busy the loops are, one more pull must find it downloaded afresh and whole.
          await ask({ method: "GET", path: `/v2/fake/soak/base/blobs/${d}`, digest: d });
        }
        return;
      }
      case "outage": {
        const before = upstreamStatus(503);
        const ms = 1000 + Math.floor(rnd() * 300);
        const start = Date.now();
        up.faultAll({ kind: "status", status: 503 });
        await sleep(300);
        // However busy the loops are, one tag that is cached and past its TTL must come back stale.
        for (const img of images) {
          const row = await cache.service.index.getTagDigest("fake", img.repo, "latest");
          if (row && Date.now() - row.checkedAt > 1500) {
            await ask({ method: "GET", path: `/v2/fake/${img.repo}/manifests/latest`, tagOf: img });
            break;
          }
        }
        await sleep(Math.max(0, ms - (Date.now() - start)));
        up.faultAll(undefined);
        outages.push({ start, end: Date.now() });
        faults.outage.ms = Date.now() - start;
        faults.outage.upstream503 = upstreamStatus(503) - before;
        if (faults.outage.upstream503 > 0) faults.outage.fired++;
        return;
      }
    }
  }

  async function faultDriver() {
    const rnd = prng(SEED ^ 0xfa017);
    const order = Object.keys(faults) as FaultName[];
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    // Spread over [1.5 s, duration − 5 s], each at a random moment in the first half of its slot.
    const first = 1500;
    const span = Math.max(3000, SECONDS * 1000 - 5000 - first);
    const slot = span / order.length;
    for (let i = 0; i < order.length; i++) {
      const at = runStarted + first + i * slot + rnd() * slot * 0.5;
      await sleep(Math.max(0, at - Date.now()));
      await inject(order[i], rnd);
    }
  }

  // --- Run -------------------------------------------------------------------------------------
  let report: ReconcileReport | undefined;
  let storeRows = 0;
  let storeBytes = 0;
  try {
    const run = Promise.all([...Array.from({ length: LOOPS }, (_, i) => clientLoop(i)), pusher(), faultDriver()]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("the client loops did not stop within 25 s of the deadline")), deadline - Date.now() + 25_000);
    });
    try {
      await Promise.race([run, bound]);
    } finally {
      clearTimeout(timer);
    }
    const loopsEnded = Date.now();

    // Downloads clients left behind complete into the cache; wait for them (bounded).
    const settled = await until(() => cache.service.flights.size === 0, 15_000);
    await Promise.all((await cache.service.flights.active()).map((f) => f.done));
    assert.ok(settled, `downloads still in flight 15 s after the loops ended: ${cache.service.flights.size}`);
    await cache.service.maintenance.startup;

    // --- Judge the events against the fault timeline ---
    const inOutage = (e: Event) => outages.some((w) => e.t0 <= w.end + OUTAGE_GRACE_MS && e.t1 >= w.start);
    const wb = faults["wrong-bytes"];
    const judged = { abortedCorrect: 0, abortedOutage: 0, fiveOnMissOutage: 0, staleInOutage: 0 };
    for (const e of events) {
      const what = `${e.kind} ${e.method} ${e.path} status=${e.status ?? "-"} X-Cache=${e.cache ?? "-"} t=${e.t0 - testStarted}..${e.t1 - testStarted}ms${e.detail ? ` (${e.detail})` : ""}`;
      switch (e.kind) {
        case "aborted":
          if (e.digest === wb.digest && (!wb.failedAt || e.t0 <= wb.failedAt)) judged.abortedCorrect++;
          else if (inOutage(e)) judged.abortedOutage++;
          else violate(`broken transfer with no fault to explain it: ${what}`);
          break;
        case "5xx-on-miss":
          if (inOutage(e)) judged.fiveOnMissOutage++;
          else violate(`5xx on a miss outside the outage (a one-shot fault should have been retried): ${what}`);
          break;
        case "5xx-on-hit":
          violate(`5xx for something served from the cache: ${what}`);
          break;
        case "ok-stale":
          if (inOutage(e)) judged.staleInOutage++;
          else violate(`stale answer while the upstream was up: ${what}`);
          break;
        case "timeout":
          violate(`request timed out after ${REQUEST_TIMEOUT_MS} ms: ${what}`);
          break;
      }
    }

    // --- The store: reconcile with verify must find nothing to repair ---
    report = await reconcile(cache.service.index, cache.service.cafs, { verify: true, orphanGraceMs: 0, tmpOlderThanMs: 0 });
    const rows = await cache.service.index.listObjects();
    storeRows = rows.length;
    const indexed = new Set<string>();
    for (const row of rows) {
      const bytes = await readFile(cache.service.cafs.pathOf(row.key));
      storeBytes += bytes.length;
      indexed.add(row.digest);
      if (bytes.length !== row.size) violate(`store: ${row.kind} ${row.digest} file is ${bytes.length} bytes, row says ${row.size}`);
      if (sha256(bytes) !== row.digest) violate(`store: ${row.kind} ${row.digest} file hashes to ${sha256(bytes)}`);
      if (!blobs.has(row.digest) && !manifests.has(row.digest)) violate(`store: ${row.kind} ${row.digest} is nothing the upstream ever had`);
    }
    for (const d of completed) if (!indexed.has(d)) violate(`served complete and verified, but not in the index: ${d}`);

    // --- Figures ---
    const upKinds: Record<string, number> = {};
    for (const r of up.requests) upKinds[`${r.kind} ${r.method}`] = (upKinds[`${r.kind} ${r.method}`] ?? 0) + 1;
    const summary = {
      runtime: RUNTIME,
      seconds: SECONDS,
      seed: SEED,
      loops: LOOPS,
      images: IMAGES,
      initialBlobs,
      freshBlobs,
      newVersions,
      requests,
      requestsPerSecond: Math.round(requests / SECONDS),
      heads,
      rangedOk: ranged,
      rangeAnsweredWhole: rangeIgnored,
      bytesServed,
      upstream: {
        requests: up.requests.length,
        byKind: upKinds,
        bytes: metrics.upstreamBytes.sum(),
        storeFailures: metrics.storeFailures.sum(),
      },
      outcomes: counts,
      xCache: byCache,
      judged,
      faults,
      outages: outages.map((w) => ({ startMs: w.start - testStarted, ms: w.end - w.start })),
      store: { rows: storeRows, bytes: storeBytes },
      fsck: report && {
        consistent: report.consistent,
        rowsDropped: report.rowsDropped,
        corruptRemoved: report.corruptRemoved,
        orphansRemoved: report.orphansRemoved,
        orphansReindexed: report.orphansReindexed,
        tmpRemoved: report.tmpRemoved,
        checked: report.checked,
        errors: report.errors,
      },
      violations,
      settleMs: Date.now() - loopsEnded,
      totalMs: Date.now() - testStarted,
    };
    await mkdir(OUT, { recursive: true });
    await writeFile(join(OUT, `soak-${RUNTIME}.json`), JSON.stringify(summary, null, 2) + "\n");
    const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
    const f = faults;
    process.stderr.write(
      `soak ${RUNTIME} ${SECONDS}s seed=${SEED}: ${requests} requests (${summary.requestsPerSecond}/s), ${mib(bytesServed)} served; ` +
        `${ranged} ranges (${rangeIgnored} answered whole), ${heads} HEADs; upstream ${up.requests.length} requests, ${mib(summary.upstream.bytes)}; ` +
        `outcomes ${Object.entries(counts).map(([k, v]) => `${k}=${v}`).join(" ")} ` +
        `X-Cache ${Object.entries(byCache).map(([k, v]) => `${k}=${v}`).join(" ")} ` +
        `(aborted: ${judged.abortedCorrect} wrong-bytes blob, ${judged.abortedOutage} outage; 5xx-on-miss in outage ${judged.fiveOnMissOutage}); ` +
        `faults fired: 503×${f["503-once"].fired} 502×${f["502-once"].fired} 429×${f["429-once"].fired} ` +
        `die-after×${f["die-after"].fired} (ok ${okByDigest.get(f["die-after"].digest) ?? 0}) ` +
        `wrong-bytes×${f["wrong-bytes"].fired} (ok after ${okByDigest.get(f["wrong-bytes"].digest) ?? 0}) ` +
        `outage×${f.outage.fired} ${f.outage.ms} ms (${f.outage.upstream503} upstream 503, ${judged.staleInOutage} stale); ` +
        `fresh blobs ${freshBlobs}, new versions ${newVersions}; store ${storeRows} rows ${mib(storeBytes)}; ` +
        `fsck ${report.consistent ? "consistent" : "REPAIRED"} (${report.checked.rows} rows, ${report.checked.verified} re-hashed); ` +
        `violations ${violations.length}; ${summary.totalMs} ms\n`,
    );

    // --- Verdict ---
    assert.deepEqual(violations, [], "violations (first 50)");
    assert.equal(counts["wrong-bytes"], 0, "wrong bytes");
    assert.equal(counts["5xx-on-hit"], 0, "5xx on hits");
    assert.equal(counts.timeout, 0, "requests that hung");
    assert.ok(counts.ok > 50 * SECONDS, `too few successful requests for a soak: ${counts.ok}`);
    assert.ok(bytesServed > 10 * MiB, "bytes served");
    for (const [name, v] of Object.entries(faults)) assert.ok(v.fired >= 1, `fault ${name} never fired`);
    assert.ok((okByDigest.get(f["die-after"].digest) ?? 0) >= 1, "the blob that died part-way was served whole after the resume");
    assert.ok(judged.abortedCorrect >= 1, "no client saw the wrong-bytes download break off");
    assert.ok((okByDigest.get(f["wrong-bytes"].digest) ?? 0) >= 1, "the wrong-bytes blob was downloaded afresh and served afterwards");
    assert.ok(judged.staleInOutage >= 1, "no stale tag served during the outage");
    assert.ok(report.consistent, `reconcile --verify repaired the store: ${JSON.stringify(summary.fsck)} ${JSON.stringify(report.actions.slice(0, 10))}`);
    assert.equal(report.rowsDropped + report.corruptRemoved + report.orphansRemoved + report.orphansReindexed + report.tmpRemoved, 0);
    assert.ok(report.checked.verified > 0 && storeRows >= report.checked.verified, "verify re-hashed the store");
    assert.ok(Date.now() - testStarted < (SECONDS + 30) * 1000, "the soak overran its bound");
  } finally {
    up.faultAll(undefined);
    await cache.destroy();
    await up.stop();
  }
});
