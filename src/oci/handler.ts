/**
 * The pull flows: manifests by tag and by digest, blobs (with ranges), tag lists — served from
 * the store when it can, from the upstream (and stored) when it must.
 * @module
 */
import type { RegistryConfig } from "../config.ts";
import { ociError, type ErrorCode } from "../http/errors.ts";
import { contentRange, parseRange } from "../http/range.ts";
import type { BlobRow, Index, ManifestRow } from "../index/oci_index.ts";
import type { Logger } from "../log.ts";
import type { Files } from "../runtime/types.ts";
import type { Cafs } from "../store/cafs.ts";
import { Flight, type FlightStart, Flights } from "../download/flight.ts";
import { type Digest, digestOf, parseDigest } from "./digest.ts";
import { accepts, DEFAULT_ACCEPT, manifestMediaType, upstreamAccept } from "./media_types.ts";
import type { Route, Target } from "./router.ts";
import type { Upstream, UpstreamResult } from "./upstream.ts";

/** How a request was answered, for logs and metrics. */
export type CacheResult = "hit" | "miss" | "stale" | "coalesced" | "revalidated" | "pass" | "none";

/** Per-request facts the handler reports back. */
export interface RequestContext {
  cache: CacheResult;
  registry?: string;
  /** base, manifest, blob, tags — or the app's own endpoints. */
  endpoint: string;
}

/** Largest manifest accepted from an upstream (the distribution registry's default limit). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** What the pull handler works with. */
export interface PullDeps {
  index: Index;
  cafs: Cafs;
  files: Files;
  flights: Flights;
  upstream: (registry: RegistryConfig) => Upstream;
  log: Logger;
  now?: () => number;
  /** Told when a download ends without being stored. */
  onStoreFailure?: (error: Error) => void;
  /** Once every client has left, a download larger than this is cancelled. */
  maxDetachedBytes?: number;
  /** Told when cached content is served through a repository (last-pulled times). */
  onServed?: (via: { registry: string; repository: string }, digest: string) => void;
  /** Serve cached content to any repository without confirming upstream that it has the digest. */
  trustSharedContent?: boolean;
  /** The store's size bound, when there is one. */
  eviction?: {
    /** Whether a blob of this size can be kept at all. */
    fits(size: number): boolean;
    hit(digest: string, size: number): void;
    stored(digest: string, size: number): void;
  };
}

const API_VERSION = { "docker-distribution-api-version": "registry/2.0" };

/** Serves routed pull requests. */
export class PullHandler {
  readonly #now: () => number;

  constructor(private readonly deps: PullDeps) {
    this.#now = deps.now ?? Date.now;
  }

  /** Answer a routed GET or HEAD. */
  handle(req: Request, route: Route, ctx: RequestContext): Promise<Response> {
    const head = req.method === "HEAD";
    ctx.endpoint = route.kind;
    switch (route.kind) {
      case "base":
        ctx.cache = "none";
        return Promise.resolve(new Response(head ? null : "{}", {
          headers: { "content-type": "application/json", "content-length": "2", ...API_VERSION },
        }));
      case "manifest":
        ctx.registry = route.target.registry.prefix;
        return route.tag !== undefined
          ? this.manifestByTag(req, route.target, route.tag, ctx)
          : this.manifestByDigest(req, route.target, route.digest, ctx);
      case "blob":
        ctx.registry = route.target.registry.prefix;
        return this.blob(req, route.target, route.digest, ctx);
      case "tags":
        ctx.registry = route.target.registry.prefix;
        return this.tags(req, route.target, ctx);
    }
  }

