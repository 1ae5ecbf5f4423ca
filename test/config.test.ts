/** Configuration: defaults, precedence, registries, validation. */
import assert from "node:assert/strict";
import process from "node:process";
import { describe, test } from "node:test";
import {
  checkPrefixes,
  type Config,
  ConfigError,
  EMBEDDED_REGISTRIES,
  loadConfig,
  parseDuration,
  parseFlags,
  parseListen,
  parseSize,
} from "../src/config.ts";

function sources(args: string[] = [], env: Record<string, string> = {}, files: Record<string, string> = {}) {
  const reads: string[] = [];
  return {
    reads,
    src: {
      flags: parseFlags(args),
      env: (name: string) => env[name],
      readText: (path: string) => {
        reads.push(path);
        return path in files ? Promise.resolve(files[path]) : Promise.reject(new Error(`ENOENT: ${path}`));
      },
    },
  };
}

function load(args: string[] = [], env: Record<string, string> = {}, files: Record<string, string> = {}): Promise<Config> {
  return loadConfig(sources(args, env, files).src);
}

/** Expect a ConfigError naming `field` (in .field and in the message). */
async function rejects(p: Promise<unknown> | (() => unknown), field: string | RegExp) {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
  if (typeof field === "string") {
    assert.equal(err.field, field);
    assert.ok(err.message.includes(field), `${JSON.stringify(err.message)} names ${field}`);
  } else {
    assert.match(err.field, field);
  }
  assert.match(err.message, /^invalid configuration: /);
  return err;
}

const reg = (c: Config, prefix: string) => c.registries.find((r) => r.prefix === prefix);

describe("defaults", () => {
  test("no flags, env or file", async () => {
    const c = await load();
    assert.deepEqual(c.listen, { hostname: "0.0.0.0", port: 5000 });
    assert.equal(c.storage, `${process.cwd()}/ocicache-data`);
    assert.ok(c.storage.startsWith("/"));
    assert.equal(c.indexUrl, `file:${process.cwd()}/ocicache-data/index.db`);
    assert.equal(c.registries.length, 7);
    assert.deepEqual(c.registries.map((r) => r.prefix), EMBEDDED_REGISTRIES.map((r) => r.prefix));
    assert.equal(c.defaultRegistry, "docker.io");
    assert.equal(c.logLevel, "info");
    for (const r of c.registries) assert.equal(r.tagTtlMs, 5 * 60_000);
    assert.deepEqual(c.upstream, {
      headersTimeoutMs: 30_000,
      idleTimeoutMs: 60_000,
      retry: { attempts: 3, baseDelayMs: 200, budgetMs: 10_000 },
    });
    assert.deepEqual(c.download, { maxDetachedBytes: 2 * 2 ** 30, maxConcurrent: 64 });
    for (const r of c.registries) {
      assert.equal(r.offline, false);
      assert.equal(r.maxStaleMs, Infinity);
    }
    const hub = reg(c, "docker.io")!;
    assert.equal(hub.url, "https://registry-1.docker.io");
    assert.equal(hub.dockerHub, true);
    assert.ok(hub.hosts.includes("registry-1.docker.io"));
    assert.equal(reg(c, "ghcr.io")!.dockerHub, false);
    assert.equal(c.indexAuthToken, undefined);
  });
  test("the embedded list is not mutated through a loaded config", async () => {
    const c = await load();
    reg(c, "docker.io")!.hosts.push("mutated");
    assert.ok(!EMBEDDED_REGISTRIES[0].hosts.includes("mutated"));
    assert.ok(!reg(await load(), "docker.io")!.hosts.includes("mutated"));
  });
});

