/**
 * Property-based fuzzing (fast-check) of everything that reads client or upstream input: the
 * grammar checks, Range parsing, `WWW-Authenticate` parsing, the router, and the whole web
 * handler against an in-process cache whose file primitives are spied on — input never reaches
 * the filesystem outside the storage folder, never throws, never turns a client error into a 5xx.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { loadConfig, parseFlags, type Config } from "../src/config.ts";
import { parseRange } from "../src/http/range.ts";
import { parseWwwAuthenticate } from "../src/oci/auth.ts";
import { parseDigest } from "../src/oci/digest.ts";
import { isValidName, isValidTag } from "../src/oci/reference.ts";
import { Router } from "../src/oci/router.ts";
import { silentLogger } from "../src/log.ts";
import { isStatusPath } from "../src/ui/routes.ts";
import { detectRuntime } from "../src/runtime/mod.ts";
import type { Files, Runtime } from "../src/runtime/types.ts";
import { openService, type Service } from "../src/service.ts";
import { type FakeRegistry, imageManifest, randomBytes, startFakeRegistry } from "./support/fake_registry.ts";

const RUNS = 300;
const SHA = /^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$/;

/** Pieces paths are built from: the grammar's own alphabet plus everything that has hurt others. */
const nasty = fc.constantFrom(
  "..", ".", "%2e%2e", "%2E%2E", "%2f", "%2F", "%00", "\0", "%5c", "\\", "//", "~", "%", "%zz", "?", "#", "..%2f", ";", " ",
  "é", "\u202e", "\uffff", "😀", "library", "nginx", "manifests", "blobs", "tags", "list", "uploads", "_catalog", "fake",
  "sha256:" + "a".repeat(64), "sha512:" + "b".repeat(128), "sha256:../../etc/passwd", "latest", "v1", "x".repeat(300),
  "/etc/passwd", "C:\\windows", "ns=fake", "..;", "%252e%252e",
);
const segment = fc.oneof(
  { weight: 3, arbitrary: nasty },
  { weight: 2, arbitrary: fc.stringMatching(/^[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,4})?$/) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 12 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 2000 }).map((s) => s.padEnd(1000, "a")) },
);
const path = fc.array(segment, { minLength: 0, maxLength: 8 }).map((segs) => segs.join("/"));

describe("fuzz: grammar", () => {
  test("parseDigest accepts exactly sha256/sha512 lowercase hex, never throws", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: "binary" }), nasty, fc.stringMatching(/^sha(256|512):[0-9a-fA-F]{60,130}$/)), (s) => {
        const d = parseDigest(s);
        if (d) {
          assert.match(d.value, SHA);
          assert.equal(d.value, `${d.algorithm}:${d.hex}`);
        } else assert.ok(!SHA.test(s));
      }),
      { numRuns: RUNS },
    );
  });

  test("a valid name or tag never carries a path trick", () => {
    fc.assert(
      fc.property(fc.oneof(path, fc.string({ unit: "binary" })), (s) => {
        if (isValidName(s)) {
          assert.ok(s.length <= 255);
          assert.ok(!s.split("/").some((c) => c === "" || c === "." || c === ".."), s);
          assert.match(s, /^[a-z0-9._/-]+$/);
          assert.ok(!s.startsWith("/") && !s.includes("//"));
        }
        if (isValidTag(s)) {
          assert.match(s, /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/);
          assert.ok(!s.includes("/") && !s.startsWith("."));
        }
      }),
      { numRuns: RUNS },
    );
  });

  test("parseRange: never throws; a partial range always lies inside the body", () => {
    const header = fc.oneof(
      fc.constant(null),
      fc.string({ unit: "binary", maxLength: 40 }),
      fc.tuple(fc.option(fc.bigInt({ min: 0n, max: 10n ** 20n })), fc.option(fc.bigInt({ min: 0n, max: 10n ** 20n })))
        .map(([a, b]) => `bytes=${a ?? ""}-${b ?? ""}`),
      fc.tuple(fc.nat(2000), fc.nat(2000)).map(([a, b]) => ` bytes=${a}-${b} `),
      fc.constantFrom("bytes=0-0,5-9", "bytes=-0", "bytes=-", "items=0-1", "bytes=1e3-", "bytes=-1-2", "bytes=0x10-"),
    );
    fc.assert(
      fc.property(header, fc.nat(5000), (h, size) => {
        const r = parseRange(h, size);
        assert.ok(["full", "partial", "unsatisfiable"].includes(r.kind));
        if (r.kind === "partial") {
          assert.ok(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end));
          assert.ok(0 <= r.start && r.start <= r.end && r.end < size, JSON.stringify({ h, size, r }));
        }
      }),
      { numRuns: RUNS },
    );
  });

  test("parseWwwAuthenticate: never throws, terminates, and round-trips well-formed challenges", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 300 }), (h) => {
        const cs = parseWwwAuthenticate(h);
        for (const c of cs) {
          assert.match(c.scheme, /^[!#$%&'*+\-.^_`|~0-9a-z]+$/);
          for (const k of Object.keys(c.params)) assert.equal(k, k.toLowerCase());
        }
      }),
      { numRuns: RUNS },
    );
    const tokenChars = fc.stringMatching(/^[A-Za-z][A-Za-z0-9_-]{0,10}$/);
    const value = fc.string({ maxLength: 30 }).filter((v) => !/[\\"]/.test(v) || true);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(tokenChars, fc.uniqueArray(fc.tuple(tokenChars, value), { selector: ([k]) => k.toLowerCase(), maxLength: 4 })), {
          minLength: 1,
          maxLength: 3,
        }),
        (challenges) => {
          const header = challenges.map(([scheme, params]) =>
            `${scheme} ` + params.map(([k, v]) => `${k}="${v.replace(/[\\"]/g, (c) => "\\" + c)}"`).join(", ")
          ).join(", ");
          const parsed = parseWwwAuthenticate(header);
          assert.deepEqual(
            parsed,
            challenges.map(([scheme, params]) => ({
              scheme: scheme.toLowerCase(),
              params: Object.fromEntries(params.map(([k, v]) => [k.toLowerCase(), v])),
            })),
            header,
          );
        },
      ),
      { numRuns: RUNS },
    );
  });
});