  async manifestByTag(req: Request, t: Target, tag: string, ctx: RequestContext): Promise<Response> {
    const { index } = this.deps;
    const accept = req.headers.get("accept");
    const head = req.method === "HEAD";
    const reg = t.registry.prefix;
    const row = await index.getTagDigest(reg, t.name, tag);
    const cached = row ? await this.#heldManifest(row.digest) : null;
    if (row && cached && accepts(accept, cached.mediaType)) {
      if (this.#now() - row.checkedAt < t.registry.tagTtlMs) {
        ctx.cache = "hit";
        this.#served(t, cached.digest, head);
        return this.#serveManifest(cached, head);
      }
      // Stale: ask with a HEAD (Docker Hub does not count it as a pull).
      const r = await this.#up(t).manifest("HEAD", t.name, tag, upstreamAccept(accept));
      const age = this.#now() - row.checkedAt;
      if ((!r.ok || isUpstreamFailure(r)) && age <= t.registry.maxStaleMs) {
        ctx.cache = "stale";
        this.deps.log.warn("upstream failed, serving stale tag", {
          registry: reg, repository: t.name, tag, digest: cached.digest, ageMs: age, reason: failureReason(r),
        });
        if (r.ok) await r.response.body?.cancel();
        this.#served(t, cached.digest, head);
        return this.#serveManifest(cached, head, { warning: '110 - "Response is Stale"' });
      }
      if (!r.ok || isUpstreamFailure(r)) return upstreamError(r, "MANIFEST_UNKNOWN", t);
      const res = r.response;
      await res.body?.cancel();
      if (res.status === 200 && res.headers.get("docker-content-digest") === cached.digest) {
        await index.refreshTag(reg, t.name, tag, this.#now());
        ctx.cache = "revalidated";
        this.#served(t, cached.digest, head);
        return this.#serveManifest(cached, head);
      }
      if (res.status === 404) {
        await index.deleteTag(reg, t.name, tag);
        return upstreamError(r, "MANIFEST_UNKNOWN", t);
      }
      if (res.status !== 200) return upstreamError(r, "MANIFEST_UNKNOWN", t);
      // The tag moved: fetch it below.
    }
    if (head) return this.#headManifest(t, tag, accept, ctx);
    ctx.cache = "miss";
    return this.#fetchManifest(t, { tag }, accept);
  }

  async manifestByDigest(req: Request, t: Target, digest: Digest, ctx: RequestContext): Promise<Response> {
    const head = req.method === "HEAD";
    const cached = await this.#heldManifest(digest.value);
    if (cached) {
      const refused = await this.#confirmScope(t, digest.value, "manifest", ctx);
      if (refused) return refused;
      ctx.cache = "hit";
      this.#served(t, cached.digest, head);
      return this.#serveManifest(cached, head);
    }
    if (head) return this.#headManifest(t, digest.value, req.headers.get("accept"), ctx);
    ctx.cache = "miss";
    return this.#fetchManifest(t, { digest }, req.headers.get("accept"));
  }

  /** HEAD of a manifest the cache does not hold: ask the upstream with a HEAD too. */
  async #headManifest(t: Target, reference: string, accept: string | null, ctx: RequestContext): Promise<Response> {
    ctx.cache = "pass";
    const r = await this.#up(t).manifest("HEAD", t.name, reference, upstreamAccept(accept));
    if (!r.ok || r.response.status !== 200) return upstreamError(r, "MANIFEST_UNKNOWN", t);
    await r.response.body?.cancel();
    const h = r.response.headers;
    const digest = h.get("docker-content-digest");
    // Remember where the tag points: containerd resolves a tag with HEAD and then fetches the
    // manifest by digest, so this is how its tags become known (and servable when the upstream
    // is down later). When the manifest is already held, answer from it.
    if (digest && parseDigest(digest) && !reference.includes(":")) {
      await this.deps.index.setTagDigest(t.registry.prefix, t.name, reference, digest, this.#now());
      // The upstream just confirmed, in this repository's scope, that the tag names this digest.
      await this.deps.index.linkRepoObject({ registry: t.registry.prefix, repository: t.name }, digest, "manifest", this.#now());
      const held = await this.#heldManifest(digest);
      if (held && accepts(accept, held.mediaType)) {
        ctx.cache = "revalidated";
        return this.#serveManifest(held, true);
      }
    }
    return new Response(null, { status: 200, headers: copyHeaders(h, ["content-type", "content-length", "docker-content-digest", "etag"]) });
  }

  async #fetchManifest(t: Target, ref: { tag: string } | { digest: Digest }, accept: string | null): Promise<Response> {
    const reference = "tag" in ref ? ref.tag : ref.digest.value;
    const r = await this.#up(t).manifest("GET", t.name, reference, upstreamAccept(accept));
    if (!r.ok || r.response.status !== 200) return upstreamError(r, "MANIFEST_UNKNOWN", t);
    const res = r.response;
    const read = await readLimited(res, MAX_MANIFEST_BYTES);
    if (!read.ok) return ociError(502, "MANIFEST_INVALID", `upstream manifest ${t.name}:${reference} ${read.reason}`);
    const bytes = read.bytes;
    const algorithm = "digest" in ref ? ref.digest.algorithm : "sha256";
    const computed = digestOf(bytes, algorithm);
    if ("digest" in ref && computed !== ref.digest.value) {
      return ociError(502, "DIGEST_INVALID", `upstream sent a manifest whose digest is ${computed}, not ${ref.digest.value}; nothing was cached`);
    }
    const announced = res.headers.get("docker-content-digest");
    const announcedDigest = announced ? parseDigest(announced) : null;
    if (announcedDigest && digestOf(bytes, announcedDigest.algorithm) !== announcedDigest.value) {
      return ociError(502, "DIGEST_INVALID", `upstream announced ${announced} but the manifest bytes hash to ${digestOf(bytes, announcedDigest.algorithm)}; nothing was cached`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return ociError(502, "MANIFEST_INVALID", `upstream manifest ${t.name}:${reference} is not JSON; nothing was cached`);
    }
    const mediaType = manifestMediaType(res.headers.get("content-type"), parsed);
    if (!mediaType) return ociError(502, "MANIFEST_INVALID", `upstream manifest ${t.name}:${reference} has no media type`);
    const stored = await this.deps.cafs.putBytes(bytes);
    const row: ManifestRow = { digest: computed, key: stored.key, size: bytes.length, mediaType };
    const via = { registry: t.registry.prefix, repository: t.name };
    await this.deps.index.putManifest(row, via, this.#now());
    if ("tag" in ref) await this.deps.index.setTagDigest(t.registry.prefix, t.name, ref.tag, computed, this.#now());
    return manifestResponse(row, bytes, false);
  }

  /**
   * Content is shared by digest across repositories and registries, but a repository's
   * permissions are not: content cached through repository A is served to repository B only once
   * the upstream has confirmed (a HEAD in B's scope, with B's credentials) that B has the digest.
   * The answer is remembered per (registry, repository, digest). Returns the refusal, or null.
   */
  async #confirmScope(t: Target, digest: string, kind: "blob" | "manifest", ctx: RequestContext): Promise<Response | null> {
    if (this.deps.trustSharedContent) return null;
    const via = { registry: t.registry.prefix, repository: t.name };
    if (await this.deps.index.hasRepoObject(via.registry, via.repository, digest)) return null;
    const up = this.#up(t);
    const r = kind === "blob" ? await up.blob("HEAD", t.name, digest) : await up.manifest("HEAD", t.name, digest, DEFAULT_ACCEPT);
    if (r.ok && r.response.status === 200) {
      await r.response.body?.cancel();
      await this.deps.index.linkRepoObject(via, digest, kind, this.#now());
      return null;
    }
    ctx.cache = "pass";
    this.deps.log.info("cached content not served to a repository the upstream did not confirm", {
      registry: via.registry, repository: via.repository, digest, reason: failureReason(r),
    });
    if (!r.ok || isUpstreamFailure(r)) {
      if (r.ok) await r.response.body?.cancel();
      return ociError(503, "UNAVAILABLE", `cannot confirm with the upstream that ${t.name} has ${digest} (${failureReason(r)}); retry later`);
    }
    return upstreamError(r, kind === "blob" ? "BLOB_UNKNOWN" : "MANIFEST_UNKNOWN", t);
  }

  #served(t: Target, digest: string, head: boolean): void {
    if (!head) this.deps.onServed?.({ registry: t.registry.prefix, repository: t.name }, digest);
  }

  /** The indexed manifest with this digest whose file is in place (else it counts as not held). */
  async #heldManifest(digest: string): Promise<ManifestRow | null> {
    const row = await this.deps.index.getManifest(digest);
    if (!row) return null;
    if ((await this.deps.cafs.size(row.key)) !== row.size) {
      this.deps.log.warn("indexed manifest has no intact file; fetching it again", { digest });
      return null;
    }
    return row;
  }

  async #serveManifest(row: ManifestRow, head: boolean, extra?: { warning: string }): Promise<Response> {
    const bytes = head ? null : await this.deps.cafs.readAll(row.key);
    const res = manifestResponse(row, bytes, head);
    if (extra) res.headers.set("warning", extra.warning);
    return res;
  }

  async blob(req: Request, t: Target, digest: Digest, ctx: RequestContext): Promise<Response> {
    const head = req.method === "HEAD";
    // A download writes its index row before it leaves the flights. One that was running before
    // the index lookup and is gone after it has stored the blob (or failed): look once more, so
    // a request racing the commit is a hit, never a second upstream request.
    let row: BlobRow | null = null;
    for (let look = 0; look < 2; look++) {
      const running = this.deps.flights.has(digest.value);
      row = await this.deps.index.getBlob(digest.value);
      if (row || !running || this.deps.flights.has(digest.value)) break;
    }
    if (row && (await this.deps.cafs.size(row.key)) === row.size) {
      const refused = await this.#confirmScope(t, digest.value, "blob", ctx);
      if (refused) return refused;
      ctx.cache = "hit";
      if (!head) {
        this.deps.eviction?.hit(digest.value, row.size);
        this.deps.onServed?.({ registry: t.registry.prefix, repository: t.name }, digest.value);
      }
      const range = parseRange(head ? null : req.headers.get("range"), row.size);
      if (range.kind === "unsatisfiable") return rangeNotSatisfiable(row.size);
      const [start, end] = range.kind === "partial" ? [range.start, range.end] : [0, row.size - 1];
      const headers = blobHeaders(digest.value, end - start + 1);
      if (range.kind === "partial") headers.set("content-range", contentRange(row.size, range));
      const status = range.kind === "partial" ? 206 : 200;
      if (head || row.size === 0) return new Response(null, { status, headers });
      return new Response(await this.deps.cafs.body(row.key, start, end), { status, headers });
    }
    if (head) {
      // Downloaded and verified for this repository, being stored right now: as good as a hit.
      const verified = this.deps.flights.verified(digest.value);
      if (verified && verified.scope === scopeOf(t)) {
        ctx.cache = "coalesced";
        return new Response(null, { status: 200, headers: blobHeaders(digest.value, verified.received) });
      }
      ctx.cache = "pass";
      const r = await this.#up(t).blob("HEAD", t.name, digest.value);
      if (!r.ok || r.response.status !== 200) return upstreamError(r, "BLOB_UNKNOWN", t);
      await r.response.body?.cancel();
      const len = r.response.headers.get("content-length");
      const headers = blobHeaders(digest.value, len === null ? undefined : Number(len));
      return new Response(null, { status: 200, headers });
    }
    const joined = this.deps.flights.join(digest.value, () => this.#startFlight(t, digest));
    ctx.cache = joined.coalesced ? "coalesced" : "miss";
    const start = await joined.start;
    if (!start.ok) return start.response();
    if (joined.coalesced && start.flight.scope !== scopeOf(t)) {
      // Joining a download started for another repository: that repository's right to the
      // bytes says nothing about this one's.
      const refused = await this.#confirmScope(t, digest.value, "blob", ctx);
      if (refused) return refused;
    }
    return flightResponse(start.flight, req.headers.get("range"));
  }

  async #startFlight(t: Target, digest: Digest): Promise<FlightStart> {
    const r = await this.#up(t).blob("GET", t.name, digest.value);
    if (!r.ok || r.response.status !== 200 || !r.response.body) {
      // Every joined client gets its own copy of the error.
      const status = r.ok ? r.response.status : 0;
      const retryAfter = r.ok ? r.response.headers.get("retry-after") : null;
      const upstreamCode = r.ok ? await errorCodeOf(r.response) : undefined;
      const failure = r.ok ? undefined : r;
      return {
        ok: false,
        response: () => mapUpstream(status, failure, upstreamCode, retryAfter, "BLOB_UNKNOWN", t),
      };
    }
    const len = r.response.headers.get("content-length");
    const size = len !== null && /^\d+$/.test(len) ? Number(len) : undefined;
    const via = { registry: t.registry.prefix, repository: t.name };
    const up = this.#up(t);
    const flight = new Flight({
      scope: scopeOf(t),
      digest,
      body: r.response.body,
      size,
      cafs: this.deps.cafs,
      files: this.deps.files,
      maxDetachedBytes: this.deps.maxDetachedBytes,
      onStored: async (obj) => {
        await this.deps.index.putBlob({ digest: digest.value, key: obj.key, size: obj.size }, via, this.#now());
        this.deps.eviction?.stored(digest.value, obj.size);
      },
      refuse: (n) =>
        this.deps.eviction && !this.deps.eviction.fits(n)
          ? `blob of ${n} bytes is larger than the whole --max-size bound; served without caching it (raise --max-size to cache it)`
          : null,
      resume: (offset) => resumeBody(up, t.name, digest.value, offset),
      onEvent: (event, detail) =>
        event === "resumed"
          ? this.deps.log.warn("upstream broke off a blob; resuming with a Range request", { ...detail, registry: via.registry })
          : this.deps.log.error("cannot store a blob (serving it to its clients from upstream without caching it)", { ...detail, registry: via.registry }),
    });
    flight.done.then((o) => {
      if (o.ok) this.deps.log.info("blob stored", { digest: digest.value, size: o.stored.size, registry: via.registry, repository: via.repository });
      else {
        this.deps.onStoreFailure?.(o.error);
        this.deps.log.warn(o.clientsServed ? "blob served but not cached" : "blob download failed; nothing cached", {
          digest: digest.value, registry: via.registry, repository: via.repository, error: o.error.message,
        });
      }
    });
    return { ok: true, flight };
  }

  async tags(req: Request, t: Target, ctx: RequestContext): Promise<Response> {
    const url = new URL(req.url);
    const nRaw = url.searchParams.get("n");
    const last = url.searchParams.get("last");
    if (nRaw !== null && !/^\d{1,9}$/.test(nRaw)) {
      return ociError(400, "PAGINATION_NUMBER_INVALID", `n must be a non-negative integer, got ${JSON.stringify(nRaw)}`);
    }
    const q = new URLSearchParams();
    if (nRaw !== null) q.set("n", nRaw);
    if (last !== null) q.set("last", last);
    const query = q.size ? `?${q}` : "";
    const clientName = t.clientPath.slice("/v2/".length);
    const r = await this.#up(t).tags(t.name, query);
    if (r.ok && r.response.status === 200) {
      ctx.cache = "pass";
      let body: { tags?: unknown };
      try {
        body = await r.response.json();
      } catch {
        return ociError(502, "UNAVAILABLE", `upstream tag list for ${t.name} is not JSON`);
      }
      const headers = new Headers({ "content-type": "application/json", ...API_VERSION });
      const link = r.response.headers.get("link");
      if (link) headers.set("link", rewriteLink(link, t, url));
      const tags = Array.isArray(body.tags) ? body.tags : [];
      return Response.json({ name: clientName, tags }, { headers });
    }
    if (isUpstreamFailure(r)) {
      const known = await this.deps.index.listTags(t.registry.prefix, t.name);
      if (known.length) {
        ctx.cache = "stale";
        if (r.ok) await r.response.body?.cancel();
        let tags = last !== null ? known.filter((x) => x > last) : known;
        const n = nRaw !== null ? Number(nRaw) : undefined;
        const headers = new Headers({ "content-type": "application/json", warning: '110 - "Response is Stale"', ...API_VERSION });
        if (n !== undefined && tags.length > n) {
          tags = tags.slice(0, n);
          const next = new URL(url);
          next.searchParams.set("last", tags[tags.length - 1] ?? "");
          next.searchParams.set("n", String(n));
          headers.set("link", `<${next.pathname}${next.search}>; rel="next"`);
        }
        this.deps.log.warn("upstream failed, serving cached tag list", { registry: t.registry.prefix, repository: t.name, reason: failureReason(r) });
        return Response.json({ name: clientName, tags }, { headers });
      }
    }
    return upstreamError(r, "NAME_UNKNOWN", t);
  }

  #up(t: Target): Upstream {
    return this.deps.upstream(t.registry);
  }
}

function copyHeaders(from: Headers, names: string[]): Headers {
  const h = new Headers(API_VERSION);
  for (const n of names) {
    const v = from.get(n);
    if (v !== null) h.set(n, v);
  }
  return h;
}

function manifestResponse(row: ManifestRow, bytes: Uint8Array | null, head: boolean): Response {
  const headers = new Headers({
    "content-type": row.mediaType,
    "content-length": String(row.size),
    "docker-content-digest": row.digest,
    etag: `"${row.digest}"`,
    ...API_VERSION,
  });
  return new Response(head ? null : (bytes as Uint8Array<ArrayBuffer>), { status: 200, headers });
}

function blobHeaders(digest: string, length: number | undefined): Headers {
  const h = new Headers({
    "content-type": "application/octet-stream",
    "docker-content-digest": digest,
    "accept-ranges": "bytes",
    etag: `"${digest}"`,
    "cache-control": "max-age=31536000",
    ...API_VERSION,
  });
  if (length !== undefined) h.set("content-length", String(length));
  return h;
}

function rangeNotSatisfiable(size: number): Response {
  return ociError(416, "RANGE_INVALID", `requested range is not satisfiable for a blob of ${size} bytes`, null, {
    "content-range": contentRange(size),
  });
}

/** The response for a client of a running download. */
function flightResponse(flight: Flight, rangeHeader: string | null): Response {
  const size = flight.size;
  const digest = flight.digest.value;
  if (size !== undefined) {
    const range = parseRange(rangeHeader, size);
    if (range.kind === "unsatisfiable") return rangeNotSatisfiable(size);
    if (range.kind === "partial") {
      const headers = blobHeaders(digest, range.end - range.start + 1);
      headers.set("content-range", contentRange(size, range));
      return new Response(flight.stream(range.start, range.end), { status: 206, headers });
    }
    if (size === 0) return new Response(null, { status: 200, headers: blobHeaders(digest, 0) });
  }
  return new Response(flight.stream(), { status: 200, headers: blobHeaders(digest, size) });
}

/**
 * The rest of a blob from `offset`: a 206 that starts there, or (an upstream that ignores Range)
 * a 200 with the first `offset` bytes skipped. Null when the upstream gives neither.
 */
async function resumeBody(up: Upstream, name: string, digest: string, offset: number): Promise<ReadableStream<Uint8Array> | null> {
  const r = await up.blob("GET", name, digest, { range: `bytes=${offset}-` });
  if (!r.ok) return null;
  const res = r.response;
  const start = /^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "")?.[1];
  if (res.status === 206 && res.body && Number(start) === offset) return res.body;
  if (res.status === 200 && res.body) return skip(res.body, offset);
  await res.body?.cancel();
  return null;
}

