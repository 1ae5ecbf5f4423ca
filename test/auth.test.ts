/** WWW-Authenticate parsing and the upstream token cache. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { basicAuth, parseWwwAuthenticate, UpstreamAuth } from "../src/oci/auth.ts";

const HUB = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"';

describe("parseWwwAuthenticate", () => {
  test("Docker Hub's challenge", () => {
    assert.deepEqual(parseWwwAuthenticate(HUB), [{
      scheme: "bearer",
      params: { realm: "https://auth.docker.io/token", service: "registry.docker.io", scope: "repository:library/nginx:pull" },
    }]);
  });
  test("commas inside a quoted scope stay in the value", () => {
    const [c] = parseWwwAuthenticate('Bearer realm="https://r/token",scope="repository:a:pull,push",service="s"');
    assert.equal(c.params.scope, "repository:a:pull,push");
    assert.equal(c.params.service, "s");
    assert.equal(c.params.realm, "https://r/token");
  });
  test("escaped quotes and backslashes", () => {
    const [c] = parseWwwAuthenticate('Bearer realm="a\\"b",error_description="back\\\\slash"');
    assert.equal(c.params.realm, 'a"b');
    assert.equal(c.params.error_description, "back\\slash");
  });
  test("unquoted values and spaces around '='", () => {
    const [c] = parseWwwAuthenticate('Bearer error=invalid_token, realm = "https://r/t" , service=reg.io');
    assert.deepEqual(c.params, { error: "invalid_token", realm: "https://r/t", service: "reg.io" });
  });
  test("scheme and parameter names are lowercased, values kept", () => {
    const [c] = parseWwwAuthenticate('BEARER Realm="https://R/T",SERVICE="Svc"');
    assert.equal(c.scheme, "bearer");
    assert.deepEqual(c.params, { realm: "https://R/T", service: "Svc" });
  });
  test("several challenges in one header", () => {
    assert.deepEqual(parseWwwAuthenticate('Basic realm="x", Bearer realm="y",service="z"'), [
      { scheme: "basic", params: { realm: "x" } },
      { scheme: "bearer", params: { realm: "y", service: "z" } },
    ]);
  });
  test("doubled commas and unquoted values across challenges", () => {
    assert.deepEqual(parseWwwAuthenticate('Bearer realm="x",,service="y"'), [{ scheme: "bearer", params: { realm: "x", service: "y" } }]);
    assert.deepEqual(parseWwwAuthenticate("Bearer realm=x, Basic realm=y"), [
      { scheme: "bearer", params: { realm: "x" } },
      { scheme: "basic", params: { realm: "y" } },
    ]);
  });
  test("a scheme without parameters followed by another", () => {
    const cs = parseWwwAuthenticate('Negotiate, Bearer realm="y"');
    assert.deepEqual(cs.map((c) => c.scheme), ["negotiate", "bearer"]);
    assert.equal(cs[1].params.realm, "y");
  });
  test("empty header → no challenges", () => assert.deepEqual(parseWwwAuthenticate(""), []));
  for (
    const g of [
      "=",
      ",,,",
      '"""',
      "Bearer realm=",
      'Bearer realm="unterminated',
      "Bearer ,,, = ,",
      "Bearer @@@ ###",
      '= "x", =y',
      "Bearer realm=\"a\\",
      "\u0000\u00ff\u{1F600}",
      "Bearer " + "realm=x,".repeat(2000),
    ]
  ) {
    test(`garbage ${JSON.stringify(g.slice(0, 30))} does not throw or hang`, () => {
      const cs = parseWwwAuthenticate(g);
      assert.ok(Array.isArray(cs));
      for (const c of cs) assert.equal(typeof c.scheme, "string");
    });
  }
});

describe("basicAuth", () => {
  test("base64 of user:password, UTF-8", () => {
    assert.equal(basicAuth({ username: "aladdin", password: "opensesame" }), "Basic YWxhZGRpbjpvcGVuc2VzYW1l");
    assert.equal(basicAuth({ username: "ü", password: "p" }), "Basic " + btoa("\xc3\xbc:p"));
  });
});

/** A fake fetch for the token endpoint: records calls, answers with `reply`. */
function fakeFetch(reply: (url: URL, n: number) => Response | Promise<Response>) {
  const calls: { url: URL; headers: Headers }[] = [];
  const fn = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    calls.push({ url, headers: new Headers(init?.headers) });
    return await reply(url, calls.length);
  }) as typeof fetch;
  return { fn, calls };
}

