/**
 * Self-check of the e2e test support: hand-built fixtures, a real docker-registry
 * (plain and as a pull-through proxy) and skopeo push / pull / verify.
 * Skips loudly when docker-registry or skopeo is missing (fails with OCICACHE_E2E_REQUIRED=1).
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { type LayoutInfo, makeImageLayout, makeIndexLayout, sha256Digest } from "./support/fixtures.ts";
import { e2eTools, type RealRegistry, requireOrSkip, startDockerRegistry } from "./support/real_registry.ts";
import { dirManifestDigest, pullToDir, pushLayout, verifyDirCopy } from "./support/skopeo.ts";

const TOOLS = ["docker-registry", "skopeo"] as const;
const PLATFORMS = [{ os: "linux", architecture: "amd64" }, { os: "linux", architecture: "arm64" }];
const ACCEPT = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

/** GET a manifest; returns its media type, digest header and parsed body. */
async function getManifest(reg: RealRegistry, repo: string, ref: string) {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT } });
  const body = new Uint8Array(await res.arrayBuffer());
  assert.equal(res.status, 200, `manifest ${repo}:${ref}`);
  return {
    contentType: res.headers.get("content-type"),
    digest: res.headers.get("docker-content-digest"),
    bodyDigest: sha256Digest(body),
    json: JSON.parse(new TextDecoder().decode(body)),
  };
}

/** Digests a full `dir:` copy of `layout` must contain (every blob but the top index). */
function expectedDirDigests(layout: LayoutInfo): string[] {
  return layout.blobs.filter((b) => b.digest !== layout.index?.digest).map((b) => b.digest).sort();
}

