/**
 * Security hardening: secrets stay out of logs, errors and /metrics; token realms are checked;
 * limits (manifest size, request headers, concurrent downloads) answer with OCI errors.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkRealm, isMetadataHost, UpstreamAuth } from "../src/oci/auth.ts";
import { Upstream } from "../src/oci/upstream.ts";
import { DownloadLimit } from "../src/download/limit.ts";
import { loadConfig, parseFlags, type RegistryConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { detectRuntime } from "../src/runtime/mod.ts";
import type { Server } from "../src/runtime/types.ts";
import { openService, type Service } from "../src/service.ts";
import { bytesOf, startCache } from "./support/cache.ts";
import { imageManifest, randomBytes, startFakeRegistry } from "./support/fake_registry.ts";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

function registry(url: string, extra: Partial<RegistryConfig> = {}): RegistryConfig {
  return { prefix: "r", url, hosts: [], dockerHub: false, tagTtlMs: 0, offline: false, maxStaleMs: Infinity, ...extra };
}

describe("token realm policy", () => {
  test("link-local and metadata hosts are recognised in every spelling", () => {
    for (const u of [
      "http://169.254.169.254/latest",
      "http://169.254.0.1/",
      "http://2852039166/", // 169.254.169.254 as one number
      "http://0xa9.0xfe.0xa9.0xfe/",
      "http://[fe80::1]/",
      "http://[febf:ffff::1]/",
      "http://[fd00:ec2::254]/",
      "http://[::ffff:169.254.169.254]/",
      "http://metadata.google.internal/computeMetadata/v1/",
      "http://METADATA.google.internal./",
    ]) assert.equal(isMetadataHost(new URL(u).hostname), true, u);
    for (const u of ["https://auth.docker.io/token", "http://127.0.0.1/", "http://[::1]/", "http://[fec0::1]/", "http://169.255.0.1/", "http://[fd00:ec2::253]/"]) {
      assert.equal(isMetadataHost(new URL(u).hostname), false, u);
    }
  });

  test("https realms pass; http only when the registry itself is http", () => {
    assert.equal(checkRealm(new URL("https://auth.docker.io/token"), { registryUrl: "https://registry-1.docker.io" }), null);
    const refused = checkRealm(new URL("http://auth.example/token"), { registryUrl: "https://reg.example" });
    assert.match(refused ?? "", /"http:\/\/auth\.example\/token" is not https/);
    assert.equal(checkRealm(new URL("http://auth.example/token"), { registryUrl: "http://reg.example:5000" }), null);
    assert.match(checkRealm(new URL("ftp://auth.example/token"), { registryUrl: "http://reg.example" }) ?? "", /not https/);
    assert.match(checkRealm(new URL("http://auth.example/token")) ?? "", /not https/, "no registry URL: https only");
  });

  test("metadata realms are refused even over https; userinfo is always refused", () => {
    assert.match(checkRealm(new URL("https://169.254.169.254/token"), { registryUrl: "https://r" }) ?? "", /link-local or cloud metadata/);
    assert.match(checkRealm(new URL("http://169.254.169.254/token"), { registryUrl: "http://r" }) ?? "", /169\.254\.169\.254/);
    assert.match(checkRealm(new URL("https://metadata.google.internal/x"), { registryUrl: "https://r" }) ?? "", /metadata/);
    assert.match(checkRealm(new URL("https://u:p@auth.example/token"), { registryUrl: "https://r" }) ?? "", /credentials in its URL/);
    assert.match(checkRealm(new URL("https://u:p@auth.example/token"), { allowRealm: ["auth.example"] }) ?? "", /credentials/);
  });

  test("allowRealm lets a listed host through (host or host:port)", () => {
    assert.equal(checkRealm(new URL("http://169.254.169.254/token"), { registryUrl: "https://r", allowRealm: ["169.254.169.254"] }), null);
    assert.equal(checkRealm(new URL("http://auth.local:8080/t"), { registryUrl: "https://r", allowRealm: ["auth.local:8080"] }), null);
    assert.notEqual(checkRealm(new URL("http://auth.local:8080/t"), { registryUrl: "https://r", allowRealm: ["other.local"] }), null);
  });

  test("a refused realm is never contacted, and the upstream request fails as 'refused' without retries", async () => {
    const seen: string[] = [];
    const fetchFn = ((input: URL | string) => {
      const url = String(input);
      seen.push(url);
      return Promise.resolve(new Response("{}", {
        status: 401,
        headers: { "www-authenticate": 'Bearer realm="http://169.254.169.254/latest/meta-data",service="x"' },
      }));
    }) as typeof fetch;
    const up = new Upstream(registry("https://reg.example", { username: "u", password: "p" }), {
      headersTimeoutMs: 1000,
      idleTimeoutMs: 1000,
      fetch: fetchFn,
    });
    const r = await up.manifest("GET", "a/b", "latest", "*/*");
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.kind, "refused");
    assert.match(!r.ok ? r.message : "", /169\.254\.169\.254/);
    assert.equal(seen.length, 1, "one registry request, no token request, no retry");
    assert.ok(seen.every((u) => !u.includes("169.254")));
  });

  test("allowRealm (from the config file) is honoured by the upstream client", async () => {
    const cfg = await loadConfig({
      flags: parseFlags(["--storage", "/tmp/x", "--config", "/c.json"]),
      env: () => undefined,
      readText: () => Promise.resolve(JSON.stringify({ registries: { corp: { url: "https://reg.corp", allowRealm: ["Auth.Corp:8080"] } } })),
    });
    const corp = cfg.registries.find((r) => r.prefix === "corp")!;
    assert.deepEqual(corp.allowRealm, ["auth.corp:8080"]);
    const seen: string[] = [];
    const fetchFn = ((input: URL | string) => {
      seen.push(String(input));
      if (String(input).startsWith("http://auth.corp:8080/")) return Promise.resolve(Response.json({ token: "t" }));
      return Promise.resolve(new Response("{}", { status: 401, headers: { "www-authenticate": 'Bearer realm="http://auth.corp:8080/token"' } }));
    }) as typeof fetch;
    const auth = new UpstreamAuth({ fetch: fetchFn, timeoutMs: 1000, realm: { registryUrl: corp.url, allowRealm: corp.allowRealm } });
    const r = await auth.answer('Bearer realm="http://auth.corp:8080/token"', "repository:a:pull");
    assert.deepEqual(r, { ok: true, authorization: "Bearer t" });
    await assert.rejects(
      loadConfig({
        flags: parseFlags(["--storage", "/tmp/x", "--config", "/c.json"]),
        env: () => undefined,
        readText: () => Promise.resolve(JSON.stringify({ registries: { corp: { url: "https://reg.corp", allowRealm: "x" } } })),
      }),
      /allowRealm/,
    );
  });

  test("through the cache: a metadata realm gives 502 UNAVAILABLE naming the realm", async () => {
    const rt = detectRuntime();
    let tokenAsked = 0;
    const evil = await rt.serve({
      hostname: "127.0.0.1",
      port: 0,
      handler: (req) => {
        if (new URL(req.url).pathname.startsWith("/token")) tokenAsked++;
        return Promise.resolve(new Response('{"errors":[]}', {
          status: 401,
          headers: { "www-authenticate": 'Bearer realm="http://169.254.169.254/latest/meta-data/iam",service="evil"' },
        }));
      },
    });
    const cache = await startCache(`http://127.0.0.1:${evil.port}`);
    try {
      const res = await fetch(`${cache.url}/v2/fake/team/app/manifests/latest`);
      assert.equal(res.status, 502);
      const body = await res.json();
      assert.equal(body.errors[0].code, "UNAVAILABLE");
      assert.match(body.errors[0].message, /token realm "http:\/\/169\.254\.169\.254\/latest\/meta-data\/iam"/);
      assert.equal(tokenAsked, 0);
    } finally {
      await cache.destroy();
      await evil.shutdown();
    }
  });
});

