/**
 * An in-process fake upstream registry for integration tests: serves manifests, blobs and tag
 * lists from memory, optionally behind the Bearer token dance, counts every request, and
 * injects faults (wrong bytes, a body that dies part-way, stalls, error statuses, redirects).
 * @module
 */
import { createHash } from "node:crypto";
import { detectRuntime } from "../../src/runtime/mod.ts";
import type { Server } from "../../src/runtime/types.ts";

/** A request the fake saw. */
export interface SeenRequest {
  method: string;
  path: string;
  range: string | null;
  kind: "base" | "manifest" | "blob" | "tags" | "token" | "redirected" | "other";
  accept: string | null;
  authorization: string | null;
}

/** A fault applied to blob or manifest responses; with `times`, only to that many requests. */
export type Fault = FaultKind & { times?: number };

/** The kinds of {@link Fault}. */
export type FaultKind =
  /** Serve these bytes instead of the real content (same length unless given otherwise). */
  | { kind: "wrongBytes"; bytes?: Uint8Array }
  /** Send the headers (full Content-Length) and this many bytes, then break the connection. */
  | { kind: "dieAfter"; bytes: number }
  /** Send this many bytes, then end the body cleanly although Content-Length announced more. */
  | { kind: "truncateAfter"; bytes: number }
  /** Send this many bytes, then go silent for `ms`. */
  | { kind: "stallAfter"; bytes: number; ms: number }
  /** Answer with this status (and optional headers), e.g. 429 + Retry-After. */
  | { kind: "status"; status: number; headers?: Record<string, string> };

/** Options for {@link startFakeRegistry}. */
export interface FakeOptions {
  /** Require Bearer tokens from the fake's /token endpoint. */
  tokenAuth?: boolean;
  /** Credentials the token endpoint requires (Basic) when set. */
  credentials?: { username: string; password: string };
  /** Token lifetime in seconds. */
  tokenTtl?: number;
  /** Stream blob bodies in chunks of this size with `chunkDelayMs` between them. */
  chunkSize?: number;
  chunkDelayMs?: number;
  /** Redirect blob GETs to this base URL (another server), like registries that use object storage. */
  redirectBlobsTo?: string;
  /** Ignore Range headers on blobs (answer 200 with the whole body). */
  ignoreRange?: boolean;
}

/** A running fake registry. */
export interface FakeRegistry {
  url: string;
  host: string;
  requests: SeenRequest[];
  /** Tokens issued by /token. */
  tokensIssued: number;
  /** Count requests of a kind (and method). */
  count(kind: SeenRequest["kind"], method?: string): number;
  reset(): void;
  /** Add a blob; returns its digest. */
  putBlob(bytes: Uint8Array): string;
  /** Add a manifest under a repository and (optionally) tag; returns its digest. */
  putManifest(repo: string, bytes: Uint8Array, mediaType: string, tag?: string): string;
  /** Point a tag at an existing manifest digest. */
  tag(repo: string, tag: string, digest: string): void;
  /** Extra tags for tags/list. */
  setTags(repo: string, tags: string[]): void;
  /** Apply a fault to requests for this digest (blob or manifest) or tag; undefined clears. */
  fault(ref: string, f: Fault | undefined): void;
  /** Apply a fault to every /v2/ request (e.g. 503 while "down"). */
  faultAll(f: Fault | undefined): void;
  /** Only these repositories have this digest (others get 404 for it); undefined: every repository. */
  restrict(digest: string, repos: string[] | undefined): void;
  /** Override the Docker-Content-Digest a tag's manifest GET announces. */
  announceDigest(repo: string, tag: string, digest: string | undefined): void;
  stop(): Promise<void>;
}

/** sha256 digest of bytes. */
export function sha256(bytes: Uint8Array): string {
  return "sha256:" + createHash("sha256").update(bytes).digest("hex");
}

/** Deterministic pseudo-random bytes. */
export function randomBytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const enc = new TextEncoder();