/** Drop the first `n` bytes of a stream. */
function skip(body: ReadableStream<Uint8Array>, n: number): ReadableStream<Uint8Array> {
  let left = n;
  return body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, ctrl) {
      if (left >= chunk.length) {
        left -= chunk.length;
        return;
      }
      ctrl.enqueue(left ? chunk.subarray(left) : chunk);
      left = 0;
    },
  }));
}

/** The repository a request is for, as flights record it. */
function scopeOf(t: Target): string {
  return `${t.registry.prefix}/${t.name}`;
}

/** True for what stale-if-error covers: no answer, 5xx, 429. */
function isUpstreamFailure(r: UpstreamResult): boolean {
  return !r.ok || r.response.status >= 500 || r.response.status === 429;
}

function failureReason(r: UpstreamResult): string {
  return r.ok ? `upstream answered ${r.response.status}` : r.message;
}

async function errorCodeOf(res: Response): Promise<ErrorCode | undefined> {
  try {
    const text = await res.text();
    const code = JSON.parse(text)?.errors?.[0]?.code;
    return typeof code === "string" && /^[A-Z_]{3,40}$/.test(code) ? (code as ErrorCode) : undefined;
  } catch {
    return undefined;
  }
}

/** Map an upstream that failed or answered other than 200 to the client's error. */
async function upstreamError(r: UpstreamResult, notFound: ErrorCode, t: Target): Promise<Response> {
  if (!r.ok) return mapUpstream(0, r, undefined, null, notFound, t);
  const res = r.response;
  const code = res.status >= 400 && res.status < 500 ? await errorCodeOf(res) : (await res.body?.cancel(), undefined);
  return mapUpstream(res.status, undefined, code, res.headers.get("retry-after"), notFound, t);
}

