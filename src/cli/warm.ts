/**
 * `ocicache warm <ref>…`: pull images through a running cache so they are on disk before anyone
 * needs them — every platform of an index, or one with `--platform os/arch[/variant]`.
 * @module
 */
import { MANIFEST_TYPES } from "../oci/media_types.ts";
import { formatBytes } from "./format.ts";

/** A reference as a client of the cache names it: `<path after /v2/>[:tag|@digest]`. */
export interface WarmRef {
  name: string;
  reference: string;
}

/** Parse `ghcr.io/owner/app:1.0`, `docker.io/library/nginx@sha256:…`, `nginx` (→ `latest`). */
export function parseWarmRef(ref: string): WarmRef | null {
  let name = ref;
  let reference = "latest";
  const at = ref.indexOf("@");
  if (at >= 0) {
    name = ref.slice(0, at);
    reference = ref.slice(at + 1);
  } else {
    const colon = ref.lastIndexOf(":");
    if (colon > ref.lastIndexOf("/")) {
      name = ref.slice(0, colon);
      reference = ref.slice(colon + 1);
    }
  }
  if (!name || !reference || name.startsWith("/") || name.includes("//")) return null;
  return { name, reference };
}

/** A platform filter. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** Parse `linux/amd64` or `linux/arm64/v8`. */
export function parsePlatform(s: string): Platform | null {
  const [os, architecture, variant, extra] = s.split("/");
  if (!os || !architecture || extra !== undefined) return null;
  return { os, architecture, variant };
}

/** Where warm writes. */
export interface WarmOutput {
  /** Live progress bar (redrawn in place) when true; one line per finished blob otherwise. */
  tty: boolean;
  write(s: string): void;
}

/** Options of {@link warm}. */
export interface WarmOptions {
  /** The cache's base URL, e.g. http://127.0.0.1:5000. */
  server: string;
  platform?: Platform;
  concurrency?: number;
  out: WarmOutput;
  fetch?: typeof fetch;
}

/** What warming came to. */
export interface WarmResult {
  ok: boolean;
  manifests: number;
  blobs: number;
  bytes: number;
  failures: string[];
}

interface Descriptor {
  digest: string;
  size: number;
  mediaType?: string;
  platform?: Platform;
}

const ACCEPT = MANIFEST_TYPES.join(", ");

/** Warm every ref; never throws for a failing ref — it is counted in `failures`. */
export async function warm(refs: WarmRef[], opts: WarmOptions): Promise<WarmResult> {
  const f = opts.fetch ?? fetch;
  const result: WarmResult = { ok: true, manifests: 0, blobs: 0, bytes: 0, failures: [] };
  const base = opts.server.replace(/\/+$/, "");
  const fail = (msg: string) => {
    result.ok = false;
    result.failures.push(msg);
    if (opts.out.tty) opts.out.write("\r\x1b[K");
    opts.out.write(`error: ${msg}\n`);
  };

  const getManifest = async (name: string, reference: string): Promise<{ json: Record<string, unknown>; digest: string } | null> => {
    const res = await f(`${base}/v2/${name}/manifests/${reference}`, { headers: { accept: ACCEPT } }).catch((e) => e as Error);
    if (res instanceof Error) return fail(`${name}:${reference}: ${res.message}`), null;
    const text = await res.text();
    if (res.status !== 200) {
      let msg = text;
      try {
        msg = JSON.parse(text).errors?.[0]?.message ?? text;
      } catch { /* not JSON */ }
      return fail(`${name}:${reference}: ${res.status} ${msg}`), null;
    }
    result.manifests++;
    return { json: JSON.parse(text), digest: res.headers.get("docker-content-digest") ?? "" };
  };

  for (const ref of refs) {
    const top = await getManifest(ref.name, ref.reference);
    if (!top) continue;
    const images: Record<string, unknown>[] = [];
    const entries = top.json.manifests as Descriptor[] | undefined;
    if (Array.isArray(entries)) {
      const p = opts.platform;
      const chosen = entries.filter((d) =>
        !p || (d.platform?.os === p.os && d.platform?.architecture === p.architecture && (!p.variant || d.platform?.variant === p.variant))
      );
      if (!chosen.length) {
        fail(`${ref.name}:${ref.reference}: no manifest for platform ${p!.os}/${p!.architecture}${p!.variant ? "/" + p!.variant : ""}`);
        continue;
      }
      for (const d of chosen) {
        const m = await getManifest(ref.name, d.digest);
        if (m) images.push(m.json);
      }
    } else {
      images.push(top.json);
    }
    const blobs = new Map<string, Descriptor>();
    for (const img of images) {
      for (const d of [img.config as Descriptor | undefined, ...((img.layers as Descriptor[] | undefined) ?? [])]) {
        if (d?.digest && !blobs.has(d.digest)) blobs.set(d.digest, d);
      }
    }
    await fetchBlobs(f, base, ref, [...blobs.values()], opts, result, fail);
  }
  return result;
}

async function fetchBlobs(
  f: typeof fetch,
  base: string,
  ref: WarmRef,
  blobs: Descriptor[],
  opts: WarmOptions,
  result: WarmResult,
  fail: (msg: string) => void,
): Promise<void> {
  const total = blobs.reduce((n, b) => n + (b.size || 0), 0);
  let done = 0;
  let bytes = 0;
  const started = performance.now();
  const label = `${ref.name}:${ref.reference}`;
  const draw = () => {
    if (!opts.out.tty) return;
    const frac = total ? Math.min(1, bytes / total) : 1;
    const width = 24;
    const filled = Math.round(frac * width);
    const secs = (performance.now() - started) / 1000;
    const rate = secs > 0 ? bytes / secs : 0;
    opts.out.write(
      `\r\x1b[K${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}%  ` +
        `${formatBytes(bytes)}/${formatBytes(total)}  ${done}/${blobs.length} blobs  ${formatBytes(rate)}/s`,
    );
  };
  const timer = opts.out.tty ? setInterval(draw, 100) : undefined;
  const queue = [...blobs];
  const worker = async () => {
    for (let b = queue.shift(); b; b = queue.shift()) {
      try {
        const res = await f(`${base}/v2/${ref.name}/blobs/${b.digest}`);
        if (res.status !== 200 || !res.body) {
          await res.body?.cancel();
          fail(`${label}: blob ${b.digest}: ${res.status}`);
          continue;
        }
        let n = 0;
        for await (const chunk of res.body) {
          n += chunk.length;
          bytes += chunk.length;
        }
        if (b.size && n !== b.size) {
          fail(`${label}: blob ${b.digest}: got ${n} bytes, the manifest says ${b.size}`);
          continue;
        }
        done++;
        result.blobs++;
        result.bytes += n;
        if (!opts.out.tty) opts.out.write(`${label} ${b.digest} ${formatBytes(n)} (${res.headers.get("x-cache") ?? "?"})\n`);
      } catch (e) {
        fail(`${label}: blob ${b.digest}: ${(e as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 3) }, worker));
  if (timer !== undefined) clearInterval(timer);
  draw();
  if (opts.out.tty) opts.out.write("\n");
  opts.out.write(`${label}: ${done}/${blobs.length} blobs, ${formatBytes(bytes)} in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
}