describe("precedence: flags > env > file", () => {
  const file = JSON.stringify({ listen: "127.0.0.3:7003", storage: "/from/file", logLevel: "error", tagTtl: "3m" });
  const files = { "/etc/ocicache.json": file };
  const env = { OCICACHE_CONFIG: "/etc/ocicache.json" };
  test("file alone", async () => {
    const c = await load([], env, files);
    assert.deepEqual(c.listen, { hostname: "127.0.0.3", port: 7003 });
    assert.equal(c.storage, "/from/file");
    assert.equal(c.indexUrl, "file:/from/file/index.db");
    assert.equal(c.logLevel, "error");
    assert.equal(reg(c, "ghcr.io")!.tagTtlMs, 180_000);
  });
  test("env over file", async () => {
    const c = await load([], { ...env, OCICACHE_LISTEN: "127.0.0.2:7002", OCICACHE_STORAGE: "/from/env", OCICACHE_TAG_TTL: "2m" }, files);
    assert.deepEqual(c.listen, { hostname: "127.0.0.2", port: 7002 });
    assert.equal(c.storage, "/from/env");
    assert.equal(c.logLevel, "error");
    assert.equal(reg(c, "ghcr.io")!.tagTtlMs, 120_000);
  });
  test("flags over env", async () => {
    const c = await load(
      ["--listen", "127.0.0.1:7001", "--storage=/from/flag", "--tag-ttl", "1m", "--log-level", "debug"],
      { ...env, OCICACHE_LISTEN: "127.0.0.2:7002", OCICACHE_STORAGE: "/from/env", OCICACHE_TAG_TTL: "2m", OCICACHE_LOG_LEVEL: "warn" },
      files,
    );
    assert.deepEqual(c.listen, { hostname: "127.0.0.1", port: 7001 });
    assert.equal(c.storage, "/from/flag");
    assert.equal(c.logLevel, "debug");
    assert.equal(reg(c, "ghcr.io")!.tagTtlMs, 60_000);
  });
  test("--config flag over OCICACHE_CONFIG", async () => {
    const s = sources(["--config", "/b.json"], { OCICACHE_CONFIG: "/a.json" }, { "/a.json": '{"logLevel":"warn"}', "/b.json": '{"logLevel":"debug"}' });
    const c = await loadConfig(s.src);
    assert.equal(c.logLevel, "debug");
    assert.deepEqual(s.reads, ["/b.json"]);
  });
  test("the last repeated flag wins", async () => {
    assert.equal((await load(["--log-level", "warn", "--log-level", "error"])).logLevel, "error");
  });
  test("relative storage becomes absolute", async () => {
    assert.equal((await load(["--storage", "./data"])).storage, `${process.cwd()}/data`);
    assert.equal((await load(["--storage", "data/x"])).storage, `${process.cwd()}/data/x`);
  });
  test("index URL and auth token", async () => {
    const c = await load(["--index-url", "libsql://db.example.com"], { OCICACHE_INDEX_AUTH_TOKEN: "secret" });
    assert.equal(c.indexUrl, "libsql://db.example.com");
    assert.equal(c.indexAuthToken, "secret");
    await rejects(load(["--index-url", "postgres://x"]), "indexUrl");
  });
});

