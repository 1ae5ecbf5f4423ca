/**
 * Crash safety: ocicache (the real program, OCICACHE_BIN when set) is killed with SIGKILL at
 * several moments of a pull — before the first byte, mid-download, at the commit of the big
 * blob, right after it — then restarted on the same storage. Every object must then be served
 * with exactly the right bytes, from the cache or fetched again (a miss); never wrong bytes,
 * never a 5xx. `ocicache fsck --verify` afterwards finds the store consistent.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { blake3 } from "hash-wasm";
import { imageManifest, randomBytes, sha256, startFakeRegistry, type FakeRegistry } from "./support/fake_registry.ts";
import { ocicacheCommand, type OcicacheProcess, startOcicache } from "./support/ocicache_process.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const REPO = "crash/app";
const MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json";

/** Run an ocicache command to completion (bounded). */
function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { cmd, args: base } = ocicacheCommand();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("OCICACHE_")));
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...base, ...args], { env: env as Record<string, string>, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 10_000, every = 2) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(every);
  }
}

/** Read a response body, counting bytes into `progress`; resolves whatever happens to it. */
async function drain(res: Promise<Response>, progress: { bytes: number }): Promise<void> {
  try {
    const r = await res;
    const reader = r.body!.getReader();
    while (true) {
      const { done, value } = await reader.read();
      if (done) return;
      progress.bytes += value.length;
    }
  } catch {
    // the process was killed under it
  }
}