/** A cache like startCache, with a log that is captured, and given env/config. */
async function startLoggedCache(
  upstreamUrl: string,
  configFile: Record<string, unknown>,
  env: Record<string, string>,
): Promise<{ url: string; lines: string[]; service: Service; destroy(): Promise<void> }> {
  const rt = detectRuntime();
  const storage = await mkdtemp(join(tmpdir(), "ocicache-hardening-"));
  const config = await loadConfig({
    flags: parseFlags([
      "--storage", storage, "--registry", `fake=${upstreamUrl}`, "--default-registry", "fake", "--log-level", "debug",
      "--config", "/virtual.json", "--upstream-retries", "1", "--upstream-timeout", "2s",
    ]),
    env: (n) => env[n],
    readText: () => Promise.resolve(JSON.stringify(configFile)),
  });
  const lines: string[] = [];
  const log = createLogger("debug", (l) => lines.push(l));
  const service = await openService(config, rt, log);
  const server: Server = await rt.serve({ hostname: "127.0.0.1", port: 0, handler: service.handler });
  return {
    url: `http://127.0.0.1:${server.port}`,
    lines,
    service,
    async destroy() {
      await server.shutdown();
      await service.close();
      await rm(storage, { recursive: true, force: true });
    },
  };
}

describe("credentials stay secret", () => {
  const PASSWORD = "s3cr3t-Pa55w0rd-do-not-leak";
  const USER = "alice";

  test("passwords and tokens never appear in logs, error bodies or /metrics", async () => {
    const fake = await startFakeRegistry({ tokenAuth: true, credentials: { username: USER, password: PASSWORD } });
    const wrong = await startFakeRegistry({ tokenAuth: true, credentials: { username: USER, password: "something-else" } });
    const rt = detectRuntime();
    const brokenToken = await rt.serve({
      hostname: "127.0.0.1",
      port: 0,
      handler: (req) => {
        const u = new URL(req.url);
        if (u.pathname === "/token") return Promise.resolve(new Response("token service down", { status: 500 }));
        return Promise.resolve(new Response("{}", {
          status: 401,
          headers: { "www-authenticate": `Bearer realm="http://127.0.0.1:${u.port}/token",service="x"` },
        }));
      },
    });
    const layer = randomBytes(3000, 7);
    const layerDigest = fake.putBlob(layer);
    const cfgBlob = new TextEncoder().encode("{}");
    const cfgDigest = fake.putBlob(cfgBlob);
    const man = imageManifest({ digest: cfgDigest, size: cfgBlob.length }, [{ digest: layerDigest, size: layer.length }]);
    const manDigest = fake.putManifest("team/app", man, OCI_MANIFEST, "v1");
    fake.putManifest("team/app", man, OCI_MANIFEST, "forbidden");
    const forbidden = fake.putBlob(randomBytes(100, 8));
    const broken = fake.putBlob(randomBytes(100, 9));
    fake.fault(forbidden, { kind: "status", status: 403 });
    fake.fault(broken, { kind: "status", status: 500 });
    wrong.putManifest("team/app", man, OCI_MANIFEST, "v1");

    const creds = (url: string) => ({ url, username: USER, passwordEnv: "UPSTREAM_PW" });
    // Prefix "fake" is the good upstream; others by config file.
    const deadPort = await (async () => {
      const s = await rt.serve({ hostname: "127.0.0.1", port: 0, handler: () => Promise.resolve(new Response("")) });
      const p = s.port;
      await s.shutdown();
      return p;
    })();
    const cache = await startLoggedCache(fake.url, {
      registries: {
        fake: creds(fake.url),
        wrong: creds(wrong.url),
        tokendown: creds(`http://127.0.0.1:${brokenToken.port}`),
        dead: creds(`http://127.0.0.1:${deadPort}`),
      },
    }, { UPSTREAM_PW: PASSWORD });
    const bodies: string[] = [];
    const get = async (path: string, init?: RequestInit) => {
      const res = await fetch(cache.url + path, init);
      const text = await res.text();
      bodies.push(`${res.status} ${[...res.headers].map(([k, v]) => `${k}: ${v}`).join("\n")}\n${text}`);
      return res.status;
    };
    try {
      assert.equal(await get("/v2/fake/team/app/manifests/v1"), 200);
      assert.equal(await get(`/v2/fake/team/app/blobs/${layerDigest}`), 200);
      assert.equal(await get(`/v2/fake/team/app/blobs/${forbidden}`), 403);
      assert.equal(await get(`/v2/fake/team/app/blobs/${broken}`), 502);
      assert.equal(await get("/v2/fake/team/app/manifests/nope"), 404);
      assert.equal(await get("/v2/wrong/team/app/manifests/v1"), 401);
      const down = await get("/v2/tokendown/team/app/manifests/v1");
      assert.ok(down === 401 || down >= 500, String(down));
      assert.equal(await get("/v2/dead/team/app/manifests/v1"), 502);
      assert.equal(await get(`/v2/dead/team/app/blobs/${manDigest}`), 502);
      await get("/metrics");
      await get("/api/v1/stats");

      const tokens = fake.requests.map((r) => r.authorization).filter((a): a is string => !!a?.startsWith("Bearer "))
        .map((a) => a.slice(7));
      assert.ok(tokens.length > 0, "tokens were issued and used");
      assert.ok(fake.requests.some((r) => r.kind === "token" && r.authorization?.startsWith("Basic ")), "credentials were sent to the token endpoint");
      const basic = btoa(`${USER}:${PASSWORD}`);
      const haystacks = { logs: cache.lines.join("\n"), bodies: bodies.join("\n\n") };
      assert.ok(cache.lines.length > 5, "the log was captured");
      for (const [where, text] of Object.entries(haystacks)) {
        assert.ok(!text.includes(PASSWORD), `password in ${where}`);
        assert.ok(!text.includes(basic), `Basic credentials in ${where}`);
        for (const t of tokens) assert.ok(!text.includes(t), `token ${t} in ${where}`);
        assert.ok(!text.includes("Bearer tok-"), `a bearer token in ${where}`);
      }
      // The Upstream object itself still knows the password (it needs it) but does not expose it in JSON.
      assert.ok(!JSON.stringify(cache.service.metrics).includes(PASSWORD));
    } finally {
      await cache.destroy();
      await fake.stop();
      await wrong.stop();
      await brokenToken.shutdown();
    }
  });

  test("Authorization is never forwarded to a redirect target on another host", async () => {
    const storage = await startFakeRegistry();
    const fake = await startFakeRegistry({ tokenAuth: true, redirectBlobsTo: storage.url });
    const blob = randomBytes(5000, 3);
    const d = fake.putBlob(blob);
    storage.putBlob(blob);
    const cache = await startCache(fake.url);
    try {
      const res = await fetch(`${cache.url}/v2/fake/team/app/blobs/${d}`);
      assert.equal(res.status, 200);
      assert.deepEqual(await bytesOf(res), blob);
      const redirected = storage.requests.filter((r) => r.kind === "redirected");
      assert.ok(redirected.length >= 1);
      for (const r of redirected) assert.equal(r.authorization, null);
      assert.ok(fake.requests.some((r) => r.kind === "blob" && r.authorization?.startsWith("Bearer ")));
    } finally {
      await cache.destroy();
      await fake.stop();
      await storage.stop();
    }
  });
});