describe("registries", () => {
  test("--registry adds one; its URL host is a host for ?ns=", async () => {
    const c = await load(["--registry", "local=http://127.0.0.1:5000"]);
    assert.equal(c.registries.length, 8);
    const l = reg(c, "local")!;
    assert.equal(l.url, "http://127.0.0.1:5000");
    assert.deepEqual(l.hosts, ["127.0.0.1:5000"]);
    assert.equal(l.dockerHub, false);
    assert.equal(l.tagTtlMs, 300_000);
    assert.equal(c.defaultRegistry, "docker.io");
  });
  test("URL path kept, trailing slash dropped", async () => {
    const c = await load(["--registry=mirror=https://mirror.example.com/base/"]);
    assert.equal(reg(c, "mirror")!.url, "https://mirror.example.com/base");
  });
  test("OCICACHE_REGISTRIES adds several; flags override env for the same prefix", async () => {
    const c = await load(["--registry", "b=http://flag.example"], { OCICACHE_REGISTRIES: "a=http://a.example,b=http://env.example" });
    assert.equal(reg(c, "a")!.url, "http://a.example");
    assert.equal(reg(c, "b")!.url, "http://flag.example");
  });
  test("replacing an embedded registry keeps its Docker Hub traits and hosts", async () => {
    const c = await load(["--registry", "docker.io=https://hub-mirror.example.com"]);
    assert.equal(c.registries.length, 7);
    const hub = reg(c, "docker.io")!;
    assert.equal(hub.url, "https://hub-mirror.example.com");
    assert.equal(hub.dockerHub, true);
    assert.ok(hub.hosts.includes("registry-1.docker.io"));
    assert.ok(hub.hosts.includes("hub-mirror.example.com"));
  });
  test("--default-registry local / none", async () => {
    assert.equal((await load(["--registry", "local=http://127.0.0.1:5000", "--default-registry", "local"])).defaultRegistry, "local");
    assert.equal((await load(["--default-registry", "none"])).defaultRegistry, null);
    assert.equal((await load([], { OCICACHE_DEFAULT_REGISTRY: "ghcr.io" })).defaultRegistry, "ghcr.io");
    await rejects(load(["--default-registry", "nope"]), "defaultRegistry");
  });
  test("config file registries: credentials, hosts, tagTtl, no embedded list", async () => {
    const file = {
      embeddedRegistries: false,
      defaultRegistry: "priv",
      registries: {
        priv: { url: "https://priv.example.com:8443", username: "bot", passwordFile: "/run/secrets/pw", tagTtl: "30s" },
        other: { url: "https://o.example", hosts: ["o.example", "o-alias.example"], username: "u", passwordEnv: "OTHER_PW" },
        hublike: { url: "https://h.example", dockerHub: true },
      },
    };
    const c = await load(["--config", "/c.json"], { OTHER_PW: "envpw" }, { "/c.json": JSON.stringify(file), "/run/secrets/pw": "filepw\n" });
    assert.deepEqual(c.registries.map((r) => r.prefix).sort(), ["hublike", "other", "priv"]);
    assert.equal(c.defaultRegistry, "priv");
    const p = reg(c, "priv")!;
    assert.deepEqual([p.username, p.password, p.tagTtlMs, p.hosts], ["bot", "filepw", 30_000, ["priv.example.com:8443"]]);
    const o = reg(c, "other")!;
    assert.deepEqual([o.username, o.password, o.hosts], ["u", "envpw", ["o.example", "o-alias.example"]]);
    assert.equal(reg(c, "hublike")!.dockerHub, true);
  });
  test("without embedded registries and without a default → no default", async () => {
    const c = await load(["--config", "/c.json"], {}, { "/c.json": JSON.stringify({ embeddedRegistries: false, registries: { x: { url: "http://x" } } }) });
    assert.equal(c.defaultRegistry, null);
  });
  test("a file entry for an embedded prefix may change only its credentials", async () => {
    const c = await load(["--config", "/c.json"], { GH: "tok" }, { "/c.json": JSON.stringify({ registries: { "ghcr.io": { username: "me", passwordEnv: "GH" } } }) });
    const g = reg(c, "ghcr.io")!;
    assert.deepEqual([g.url, g.username, g.password, g.hosts], ["https://ghcr.io", "me", "tok", ["ghcr.io"]]);
  });
  test("passwordEnv not set", async () => {
    await rejects(
      load(["--config", "/c.json"], {}, { "/c.json": JSON.stringify({ registries: { x: { url: "http://x", username: "u", passwordEnv: "MISSING" } } }) }),
      "registries.x.passwordEnv",
    );
  });
  test("passwordFile unreadable", async () => {
    await rejects(
      load(["--config", "/c.json"], {}, { "/c.json": JSON.stringify({ registries: { x: { url: "http://x", username: "u", passwordFile: "/nope" } } }) }),
      "registries.x.passwordFile",
    );
  });
  test("password without username", async () => {
    await rejects(
      load(["--config", "/c.json"], { PW: "p" }, { "/c.json": JSON.stringify({ registries: { x: { url: "http://x", passwordEnv: "PW" } } }) }),
      "registries.x.username",
    );
  });
  test("registry URL problems", async () => {
    await rejects(load(["--registry", "x=not a url"]), "--registry x");
    await rejects(load(["--registry", "x=ftp://x.example"]), "--registry x");
    await rejects(load(["--registry", "x=https://u:p@x.example"]), "--registry x");
    await rejects(load(["--registry", "x=https://x.example/?q=1"]), "--registry x");
    await rejects(load(["--registry", "nourl"]), "--registry");
    await rejects(load(["--config", "/c.json"], {}, { "/c.json": '{"registries":{"x":{}}}' }), "registries.x.url");
    await rejects(load(["--config", "/c.json"], {}, { "/c.json": '{"registries":{"x":{"url":"http://x","hosts":"x"}}}' }), "registries.x.hosts");
  });
});