function tokenResponse(token: string, extra: Record<string, unknown> = {}) {
  return Response.json({ token, ...extra });
}

const SCOPE_A = "repository:library/nginx:pull";
const SCOPE_B = "repository:library/alpine:pull";

describe("UpstreamAuth", () => {
  test("before any challenge nothing is sent up front", async () => {
    const f = fakeFetch(() => tokenResponse("t"));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    assert.equal(await auth.authorizationFor(SCOPE_A), undefined);
    assert.equal(f.calls.length, 0);
  });

  test("Bearer challenge: token fetched from the realm with service and scope, anonymous", async () => {
    const f = fakeFetch(() => tokenResponse("tok-1", { expires_in: 300 }));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    const r = await auth.answer(HUB, SCOPE_A);
    assert.deepEqual(r, { ok: true, authorization: "Bearer tok-1" });
    assert.equal(f.calls.length, 1);
    const u = f.calls[0].url;
    assert.equal(u.origin + u.pathname, "https://auth.docker.io/token");
    assert.equal(u.searchParams.get("service"), "registry.docker.io");
    assert.equal(u.searchParams.get("scope"), SCOPE_A);
    assert.equal(f.calls[0].headers.get("authorization"), null);
    assert.equal(auth.tokenRequests, 1);
  });

  test("the scope asked for is used, not the challenge's own scope", async () => {
    const f = fakeFetch(() => tokenResponse("t"));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    await auth.answer(HUB, SCOPE_B);
    assert.equal(f.calls[0].url.searchParams.get("scope"), SCOPE_B);
    assert.equal(f.calls[0].url.searchParams.getAll("scope").length, 1);
  });

  test("realm query parameters are kept", async () => {
    const f = fakeFetch(() => tokenResponse("t"));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    await auth.answer('Bearer realm="https://r.example/token?client=x"', SCOPE_A);
    assert.equal(f.calls[0].url.searchParams.get("client"), "x");
    assert.equal(f.calls[0].url.searchParams.get("service"), null);
    assert.equal(f.calls[0].url.searchParams.get("scope"), SCOPE_A);
  });

  test("configured credentials go to the token endpoint as Basic", async () => {
    const f = fakeFetch(() => Response.json({ access_token: "acc" }));
    const credentials = { username: "user", password: "pa:ss" };
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000, credentials });
    const r = await auth.answer(HUB, SCOPE_A);
    assert.deepEqual(r, { ok: true, authorization: "Bearer acc" });
    assert.equal(f.calls[0].headers.get("authorization"), "Basic " + btoa("user:pa:ss"));
  });

  test("token cached per scope until shortly before expiry", async () => {
    let now = 1_000_000;
    const f = fakeFetch((_u, n) => tokenResponse(`tok-${n}`, { expires_in: 300 }));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000, now: () => now });
    assert.equal((await auth.answer(HUB, SCOPE_A) as { authorization: string }).authorization, "Bearer tok-1");
    now += 60_000;
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-1");
    now = 1_000_000 + 289_000; // 300 s lifetime, renewed 10 s early
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-1");
    assert.equal(f.calls.length, 1);
    now = 1_000_000 + 291_000; // inside the renewal margin, still before the upstream's expiry
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-2");
    assert.equal(f.calls.length, 2);
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-2");
    assert.equal(f.calls.length, 2);
  });

  test("without expires_in a token lives 60 s (renewed 6 s early)", async () => {
    let now = 0;
    const f = fakeFetch((_u, n) => tokenResponse(`tok-${n}`));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000, now: () => now });
    await auth.answer(HUB, SCOPE_A);
    now = 53_000;
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-1");
    now = 55_000;
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-2");
  });

  test("issued_at in the past shortens the cache lifetime", async () => {
    const issued = Date.parse("2024-01-01T00:00:00Z");
    let now = issued + 300_000;
    const f = fakeFetch((_u, n) => tokenResponse(`tok-${n}`, { expires_in: 600, issued_at: new Date(issued).toISOString() }));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000, now: () => now });
    await auth.answer(HUB, SCOPE_A);
    now = issued + 589_000;
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-1");
    now = issued + 591_000;
    assert.equal(await auth.authorizationFor(SCOPE_A), "Bearer tok-2");
  });

  test("N concurrent requests for one scope → exactly one token request", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const f = fakeFetch(async (_u, n) => {
      await gate;
      return tokenResponse(`tok-${n}`, { expires_in: 300 });
    });
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 5000 });
    const first = auth.answer(HUB, SCOPE_A);
    const rest = Array.from({ length: 20 }, () => auth.authorizationFor(SCOPE_A));
    const answers = Array.from({ length: 5 }, () => auth.answer(HUB, SCOPE_A));
    await Promise.resolve();
    release();
    const results = await Promise.all([first, ...answers]);
    for (const r of results) assert.deepEqual(r, { ok: true, authorization: "Bearer tok-1" });
    for (const a of await Promise.all(rest)) assert.equal(a, "Bearer tok-1");
    assert.equal(f.calls.length, 1);
    assert.equal(auth.tokenRequests, 1);
  });

  test("different scopes → separate tokens", async () => {
    const f = fakeFetch((u) => tokenResponse(`tok-for-${u.searchParams.get("scope")}`, { expires_in: 300 }));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    await auth.answer(HUB, SCOPE_A);
    const [a, b] = await Promise.all([auth.authorizationFor(SCOPE_A), auth.authorizationFor(SCOPE_B)]);
    assert.equal(a, `Bearer tok-for-${SCOPE_A}`);
    assert.equal(b, `Bearer tok-for-${SCOPE_B}`);
    assert.equal(f.calls.length, 2);
    assert.equal(await auth.authorizationFor(SCOPE_B), `Bearer tok-for-${SCOPE_B}`);
    assert.equal(f.calls.length, 2);
  });

  test("a 401 with a new challenge drops the cached token for that scope only", async () => {
    const f = fakeFetch((u, n) => tokenResponse(`tok-${n}-${u.searchParams.get("scope")}`, { expires_in: 300 }));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    await auth.answer(HUB, SCOPE_A);
    await auth.authorizationFor(SCOPE_B);
    assert.equal(f.calls.length, 2);
    const r = await auth.answer(HUB.replace("nginx", "other"), SCOPE_A);
    assert.deepEqual(r, { ok: true, authorization: `Bearer tok-3-${SCOPE_A}` });
    assert.equal(await auth.authorizationFor(SCOPE_A), `Bearer tok-3-${SCOPE_A}`);
    assert.equal(await auth.authorizationFor(SCOPE_B), `Bearer tok-2-${SCOPE_B}`);
    assert.equal(f.calls.length, 3);
  });

  test("a challenge with a new realm is followed", async () => {
    const f = fakeFetch((u) => tokenResponse(u.host));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    await auth.answer('Bearer realm="https://one.example/token"', SCOPE_A);
    const r = await auth.answer('Bearer realm="https://two.example/token"', SCOPE_A);
    assert.deepEqual(r, { ok: true, authorization: "Bearer two.example" });
  });

  test("Basic challenge with credentials → Basic, also sent up front later", async () => {
    const f = fakeFetch(() => tokenResponse("never"));
    const credentials = { username: "u", password: "p" };
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000, credentials });
    assert.deepEqual(await auth.answer('Basic realm="registry"', SCOPE_A), { ok: true, authorization: "Basic " + btoa("u:p") });
    assert.equal(await auth.authorizationFor(SCOPE_B), "Basic " + btoa("u:p"));
    assert.equal(f.calls.length, 0);
  });

  test("Basic challenge without credentials → failure result", async () => {
    const f = fakeFetch(() => tokenResponse("never"));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    const r = await auth.answer('Basic realm="registry"', SCOPE_A);
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.status, 401);
      assert.match(r.message, /credentials/);
    }
    assert.equal(await auth.authorizationFor(SCOPE_A), undefined);
    assert.equal(f.calls.length, 0);
  });

  test("Bearer preferred when both Basic and Bearer are offered", async () => {
    const f = fakeFetch(() => tokenResponse("tok"));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000, credentials: { username: "u", password: "p" } });
    assert.deepEqual(await auth.answer('Basic realm="x", Bearer realm="https://y/token",service="z"', SCOPE_A), {
      ok: true,
      authorization: "Bearer tok",
    });
    assert.equal(f.calls[0].url.searchParams.get("service"), "z");
  });

  test("no header, or no usable challenge → failure result", async () => {
    const f = fakeFetch(() => tokenResponse("never"));
    const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
    for (const h of [null, "", "Bearer service=x", "Negotiate", "%%%"]) {
      const r = await auth.answer(h, SCOPE_A);
      assert.equal(r.ok, false, String(h));
      if (!r.ok) assert.ok(r.message.length > 0);
    }
    assert.equal(f.calls.length, 0);
  });

  describe("token endpoint errors → failure results, never throws", () => {
    const cases: [string, () => Response | Promise<Response>, RegExp, number | undefined][] = [
      ["500", () => new Response("boom", { status: 500 }), /500/, 500],
      ["401", () => new Response("no", { status: 401 }), /401/, 401],
      ["not JSON", () => new Response("<html>", { status: 200 }), /not JSON/, undefined],
      ["no token", () => Response.json({ expires_in: 300 }), /no token/, undefined],
      ["JSON null", () => new Response("null", { status: 200 }), /no token/, undefined],
      ["JSON string", () => new Response('"tok"', { status: 200 }), /no token/, undefined],
      ["empty token", () => Response.json({ token: "" }), /no token/, undefined],
      ["network error", () => Promise.reject(new TypeError("connection refused")), /connection refused/, undefined],
      ["thrown synchronously", () => {
        throw new Error("sync boom");
      }, /sync boom/, undefined],
    ];
    for (const [name, reply, msg, status] of cases) {
      test(name, async () => {
        const f = fakeFetch(reply);
        const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
        const r = await auth.answer(HUB, SCOPE_A);
        assert.equal(r.ok, false);
        if (!r.ok) {
          assert.match(r.message, msg);
          assert.match(r.message, /auth\.docker\.io/);
          assert.equal(r.status, status);
        }
        // A failure is not cached: the next request tries again.
        assert.equal(await auth.authorizationFor(SCOPE_A), undefined);
        assert.equal(f.calls.length, 2);
      });
    }
    test("realm that is not a URL", async () => {
      const f = fakeFetch(() => tokenResponse("never"));
      const auth = new UpstreamAuth({ fetch: f.fn, timeoutMs: 1000 });
      const r = await auth.answer('Bearer realm="not a url"', SCOPE_A);
      assert.equal(r.ok, false);
      if (!r.ok) assert.match(r.message, /not a URL/);
      assert.equal(f.calls.length, 0);
    });
    test("a hung token endpoint is bounded by timeoutMs", async () => {
      const fn = ((_u: unknown, init?: RequestInit) =>
        new Promise<Response>((_, reject) => {
          init?.signal?.addEventListener("abort", () => reject(init.signal!.reason));
        })) as typeof fetch;
      const auth = new UpstreamAuth({ fetch: fn, timeoutMs: 50 });
      const t0 = Date.now();
      const r = await auth.answer(HUB, SCOPE_A);
      assert.equal(r.ok, false);
      assert.ok(Date.now() - t0 < 5000);
    });
  });
});