describe("limits", () => {
  test("an upstream manifest over 4 MiB is refused with 502 MANIFEST_INVALID and not cached", async () => {
    const fake = await startFakeRegistry();
    const big = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, pad: "x".repeat(4 * 1024 * 1024) }));
    fake.putManifest("team/big", big, OCI_MANIFEST, "huge");
    const cache = await startCache(fake.url);
    try {
      const res = await fetch(`${cache.url}/v2/fake/team/big/manifests/huge`);
      assert.equal(res.status, 502);
      const body = await res.json();
      assert.equal(body.errors[0].code, "MANIFEST_INVALID");
      assert.match(body.errors[0].message, /limit/);
      const again = await fetch(`${cache.url}/v2/fake/team/big/manifests/huge`);
      assert.equal(again.status, 502, "not cached: asked upstream again");
      await again.body?.cancel();
      assert.equal(fake.count("manifest", "GET"), 2);
    } finally {
      await cache.destroy();
      await fake.stop();
    }
  });

  test("1 MiB of request headers is refused by the server (never a 2xx/5xx), and it keeps serving", async () => {
    const fake = await startFakeRegistry();
    const cache = await startCache(fake.url);
    const port = Number(new URL(cache.url).port);
    const raw = (data: string) =>
      new Promise<string>((resolve) => {
        const s = net.connect(port, "127.0.0.1");
        let out = "";
        s.on("data", (d) => (out += d.toString()));
        s.on("close", () => resolve(out));
        s.on("error", () => resolve(out));
        s.on("connect", () => s.write(data));
        setTimeout(() => {
          s.destroy();
          resolve(out);
        }, 5000);
      });
    try {
      for (const head of [`X-Big: ${"a".repeat(1024 * 1024)}`, Array.from({ length: 10_000 }, (_, i) => `X-H${i}: ${"b".repeat(100)}`).join("\r\n")]) {
        const out = await raw(`GET /v2/ HTTP/1.1\r\nHost: x\r\n${head}\r\nConnection: close\r\n\r\n`);
        const status = /^HTTP\/1\.[01] (\d{3})/.exec(out)?.[1];
        // Bun answers 431; Deno answers 400 or resets the connection.
        assert.ok(status === undefined || status === "431" || status === "400", `got ${JSON.stringify(out.slice(0, 80))}`);
      }
      const ok = await fetch(`${cache.url}/v2/`);
      assert.equal(ok.status, 200);
      await ok.body?.cancel();
    } finally {
      await cache.destroy();
      await fake.stop();
    }
  });

  test("DownloadLimit: a bounded queue, then refusal; slots are handed on", async () => {
    const limit = new DownloadLimit({ max: 2, queue: 1, maxWaitMs: 200 });
    const a = await limit.acquire();
    const b = await limit.acquire();
    assert.ok(a && b);
    const c = limit.acquire();
    assert.equal(await limit.acquire(), null, "queue full");
    assert.equal(limit.queued, 1);
    a();
    a(); // releasing twice is harmless
    const cr = await c;
    assert.ok(cr);
    assert.equal(limit.running, 2);
    const d = limit.acquire();
    assert.equal(await d, null, "waited too long");
    assert.equal(limit.refused, 2);
    b();
    cr();
    assert.equal(limit.running, 0);
  });

  test("--max-downloads: a download beyond the limit and its queue gets 503 UNAVAILABLE with Retry-After", async () => {
    const fake = await startFakeRegistry({ chunkSize: 1024, chunkDelayMs: 30 });
    const slow1 = fake.putBlob(randomBytes(20 * 1024, 1));
    const slow2 = fake.putBlob(randomBytes(20 * 1024, 2));
    const third = fake.putBlob(randomBytes(20 * 1024, 3));
    const cache = await startCache(fake.url, { flags: ["--max-downloads", "1"] });
    try {
      const first = await fetch(`${cache.url}/v2/fake/team/app/blobs/${slow1}`); // holds the slot while it streams
      assert.equal(first.status, 200);
      const second = fetch(`${cache.url}/v2/fake/team/app/blobs/${slow2}`); // waits in the queue (1 place)
      await new Promise((r) => setTimeout(r, 100));
      const refused = await fetch(`${cache.url}/v2/fake/team/app/blobs/${third}`);
      assert.equal(refused.status, 503);
      assert.equal(refused.headers.get("retry-after"), "5");
      const body = await refused.json();
      assert.equal(body.errors[0].code, "UNAVAILABLE");
      assert.match(body.errors[0].message, /--max-downloads 1/);
      // Joining a running download takes no slot.
      const joined = await fetch(`${cache.url}/v2/fake/team/app/blobs/${slow1}`);
      assert.equal(joined.status, 200);
      assert.equal((await bytesOf(first)).length, 20 * 1024);
      assert.equal((await bytesOf(joined)).length, 20 * 1024);
      const s2 = await second;
      assert.equal(s2.status, 200);
      assert.equal((await bytesOf(s2)).length, 20 * 1024);
      const metrics = await (await fetch(`${cache.url}/metrics`)).text();
      assert.match(metrics, /ocicache_downloads_refused_total 1/);
    } finally {
      await cache.destroy();
      await fake.stop();
    }
  });
});