describe("prefix rules", () => {
  test("empty prefix", async () => {
    await rejects(() => checkPrefixes(["a", ""]), "registries");
    await rejects(load(["--config", "/c.json"], {}, { "/c.json": '{"registries":{"":{"url":"http://x"}}}' }), "registries");
    await rejects(load(["--registry", "=http://x"]), "--registry");
  });
  test("uppercase prefix", async () => {
    await rejects(load(["--registry", "Local=http://127.0.0.1:5000"]), "registries.Local");
  });
  test("prefix with a slash", async () => {
    await rejects(load(["--registry", "a/b=http://127.0.0.1:5000"]), "registries.a/b");
  });
  test("a prefix that string-prefixes another", async () => {
    const e = await rejects(load(["--registry", "local=http://127.0.0.1:5000", "--registry", "localhost=http://127.0.0.1:5001"]), "registries.localhost");
    assert.match(e.message, /"local"/);
    await rejects(load(["--registry", "gcr=http://x"]), "registries.gcr.io");
  });
  test("duplicates", async () => {
    await rejects(() => checkPrefixes(["a", "b", "a"]), "registries.a");
  });
  test("good prefixes pass", () => {
    checkPrefixes(["docker.io", "ghcr.io", "127.0.0.1:5000", "my_reg-1"]);
  });
});

describe("durations", () => {
  test("parseDuration", () => {
    assert.equal(parseDuration("f", "5m"), 300_000);
    assert.equal(parseDuration("f", "30s"), 30_000);
    assert.equal(parseDuration("f", "1h"), 3_600_000);
    assert.equal(parseDuration("f", "250ms"), 250);
    assert.equal(parseDuration("f", "1.5s"), 1500);
    assert.equal(parseDuration("f", "7"), 7000);
    assert.equal(parseDuration("f", 7), 7000);
    assert.equal(parseDuration("f", "0"), 0);
  });
  test("days", () => assert.equal(parseDuration("x", "7d"), 7 * 86_400_000));
  for (const bad of ["5 minutes", "-5s", "5w", "", "1e3", "s"]) {
    test(`bad duration ${JSON.stringify(bad)}`, async () => {
      assert.throws(() => parseDuration("tagTtl", bad), ConfigError);
      await rejects(load(["--tag-ttl", bad]), "tagTtl");
    });
  }
  test("bad durations in the file and env", async () => {
    await rejects(load(["--config", "/c"], {}, { "/c": '{"tagTtl":-1}' }), "tagTtl");
    await rejects(load([], { OCICACHE_UPSTREAM_TIMEOUT: "soon" }), "upstreamTimeout");
    await rejects(load(["--idle-timeout", "0"]), "idleTimeout");
    await rejects(load(["--upstream-timeout", "0s"]), "upstreamTimeout");
    await rejects(load(["--config", "/c"], {}, { "/c": '{"registries":{"x":{"url":"http://x","tagTtl":"later"}}}' }), "registries.x.tagTtl");
  });
  test("tag TTL 0 is allowed (always revalidate)", async () => {
    assert.equal(reg(await load(["--tag-ttl", "0"]), "docker.io")!.tagTtlMs, 0);
  });
});

