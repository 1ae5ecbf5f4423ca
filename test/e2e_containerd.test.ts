/**
 * End to end with containerd: `ctr images pull` of an image on a real docker-registry (the
 * "fake registry host" `127.0.0.1:PORT`) goes through an ocicache child process configured as a
 * mirror in hosts.toml, exactly the way users configure containerd:
 *
 * (a) `?ns=` style — `<hosts dir>/<upstream host:port>/hosts.toml`:
 *       server = "http://<upstream>"
 *       [host."http://<ocicache>"]  capabilities = ["pull", "resolve"]
 *     containerd 1.6.20 sends `HEAD|GET /v2/<repo>/manifests|blobs/<ref>?ns=127.0.0.1%3A<port>`;
 *     ocicache picks the registry whose hosts include the upstream's host:port.
 * (b) `override_path = true` with a prefix — `[host."http://<ocicache>/v2/local"]`:
 *     containerd sends `/v2/local/<repo>/…?ns=127.0.0.1%3A<port>` (the ns is added in this mode too).
 *
 * Upstream requests are counted from docker-registry's access log (method, path, User-Agent), so a
 * silent fallback of containerd to the `server` (which it does when a mirror fails) shows up as a
 * request with containerd's User-Agent. What containerd sends is read from `ctr --http-dump`.
 *
 * Needs root, `containerd` + `ctr` (Debian package containerd), `docker-registry` and `skopeo`;
 * skipped loudly when one is missing, failed instead with OCICACHE_E2E_REQUIRED=1. Set
 * OCICACHE_BIN to test a compiled binary instead of the source.
 */
import { DEFAULT_ACCEPT } from "../src/oci/media_types.ts";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import {
  type Containerd,
  ctr,
  ctrContent,
  ctrForget,
  ctrImages,
  ctrPull,
  type CtrResult,
  isRoot,
  mountsUnder,
  requireContainerdOrSkip,
  startContainerd,
  writeHostsToml,
} from "./support/containerd.ts";
import { type LayoutInfo, makeImageLayout, makeIndexLayout } from "./support/fixtures.ts";
import { type LogLine, type OcicacheProcess, requestLines, startOcicache } from "./support/ocicache_process.ts";
import {
  type AccessLogEntry,
  e2eTools,
  isSyncMarker,
  type RealRegistry,
  requireOrSkip,
  startDockerRegistry,
  syncAccessLog,
} from "./support/real_registry.ts";
import { pushLayout } from "./support/skopeo.ts";

const TAG = "1.0";
const PULL_TIMEOUT_MS = 20_000;
const PLATFORM = "linux/amd64";
/** Every manifest type, as a registry client sends it. */
const ACCEPT = DEFAULT_ACCEPT;

/** One image pushed to the upstream. */
interface Fixture {
  name: string;
  repo: string;
  layout: LayoutInfo;
  /** Digest of the top manifest (image manifest or index) as stored upstream. */
  pushed: string;
  /** The blobs (config and layers) containerd fetches for linux/amd64. */
  blobs: string[];
  /** Manifests containerd fetches by digest for linux/amd64 (top, plus the instance for an index). */
  manifests: string[];
}

interface World {
  work: string;
  upstream: RealRegistry;
  oc: OcicacheProcess;
  cd: Containerd;
  image: Fixture;
  index: Fixture;
}

let world: World | undefined;
const cleanups: (() => Promise<unknown>)[] = [];
const uniq = (xs: string[]) => [...new Set(xs)].sort();

async function pushFixture(upstream: RealRegistry, name: string, repo: string, layout: LayoutInfo): Promise<Fixture> {
  const isIndex = layout.images.length > 1;
  await pushLayout(layout.dir, layout.tag, upstream.hostPort, repo, { all: isIndex });
  const res = await fetch(`${upstream.url}/v2/${repo}/manifests/${TAG}`, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(5000) });
  await res.body?.cancel();
  assert.equal(res.status, 200, `${name}: pushed`);
  const pushed = res.headers.get("docker-content-digest") ?? "";
  assert.equal(pushed, layout.top.digest, `${name}: an OCI push keeps the manifest bytes`);
  const amd64 = layout.images.find((im) => `${im.platform.os}/${im.platform.architecture}` === PLATFORM)!;
  return {
    name,
    repo,
    layout,
    pushed,
    blobs: uniq([amd64.config.digest, ...amd64.layers.map((l) => l.digest)]),
    manifests: uniq([pushed, amd64.manifest.digest]),
  };
}

