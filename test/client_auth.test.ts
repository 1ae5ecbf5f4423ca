/**
 * Client authentication: htpasswd / tokens / users files, Authorization parsing, the gate in the
 * app (401 with a Basic challenge, 403 DENIED for a registry a user may not pull from), the
 * verified-credentials cache, and that no secret reaches a log line.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import bcrypt from "bcryptjs";
import { ConfigError, loadConfig, parseFlags } from "../src/config.ts";
import { createApp } from "../src/http/app.ts";
import { AuthFileError, ClientAuth, parseAuthorization, parseHtpasswd, parseTokens, parseUsers } from "../src/http/client_auth.ts";
import { createLogger } from "../src/log.ts";
import { Metrics } from "../src/metrics.ts";
import type { PullHandler } from "../src/oci/handler.ts";
import { Router } from "../src/oci/router.ts";

/** What `htpasswd -B` writes ($2y$), at the lowest cost so tests stay fast. */
const hashY = (pw: string) => bcrypt.hashSync(pw, 4).replace(/^\$2[ab]\$/, "$2y$");
const ALICE_PW = "alice-secret-pw";
const BOB_PW = "b0b:with:colons";
const TOKEN = "tok_0123456789abcdef0123456789abcdef";
const CI_TOKEN = "ci_fedcba9876543210fedcba9876543210";
const basic = (u: string, p: string) => "Basic " + btoa(u + ":" + p);

describe("parseHtpasswd", () => {
  test("bcrypt $2y$, $2a$ and $2b$ entries; comments, blank lines and CRLF", () => {
    const y = hashY("a");
    const a = bcrypt.hashSync("b", 4).replace(/^\$2b\$/, "$2a$");
    const b = bcrypt.hashSync("c", 4).replace(/^\$2a\$/, "$2b$");
    const m = parseHtpasswd(`# users\r\n\r\nalice:${y}\r\n  bob:${a}\n\n# more\ncarol:${b}\n`);
    assert.deepEqual([...m.keys()], ["alice", "bob", "carol"]);
    assert.equal(m.get("alice"), y);
    assert.equal(m.get("bob"), a);
  });
  test("non-bcrypt entries are rejected with a message naming the line", () => {
    const y = hashY("a");
    const cases: [string, RegExp][] = [
      [`alice:${y}\n\nbob:$apr1$abc$def\n`, /line 3: user "bob" has an MD5 \(\$apr1\$\) entry; only bcrypt .*htpasswd -B/],
      [`bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=`, /line 1: user "bob" has a SHA-1/],
      [`# x\nbob:plaintext`, /line 2: user "bob" has a crypt or plain-text entry/],
      [`bob:$2y$04$short`, /line 1: user "bob" has not a bcrypt entry/],
      [`justaname`, /line 1: expected user:hash/],
      [`alice:${y}\nalice:${y}`, /line 2: user "alice" appears twice/],
    ];
    for (const [text, re] of cases) assert.throws(() => parseHtpasswd(text), (e: unknown) => e instanceof AuthFileError && re.test((e as Error).message), text);
  });
});

describe("parseTokens", () => {
  test("TOKEN USER lines, comments and blank lines", () => {
    const t = parseTokens(`# ci\n${TOKEN} alice\n\n   ${CI_TOKEN}\tci  \n`);
    assert.deepEqual(t, [{ token: TOKEN, user: "alice" }, { token: CI_TOKEN, user: "ci" }]);
  });
  test("mistakes name the line", () => {
    assert.throws(() => parseTokens(`${TOKEN} alice\nonlyonefield`), /line 2: expected "TOKEN USER"/);
    assert.throws(() => parseTokens(`short alice`), /line 1: a token is 16 to 4096/);
    assert.throws(() => parseTokens(`${TOKEN} a\n${TOKEN} b`), /line 2: this token appears on an earlier line/);
    assert.throws(() => parseTokens(`${TOKEN} a b`), /line 1: expected/);
  });
});

