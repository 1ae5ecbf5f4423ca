/** Request path (and containerd ?ns=) → registry, repository, operation. */
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { type Config, EMBEDDED_REGISTRIES, loadConfig, parseFlags } from "../src/config.ts";
import { type Route, type RouteResult, Router } from "../src/oci/router.ts";

const D64 = "a".repeat(64);
const DIGEST = `sha256:${D64}`;

async function config(args: string[] = []): Promise<Config> {
  return await loadConfig({
    flags: parseFlags(args),
    env: () => undefined,
    readText: () => Promise.reject(new Error("no files here")),
  });
}

function ok(r: RouteResult): Route {
  if (!r.ok) throw new Error(`expected a route, got ${r.response.status}`);
  return r.route;
}

/** Route a path, expect a repository route, return [registry prefix, name, kind, ref]. */
function target(router: Router, path: string) {
  const route = ok(router.route(new URL(path, "http://cache.local:5000")));
  assert.notEqual(route.kind, "base");
  if (route.kind === "base") throw new Error("unreachable");
  const ref = route.kind === "tags" ? undefined : route.kind === "blob" ? route.digest.value : route.tag ?? route.digest!.value;
  return { prefix: route.target.registry.prefix, name: route.target.name, kind: route.kind, ref, clientPath: route.target.clientPath };
}

interface ErrBody {
  errors: { code: string; message: string; detail: unknown }[];
}

async function error(router: Router, path: string, status: number, code: string): Promise<ErrBody["errors"][0]> {
  const r = router.route(new URL(path, "http://cache.local:5000"));
  assert.equal(r.ok, false, `${path} should fail`);
  if (r.ok) throw new Error("unreachable");
  assert.equal(r.response.status, status, path);
  assert.match(r.response.headers.get("content-type") ?? "", /application\/json/);
  const body = (await r.response.json()) as ErrBody;
  assert.ok(Array.isArray(body.errors));
  assert.equal(body.errors.length, 1);
  const [e] = body.errors;
  assert.deepEqual(Object.keys(e).sort(), ["code", "detail", "message"]);
  assert.equal(e.code, code, path);
  assert.equal(typeof e.message, "string");
  assert.ok(e.message.length > 0);
  return e;
}

let router: Router; // embedded registries + local=http://127.0.0.1:5000, default docker.io

before(async () => {
  router = new Router(await config(["--registry", "local=http://127.0.0.1:5000"]));
});

describe("embedded configuration", () => {
  test("loadConfig gives the embedded registries and docker.io as default", async () => {
    const cfg = await config();
    assert.deepEqual(cfg.registries.map((r) => r.prefix), EMBEDDED_REGISTRIES.map((r) => r.prefix));
    const r = new Router(cfg);
    assert.equal(r.registry("ghcr.io")?.url, "https://ghcr.io");
    assert.equal(r.registry("nope"), undefined);
  });
});

describe("base", () => {
  test("/v2/ and /v2", () => {
    assert.deepEqual(ok(router.route(new URL("http://x/v2/"))), { kind: "base" });
    assert.deepEqual(ok(router.route(new URL("http://x/v2"))), { kind: "base" });
  });
});

describe("prefix routing", () => {
  test("/v2/ghcr.io/owner/app/manifests/1.0 → ghcr.io owner/app", () => {
    assert.deepEqual(target(router, "/v2/ghcr.io/owner/app/manifests/1.0"), {
      prefix: "ghcr.io",
      name: "owner/app",
      kind: "manifest",
      ref: "1.0",
      clientPath: "/v2/ghcr.io/owner/app",
    });
  });
  test("deep names on quay.io and registry.k8s.io", () => {
    assert.equal(target(router, "/v2/quay.io/a/b/c/manifests/latest").name, "a/b/c");
    const t = target(router, "/v2/registry.k8s.io/pause/manifests/3.9");
    assert.deepEqual([t.prefix, t.name], ["registry.k8s.io", "pause"]);
  });
  test("/v2/docker.io/nginx → library/nginx on Docker Hub", () => {
    const t = target(router, "/v2/docker.io/nginx/manifests/latest");
    assert.deepEqual([t.prefix, t.name, t.clientPath], ["docker.io", "library/nginx", "/v2/docker.io/nginx"]);
  });
  test("/v2/docker.io/library/nginx is not doubled", () => {
    assert.equal(target(router, "/v2/docker.io/library/nginx/manifests/latest").name, "library/nginx");
  });
  test("/v2/docker.io/bitnami/redis keeps its namespace", () => {
    assert.equal(target(router, "/v2/docker.io/bitnami/redis/manifests/latest").name, "bitnami/redis");
  });
  test("single-segment names elsewhere get no library/", () => {
    assert.equal(target(router, "/v2/ghcr.io/app/manifests/1").name, "app");
    assert.equal(target(router, "/v2/local/app/manifests/1").name, "app");
    assert.equal(target(router, "/v2/local/app/manifests/1").prefix, "local");
  });
  test("a prefix is a whole segment, not a string prefix", () => {
    // "ghcr.io.evil" is not ghcr.io: it falls to the default registry as a repository name.
    const t = target(router, "/v2/ghcr.io.evil/app/manifests/1");
    assert.deepEqual([t.prefix, t.name], ["docker.io", "ghcr.io.evil/app"]);
  });
});