async function setup(): Promise<World> {
  const work = await mkdtemp(join(tmpdir(), "ocicache-e2e-containerd-"));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const [upstream, l1, l2] = await Promise.all([
    startDockerRegistry({ accessLog: true }),
    makeImageLayout(join(work, "layout-image"), { seed: "e2e-containerd-image", layerSizes: [131072, 65536], tag: TAG }),
    makeIndexLayout(join(work, "layout-index"), {
      seed: "e2e-containerd-index",
      platforms: [{ os: "linux", architecture: "amd64" }, { os: "linux", architecture: "arm64" }],
      layerSizes: [98304],
      tag: TAG,
    }),
  ]);
  cleanups.push(() => upstream.stop());
  const [image, index] = await Promise.all([
    pushFixture(upstream, "single-platform OCI image", "e2e/ctr-image", l1),
    pushFixture(upstream, "multi-arch OCI index", "e2e/ctr-multi", l2),
  ]);
  assert.equal(index.blobs.length, 3, "index, amd64: config, shared layer, own layer");
  // No --default-registry: an unprefixed path without ?ns= would go to Docker Hub (the default),
  // so `registry: "local"` on an unprefixed request shows the ns was honoured.
  const oc = await startOcicache(["--registry", `local=${upstream.url}`]);
  cleanups.push(() => oc.stop());
  const cd = await startContainerd();
  cleanups.push(() => cd.stop());
  return { work, upstream, oc, cd, image, index };
}

function ready(t: { skip?: (m?: string) => void }): boolean {
  if (!requireOrSkip(t, ["docker-registry", "skopeo", "containerd", "ctr"])) return false;
  if (!requireContainerdOrSkip(t)) return false;
  assert.ok(world, "setup did not complete (see the before hook's error)");
  return true;
}

/** A request as containerd put it on the wire, from `ctr --http-dump`. */
interface Sent {
  method: string;
  /** Request target: path and query, e.g. `/v2/e2e/app/manifests/1.0?ns=127.0.0.1%3A5000`. */
  target: string;
  host: string;
  userAgent: string;
}

/** The requests in a `ctr --http-dump` stderr (logrus lines `msg="GET /v2/… HTTP/1.1"`, then headers). */
function sentRequests(stderr: string): Sent[] {
  const out: Sent[] = [];
  for (const line of stderr.split("\n")) {
    const req = /(GET|HEAD) (\/v2\/\S*) HTTP\/1\.1"$/.exec(line);
    if (req) {
      out.push({ method: req[1], target: req[2], host: "", userAgent: "" });
      continue;
    }
    const last = out[out.length - 1];
    const host = /msg="Host: (\S+)"$/.exec(line);
    if (host && last && !last.host) last.host = host[1];
    const ua = /msg="User-Agent: ([^"]+)"$/.exec(line);
    if (ua && last && !last.userAgent) last.userAgent = ua[1];
  }
  return out;
}

/** What happened during one pull: ctr's result, ocicache's log lines, upstream's access log. */
interface PullRecord {
  result: CtrResult;
  oc: LogLine[];
  up: AccessLogEntry[];
}

/** Pulls `ref` with the hosts dir, recording ocicache's and the upstream's logs meanwhile. */
async function recordedPull(ref: string, opts: { httpDump?: boolean } = {}): Promise<PullRecord> {
  const { oc, upstream, cd } = world!;
  await Promise.all([oc.sync(), syncAccessLog(upstream)]);
  const ocMark = oc.logLines().length;
  const upMark = upstream.accessLog().length;
  const result = await ctrPull(cd.address, ref, {
    hostsDir: cd.hostsDir,
    plainHttp: true,
    platform: PLATFORM,
    httpDump: opts.httpDump,
    timeoutMs: PULL_TIMEOUT_MS,
  });
  await Promise.all([oc.sync(), syncAccessLog(upstream)]);
  const rec = { result, oc: oc.logLines().slice(ocMark), up: upstream.accessLog().slice(upMark).filter((e) => !isSyncMarker(e)) };
  assert.equal(
    result.code,
    0,
    `ctr images pull ${ref} failed (code ${result.code}${result.timedOut ? ", timed out" : ""}):\n${result.stderr.slice(-4000)}\n` +
      `--- ocicache ---\n${oc.logs().slice(-3000)}\n--- containerd ---\n${cd.logs().slice(-2000)}`,
  );
  return rec;
}