describe("crash safety: kill -9 during a pull, restart, every object right or a miss", () => {
  let up: FakeRegistry;
  const big = randomBytes(16 * 1024 * 1024, 901);
  const config = new TextEncoder().encode(JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers" } }));
  const small = randomBytes(300_000, 902);
  let bigDigest: string;
  let bigKey: string;
  let configDigest: string;
  let smallDigest: string;
  let manifestDigest: string;
  const dirs: string[] = [];
  const started = Date.now();

  before(async () => {
    // 16 MiB in 64 KiB chunks, 3 ms apart: about a second per cold transfer.
    up = await startFakeRegistry({ chunkSize: 64 * 1024, chunkDelayMs: 3 });
    bigDigest = up.putBlob(big);
    bigKey = await blake3(big);
    configDigest = up.putBlob(config);
    smallDigest = up.putBlob(small);
    manifestDigest = up.putManifest(
      REPO,
      imageManifest({ digest: configDigest, size: config.length }, [
        { digest: smallDigest, size: small.length },
        { digest: bigDigest, size: big.length },
      ]),
      MANIFEST_TYPE,
      "1",
    );
  });
  after(async () => {
    await up?.stop();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  const serve = (storage: string) =>
    startOcicache(["--storage", storage, "--registry", `local=${up.url}`, "--default-registry", "local", "--log-level", "info"]);

  /** A pull as a client does it: the manifest, then every blob at once. Reads bodies as they come. */
  function pull(oc: OcicacheProcess) {
    const progress = { bytes: 0 };
    const base = `${oc.url}/v2/local/${REPO}`;
    const all = (async () => {
      await drain(fetch(`${base}/manifests/1`, { headers: { accept: MANIFEST_TYPE } }), { bytes: 0 });
      await Promise.all([
        drain(fetch(`${base}/blobs/${bigDigest}`), progress),
        drain(fetch(`${base}/blobs/${configDigest}`), { bytes: 0 }),
        drain(fetch(`${base}/blobs/${smallDigest}`), { bytes: 0 }),
      ]);
    })();
    return { progress, all };
  }

  /** After a restart: every object by digest (and the tag) answers 200 with exactly its bytes. */
  async function checkAll(oc: OcicacheProcess): Promise<Record<string, string>> {
    const base = `${oc.url}/v2/local/${REPO}`;
    const cache: Record<string, string> = {};
    const want: [string, string, string][] = [
      ["manifest", `${base}/manifests/${manifestDigest}`, manifestDigest],
      ["tag", `${base}/manifests/1`, manifestDigest],
      ["config", `${base}/blobs/${configDigest}`, configDigest],
      ["small", `${base}/blobs/${smallDigest}`, smallDigest],
      ["big", `${base}/blobs/${bigDigest}`, bigDigest],
    ];
    // The first answer may be a miss (fetched again); once the download is stored (its client
    // gets the end as soon as the bytes are verified, the commit follows), every answer is a hit.
    await Promise.all(want.map(async ([name, url, digest]) => {
      for (let round = 1; round <= 100; round++) {
        const res = await fetch(url, { headers: { accept: MANIFEST_TYPE } });
        assert.equal(res.status, 200, `${name} (round ${round}): status ${res.status}`);
        const body = new Uint8Array(await res.arrayBuffer());
        assert.equal(sha256(body), digest, `${name} (round ${round}): wrong bytes`);
        const x = res.headers.get("x-cache") ?? "?";
        if (round === 1) cache[name] = x;
        if (x === "hit" || name === "tag") return;
        assert.ok(round === 1 || x === "coalesced", `${name} (round ${round}): ${x}, expected a hit or the stored download`);
        await sleep(50);
      }
      assert.fail(`${name}: not a hit after 100 GETs`);
    }));
    return cache;
  }

  /** Kill at `moment`, restart, check every object, stop, then fsck --verify. */
  async function scenario(name: string, moment: (oc: OcicacheProcess, p: { bytes: number }) => Promise<void>) {
    const storage = await mkdtemp(join(tmpdir(), "ocicache-crash-"));
    dirs.push(storage);
    up.reset();
    const oc = await serve(storage);
    let results: Record<string, string>;
    try {
      const p = pull(oc);
      await moment(oc, p.progress);
      await oc.kill9();
      await p.all;
    } finally {
      await oc.stop();
    }
    const again = await serve(storage);
    try {
      results = await checkAll(again);
      await until("the store check at start", () => again.logLines().some((l) => l.msg === "store check at start"));
      const check = again.logLines().find((l) => l.msg === "store check at start")!;
      assert.deepEqual(check.errors, [], `${name}: the check at start failed: ${JSON.stringify(check)}`);
      assert.ok(!again.logLines().some((l) => l.msg === "request" && Number(l.status) >= 500), `${name}: no 5xx`);
      assert.equal(await again.stop(), 0);
    } finally {
      await again.stop();
    }
    const fsck = await runCli(["fsck", "--verify", "--json", "--storage", storage]);
    assert.equal(fsck.code, 0, `${name}: fsck exit code\n${fsck.stderr}`);
    const report = JSON.parse(fsck.stdout);
    assert.equal(report.consistent, true, `${name}: fsck after the restart: ${fsck.stdout}`);
    assert.equal(report.checked.rows, 4, `${name}: manifest + 3 blobs indexed`);
    assert.equal(report.checked.verified, 4);
    return results;
  }

  test("killed before the big blob's first byte", async () => {
    const r = await scenario("before any byte", async () => {
      await until("the upstream GET of the big blob", () => up.requests.some((q) => q.method === "GET" && q.path.endsWith(bigDigest)), 10_000, 1);
    });
    assert.equal(r.big, "miss");
  });

  test("killed mid-download", async () => {
    const r = await scenario("mid-download", async (_oc, p) => {
      await until("half of the big blob", () => p.bytes >= big.length / 2, 15_000, 1);
    });
    assert.equal(r.big, "miss");
  });

  test("killed as the big blob is committed (file renamed into place, row maybe not yet written)", async () => {
    await scenario("at commit", async (oc, p) => {
      // All but the held-back last chunk has reached the client: the download is verifying,
      // renaming, indexing. Kill the moment the file appears under its final name.
      await until("all but the last chunk", () => p.bytes >= big.length - 64 * 1024, 15_000, 1);
      const path = join(oc.storage, "blobs", bigKey.slice(0, 2), bigKey);
      await until("the big blob's file in place", () => stat(path).then(() => true, () => false), 10_000, 0);
    });
  });

  test("killed a few milliseconds after the download's last chunk", async () => {
    await scenario("around commit", async (_oc, p) => {
      await until("all but the last chunk", () => p.bytes >= big.length - 64 * 1024, 15_000, 1);
      await sleep(4);
    });
  });

  test("killed once the pull completed and was stored: everything is a hit after the restart", async () => {
    const r = await scenario("after completion", async (oc, p) => {
      await until("the whole big blob", () => p.bytes >= big.length, 15_000, 1);
      // The client has every byte; the store commit (key, fsync, rename, index row) follows it.
      await until("the big blob stored", async () => {
        const res = await fetch(`${oc.url}/v2/local/${REPO}/blobs/${bigDigest}`, { method: "HEAD" });
        await res.body?.cancel();
        return res.headers.get("x-cache") === "hit";
      }, 15_000, 5);
    });
    assert.deepEqual(r, { manifest: "hit", tag: "hit", config: "hit", small: "hit", big: "hit" });
  });

  test("gc on the command line: a JSON report, exit 0; the suite stays within its time bound", async () => {
    const storage = dirs[dirs.length - 1];
    const gc = await runCli(["gc", "--json", "--storage", storage]);
    assert.equal(gc.code, 0, gc.stderr);
    assert.equal(JSON.parse(gc.stdout).consistent, true);
    const line = await runCli(["gc", "--dry-run", "--storage", storage]);
    assert.match(line.stdout.trim(), /^gc: consistent \(checked 4 rows, 4 files\)$/);
    const missing = await runCli(["fsck", "--storage", join(storage, "nope")]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no cache at/);
    assert.ok(Date.now() - started < 60_000, `took ${Date.now() - started} ms`);
  });
});