let config: Config;
let storage: string;

describe("fuzz: router", () => {
  before(async () => {
    config = await loadConfig({
      flags: parseFlags(["--storage", "/tmp/ocicache-fuzz-router", "--registry", "fake=http://127.0.0.1:9", "--default-registry", "docker.io"]),
      env: () => undefined,
      readText: () => Promise.reject(new Error("none")),
    });
  });

  test("every path routes to a valid target or an OCI error, never a throw", async () => {
    const router = new Router(config);
    const ns = fc.option(fc.oneof(fc.constantFrom("docker.io", "ghcr.io", "FAKE", "127.0.0.1:9", ""), fc.string({ maxLength: 20 })));
    await fc.assert(
      fc.asyncProperty(path, ns, async (p, n) => {
        let url: URL;
        try {
          url = new URL(`http://cache.local/v2/${p}${n === null ? "" : `?ns=${encodeURIComponent(n)}`}`);
        } catch {
          return;
        }
        const r = router.route(url);
        if (!r.ok) {
          assert.ok(r.response.status >= 400 && r.response.status < 500);
          const body = await r.response.json();
          assert.ok(Array.isArray(body.errors) && typeof body.errors[0].code === "string");
          return;
        }
        const route = r.route;
        if (route.kind === "base") return;
        assert.ok(isValidName(route.target.name) && route.target.name.length <= 255 + "library/".length, route.target.name);
        if (route.kind === "blob" || (route.kind === "manifest" && route.digest)) assert.match(route.digest!.value, SHA);
        if (route.kind === "manifest" && route.tag !== undefined) assert.ok(isValidTag(route.tag));
      }),
      { numRuns: RUNS },
    );
  });
});