describe("no prefix → default registry", () => {
  test("/v2/nginx → docker.io library/nginx", () => {
    assert.deepEqual(target(router, "/v2/nginx/manifests/latest"), {
      prefix: "docker.io",
      name: "library/nginx",
      kind: "manifest",
      ref: "latest",
      clientPath: "/v2/nginx",
    });
  });
  test("/v2/library/nginx (Docker registry-mirrors) → docker.io library/nginx", () => {
    const t = target(router, "/v2/library/nginx/manifests/latest");
    assert.deepEqual([t.prefix, t.name, t.clientPath], ["docker.io", "library/nginx", "/v2/library/nginx"]);
  });
  test("a non-Docker-Hub default gets no library/", async () => {
    const r = new Router(await config(["--registry", "local=http://127.0.0.1:5000", "--default-registry", "local"]));
    const t = target(r, "/v2/app/manifests/1");
    assert.deepEqual([t.prefix, t.name], ["local", "app"]);
    // prefixes still work with another default
    assert.equal(target(r, "/v2/docker.io/nginx/manifests/1").name, "library/nginx");
  });
  test("no default registry → 404 NAME_UNKNOWN naming the prefixes", async () => {
    const r = new Router(await config(["--default-registry", "none"]));
    const e = await error(r, "/v2/library/nginx/manifests/latest", 404, "NAME_UNKNOWN");
    assert.match(e.message, /default registry/);
    assert.match(e.message, /ghcr\.io/);
    assert.match(e.message, /docker\.io/);
    assert.equal(target(r, "/v2/docker.io/nginx/manifests/latest").name, "library/nginx");
  });
});

describe("containerd ?ns=", () => {
  test("ns=docker.io, unprefixed path", () => {
    const t = target(router, "/v2/library/nginx/manifests/latest?ns=docker.io");
    assert.deepEqual([t.prefix, t.name], ["docker.io", "library/nginx"]);
    assert.equal(target(router, "/v2/nginx/manifests/latest?ns=docker.io").name, "library/nginx");
  });
  test("ns=registry-1.docker.io and index.docker.io", () => {
    assert.equal(target(router, "/v2/library/nginx/manifests/latest?ns=registry-1.docker.io").prefix, "docker.io");
    assert.equal(target(router, "/v2/library/nginx/manifests/latest?ns=index.docker.io").prefix, "docker.io");
  });
  test("ns wins over a path that looks like another prefix", () => {
    const t = target(router, "/v2/owner/app/manifests/1.0?ns=ghcr.io");
    assert.deepEqual([t.prefix, t.name], ["ghcr.io", "owner/app"]);
    // ns names quay.io; the default registry (docker.io) is not used
    assert.equal(target(router, "/v2/nginx/manifests/1?ns=quay.io").name, "nginx");
  });
  test("ns equal to a custom registry's URL host (127.0.0.1:5000)", () => {
    const t = target(router, "/v2/team/app/manifests/1?ns=127.0.0.1:5000");
    assert.deepEqual([t.prefix, t.name], ["local", "team/app"]);
  });
  test("ns is case-insensitive", () => {
    assert.equal(target(router, "/v2/owner/app/manifests/1?ns=GHCR.IO").prefix, "ghcr.io");
  });
  test("ns plus a leading prefix segment (override_path) strips the prefix", () => {
    const t = target(router, "/v2/ghcr.io/owner/app/manifests/1.0?ns=ghcr.io");
    assert.deepEqual([t.prefix, t.name, t.clientPath], ["ghcr.io", "owner/app", "/v2/ghcr.io/owner/app"]);
    const d = target(router, "/v2/docker.io/nginx/manifests/latest?ns=docker.io");
    assert.deepEqual([d.prefix, d.name], ["docker.io", "library/nginx"]);
    const l = target(router, `/v2/local/app/blobs/${DIGEST}?ns=127.0.0.1:5000`);
    assert.deepEqual([l.prefix, l.name, l.kind], ["local", "app", "blob"]);
  });
  test("unknown ns → 404 NAME_UNKNOWN whose message names the configured prefixes", async () => {
    const e = await error(router, "/v2/library/nginx/manifests/latest?ns=registry.example.com", 404, "NAME_UNKNOWN");
    assert.match(e.message, /registry\.example\.com/);
    for (const p of ["docker.io", "ghcr.io", "quay.io", "local"]) assert.ok(e.message.includes(p), `${p} in ${e.message}`);
    assert.deepEqual((e.detail as { prefixes: string[] }).prefixes.includes("local"), true);
  });
});