/** Runs a shell command line (bounded, 10 s). */
function sh(line: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn("/bin/sh", ["-c", line], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr!.on("data", (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      resolve({ code: -1, out: out + String(e) });
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out });
    });
  });
}

const isBlobGet = (e: AccessLogEntry) => e.method === "GET" && /\/blobs\/sha256:[0-9a-f]{64}$/.test(e.uri);
const lastSeg = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const show = (es: AccessLogEntry[]) => es.map((e) => `${e.method} ${e.uri} ${e.status} ${e.userAgent}`).join("\n") || "(none)";
const showOc = (ls: LogLine[]) =>
  requestLines(ls).map((l) => `${l.method} ${l.path} ${l.status} ${l.cache} ${l.registry ?? "-"}`).join("\n") || "(none)";

/** containerd has the image under `ref` with the pushed digest, and every piece of it in its content store. */
async function assertInContainerd(f: Fixture, ref: string, r: CtrResult): Promise<void> {
  const { cd } = world!;
  const images = await ctrImages(cd.address);
  const row = images.find((i) => i.ref === ref);
  assert.ok(row, `ctr images ls lists ${ref}: ${JSON.stringify(images)}`);
  assert.equal(row.digest, f.pushed, `${f.name}: containerd's image digest is the pushed ${f.layout.images.length > 1 ? "index" : "manifest"} digest`);
  assert.equal(row.type, f.layout.top.mediaType);
  const content = await ctrContent(cd.address);
  for (const d of [...f.manifests, ...f.blobs]) assert.ok(content.includes(d), `${f.name}: ${d} in containerd's content store`);
  assert.match(r.stdout, /unpacking linux\/amd64 sha256:[0-9a-f]{64}\.\.\.\s+done/, `${f.name}: unpacked (overlayfs)`);
}

/**
 * Three pulls of one fixture through the mirror described by `hostsToml` (already written):
 * 1. first pull (ctr --http-dump): every request carries the expected path and `ns`, goes to
 *    ocicache only, and ocicache fetches each blob from upstream exactly once;
 * 2. after `ctr images rm --sync` + `ctr content rm`: no upstream blob request; containerd's tag
 *    HEAD is the only thing ocicache may ask upstream (it learns the tag → digest there);
 * 3. once more: no upstream request at all, every ocicache answer a hit.
 */
