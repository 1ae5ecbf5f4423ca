/**
 * Test content for the benchmark, pushed straight to a docker-registry through its upload API
 * (no skopeo: faster for big blobs and needs no tar). A big layer is a random file written
 * once; each "fresh" layer is a unique 64-byte random header followed by that file, streamed
 * (never held in memory) with a chunked PATCH while its sha256 is computed, then committed with
 * PUT ?digest=.
 * @module
 */
import { createHash, randomBytes, randomFillSync } from "node:crypto";
import { open } from "node:fs/promises";
import { MiB } from "./util.ts";

/** A blob the upstream holds. */
export interface Blob {
  digest: string;
  size: number;
}

/** Write `bytes` random bytes to `path` in 1 MiB chunks. */
export async function writeRandomFile(
  path: string,
  bytes: number,
): Promise<void> {
  const fh = await open(path, "w");
  try {
    const buf = new Uint8Array(MiB);
    for (let left = bytes; left > 0;) {
      const n = Math.min(buf.length, left);
      randomFillSync(buf, 0, n);
      let off = 0;
      while (off < n) off += (await fh.write(buf, off, n - off)).bytesWritten;
      left -= n;
    }
  } finally {
    await fh.close();
  }
}

async function startUpload(registry: string, repo: string): Promise<URL> {
  const res = await fetch(`${registry}/v2/${repo}/blobs/uploads/`, {
    method: "POST",
    signal: AbortSignal.timeout(30_000),
  });
  await res.body?.cancel();
  const loc = res.headers.get("location");
  if (res.status !== 202 || !loc) {
    throw new Error(`upload start on ${registry}/${repo}: HTTP ${res.status}`);
  }
  return new URL(loc, registry);
}

async function finishUpload(
  registry: string,
  loc: URL,
  digest: string,
  body?: Uint8Array<ArrayBuffer>,
): Promise<void> {
  loc.searchParams.set("digest", digest);
  const res = await fetch(loc, {
    method: "PUT",
    body,
    headers: { "content-type": "application/octet-stream" },
    signal: AbortSignal.timeout(60_000),
  });
  const text = await res.text();
  if (res.status !== 201) {
    throw new Error(
      `upload commit of ${digest} to ${registry}: HTTP ${res.status} ${
        text.slice(0, 300)
      }`,
    );
  }
}

/** Push a small in-memory blob (monolithic PUT). */
export async function pushBytes(
  registry: string,
  repo: string,
  data: Uint8Array,
): Promise<Blob> {
  const digest = "sha256:" + createHash("sha256").update(data).digest("hex");
  await finishUpload(
    registry,
    await startUpload(registry, repo),
    digest,
    new Uint8Array(data),
  );
  return { digest, size: data.length };
}

/**
 * Push a fresh big blob: a unique random 64-byte header + the content of `basePath`, streamed
 * from disk in 1 MiB chunks with one chunked PATCH; the sha256 is computed on the way.
 */
export async function pushFreshBlob(
  registry: string,
  repo: string,
  basePath: string,
  timeoutMs = 180_000,
): Promise<Blob> {
  const header = randomBytes(64);
  const hash = createHash("sha256");
  const fh = await open(basePath, "r");
  let size = 0;
  try {
    let sentHeader = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        if (!sentHeader) {
          sentHeader = true;
          hash.update(header);
          size += header.length;
          ctrl.enqueue(new Uint8Array(header));
          return;
        }
        const buf = new Uint8Array(MiB);
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) {
          ctrl.close();
          return;
        }
        const chunk = bytesRead === buf.length
          ? buf
          : buf.subarray(0, bytesRead);
        hash.update(chunk);
        size += bytesRead;
        ctrl.enqueue(chunk);
      },
    });
    const loc = await startUpload(registry, repo);
    const res = await fetch(loc, {
      method: "PATCH",
      body,
      headers: { "content-type": "application/octet-stream" },
      signal: AbortSignal.timeout(timeoutMs),
    });
    await res.body?.cancel();
    const next = res.headers.get("location");
    if (res.status !== 202 || !next) {
      throw new Error(`upload PATCH to ${registry}: HTTP ${res.status}`);
    }
    const digest = "sha256:" + hash.digest("hex");
    await finishUpload(registry, new URL(next, registry), digest);
    return { digest, size };
  } finally {
    await fh.close();
  }
}

/** OCI media types used here. */
export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";

/**
 * Push a small OCI image `repo:tag` (a config and one 4 KiB layer; the layer need not be a
 * real tar for the registry). Returns the manifest digest and its bytes' size.
 */
export async function pushSmallImage(
  registry: string,
  repo: string,
  tag: string,
): Promise<Blob> {
  const layer = await pushBytes(registry, repo, randomBytes(4096));
  const config = await pushBytes(
    registry,
    repo,
    new TextEncoder().encode(JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Cmd: ["/bin/true"] },
      rootfs: { type: "layers", diff_ids: [layer.digest] },
    })),
  );
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
    layers: [{ mediaType: OCI_LAYER, digest: layer.digest, size: layer.size }],
  }));
  const res = await fetch(`${registry}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    body: manifest,
    headers: { "content-type": OCI_MANIFEST },
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  if (res.status !== 201) {
    throw new Error(
      `manifest PUT ${repo}:${tag}: HTTP ${res.status} ${text.slice(0, 300)}`,
    );
  }
  return {
    digest: "sha256:" + createHash("sha256").update(manifest).digest("hex"),
    size: manifest.length,
  };
}