function mapUpstream(
  status: number,
  failure: Extract<UpstreamResult, { ok: false }> | undefined,
  code: ErrorCode | undefined,
  retryAfter: string | null,
  notFound: ErrorCode,
  t: Target,
): Response {
  const host = new URL(t.registry.url).host;
  const extra: Record<string, string> = retryAfter ? { "retry-after": retryAfter } : {};
  if (failure) {
    if (failure.kind === "offline") return ociError(503, "UNAVAILABLE", `${failure.message}; ${t.name} is not in the cache`);
    if (failure.kind === "refused") return ociError(502, "UNAVAILABLE", `upstream ${host}: ${failure.message}`);
    return failure.kind === "timeout"
      ? ociError(504, "UNAVAILABLE", `upstream ${host} timed out: ${failure.message}`)
      : ociError(502, "UNAVAILABLE", `upstream ${host} is unreachable: ${failure.message}`);
  }
  switch (status) {
    case 404:
      return ociError(404, code === "NAME_UNKNOWN" ? code : notFound, `${t.name}: not found upstream at ${host}`);
    case 401:
      return ociError(401, "UNAUTHORIZED", `upstream ${host} refused ${t.name}: authentication required (check the registry's username/password in the ocicache config)`);
    case 403:
      return ociError(403, "DENIED", `upstream ${host} denied access to ${t.name}`);
    case 429:
      return ociError(429, "TOOMANYREQUESTS", `upstream ${host} is rate-limiting; retry later`, null, extra);
    case 503:
      return ociError(503, "UNAVAILABLE", `upstream ${host} is unavailable (503)`, null, extra);
    case 504:
      return ociError(504, "UNAVAILABLE", `upstream ${host} timed out (504)`, null, extra);
  }
  if (status >= 500) return ociError(502, "UNAVAILABLE", `upstream ${host} failed with ${status}`, null, extra);
  if (status >= 400) return ociError(status, code ?? notFound, `upstream ${host} answered ${status} for ${t.name}`);
  return ociError(502, "UNAVAILABLE", `upstream ${host} answered an unexpected ${status} for ${t.name}`);
}