describe("operations", () => {
  test("manifest by digest", () => {
    const r = ok(router.route(new URL(`http://x/v2/ghcr.io/o/a/manifests/${DIGEST}`)));
    assert.equal(r.kind, "manifest");
    if (r.kind === "manifest") {
      assert.equal(r.tag, undefined);
      assert.deepEqual(r.digest, { algorithm: "sha256", hex: D64, value: DIGEST });
    }
  });
  test("manifest by tag has no digest", () => {
    const r = ok(router.route(new URL("http://x/v2/ghcr.io/o/a/manifests/v1")));
    assert.ok(r.kind === "manifest" && r.tag === "v1" && r.digest === undefined);
  });
  test("blob by digest (sha256 and sha512)", () => {
    const t = target(router, `/v2/docker.io/nginx/blobs/${DIGEST}`);
    assert.deepEqual([t.kind, t.name, t.ref], ["blob", "library/nginx", DIGEST]);
    const s512 = `sha512:${"b".repeat(128)}`;
    assert.equal(target(router, `/v2/nginx/blobs/${s512}`).ref, s512);
  });
  test("bad blob digest → 400 DIGEST_INVALID", async () => {
    for (const d of ["sha256:abc", `sha256:${"A".repeat(64)}`, `md5:${"a".repeat(32)}`, "latest"]) {
      const e = await error(router, `/v2/ghcr.io/o/a/blobs/${d}`, 400, "DIGEST_INVALID");
      assert.deepEqual((e.detail as { digest: string }).digest, d);
    }
  });
  test("bad manifest digest → 400 DIGEST_INVALID", async () => {
    await error(router, "/v2/ghcr.io/o/a/manifests/sha256:1234", 400, "DIGEST_INVALID");
  });
  test("bad name → 400 NAME_INVALID with the name in detail", async () => {
    const e = await error(router, "/v2/ghcr.io/Owner/App/manifests/latest", 400, "NAME_INVALID");
    assert.equal((e.detail as { name: string }).name, "Owner/App");
    await error(router, "/v2/ghcr.io/a___b/manifests/latest", 400, "NAME_INVALID");
    await error(router, "/v2/-x/manifests/latest", 400, "NAME_INVALID");
    await error(router, "/v2/a//b/manifests/latest", 400, "NAME_INVALID");
    // a prefix alone is no repository
    await error(router, "/v2/ghcr.io/manifests/latest", 400, "NAME_INVALID");
  });
  test("name checked before the digest", async () => {
    await error(router, "/v2/ghcr.io/BAD/blobs/sha256:zz", 400, "NAME_INVALID");
  });
  test("invalid tag → 404 MANIFEST_UNKNOWN", async () => {
    const e = await error(router, "/v2/ghcr.io/o/a/manifests/.hidden", 404, "MANIFEST_UNKNOWN");
    assert.equal((e.detail as { tag: string }).tag, ".hidden");
    await error(router, `/v2/ghcr.io/o/a/manifests/${"t".repeat(129)}`, 404, "MANIFEST_UNKNOWN");
    assert.equal(target(router, `/v2/ghcr.io/o/a/manifests/${"t".repeat(128)}`).ref, "t".repeat(128));
  });
  test("blob upload paths → 405 UNSUPPORTED", async () => {
    await error(router, "/v2/ghcr.io/o/a/blobs/uploads/", 405, "UNSUPPORTED");
    await error(router, "/v2/ghcr.io/o/a/blobs/uploads/3f1e-uuid", 405, "UNSUPPORTED");
    await error(router, "/v2/nginx/blobs/uploads/", 405, "UNSUPPORTED");
    await error(router, "/v2/nginx/blobs/uploads", 405, "UNSUPPORTED");
  });
  test("tags/list", () => {
    assert.deepEqual(target(router, "/v2/ghcr.io/owner/app/tags/list"), {
      prefix: "ghcr.io",
      name: "owner/app",
      kind: "tags",
      ref: undefined,
      clientPath: "/v2/ghcr.io/owner/app",
    });
    const t = target(router, "/v2/nginx/tags/list?n=10");
    assert.deepEqual([t.prefix, t.name, t.kind, t.clientPath], ["docker.io", "library/nginx", "tags", "/v2/nginx"]);
  });
  test("a repository with a 'manifests' component", () => {
    const t = target(router, "/v2/x/manifests/manifests/latest");
    assert.deepEqual([t.prefix, t.name, t.kind, t.ref, t.clientPath], ["docker.io", "x/manifests", "manifest", "latest", "/v2/x/manifests"]);
    const b = target(router, `/v2/ghcr.io/blobs/tags/blobs/${DIGEST}`);
    assert.deepEqual([b.name, b.kind], ["blobs/tags", "blob"]);
  });
  test("unknown endpoints → 404", async () => {
    await error(router, "/v2/_catalog", 404, "UNSUPPORTED");
    await error(router, "/v2/nginx", 404, "NAME_UNKNOWN");
    await error(router, "/v2/nginx/latest", 404, "NAME_UNKNOWN");
    await error(router, "/v2/tags/list", 404, "NAME_UNKNOWN");
  });
});