describe("test support self-check (docker-registry + skopeo)", () => {
  const have = e2eTools();
  const ready = have.dockerRegistry && have.skopeo;
  let work = "";
  let reg: RealRegistry | undefined;
  let proxy: RealRegistry | undefined;
  let single: LayoutInfo;
  let multi: LayoutInfo;
  let n = 0;
  const out = () => join(work, `out${n++}`);

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "ocicache-selfcheck-"));
    single = await makeImageLayout(join(work, "single"), { seed: "selfcheck-single", layerSizes: [65536, 262144] });
    multi = await makeIndexLayout(join(work, "multi"), {
      seed: "selfcheck-multi",
      platforms: PLATFORMS,
      layerSizes: [131072],
    });
    if (ready) reg = await startDockerRegistry();
  });

  after(async () => {
    await proxy?.stop();
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it("fixtures are deterministic, real tar+gzip, diff_ids match", async () => {
    const again = await makeIndexLayout(join(work, "multi-again"), {
      seed: "selfcheck-multi",
      platforms: PLATFORMS,
      layerSizes: [131072],
    });
    assert.deepEqual(again.blobs, multi.blobs);
    assert.notEqual(single.top.digest, multi.top.digest);
    // 2 platforms × (manifest + config + 1 own layer) + 1 shared layer + index
    assert.equal(multi.blobs.length, 8);
    const [amd, arm] = multi.images;
    assert.equal(amd.layers[0].digest, arm.layers[0].digest, "shared layer");
    assert.notEqual(amd.layers[1].digest, arm.layers[1].digest);
    for (const [layout, im] of [single, multi].flatMap((l) => l.images.map((im) => [l, im] as const))) {
      const config = JSON.parse(await readFile(join(layout.dir, "blobs/sha256", im.config.digest.slice(7)), "utf8"));
      assert.equal(config.architecture, im.platform.architecture);
      assert.deepEqual(config.rootfs.diff_ids, im.layers.map((l) => l.diffId));
    }
    const layer = single.images[0].layers[1];
    const tar = gunzipSync(await readFile(join(single.dir, "blobs/sha256", layer.digest.slice(7))));
    assert.equal(sha256Digest(tar), layer.diffId);
    assert.ok(layer.size > 262144, "random payload does not compress");
    assert.equal(new TextDecoder().decode(tar.subarray(257, 262)), "ustar");
  });

  it("OCI single-platform image: push, pull to dir:, verify", async (t) => {
    if (!requireOrSkip(t, [...TOOLS])) return;
    await pushLayout(single.dir, "latest", reg!.hostPort, "self/single");
    const m = await getManifest(reg!, "self/single", "latest");
    assert.equal(m.contentType, "application/vnd.oci.image.manifest.v1+json");
    assert.equal(m.digest, single.top.digest);
    assert.equal(m.bodyDigest, single.top.digest);
    const dir = out();
    await pullToDir(reg!.hostPort, "self/single", "latest", dir);
    assert.deepEqual(await verifyDirCopy(dir), expectedDirDigests(single).filter((d) => d !== single.top.digest));
    assert.equal(await dirManifestDigest(dir), single.top.digest);
  });

  it("OCI multi-arch index: push --all, pull --all (both platforms), verify", async (t) => {
    if (!requireOrSkip(t, [...TOOLS])) return;
    await pushLayout(multi.dir, "latest", reg!.hostPort, "self/multi", { all: true });
    const m = await getManifest(reg!, "self/multi", "latest");
    assert.equal(m.contentType, "application/vnd.oci.image.index.v1+json");
    assert.equal(m.digest, multi.index!.digest);
    const dir = out();
    await pullToDir(reg!.hostPort, "self/multi", "latest", dir, { all: true });
    assert.deepEqual(await verifyDirCopy(dir), expectedDirDigests(multi));
    assert.equal(await dirManifestDigest(dir), multi.index!.digest);
    // without --all skopeo resolves the index to the host platform
    const one = out();
    await pullToDir(reg!.hostPort, "self/multi", "latest", one);
    const amd = multi.images[0];
    assert.equal(await dirManifestDigest(one), amd.manifest.digest);
    assert.deepEqual(await verifyDirCopy(one), [amd.config.digest, ...amd.layers.map((l) => l.digest)].sort());
  });

  it("Docker schema2 via --format v2s2 (image, and index → manifest list)", async (t) => {
    if (!requireOrSkip(t, [...TOOLS])) return;
    await pushLayout(single.dir, "latest", reg!.hostPort, "self/v2s2", { format: "v2s2" });
    const m = await getManifest(reg!, "self/v2s2", "latest");
    assert.equal(m.contentType, "application/vnd.docker.distribution.manifest.v2+json");
    assert.equal(m.json.config.mediaType, "application/vnd.docker.container.image.v1+json");
    assert.equal(m.json.config.digest, single.images[0].config.digest, "config blob unchanged");
    assert.deepEqual(
      m.json.layers.map((l: { digest: string }) => l.digest),
      single.images[0].layers.map((l) => l.digest),
    );
    assert.notEqual(m.digest, single.top.digest);
    const dir = out();
    await pullToDir(reg!.hostPort, "self/v2s2", "latest", dir);
    assert.deepEqual(await verifyDirCopy(dir), expectedDirDigests(single).filter((d) => d !== single.top.digest));
    assert.equal(await dirManifestDigest(dir), m.digest);

    await pushLayout(multi.dir, "latest", reg!.hostPort, "self/v2list", { format: "v2s2", all: true });
    const list = await getManifest(reg!, "self/v2list", "latest");
    assert.equal(list.contentType, "application/vnd.docker.distribution.manifest.list.v2+json");
    assert.equal(list.json.manifests.length, 2);
    const ldir = out();
    await pullToDir(reg!.hostPort, "self/v2list", "latest", ldir, { all: true });
    const got = await verifyDirCopy(ldir);
    const blobs = multi.images.flatMap((im) => [im.config.digest, ...im.layers.map((l) => l.digest)]);
    const instances = list.json.manifests.map((d: { digest: string }) => d.digest);
    assert.deepEqual(got, [...new Set([...blobs, ...instances])].sort());
    assert.equal(await dirManifestDigest(ldir), list.digest);
  });

  it("docker-registry as a pull-through proxy serves a pull", async (t) => {
    if (!requireOrSkip(t, [...TOOLS])) return;
    proxy = await startDockerRegistry({ proxyRemoteUrl: reg!.url });
    const dir = out();
    await pullToDir(proxy.hostPort, "self/multi", "latest", dir, { all: true });
    assert.deepEqual(await verifyDirCopy(dir), expectedDirDigests(multi));
    assert.equal(await dirManifestDigest(dir), multi.index!.digest);
    const byDigest = out();
    await pullToDir(proxy.hostPort, "self/single", single.top.digest, byDigest);
    assert.equal(await dirManifestDigest(byDigest), single.top.digest);
    await verifyDirCopy(byDigest);
  });
});