describe("parseUsers", () => {
  const known = (r: string) => ["docker.io", "ghcr.io", "fake", "127.0.0.1:5000"].includes(r);
  test("registries per user, lower-cased", () => {
    const u = parseUsers(`{"alice":{"registries":["docker.io","GHCR.io"]},"*":{"registries":[]}}`, known);
    assert.deepEqual(u.get("alice"), ["docker.io", "ghcr.io"]);
    assert.deepEqual(u.get("*"), []);
  });
  test("unknown registries, bad shapes and bad JSON are errors", () => {
    assert.throws(() => parseUsers(`{"alice":{"registries":["quay.io"]}}`, known), /"quay.io" is not a configured registry/);
    assert.throws(() => parseUsers(`{"alice":["docker.io"]}`, known), /user "alice": expected \{"registries"/);
    assert.throws(() => parseUsers(`[1]`, known), /expected \{"user"/);
    assert.throws(() => parseUsers(`{`, known), /not valid JSON/);
  });
});

describe("parseAuthorization", () => {
  test("Basic and Bearer", () => {
    assert.deepEqual(parseAuthorization(basic("alice", "p:w")), { kind: "basic", user: "alice", password: "p:w" });
    assert.deepEqual(parseAuthorization("basic " + btoa("u:")), { kind: "basic", user: "u", password: "" });
    assert.deepEqual(parseAuthorization(`Bearer ${TOKEN}`), { kind: "bearer", token: TOKEN });
    assert.deepEqual(parseAuthorization(null), { kind: "none" });
    assert.deepEqual(parseAuthorization("  "), { kind: "none" });
    const utf8 = "Basic " + btoa(String.fromCharCode(...new TextEncoder().encode("jürgen:pä")));
    assert.deepEqual(parseAuthorization(utf8), { kind: "basic", user: "jürgen", password: "pä" });
  });
  test("malformed headers are reported, never thrown", () => {
    for (const h of ["Basic", "Basic !!!!", "Basic abc", "Basic " + btoa("nocolon"), "Basic " + btoa(":pw"), "Bearer", "Bearer short", "Digest x", "Basic a b", "Basic " + btoa("\xff\xfe:x"), "\u0000"]) {
      const c = parseAuthorization(h);
      assert.equal(c.kind, "malformed", h);
    }
  });
});

/** A logger that keeps its lines. */
function capture() {
  const lines: string[] = [];
  return { lines, log: createLogger("debug", (l) => lines.push(l)), parsed: () => lines.map((l) => JSON.parse(l)) };
}

const FILES: Record<string, string> = {
  "/auth/htpasswd": `# test users\nalice:${hashY(ALICE_PW)}\nbob:${hashY(BOB_PW)}\n`,
  "/auth/tokens": `${TOKEN} alice\n${CI_TOKEN} ci\n`,
  "/auth/users": JSON.stringify({ alice: { registries: ["fake"] }, ci: { registries: ["ghcr.io", "fake"] } }),
};

async function config(flags: string[], files: Record<string, string> = FILES) {
  return await loadConfig({
    flags: parseFlags(["--registry", "fake=http://127.0.0.1:1", "--default-registry", "fake", "--storage", "/tmp/ocicache-unused", ...flags]),
    env: () => undefined,
    readText: (p) => (p in files ? Promise.resolve(files[p]) : Promise.reject(new Error("ENOENT: no such file"))),
  });
}

/** The app with a stub pull handler (200 "pulled"), gated by the auth files above. */
async function gatedApp(flags = ["--htpasswd", "/auth/htpasswd", "--tokens", "/auth/tokens", "--users", "/auth/users"]) {
  const cfg = await config(flags);
  assert.ok(cfg.clientAuth);
  const cap = capture();
  const auth = new ClientAuth(cfg.clientAuth, { log: cap.log });
  const pull = { handle: () => Promise.resolve(new Response("pulled")) } as unknown as PullHandler;
  const app = createApp({ router: new Router(cfg), pull, log: cap.log, ready: () => Promise.resolve(), metrics: new Metrics(), auth });
  const get = (path: string, authorization?: string) =>
    app(new Request("http://cache.test" + path, { headers: authorization ? { authorization } : {} }), { remoteAddr: "192.0.2.7" });
  return { get, cap, auth };
}

describe("config", () => {
  test("off by default", async () => {
    const c = await config([]);
    assert.equal(c.clientAuth, null);
    assert.equal(c.tls, null);
  });
  test("file problems are one-line config errors naming the flag and line", async () => {
    await assert.rejects(config(["--htpasswd", "/auth/bad"], { "/auth/bad": "x:$apr1$a$b" }), (e: unknown) => e instanceof ConfigError && /--htpasswd: \/auth\/bad line 1: user "x" has an MD5/.test((e as Error).message));
    await assert.rejects(config(["--htpasswd", "/nope"]), /--htpasswd: cannot read \/nope/);
    await assert.rejects(config(["--htpasswd", "/auth/empty"], { "/auth/empty": "# nobody\n" }), /defines no user/);
    await assert.rejects(config(["--users", "/auth/users"]), /--users: needs --htpasswd or --tokens/);
    await assert.rejects(config(["--tokens", "/auth/tokens", "--users", "/auth/u2"], { ...FILES, "/auth/u2": `{"ci":{"registries":["nope.example"]}}` }), /"nope.example" is not a configured/);
  });
  test("--tls-cert and --tls-key: both or neither", async () => {
    await assert.rejects(config(["--tls-cert", "/c.pem"]), /--tls-key: is required with --tls-cert/);
    await assert.rejects(config(["--tls-key", "/k.pem"]), /--tls-cert: is required with --tls-key/);
    await assert.rejects(config(["--tls-cert", "/c.pem", "--tls-key", "/k.pem"], { "/c.pem": "nope", "/k.pem": "nope" }), /--tls-cert: \/c.pem is not a PEM certificate/);
  });
});

describe("the gate", () => {
  test("/v2/ without credentials: 401, Basic challenge, UNAUTHORIZED; /healthz stays open", async () => {
    const { get } = await gatedApp();
    const res = await get("/v2/");
    assert.equal(res.status, 401);
    assert.equal(res.headers.get("www-authenticate"), 'Basic realm="ocicache"');
    assert.equal((await res.json()).errors[0].code, "UNAUTHORIZED");
    assert.equal((await get("/healthz")).status, 200);
    for (const p of ["/readyz", "/metrics", "/", "/api/v1/stats", "/v2/fake/x/manifests/1", "/nowhere"]) {
      const r = await get(p);
      assert.equal(r.status, 401, p);
      await r.body?.cancel();
    }
    assert.equal((await get("/readyz", basic("alice", ALICE_PW))).status, 200);
    assert.equal((await get("/metrics", `Bearer ${TOKEN}`)).status, 200);
  });

  test("Basic, Bearer, and a token as the Basic password of its user", async () => {
    const { get } = await gatedApp();
    assert.equal((await get("/v2/", basic("alice", ALICE_PW))).status, 200);
    assert.equal((await get("/v2/", basic("bob", BOB_PW))).status, 200);
    assert.equal((await get("/v2/fake/x/manifests/1", `Bearer ${TOKEN}`)).status, 200);
    assert.equal((await get("/v2/", basic("ci", CI_TOKEN))).status, 200);
    assert.equal((await get("/v2/", basic("alice", CI_TOKEN))).status, 401, "a token only logs in its own user");
    assert.equal((await get("/v2/", basic("alice", "wrong"))).status, 401);
    assert.equal((await get("/v2/", basic("mallory", ALICE_PW))).status, 401);
    assert.equal((await get("/v2/", `Bearer ${TOKEN}x`)).status, 401);
  });

  test("malformed Authorization headers answer 401, never 500", async () => {
    const { get } = await gatedApp();
    for (const h of ["Basic", "Basic %%%", "Basic " + btoa("x"), "Bearer", "Negotiate abc", "Basic " + "A".repeat(100_001), "Bearer " + "x".repeat(5000)]) {
      const res = await get("/v2/", h);
      assert.equal(res.status, 401, h.slice(0, 30));
      assert.equal(res.headers.get("www-authenticate"), 'Basic realm="ocicache"');
      await res.body?.cancel();
    }
  });

  test("a registry the user may not pull from: 403 DENIED; others and users without a list pass", async () => {
    const { get, cap } = await gatedApp(["--registry", "ghcr.io=http://127.0.0.1:2", "--htpasswd", "/auth/htpasswd", "--tokens", "/auth/tokens", "--users", "/auth/users"]);
    const res = await get("/v2/ghcr.io/owner/app/manifests/1.0", basic("alice", ALICE_PW));
    assert.equal(res.status, 403);
    const body = await res.json();
    assert.equal(body.errors[0].code, "DENIED");
    assert.match(body.errors[0].message, /"alice" may not pull from registry "ghcr.io"/);
    assert.equal((await get("/v2/fake/x/blobs/sha256:" + "a".repeat(64), basic("alice", ALICE_PW))).status, 200);
    assert.equal((await get("/v2/x/tags/list", basic("alice", ALICE_PW))).status, 200, "the default registry is fake");
    assert.equal((await get("/v2/ghcr.io/owner/app/manifests/1.0", `Bearer ${CI_TOKEN}`)).status, 200);
    assert.equal((await get("/v2/ghcr.io/owner/app/manifests/1.0", basic("bob", BOB_PW))).status, 200, "bob has no list: all registries");
    assert.ok(cap.parsed().some((l) => l.msg === "access denied" && l.user === "alice" && l.registry === "ghcr.io"));
  });

  test("the '*' entry restricts users not named", async () => {
    const files = { ...FILES, "/auth/users": JSON.stringify({ "*": { registries: ["ghcr.io"] }, alice: { registries: ["fake"] } }) };
    const cfg = await config(["--registry", "ghcr.io=http://127.0.0.1:2", "--htpasswd", "/auth/htpasswd", "--users", "/auth/users"], files);
    const auth = new ClientAuth(cfg.clientAuth!, { log: capture().log });
    const ghcr = cfg.registries.find((r) => r.prefix === "ghcr.io")!;
    const fake = cfg.registries.find((r) => r.prefix === "fake")!;
    assert.equal(auth.allows("bob", ghcr), true);
    assert.equal(auth.allows("bob", fake), false);
    assert.equal(auth.allows("alice", fake), true);
    assert.equal(auth.allows("alice", ghcr), false);
  });

  test("failed logins are logged with user, remote address and reason; no secret in any log line", async () => {
    const { get, cap } = await gatedApp();
    await get("/v2/", basic("alice", "wrong-password-123"));
    await get("/v2/", basic("mallory", ALICE_PW));
    await get("/v2/", `Bearer not-a-real-token-0123456789`);
    await get("/v2/", "Basic %%%");
    await get("/v2/fake/x/manifests/1", basic("alice", ALICE_PW));
    await get("/v2/fake/x/manifests/1", `Bearer ${TOKEN}`);
    const failed = cap.parsed().filter((l) => l.msg === "authentication failed");
    assert.deepEqual(failed.map((l) => [l.user, l.remote, l.reason]), [
      ["alice", "192.0.2.7", "wrong password"],
      ["mallory", "192.0.2.7", "unknown user"],
      [undefined, "192.0.2.7", "unknown token"],
      [undefined, "192.0.2.7", "malformed basic credentials (not base64)"],
    ]);
    const requests = cap.parsed().filter((l) => l.msg === "request");
    assert.equal(requests.length, 6);
    assert.equal(requests[4].user, "alice");
    assert.equal(requests[5].user, "alice");
    const all = cap.lines.join("\n");
    for (const secret of ["wrong-password-123", ALICE_PW, TOKEN, "not-a-real-token-0123456789", btoa("alice:" + ALICE_PW)]) {
      assert.ok(!all.includes(secret), `log holds a secret: ${secret}`);
    }
    assert.ok(!/authorization/i.test(all), "no Authorization header in the log");
  });
});

describe("verified-credentials cache", () => {
  test("a good password costs one bcrypt a minute; wrong ones are never cached", async () => {
    const clock = { now: 1_000_000 };
    const cfg = await config(["--htpasswd", "/auth/htpasswd"]);
    const auth = new ClientAuth(cfg.clientAuth!, { log: capture().log, now: () => clock.now });
    const req = (a: string) => new Request("http://c/v2/", { headers: { authorization: a } });
    for (let i = 0; i < 5; i++) assert.equal((await auth.authenticate(req(basic("alice", ALICE_PW)), "")).ok, true);
    assert.equal(auth.bcryptRuns, 1);
    clock.now += 59_000;
    assert.equal((await auth.authenticate(req(basic("alice", ALICE_PW)), "")).ok, true);
    assert.equal(auth.bcryptRuns, 1);
    clock.now += 2_000;
    assert.equal((await auth.authenticate(req(basic("alice", ALICE_PW)), "")).ok, true);
    assert.equal(auth.bcryptRuns, 2, "expired after a minute");
    for (let i = 0; i < 3; i++) assert.equal((await auth.authenticate(req(basic("alice", "nope")), "")).ok, false);
    assert.equal(auth.bcryptRuns, 5, "a wrong password is checked every time");
    // Cached under (user, password): another user with the same password is not let in.
    assert.equal((await auth.authenticate(req(basic("bob", ALICE_PW)), "")).ok, false);
    // Tokens need no bcrypt.
    assert.equal(auth.bcryptRuns, 6);
  });

  test("bounded", async () => {
    const clock = { now: 0 };
    const cfg = await config(["--htpasswd", "/auth/htpasswd"]);
    const auth = new ClientAuth(cfg.clientAuth!, { log: capture().log, now: () => clock.now, cacheMax: 1 });
    const req = (a: string) => new Request("http://c/v2/", { headers: { authorization: a } });
    await auth.authenticate(req(basic("alice", ALICE_PW)), "");
    await auth.authenticate(req(basic("bob", BOB_PW)), "");
    await auth.authenticate(req(basic("bob", BOB_PW)), "");
    assert.equal(auth.bcryptRuns, 2);
    await auth.authenticate(req(basic("alice", ALICE_PW)), "");
    assert.equal(auth.bcryptRuns, 3, "alice was pushed out by bob");
  });
});