/** A small OCI image manifest pointing at a config and layers. */
export function imageManifest(config: { digest: string; size: number }, layers: { digest: string; size: number }[]): Uint8Array {
  return enc.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers: layers.map((l) => ({ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", ...l })),
  }));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Start a fake registry on a free loopback port. */
export async function startFakeRegistry(opts: FakeOptions = {}): Promise<FakeRegistry> {
  const rt = detectRuntime();
  const blobs = new Map<string, Uint8Array>();
  const manifests = new Map<string, { bytes: Uint8Array; mediaType: string }>();
  const tags = new Map<string, Map<string, string>>(); // repo -> tag -> digest
  const extraTags = new Map<string, string[]>();
  const faults = new Map<string, Fault>();
  const announced = new Map<string, string>();
  const restricted = new Map<string, Set<string>>();
  let allFault: Fault | undefined;
  const validTokens = new Set<string>();
  const requests: SeenRequest[] = [];
  let tokensIssued = 0;
  let server: Server;

  const challenge = (scope: string) =>
    new Response(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }), {
      status: 401,
      headers: {
        "content-type": "application/json",
        "www-authenticate": `Bearer realm="http://127.0.0.1:${server.port}/token",service="fake-registry",scope="${scope}"`,
      },
    });

  const notFound = (code: string) =>
    new Response(JSON.stringify({ errors: [{ code, message: "not found" }] }), { status: 404, headers: { "content-type": "application/json" } });

  const body = (bytes: Uint8Array, fault: Fault | undefined): BodyInit => {
    const chunk = opts.chunkSize ?? 64 * 1024;
    const delay = opts.chunkDelayMs ?? 0;
    let off = 0;
    const limit = fault?.kind === "dieAfter" || fault?.kind === "stallAfter" || fault?.kind === "truncateAfter" ? fault.bytes : Infinity;
    if (!fault && !delay) return bytes.slice();
    return new ReadableStream<Uint8Array>({
      async pull(c) {
        if (off >= bytes.length) return c.close();
        if (off >= limit) {
          if (fault?.kind === "stallAfter") {
            await sleep(fault.ms);
            return c.close();
          }
          if (fault?.kind === "truncateAfter") return c.close();
          return c.error(new Error("injected: connection dies"));
        }
        if (delay && off > 0) await sleep(delay);
        const end = Math.min(bytes.length, off + chunk, limit);
        c.enqueue(bytes.slice(off, end));
        off = end;
      },
    });
  };

  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const path = url.pathname;
    const seen: SeenRequest = {
      method: req.method,
      path,
      range: req.headers.get("range"),
      kind: "other",
      accept: req.headers.get("accept"),
      authorization: req.headers.get("authorization"),
    };
    requests.push(seen);
    if (path === "/token") {
      seen.kind = "token";
      if (opts.credentials) {
        const want = "Basic " + btoa(`${opts.credentials.username}:${opts.credentials.password}`);
        if (req.headers.get("authorization") !== want) return new Response("bad credentials", { status: 401 });
      }
      tokensIssued++;
      const token = `tok-${tokensIssued}-${url.searchParams.get("scope")}`;
      validTokens.add(token);
      return Response.json({ token, expires_in: opts.tokenTtl ?? 300 });
    }
    if (path.startsWith("/storage/")) {
      seen.kind = "redirected";
      const bytes = blobs.get(path.slice("/storage/".length));
      return bytes ? new Response(bytes.slice()) : new Response("gone", { status: 404 });
    }
    if (path === "/v2/") {
      seen.kind = "base";
      return Response.json({});
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path) ?? /^\/v2\/(.+)\/(tags)\/list$/.exec(path);
    if (!m) return new Response("no", { status: 404 });
    const [, repo, what, ref] = m;
    seen.kind = what === "manifests" ? "manifest" : what === "blobs" ? "blob" : "tags";
    if (opts.tokenAuth) {
      const auth = req.headers.get("authorization");
      const tok = auth?.startsWith("Bearer ") ? auth.slice(7) : "";
      if (!validTokens.has(tok) || !tok.endsWith(`repository:${repo}:pull`)) return challenge(`repository:${repo}:pull`);
    }
    if (ref && restricted.has(ref) && !restricted.get(ref)!.has(repo)) {
      return notFound(seen.kind === "blob" ? "BLOB_UNKNOWN" : "MANIFEST_UNKNOWN");
    }
    const fault = allFault ?? (ref ? faults.get(ref) : undefined);
    if (fault?.times !== undefined) {
      fault.times--;
      if (fault.times <= 0) {
        if (fault === allFault) allFault = undefined;
        else faults.delete(ref);
      }
    }
    if (fault?.kind === "status") {
      return new Response(JSON.stringify({ errors: [{ code: "UNAVAILABLE", message: "injected" }] }), {
        status: fault.status,
        headers: { "content-type": "application/json", ...fault.headers },
      });
    }
    if (seen.kind === "tags") {
      const all = [...new Set([...(tags.get(repo)?.keys() ?? []), ...(extraTags.get(repo) ?? [])])].sort();
      if (!all.length && !tags.has(repo)) return notFound("NAME_UNKNOWN");
      const last = url.searchParams.get("last");
      const n = url.searchParams.get("n");
      let list = last ? all.filter((t) => t > last) : all;
      const headers = new Headers();
      if (n !== null && list.length > Number(n)) {
        list = list.slice(0, Number(n));
        headers.set("link", `</v2/${repo}/tags/list?last=${list[list.length - 1]}&n=${n}>; rel="next"`);
      }
      return Response.json({ name: repo, tags: list }, { headers });
    }
    if (seen.kind === "manifest") {
      const digest = ref.includes(":") ? ref : tags.get(repo)?.get(ref);
      const man = digest ? manifests.get(digest) : undefined;
      if (!digest || !man) return notFound("MANIFEST_UNKNOWN");
      const bytes = fault?.kind === "wrongBytes" ? (fault.bytes ?? enc.encode(JSON.stringify({ schemaVersion: 2, evil: true }))) : man.bytes;
      const headers = {
        "content-type": man.mediaType,
        "content-length": String(bytes.length),
        "docker-content-digest": announced.get(`${repo}:${ref}`) ?? digest,
      };
      return new Response(req.method === "HEAD" ? null : bytes.slice(), { headers });
    }
    // blob
    const bytes = blobs.get(ref);
    if (!bytes) return notFound("BLOB_UNKNOWN");
    if (req.method === "GET" && opts.redirectBlobsTo) {
      return new Response(null, { status: 307, headers: { location: `${opts.redirectBlobsTo}/storage/${ref}` } });
    }
    let served = bytes;
    if (fault?.kind === "wrongBytes") served = fault.bytes ?? bytes.map((b) => b ^ 0xff);
    const headers: Record<string, string> = { "content-length": String(served.length), "docker-content-digest": ref, "content-type": "application/octet-stream" };
    if (req.method === "HEAD") return new Response(null, { headers });
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
    if (range && !opts.ignoreRange && Number(range[1]) < served.length) {
      const start = Number(range[1]);
      const part = served.subarray(start);
      return new Response(body(part, fault), {
        status: 206,
        headers: { ...headers, "content-length": String(part.length), "content-range": `bytes ${start}-${served.length - 1}/${served.length}` },
      });
    }
    return new Response(body(served, fault), { headers });
  };

  server = await rt.serve({ hostname: "127.0.0.1", port: 0, handler });
  const host = `127.0.0.1:${server.port}`;
  return {
    url: `http://${host}`,
    host,
    requests,
    get tokensIssued() {
      return tokensIssued;
    },
    count: (kind, method) => requests.filter((r) => r.kind === kind && (!method || r.method === method)).length,
    reset() {
      requests.length = 0;
    },
    putBlob(bytes) {
      const d = sha256(bytes);
      blobs.set(d, bytes);
      return d;
    },
    putManifest(repo, bytes, mediaType, tag) {
      const d = sha256(bytes);
      manifests.set(d, { bytes, mediaType });
      if (!tags.has(repo)) tags.set(repo, new Map());
      if (tag) tags.get(repo)!.set(tag, d);
      return d;
    },
    tag(repo, tag, digest) {
      if (!tags.has(repo)) tags.set(repo, new Map());
      tags.get(repo)!.set(tag, digest);
    },
    setTags(repo, list) {
      extraTags.set(repo, list);
    },
    fault(ref, f) {
      if (f) faults.set(ref, f);
      else faults.delete(ref);
    },
    faultAll(f) {
      allFault = f;
    },
    restrict(digest, repos) {
      if (repos) restricted.set(digest, new Set(repos));
      else restricted.delete(digest);
    },
    announceDigest(repo, tag, digest) {
      if (digest) announced.set(`${repo}:${tag}`, digest);
      else announced.delete(`${repo}:${tag}`);
    },
    stop: () => server.shutdown(),
  };
}