/** Point an upstream's `Link: <…/tags/list?…>; rel="next"` at this cache's path for the repo. */
function rewriteLink(link: string, t: Target, reqUrl: URL): string {
  return link.replace(/<([^>]*)>/, (_m, href: string) => {
    const u = new URL(href, "http://upstream.invalid");
    const next = new URLSearchParams(u.search);
    const ns = reqUrl.searchParams.get("ns");
    if (ns !== null) next.set("ns", ns);
    return `<${t.clientPath}/tags/list?${next}>`;
  });
}

/** Read a body up to `limit` bytes. */
async function readLimited(res: Response, limit: number): Promise<{ ok: true; bytes: Uint8Array } | { ok: false; reason: string }> {
  const len = res.headers.get("content-length");
  if (len !== null && Number(len) > limit) {
    await res.body?.cancel();
    return { ok: false, reason: `is ${len} bytes, over the ${limit}-byte limit` };
  }
  if (!res.body) return { ok: true, bytes: new Uint8Array() };
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const c of res.body) {
      total += c.length;
      if (total > limit) {
        return { ok: false, reason: `is over the ${limit}-byte limit` };
      }
      chunks.push(c);
    }
  } catch (e) {
    return { ok: false, reason: `broke off: ${(e as Error).message}` };
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return { ok: true, bytes: out };
}