async function threePulls(f: Fixture, mode: string, clientPrefix: string): Promise<void> {
  const { oc, upstream, cd } = world!;
  const ref = `${upstream.hostPort}/${f.repo}:${TAG}`;
  const clientRepoPath = `${clientPrefix}/${f.repo}/`;

  // 1. First pull.
  const p1 = await recordedPull(ref, { httpDump: true });
  console.error(`e2e containerd ${mode} ${f.repo}: pull 1 ${p1.result.ms} ms`);
  await assertInContainerd(f, ref, p1.result);
  const sent = sentRequests(p1.result.stderr);
  assert.ok(sent.length >= 2 + f.blobs.length, `${mode}: requests in ctr's http dump:\n${JSON.stringify(sent, null, 1)}`);
  for (const s of sent) {
    const u = new URL(s.target, "http://x");
    assert.equal(s.host, oc.hostPort, `${mode}: containerd sent ${s.method} ${s.target} to ocicache, not elsewhere`);
    assert.ok(u.pathname.startsWith(clientRepoPath), `${mode}: path ${u.pathname} starts with ${clientRepoPath}`);
    assert.equal(u.searchParams.get("ns"), upstream.hostPort, `${mode}: ns of ${s.target}`);
    assert.ok(s.target.includes(`ns=${encodeURIComponent(upstream.hostPort)}`), `${mode}: ns as containerd encodes it: ${s.target}`);
    assert.match(s.userAgent, /^containerd\//);
  }
  assert.ok(sent.some((s) => s.method === "HEAD" && new URL(s.target, "http://x").pathname === `${clientRepoPath}manifests/${TAG}`), `${mode}: tag resolved with HEAD`);

  const reqs1 = requestLines(p1.oc, { pathIncludes: clientRepoPath });
  assert.deepEqual(
    reqs1.map((l) => `${l.method} ${l.path}`).sort(),
    sent.map((s) => `${s.method} ${new URL(s.target, "http://x").pathname}`).sort(),
    `${mode}: ocicache logged exactly what containerd sent\n${showOc(p1.oc)}`,
  );
  for (const l of reqs1) {
    assert.equal(l.status, 200, `${mode}: ${l.method} ${l.path}`);
    assert.equal(l.registry, "local", `${mode}: routed to the registry of ns=${upstream.hostPort}: ${JSON.stringify(l)}`);
  }
  const blobLines1 = requestLines(reqs1, { kind: "blob", method: "GET" });
  assert.deepEqual(blobLines1.map((l) => lastSeg(l.path)).sort(), f.blobs, `${mode}: containerd got every blob from ocicache`);
  assert.ok(blobLines1.every((l) => l.cache === "miss" || l.cache === "coalesced"), `${mode}: first pull misses\n${showOc(p1.oc)}`);
  // Upstream: only ocicache asked, one GET per blob; containerd never fell back to the server.
  assert.ok(p1.up.every((e) => e.userAgent.startsWith("ocicache")), `${mode}: only ocicache talked to upstream\n${show(p1.up)}`);
  assert.deepEqual(p1.up.filter(isBlobGet).map((e) => lastSeg(e.uri)).sort(), f.blobs, `${mode}: one upstream GET per blob\n${show(p1.up)}`);
  for (const d of f.manifests) {
    assert.ok(p1.up.some((e) => e.method === "GET" && e.uri === `/v2/${f.repo}/manifests/${d}`), `${mode}: manifest ${d} fetched upstream\n${show(p1.up)}`);
  }

  // 2. Forget everything in containerd, pull again: containerd really fetches every blob again.
  assert.deepEqual(await ctrForget(cd.address, ref), [], `${mode}: containerd's content store is empty`);
  assert.deepEqual(await ctrImages(cd.address), [], `${mode}: no images left`);
  const p2 = await recordedPull(ref);
  console.error(`e2e containerd ${mode} ${f.repo}: pull 2 ${p2.result.ms} ms`);
  await assertInContainerd(f, ref, p2.result);
  const reqs2 = requestLines(p2.oc, { pathIncludes: clientRepoPath });
  const blobs2 = requestLines(reqs2, { kind: "blob", method: "GET" });
  assert.deepEqual(blobs2.map((l) => lastSeg(l.path)).sort(), f.blobs, `${mode}: containerd fetched every blob again\n${showOc(p2.oc)}`);
  assert.ok(blobs2.every((l) => l.cache === "hit"), `${mode}: every blob a hit\n${showOc(p2.oc)}`);
  assert.ok(requestLines(reqs2, { kind: "manifest", method: "GET" }).every((l) => l.cache === "hit"), `${mode}: manifests by digest hit\n${showOc(p2.oc)}`);
  assert.deepEqual(p2.up.filter(isBlobGet), [], `${mode}: no upstream blob GETs on the second pull\n${show(p2.up)}`);
  // Pull 1's tag HEAD taught ocicache where the tag points, so the fresh tag needs no upstream.
  assert.deepEqual(p2.up, [], `${mode}: the second pull makes no upstream request at all\n${show(p2.up)}`);

  // 3. Third pull: the tag is known and fresh — nothing at all goes upstream.
  assert.deepEqual(await ctrForget(cd.address, ref), [], `${mode}: containerd's content store is empty again`);
  const p3 = await recordedPull(ref);
  console.error(`e2e containerd ${mode} ${f.repo}: pull 3 ${p3.result.ms} ms`);
  await assertInContainerd(f, ref, p3.result);
  const reqs3 = requestLines(p3.oc, { pathIncludes: clientRepoPath });
  assert.ok(reqs3.length >= 2 + f.blobs.length, showOc(p3.oc));
  assert.ok(reqs3.every((l) => l.cache === "hit" && l.status === 200), `${mode}: third pull all hits\n${showOc(p3.oc)}`);
  assert.deepEqual(p3.up, [], `${mode}: third pull: upstream not asked\n${show(p3.up)}`);

  assert.deepEqual(await ctrForget(cd.address, ref), [], `${mode}: cleaned up`);
}

describe("e2e: containerd (ctr) pulls through ocicache as a hosts.toml mirror", () => {
  before(async () => {
    const tools = e2eTools();
    if (!tools.dockerRegistry || !tools.skopeo || !tools.containerd || !tools.ctr || !isRoot()) return; // each test skips (or fails) loudly
    world = await setup();
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch((e) => console.error("cleanup:", e));
  });

  test("(a) ?ns= mirror: /v2/<repo>/…?ns=<upstream host:port> goes through ocicache; second pull has no upstream blob requests", async (t) => {
    if (!ready(t)) return;
    const { oc, upstream, cd, image } = world!;
    await writeHostsToml(cd.hostsDir, upstream.hostPort, `http://${upstream.hostPort}`, [{ url: `http://${oc.hostPort}` }]);
    await threePulls(image, "(a) ns", "/v2");
  });

  test("(b) override_path = true with /v2/local: /v2/local/<repo>/…?ns=… goes through ocicache; second pull has no upstream blob requests", async (t) => {
    if (!ready(t)) return;
    const { oc, upstream, cd, index, image } = world!;
    await writeHostsToml(cd.hostsDir, upstream.hostPort, `http://${upstream.hostPort}`, [
      { url: `http://${oc.hostPort}/v2/local`, overridePath: true },
    ]);
    await threePulls(index, "(b) override_path", "/v2/local");

    // The image cached through (a) is the same cache entry behind the prefix: no upstream request.
    const ref = `${upstream.hostPort}/${image.repo}:${TAG}`;
    const p = await recordedPull(ref);
    await assertInContainerd(image, ref, p.result);
    const reqs = requestLines(p.oc, { pathIncludes: `/v2/local/${image.repo}/` });
    assert.ok(reqs.length >= 2 + image.blobs.length && reqs.every((l) => l.cache === "hit"), showOc(p.oc));
    assert.deepEqual(p.up, [], `upstream not asked\n${show(p.up)}`);
    assert.deepEqual(await ctrForget(cd.address, ref), []);
  });

  test("containerd stop(): daemon gone, overlay mount under its root undone, temp dir removed", async (t) => {
    if (!ready(t)) return;
    const { cd } = world!;
    // Leave an overlay mount under root, as an interrupted unpack or a running task would:
    // an active snapshot on a committed parent, mounted with the command containerd gives.
    const steps = [
      ["snapshots", "prepare", "ocicache-e2e-base"],
      ["snapshots", "commit", "ocicache-e2e-base-c", "ocicache-e2e-base"],
      ["snapshots", "prepare", "ocicache-e2e-top", "ocicache-e2e-base-c"],
    ];
    for (const args of steps) {
      const r = await ctr(cd.address, args, { timeoutMs: 10_000 });
      assert.equal(r.code, 0, `ctr ${args.join(" ")}: ${r.stderr}`);
    }
    const target = join(cd.root, "leftover-mount");
    await mkdir(target);
    const m = await ctr(cd.address, ["snapshots", "mounts", target, "ocicache-e2e-top"], { timeoutMs: 10_000 });
    assert.equal(m.code, 0, m.stderr);
    assert.match(m.stdout, /^mount -t overlay overlay /, m.stdout);
    const mounted = await sh(m.stdout.trim());
    assert.equal(mounted.code, 0, `${m.stdout}: ${mounted.out}`);
    assert.deepEqual(await mountsUnder([cd.configDir]), [target], "overlay mounted under containerd's root");

    await cd.stop();
    assert.deepEqual(await mountsUnder([cd.configDir]), [], "no mounts left");
    await assert.rejects(stat(cd.configDir), { code: "ENOENT" }, "temp dir removed");
    let alive = true;
    try {
      process.kill(cd.pid, 0);
    } catch {
      alive = false;
    }
    assert.equal(alive, false, "containerd exited");
  });
});
