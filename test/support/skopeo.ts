/**
 * skopeo (1.9.x) helpers for end-to-end tests: copy with a bounded timeout, push a
 * hand-built OCI layout to a registry, and verify a `dir:` copy blob by blob.
 *
 * Observed with skopeo 1.9.3 + docker-registry 2.8.2:
 * - `dir:OUT` writes `version` ("Directory Transport Version: 1.1"), `manifest.json`
 *   (the top manifest, byte for byte), and each blob as a file named by its bare hex
 *   digest (a layer shared by two platforms is written once). With `--all` on an index /
 *   manifest list, `manifest.json` is the index and every instance manifest is written as
 *   `<hex>.manifest.json`. Without `--all`, an index is resolved to the host platform
 *   (linux/amd64 here) and only that image is written.
 * - `--format v2s2` on a single OCI image pushes a Docker schema2 manifest
 *   (application/vnd.docker.distribution.manifest.v2+json; config
 *   application/vnd.docker.container.image.v1+json, layers ...rootfs.diff.tar.gzip).
 *   Config and layer blobs keep their digests; only the manifest digest changes.
 * - `--format v2s2 --all` on an OCI index pushes a Docker manifest list
 *   (application/vnd.docker.distribution.manifest.list.v2+json) whose entries are the
 *   converted schema2 manifests (new digests; blobs unchanged). `--format v2s2` without
 *   `--all` pushes only the host-platform image as a single schema2 manifest.
 * - Without `--format`, OCI manifests and indexes are pushed unchanged (same digests).
 */
import { type BoundedResult, runBounded } from "./child.ts";
import { createHash } from "node:crypto";
import { open, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

/** Outcome of one skopeo run. `code` is -1 when killed (timeout) or not startable. */
export type SkopeoResult = BoundedResult;

/**
 * Runs `skopeo copy --insecure-policy [tls flags] [...extraArgs] SRC DEST`.
 * `--src-tls-verify=false` is added only for `docker://` sources and
 * `--dest-tls-verify=false` only for `docker://` destinations (skopeo then falls back
 * to plain http). Pass e.g. `["--all"]` or `["--format", "v2s2"]` as extraArgs.
 * Kills skopeo after `timeoutMs` (default 120000). Never throws for a non-zero exit.
 */
export function skopeoCopy(
  src: string,
  dest: string,
  extraArgs: string[] = [],
  opts: { timeoutMs?: number } = {},
): Promise<SkopeoResult> {
  const args = ["copy", "--insecure-policy"];
  if (src.startsWith("docker://")) args.push("--src-tls-verify=false");
  if (dest.startsWith("docker://")) args.push("--dest-tls-verify=false");
  args.push(...extraArgs, src, dest);
  return runBounded("skopeo", args, opts.timeoutMs ?? 120000);
}

function check(what: string, r: SkopeoResult): SkopeoResult {
  if (r.code !== 0) {
    throw new Error(`skopeo ${what} failed (code ${r.code}${r.timedOut ? ", timed out" : ""}):\n${r.stderr}`);
  }
  return r;
}

/**
 * Pushes `oci:LAYOUTDIR:TAG` to `docker://HOSTPORT/REPO:TAG`. `format: "v2s2"` converts to
 * Docker schema2 (an index becomes a manifest list when `all` is set); `all: true` copies
 * every platform of an index (otherwise only the host platform). Throws on failure.
 */
export async function pushLayout(
  layoutDir: string,
  tag: string,
  hostPort: string,
  repo: string,
  opts: { format?: "oci" | "v2s2"; all?: boolean } = {},
): Promise<SkopeoResult> {
  const extra: string[] = [];
  if (opts.format) extra.push("--format", opts.format);
  if (opts.all) extra.push("--all");
  return check("push", await skopeoCopy(`oci:${layoutDir}:${tag}`, `docker://${hostPort}/${repo}:${tag}`, extra));
}

/**
 * Pulls `docker://HOSTPORT/REPO:REF` into `dir:OUTDIR` (`all: true` → every platform).
 * `ref` is a tag or a `sha256:…` digest. Throws on failure.
 */
export async function pullToDir(
  hostPort: string,
  repo: string,
  ref: string,
  outDir: string,
  opts: { all?: boolean } = {},
): Promise<SkopeoResult> {
  const src = `docker://${hostPort}/${repo}${ref.startsWith("sha256:") ? "@" : ":"}${ref}`;
  return check("pull", await skopeoCopy(src, `dir:${outDir}`, opts.all ? ["--all"] : []));
}

/** sha256 of a file as `sha256:<hex>`, read in 1 MiB chunks. */
export async function fileDigest(path: string): Promise<string> {
  const h = createHash("sha256");
  const fh = await open(path, "r");
  try {
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return "sha256:" + h.digest("hex");
}

/** Digest of the top-level `manifest.json` of a skopeo `dir:` copy. */
export function dirManifestDigest(outDir: string): Promise<string> {
  return fileDigest(join(outDir, "manifest.json"));
}

interface Desc {
  digest: string;
  size: number;
}

/**
 * Verifies a skopeo `dir:` copy: every blob file (`<hex>`) and instance manifest
 * (`<hex>.manifest.json`) hashes to its name, and every blob / instance referenced by
 * `manifest.json` (image manifest, or index / manifest list) is present with the right
 * size. Returns the sorted `sha256:` digests verified; throws on any mismatch, missing or
 * unexpected file.
 */
export async function verifyDirCopy(outDir: string): Promise<string[]> {
  const names = await readdir(outDir);
  const sizes = new Map<string, number>(); // hex -> size of blob or instance manifest
  const verified: string[] = [];
  for (const name of names) {
    if (name === "version" || name === "manifest.json" || /^signature-\d+$/.test(name)) continue;
    const m = /^([0-9a-f]{64})(\.manifest\.json)?$/.exec(name);
    if (!m) throw new Error(`verifyDirCopy: unexpected file ${name} in ${outDir}`);
    const path = join(outDir, name);
    const digest = await fileDigest(path);
    if (digest !== "sha256:" + m[1]) throw new Error(`verifyDirCopy: ${name} hashes to ${digest}`);
    const fh = await open(path, "r");
    sizes.set(m[1] + (m[2] ?? ""), (await fh.stat()).size);
    await fh.close();
    verified.push(digest);
  }
  const version = await readFile(join(outDir, "version"), "utf8");
  if (!version.startsWith("Directory Transport Version:")) throw new Error(`verifyDirCopy: bad version file`);

  const need = (d: Desc, suffix: string, what: string) => {
    const hex = d.digest.replace(/^sha256:/, "");
    const have = sizes.get(hex + suffix);
    if (have === undefined) throw new Error(`verifyDirCopy: ${what} ${d.digest} missing in ${outDir}`);
    if (have !== d.size) throw new Error(`verifyDirCopy: ${what} ${d.digest} size ${have} != ${d.size}`);
  };
  const checkImage = (m: { config: Desc; layers: Desc[] }) => {
    need(m.config, "", "config");
    for (const l of m.layers) need(l, "", "layer");
  };
  const top = JSON.parse(await readFile(join(outDir, "manifest.json"), "utf8"));
  if (Array.isArray(top.manifests)) {
    for (const d of top.manifests as Desc[]) {
      need(d, ".manifest.json", "instance manifest");
      const hex = d.digest.replace(/^sha256:/, "");
      checkImage(JSON.parse(await readFile(join(outDir, `${hex}.manifest.json`), "utf8")));
    }
  } else {
    checkImage(top);
  }
  return verified.sort();
}
