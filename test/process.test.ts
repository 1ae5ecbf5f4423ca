/**
 * The program as users run it (the compiled binary when OCICACHE_BIN is set): the command line,
 * a run from an empty folder with a clean environment, readiness, and a SIGTERM that lets an
 * in-flight blob transfer finish.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { imageManifest, randomBytes, sha256, startFakeRegistry, type FakeRegistry } from "./support/fake_registry.ts";
import { ocicacheCommand, startOcicache } from "./support/ocicache_process.ts";
import { readRest } from "./support/cache.ts";

/** Run ocicache to completion. */
function runCli(args: string[], opts: { env?: Record<string, string>; cwd?: string; cmd?: string } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const base = ocicacheCommand();
  const cmd = opts.cmd ?? base.cmd;
  const full = opts.cmd ? args : [...base.args, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, full, { cwd: opts.cwd, env: opts.env ?? { ...process.env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("command line", () => {
  test("version and help on every command", async () => {
    const v = await runCli(["version"]);
    assert.equal(v.code, 0);
    assert.match(v.stdout, /^ocicache \d+\.\d+\.\d+ \((deno|bun)\)/);
    const h = await runCli(["--help"]);
    assert.equal(h.code, 0);
    for (const c of ["serve", "warm", "ls", "du", "version"]) assert.match(h.stdout, new RegExp(`\\n  ${c} `));
    for (const c of ["serve", "warm", "ls", "du"]) {
      const r = await runCli([c, "--help"]);
      assert.equal(r.code, 0, c);
      assert.match(r.stdout, /Usage: ocicache /, c);
      assert.match(r.stdout, /Examples:\n  ocicache /, c);
    }
  });

  test("unknown flags, bad values and unknown commands: one line, exit 2", async () => {
    const cases: [string[], RegExp][] = [
      [["serve", "--bogus", "1"], /--bogus: unknown flag/],
      [["serve", "--listen", "nope"], /listen/],
      [["serve", "--tag-ttl", "soon"], /tagTtl/],
      [["serve", "--registry", "UPPER=http://x"], /prefix/],
      [["ls", "--json=1"], /--json: takes no value/],
      [["warm", "--platform", "linux", "x:1"], /--platform/],
      [["warm"], /ref/],
      [["frobnicate"], /unknown command/],
    ];
    for (const [args, re] of cases) {
      const r = await runCli(args);
      assert.equal(r.code, 2, args.join(" "));
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, `one line for ${args.join(" ")}: ${r.stderr}`);
      assert.match(lines[0], re);
      assert.doesNotMatch(r.stderr, /\n\s+at\s/, "no stack trace");
    }
  });
});

describe("serving", () => {
  let up: FakeRegistry;
  const layer = randomBytes(6 * 1024 * 1024, 51);
  let layerDigest: string;

  before(async () => {
    // 6 MiB in 64 KiB chunks, 15 ms apart: ~1.4 s per cold transfer.
    up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 15 });
    layerDigest = up.putBlob(layer);
    const cfg = randomBytes(300, 52);
    up.putManifest("proc/app", imageManifest({ digest: up.putBlob(cfg), size: cfg.length }, [{ digest: layerDigest, size: layer.length }]), "application/vnd.oci.image.manifest.v1+json", "v1");
  });
  after(() => up.stop());

  test("the binary runs from an empty folder with a clean environment", { skip: !process.env.OCICACHE_BIN && "OCICACHE_BIN not set (run through `deno task test`, which builds it)" }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "ocicache-empty-"));
    try {
      const bin = join(dir, "ocicache");
      await copyFile(process.env.OCICACHE_BIN!, bin);
      await import("node:fs/promises").then((fs) => fs.chmod(bin, 0o755));
      const env = { PATH: "/usr/bin:/bin", HOME: dir, TMPDIR: dir };
      const v = await runCli(["version"], { cmd: bin, cwd: dir, env });
      assert.equal(v.code, 0, v.stderr);
      assert.match(v.stdout, /^ocicache /);
      const missing = await runCli(["ls", "--storage", join(dir, "data")], { cmd: bin, cwd: dir, env });
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /no cache at .*data/);
      const oc = await startOcicache(["--storage", join(dir, "data")], { env, keepStorage: true });
      const ready = await fetch(`${oc.url}/readyz`);
      assert.equal(ready.status, 200);
      await ready.arrayBuffer();
      assert.equal(await oc.stop(), 0);
      const ls = await runCli(["ls", "--storage", join(dir, "data")], { cmd: bin, cwd: dir, env });
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /no images/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("readyz and healthz answer JSON; SIGTERM lets an in-flight blob transfer finish, then exits 0", async () => {
    const oc = await startOcicache(["--registry", `fake=${up.url}`, "--default-registry", "fake"]);
    try {
      const ready = await fetch(`${oc.url}/readyz`);
      assert.equal(ready.status, 200);
      assert.deepEqual(await ready.json(), { status: "ready" });
      assert.deepEqual(await (await fetch(`${oc.url}/healthz`)).json(), { status: "ok" });

      const res = await fetch(`${oc.url}/v2/fake/proc/app/blobs/${layerDigest}`);
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      const first = await reader.read();
      const exit = oc.stop("SIGTERM");
      const body = await readRest(reader, [first.value!]);
      assert.equal(sha256(body), layerDigest, "the transfer in flight at SIGTERM completed with every byte");
      assert.equal(await exit, 0);
      const lines = oc.logLines();
      assert.ok(lines.some((l) => l.msg?.startsWith("shutting down")), "logged the shutdown");
      assert.ok(lines.some((l) => l.msg === "stopped"), "logged the stop");
    } finally {
      await oc.stop();
    }
  });

  test("warm pulls an image through a running cache; ls and du show it", async () => {
    const storage = await mkdtemp(join(tmpdir(), "ocicache-warm-"));
    const oc = await startOcicache(["--registry", `fake=${up.url}`, "--default-registry", "fake", "--storage", storage]);
    try {
      const w = await runCli(["warm", "--server", oc.url, "fake/proc/app:v1"]);
      assert.equal(w.code, 0, w.stderr);
      // Not a terminal: one line per finished blob, then a summary.
      assert.match(w.stderr, new RegExp(`fake/proc/app:v1 ${layerDigest} 6\\.0 MiB \\((miss|coalesced|hit)\\)`));
      assert.match(w.stderr, /2\/2 blobs/);
      await oc.sync();
      const ls = await runCli(["ls", "--json", "--storage", storage]);
      assert.equal(ls.code, 0, ls.stderr);
      const images = JSON.parse(ls.stdout);
      const img = images.find((i: { repository: string }) => i.repository === "proc/app");
      assert.ok(img, ls.stdout);
      assert.equal(img.registry, "fake");
      assert.deepEqual(img.tags.map((t: { tag: string }) => t.tag), ["v1"]);
      assert.ok(img.bytes >= layer.length);
      const du = await runCli(["du", "--json", "--storage", storage]);
      const usage = JSON.parse(du.stdout);
      assert.equal(usage.registries[0].registry, "fake");
      assert.ok(usage.total.blobBytes >= layer.length);
      const text = await runCli(["ls", "--storage", storage]);
      assert.match(text.stdout, /REGISTRY\s+REPOSITORY\s+TAGS\s+SIZE\s+LAST PULLED\nfake\s+proc\/app\s+v1\s+6\.0 MiB/);
      const bad = await runCli(["warm", "--server", oc.url, "fake/proc/nothing:v1"]);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /404/);
    } finally {
      await oc.stop();
      await rm(storage, { recursive: true, force: true });
    }
  });
});