describe("listen", () => {
  test("parseListen forms", () => {
    assert.deepEqual(parseListen("l", ":5000"), { hostname: "0.0.0.0", port: 5000 });
    assert.deepEqual(parseListen("l", "127.0.0.1:8080"), { hostname: "127.0.0.1", port: 8080 });
    assert.deepEqual(parseListen("l", "localhost:0"), { hostname: "localhost", port: 0 });
    assert.deepEqual(parseListen("l", "[::1]:5000"), { hostname: "::1", port: 5000 });
    assert.deepEqual(parseListen("l", "[::]:5000"), { hostname: "::", port: 5000 });
  });
  for (const bad of ["5000", "host", ":", ":65536", ":abc", "::1:5000", "[::1]", "a:b:1", ""]) {
    test(`bad listen ${JSON.stringify(bad)}`, async () => {
      await rejects(load(["--listen", bad]), "listen");
    });
  }
});

describe("flags", () => {
  test("--flag value and --flag=value, repeats collected", () => {
    const f = parseFlags(["--listen", ":1", "--registry=a=http://a", "--registry", "b=http://b"]);
    assert.deepEqual(f.get("--listen"), [":1"]);
    assert.deepEqual(f.get("--registry"), ["a=http://a", "b=http://b"]);
  });
  test("unknown flag", async () => {
    await rejects(() => parseFlags(["--nope", "x"]), "--nope");
    await rejects(() => parseFlags(["--nope=x"]), "--nope");
    await rejects(() => parseFlags(["stray"]), "stray");
  });
  test("flag missing value", async () => {
    await rejects(() => parseFlags(["--listen"]), "--listen");
    await rejects(() => parseFlags([":5000", "--storage"]), ":5000");
    await rejects(() => parseFlags(["--log-level", "info", "--storage"]), "--storage");
  });
  test("bad log level", async () => {
    await rejects(load(["--log-level", "verbose"]), "logLevel");
  });
});

describe("config file", () => {
  test("not JSON", async () => {
    const e = await rejects(load(["--config", "/c.json"], {}, { "/c.json": "listen: :5000" }), "--config");
    assert.match(e.message, /\/c\.json/);
    assert.match(e.message, /JSON/);
  });
  test("JSON but not an object", async () => {
    await rejects(load(["--config", "/c.json"], {}, { "/c.json": "[1,2]" }), "--config");
    await rejects(load(["--config", "/c.json"], {}, { "/c.json": "null" }), "--config");
    await rejects(load(["--config", "/c.json"], {}, { "/c.json": "42" }), "--config");
  });
  test("missing file", async () => {
    const e = await rejects(load(["--config", "/missing.json"]), "--config");
    assert.match(e.message, /missing\.json/);
  });
});

describe("fault-handling settings", () => {
  test("--offline, --max-stale, --upstream-retries, --max-detached and sizes", async () => {
    const c = await loadConfig({
      flags: parseFlags(["--registry", "local=http://127.0.0.1:5000", "--offline", "local", "--max-stale", "168h", "--upstream-retries", "1", "--max-detached", "512MiB"]),
      env: () => undefined,
      readText: () => Promise.reject(new Error("no files")),
    });
    const local = c.registries.find((r) => r.prefix === "local")!;
    assert.equal(local.offline, true);
    assert.equal(local.maxStaleMs, 168 * 3600_000);
    assert.equal(c.registries.find((r) => r.prefix === "docker.io")!.offline, false);
    assert.equal(c.upstream.retry.attempts, 1);
    assert.equal(c.download.maxDetachedBytes, 512 * 2 ** 20);
    await assert.rejects(
      loadConfig({ flags: parseFlags(["--offline", "nope"]), env: () => undefined, readText: () => Promise.reject(new Error("x")) }),
      /--offline: "nope" is not a configured prefix/,
    );
    await assert.rejects(
      loadConfig({ flags: parseFlags(["--upstream-retries", "0"]), env: () => undefined, readText: () => Promise.reject(new Error("x")) }),
      /upstreamRetries/,
    );
    assert.equal(parseSize("x", "50GiB"), 50 * 2 ** 30);
    assert.equal(parseSize("x", "10GB"), 10e9);
    assert.equal(parseSize("x", "1048576"), 1048576);
    assert.throws(() => parseSize("maxSize", "lots"), /maxSize/);
  });
});