describe("fuzz: the whole handler", () => {
  let fake: FakeRegistry;
  let service: Service;
  const touched: string[] = [];
  const escapes: string[] = [];
  let layerDigest = "";
  let manDigest = "";

  before(async () => {
    fake = await startFakeRegistry();
    const layer = randomBytes(4096, 11);
    layerDigest = fake.putBlob(layer);
    const cfg = new TextEncoder().encode("{}");
    const cfgDigest = fake.putBlob(cfg);
    manDigest = fake.putManifest(
      "team/app",
      imageManifest({ digest: cfgDigest, size: cfg.length }, [{ digest: layerDigest, size: layer.length }]),
      "application/vnd.oci.image.manifest.v1+json",
      "v1",
    );
    fake.setTags("team/app", ["v1", "v2"]);
    storage = await mkdtemp(join(tmpdir(), "ocicache-fuzz-"));
    const rt = detectRuntime();
    // Every path handed to the file primitives must lie under the storage folder.
    const root = resolve(storage) + "/";
    const check = (p: unknown) => {
      if (typeof p !== "string") return;
      touched.push(p);
      const abs = resolve(p);
      if (!(abs + "/").startsWith(root) || p.includes("\0") || abs !== p.replace(/\/+$/, "")) escapes.push(p);
    };
    const files = new Proxy(rt.files, {
      get(target, prop, recv) {
        const v = Reflect.get(target, prop, recv);
        if (typeof v !== "function") return v;
        return (...args: unknown[]) => {
          check(args[0]);
          if (prop === "rename") check(args[1]);
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    }) as Files;
    const spied: Runtime = { ...rt, files } as Runtime;
    const cfg2 = await loadConfig({
      flags: parseFlags([
        "--storage", storage, "--registry", `fake=${fake.url}`, "--default-registry", "fake", "--log-level", "error",
        "--upstream-retries", "1", "--config", "/virtual.json",
      ]),
      env: () => undefined,
      // Only the healthy fake upstream: 5xx would be legitimate for an unreachable real registry.
      readText: () => Promise.resolve(JSON.stringify({ embeddedRegistries: false })),
    });
    service = await openService(cfg2, spied, silentLogger);
  });

  after(async () => {
    await service?.close();
    await fake?.stop();
    await rm(storage, { recursive: true, force: true });
  });

  test("random requests: no throw, no 5xx, OCI JSON errors, files only under storage", async () => {
    const method = fc.constantFrom("GET", "HEAD", "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS");
    const known = () => fc.constantFrom(
      "fake/team/app/manifests/v1",
      "team/app/manifests/v1",
      `team/app/manifests/${manDigest}`,
      `fake/team/app/blobs/${layerDigest}`,
      `team/app/blobs/${layerDigest}`,
      "team/app/tags/list",
      "team/app/tags/list?n=1",
      "team/app/tags/list?n=-1",
      "team/app/tags/list?n=abc&last=%00",
      "fake/team/app/blobs/uploads/",
      "_catalog",
      "",
    );
    const v2path = fc.oneof({ weight: 3, arbitrary: path }, { weight: 2, arbitrary: known() }, {
      weight: 1,
      arbitrary: fc.tuple(known(), path).map(([a, b]) => `${a}/${b}`),
    });
    const topPath = fc.oneof(
      { weight: 6, arbitrary: v2path.map((p) => `/v2/${p}`) },
      { weight: 1, arbitrary: path.map((p) => `/${p}`) },
      { weight: 1, arbitrary: fc.constantFrom("/v2", "/healthz", "/metrics", "/api/v1/stats", "/api/v1/images", "/", "/%2e%2e/%2e%2e/etc/passwd") },
    );
    const query = fc.option(fc.oneof(
      fc.constantFrom("ns=fake", "ns=127.0.0.1", "ns=docker.io", "ns=", "ns=%00", "ns=..%2F..", "n=5&last=a"),
      fc.string({ maxLength: 30 }).map((s) => `ns=${encodeURIComponent(s)}`),
    ));
    const headerValue = fc.oneof(
      fc.constantFrom(
        "bytes=0-10", "bytes=-5", "bytes=100000-", "bytes=5-1", "bytes=0-0,2-3", "bytes=abc", "*/*",
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json;q=0.5, */*;q=0.1",
        "text/html", "", "garbage;;;q=x", "../../etc/passwd",
      ),
      fc.string({ maxLength: 60 }),
    );
    const headers = fc.array(fc.tuple(fc.constantFrom("range", "accept", "x-request-id", "if-none-match", "authorization", "x-garbage"), headerValue), {
      maxLength: 4,
    });
    let requests = 0;
    await fc.assert(
      fc.asyncProperty(method, topPath, query, headers, async (m, p, q, hs) => {
        let req: Request;
        try {
          const h = new Headers();
          for (const [k, v] of hs) h.append(k, v);
          req = new Request(`http://cache.local${p}${q === null ? "" : (p.includes("?") ? "&" : "?") + q}`, { method: m, headers: h });
        } catch {
          return; // not an HTTP request a server would hand over (bad header byte, unparseable URL)
        }
        requests++;
        const res = await service.handler(req, { remoteAddr: "127.0.0.1" });
        const path = new URL(req.url).pathname;
        assert.ok(res.status >= 200 && res.status < 500, `${m} ${req.url} ${JSON.stringify(hs)} -> ${res.status}: ${await res.clone().text()}`);
        if (res.status >= 400) {
          const text = await res.text();
          // The status page (GET /, /api/v1/…) is not registry API: its errors are its own JSON.
          if (!isStatusPath(path)) {
            const body = JSON.parse(text);
            assert.ok(Array.isArray(body.errors) && body.errors.length > 0, text);
            for (const e of body.errors) assert.equal(typeof e.code, "string");
            assert.match(res.headers.get("content-type") ?? "", /json/);
          }
        } else {
          await res.body?.cancel().catch(() => {});
        }
        assert.deepEqual(escapes, [], "a file path outside the storage folder");
      }),
      { numRuns: 400 },
    );
    assert.ok(requests > 200, `only ${requests} requests were valid HTTP`);
    assert.ok(touched.length > 0, "the spy saw file access (hits and stores)");
    assert.deepEqual(escapes, []);
  });
});
