/**
 * Maps a request path (and containerd's `?ns=`) to a registry, a repository name and an
 * operation, checking every part against the grammar before anything else happens.
 *
 * Three ways to name a registry, tried in this order:
 * 1. `?ns=<host>` (containerd hosts.toml mirrors) selects the registry with that host; a leading
 *    path segment equal to its prefix is dropped (`override_path = true` with a prefix).
 * 2. A first path segment equal to a configured prefix: `/v2/ghcr.io/owner/app/…`.
 * 3. Otherwise the default registry: `/v2/library/nginx/…` (Docker's `registry-mirrors`).
 * @module
 */
import type { RegistryConfig } from "../config.ts";
import { ociError } from "../http/errors.ts";
import { type Digest, looksLikeDigest, parseDigest } from "./digest.ts";
import { isValidName, isValidTag } from "./reference.ts";

/** Where a repository request goes. */
export interface Target {
  registry: RegistryConfig;
  /** The repository name upstream (with `library/` added on Docker Hub). */
  name: string;
  /** The path the client used before `/manifests|/blobs|/tags`, e.g. `/v2/docker.io/nginx`. */
  clientPath: string;
}

/** A routed request. */
export type Route =
  | { kind: "base" }
  | { kind: "manifest"; target: Target; tag: string; digest?: undefined }
  | { kind: "manifest"; target: Target; digest: Digest; tag?: undefined }
  | { kind: "blob"; target: Target; digest: Digest }
  | { kind: "tags"; target: Target };

/** The routing result: a route, or the error response to send. */
export type RouteResult = { ok: true; route: Route } | { ok: false; response: Response };

/** The registries the router chooses from. */
export interface RouterConfig {
  registries: RegistryConfig[];
  defaultRegistry: string | null;
}

/** Builds routes for one configuration. */
export class Router {
  readonly #byPrefix = new Map<string, RegistryConfig>();
  readonly #byHost = new Map<string, RegistryConfig>();
  readonly #default: RegistryConfig | undefined;

  constructor(cfg: RouterConfig) {
    for (const r of cfg.registries) {
      this.#byPrefix.set(r.prefix, r);
      for (const h of [r.prefix, ...r.hosts]) if (!this.#byHost.has(h)) this.#byHost.set(h, r);
    }
    this.#default = cfg.defaultRegistry ? this.#byPrefix.get(cfg.defaultRegistry) : undefined;
  }

  /** The registry with this prefix. */
  registry(prefix: string): RegistryConfig | undefined {
    return this.#byPrefix.get(prefix);
  }

  /** Route a URL whose path starts with `/v2/`. Method checks are the caller's. */
  route(url: URL): RouteResult {
    const path = url.pathname;
    if (path === "/v2/" || path === "/v2") return { ok: true, route: { kind: "base" } };
    const segs = path.slice("/v2/".length).split("/");
    let op: "manifest" | "blob" | "tags";
    let ref = "";
    let nameSegs: string[];
    const n = segs.length;
    if (n >= 3 && segs[n - 2] === "tags" && segs[n - 1] === "list") {
      op = "tags";
      nameSegs = segs.slice(0, n - 2);
    } else if (n >= 3 && (segs[n - 2] === "manifests" || (segs[n - 2] === "blobs" && segs[n - 1] !== "uploads"))) {
      op = segs[n - 2] === "manifests" ? "manifest" : "blob";
      ref = segs[n - 1];
      nameSegs = segs.slice(0, n - 2);
    } else if (n >= 3 && segs.includes("blobs") && segs.includes("uploads")) {
      return fail(405, "UNSUPPORTED", "ocicache is a read-only pull-through cache: pushes are not supported");
    } else if (segs[0] === "_catalog") {
      return fail(404, "UNSUPPORTED", "the catalog API is not offered by ocicache");
    } else {
      return fail(404, "NAME_UNKNOWN", `no such endpoint: ${path}`);
    }

    const picked = this.#pick(nameSegs, url.searchParams.get("ns") || null);
    if (!picked.ok) return picked;
    const { registry, rest, clientSegs } = picked;
    let name = rest.join("/");
    if (!isValidName(name)) {
      return fail(400, "NAME_INVALID", `invalid repository name: ${JSON.stringify(name)}`, {
        name,
        rule: "path components of [a-z0-9]+ joined by '.', '_', '__' or '-', separated by '/'",
      });
    }
    if (registry.dockerHub && rest.length === 1) name = `library/${name}`;
    const target: Target = { registry, name, clientPath: "/v2/" + clientSegs.join("/") };

    if (op === "tags") return { ok: true, route: { kind: "tags", target } };
    if (op === "blob" || looksLikeDigest(ref)) {
      const digest = parseDigest(ref);
      if (!digest) {
        return fail(400, "DIGEST_INVALID", `invalid digest: ${JSON.stringify(ref)}`, {
          digest: ref,
          rule: "sha256:<64 lowercase hex> or sha512:<128 lowercase hex>",
        });
      }
      return { ok: true, route: op === "blob" ? { kind: "blob", target, digest } : { kind: "manifest", target, digest } };
    }
    if (!isValidTag(ref)) {
      return fail(404, "MANIFEST_UNKNOWN", `invalid tag: ${JSON.stringify(ref)}`, {
        tag: ref,
        rule: "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}",
      });
    }
    return { ok: true, route: { kind: "manifest", target, tag: ref } };
  }

  #pick(
    segs: string[],
    ns: string | null,
  ): { ok: true; registry: RegistryConfig; rest: string[]; clientSegs: string[] } | { ok: false; response: Response } {
    if (ns !== null) {
      const registry = this.#byHost.get(ns.toLowerCase());
      if (!registry) return this.#unknown(`no registry is configured for ns=${ns}`);
      const rest = segs[0] === registry.prefix ? segs.slice(1) : segs;
      return { ok: true, registry, rest, clientSegs: segs };
    }
    const prefixed = this.#byPrefix.get(segs[0]);
    if (prefixed) return { ok: true, registry: prefixed, rest: segs.slice(1), clientSegs: segs };
    if (!this.#default) return this.#unknown(`no registry prefix matches ${JSON.stringify(segs[0])} and there is no default registry`);
    return { ok: true, registry: this.#default, rest: segs, clientSegs: segs };
  }

  #unknown(message: string): { ok: false; response: Response } {
    const prefixes = [...this.#byPrefix.keys()];
    return fail(404, "NAME_UNKNOWN", `${message}; configured prefixes: ${prefixes.join(", ")}`, { prefixes });
  }
}

function fail(status: number, code: Parameters<typeof ociError>[1], message: string, detail?: unknown): { ok: false; response: Response } {
  return { ok: false, response: ociError(status, code, message, detail) };
}
