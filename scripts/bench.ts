/**
 * `deno task bench`: a real end-to-end benchmark of ocicache against the CNCF distribution
 * registry on loopback, all measured in one run:
 *
 * 1. warm blob GET throughput of a big layer: ocicache vs the distribution registry in proxy mode
 *    ("peer") vs the upstream registry direct vs reading the stored file from disk;
 * 2. cold blob GET throughput of a fresh layer: ocicache vs peer vs upstream, how long each cache
 *    takes to have it stored after the client's last byte, and where the CPU goes (per thread,
 *    from /proc);
 * 3. 8 concurrent cold clients of one fresh layer: upstream bytes (counted on the wire by a relay)
 *    and wall time vs one client;
 * 4. warm manifest-by-tag requests/s and p50/p99 with 16 connections for ~5 s;
 * 5. start-up time to a ready /v2/ (compiled binary, `deno run`);
 * 6. peak RSS of ocicache during 8 concurrent warm GETs of the big layer;
 * 7. warm `skopeo copy` of a 6-layer (~64 MiB) image to `dir:`: ocicache vs peer (wall time).
 *
 * Prints tables (figures + ratios), writes test-output/bench.json, docs/benchmarks.md and the
 * ratio chart docs/benchmarks.svg.
 * Every process and temp dir it makes is removed at the end, also on failure or Ctrl-C; a
 * watchdog bounds the whole run.
 *
 * Flags: --size-mib N (256) · --warm-reps N (5) · --cold-reps N (5) · --clients N (8)
 *        --manifest-seconds N (5) · --manifest-concurrency N (16) · --startup-runs N (5)
 *        --skopeo-reps N (5) · --no-binary · --no-docs · --max-minutes N (20)
 *        --only 1,2,… (tests to run)
 * @module
 */
import { existsSync } from "node:fs";
import {
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { arch, cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { makeImageLayout } from "../test/support/fixtures.ts";
import {
  type RealRegistry,
  startDockerRegistry,
} from "../test/support/real_registry.ts";
import {
  pushLayout,
  skopeoCopy,
  verifyDirCopy,
} from "../test/support/skopeo.ts";
import {
  type Blob,
  OCI_MANIFEST,
  pushFreshBlob,
  pushSmallImage,
  writeRandomFile,
} from "./bench/blobs.ts";
import {
  clientKind,
  closedLoop,
  concurrentGets,
  readFileTimed,
  timedGet,
  verifiedGet,
} from "./bench/client.ts";
import { measureComponents } from "./bench/components.ts";
import { type CountingProxy, startCountingProxy } from "./bench/count_proxy.ts";
import {
  cacheAndClients,
  cpuSnapshot,
  findRegistryPid,
  processesIdle,
  type OcicacheProcess,
  procMem,
  startOcicache,
  type Variant,
} from "./bench/procs.ts";
import {
  type ConcurrentRow,
  type CpuRow,
  renderMarkdown,
  renderSvg,
  renderText,
  type Results,
  type RssRow,
  type SkopeoRow,
  type ThroughputRow,
} from "./bench/report.ts";
import {
  Cleanup,
  fmt,
  median,
  MiB,
  runCmd,
  sleep,
  waitFor,
  which,
} from "./bench/util.ts";

const ROOT = resolve(fileURLToPath(new URL(".", import.meta.url)), "..");

// `deno task bench eviction [flags]`: the eviction trace replay (S3-FIFO vs LRU vs FIFO).
if (process.argv[2] === "eviction") {
  await (await import("./bench/eviction.ts")).main(process.argv.slice(3));
  process.exit(0);
}

// ---------------------------------------------------------------- flags

function parseArgs(argv: string[]) {
  const o = {
    sizeMiB: 256,
    warmReps: 5,
    coldReps: 5,
    clients: 8,
    manifestSeconds: 5,
    manifestConcurrency: 16,
    startupRuns: 5,
    skopeoReps: 5,
    binary: true,
    docs: true,
    maxMinutes: 20,
    only: new Set([1, 2, 3, 4, 5, 6, 7]),
  };
  const num = (flag: string, v: string | undefined, min: number) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) {
      throw new Error(
        `${flag} needs a number ≥ ${min}, got ${JSON.stringify(v)}`,
      );
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].includes("=")
      ? argv[i].split(/=(.*)/s, 2)
      : [argv[i], undefined];
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case "--size-mib":
        o.sizeMiB = num(flag, val(), 1);
        break;
      case "--warm-reps":
        o.warmReps = Math.round(num(flag, val(), 1));
        break;
      case "--cold-reps":
        o.coldReps = Math.round(num(flag, val(), 1));
        break;
      case "--clients":
        o.clients = Math.round(num(flag, val(), 2));
        break;
      case "--manifest-seconds":
        o.manifestSeconds = num(flag, val(), 0.5);
        break;
      case "--manifest-concurrency":
        o.manifestConcurrency = Math.round(num(flag, val(), 1));
        break;
      case "--startup-runs":
        o.startupRuns = Math.round(num(flag, val(), 1));
        break;
      case "--skopeo-reps":
        o.skopeoReps = Math.round(num(flag, val(), 1));
        break;
      case "--max-minutes":
        o.maxMinutes = num(flag, val(), 1);
        break;
      case "--no-binary":
        o.binary = false;
        break;
      case "--no-docs":
        o.docs = false;
        break;
      case "--only":
        o.only = new Set(val()!.split(",").map((s) => num("--only", s, 1)));
        break;
      case "-h":
      case "--help":
        console.log(
          "Usage: deno task bench [--size-mib 256] [--warm-reps 5] [--cold-reps 5] [--clients 8]\n" +
            "       [--manifest-seconds 5] [--manifest-concurrency 16] [--startup-runs 5]\n" +
            "       [--skopeo-reps 5] [--no-binary] [--no-docs] [--max-minutes 20]\n" +
            "       [--only 1,2,3,4,5,6,7]",
        );
        process.exit(0);
        break;
      default:
        throw new Error(`unknown flag ${flag} (see --help)`);
    }
  }
  return o;
}

// ---------------------------------------------------------------- helpers

const log = (msg: string) =>
  console.log(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);

async function firstLine(cmd: string, args: string[]): Promise<string> {
  const r = await runCmd(cmd, args, { timeoutMs: 15_000 });
  return r.code === 0
    ? (r.stdout || r.stderr).trim().split("\n")[0]
    : "not available";
}

async function machine(): Promise<Record<string, string | number>> {
  const cpuinfo = await readFile("/proc/cpuinfo", "utf8").catch(() => "");
  const model = /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1]?.trim() ??
    cpus()[0]?.model ?? "unknown";
  const meminfo = await readFile("/proc/meminfo", "utf8").catch(() => "");
  const memKiB = Number(
    /MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? totalmem() / 1024,
  );
  const nproc = (await runCmd("nproc", [])).stdout.trim() ||
    String(cpus().length);
  const os = (await readFile("/etc/os-release", "utf8").catch(() => "")).match(
    /PRETTY_NAME="?([^"\n]+)/,
  )?.[1] ?? "unknown";
  return {
    nproc: Number(nproc),
    "CPU model": model,
    memory: `${(memKiB / 1024 / 1024).toFixed(1)} GiB`,
    os,
    kernel: release(),
    arch: arch(),
  };
}

/** The file in an ocicache store whose size is `size` (its CAFS copy of the blob). */
async function storedFile(
  storage: string,
  size: number,
): Promise<string | undefined> {
  const blobs = join(storage, "blobs");
  for (const d of await readdir(blobs).catch(() => [] as string[])) {
    for (const f of await readdir(join(blobs, d)).catch(() => [] as string[])) {
      const p = join(blobs, d, f);
      if ((await stat(p)).size === size) return p;
    }
  }
  return undefined;
}

/** Wait until a docker-registry (proxy mode) has the blob in its own storage. */
function peerStored(
  reg: RealRegistry,
  b: Pick<Blob, "digest" | "size">,
  timeoutMs = 120_000,
): Promise<true> {
  const hex = b.digest.slice("sha256:".length);
  const p = join(
    reg.rootDir,
    "docker/registry/v2/blobs/sha256",
    hex.slice(0, 2),
    hex,
    "data",
  );
  return waitFor(
    async () => (await stat(p).catch(() => null))?.size === b.size || undefined,
    timeoutMs,
    `peer storing ${b.digest}`,
    50,
  );
}

/**
 * Why N concurrent cold clients take longer than one on this machine: the CPU the extra clients
 * cost (their own curl processes included), against the cores there are.
 */
function concurrentCpuNote(row: ConcurrentRow): string {
  const m = (xs?: number[]) => (xs?.length ? median(xs) : NaN);
  const extraCache = m(row.many.cacheCpuS) - m(row.single.cacheCpuS);
  const extraClients = m(row.many.clientCpuS) - m(row.single.clientCpuS);
  const extra = extraCache + extraClients;
  if (!Number.isFinite(extra)) return "";
  const cores = cpus().length;
  const w1 = m(row.single.wallS);
  return ` The ${row.clients - 1} extra clients cost ${fmt(extra, 2)} more CPU seconds (curl ${
    fmt(extraClients, 2)
  }, ocicache ${fmt(extraCache, 2)}), at least ${fmt(extra / cores, 2)} s more on ${cores} cores on top of one client's ${
    fmt(w1, 2)
  } s: ≤ 1.3× would need that to be under ${fmt(0.3 * w1, 2)} s.`;
}

/** Wait until ocicache answers a HEAD of the blob from its store (`X-Cache: hit`). */
function ociStored(url: string, timeoutMs = 120_000): Promise<true> {
  return waitFor(
    async () => {
      const r = await fetch(url, { method: "HEAD", signal: AbortSignal.timeout(10_000) });
      await r.body?.cancel();
      return r.headers.get("x-cache") === "hit" || undefined;
    },
    timeoutMs,
    `ocicache storing ${url}`,
    20,
  );
}

/** Wait until the relay has seen no new byte for `quietMs`. */
async function proxyQuiet(
  p: CountingProxy,
  quietMs = 400,
  timeoutMs = 120_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = -1;
  let since = Date.now();
  while (Date.now() < deadline) {
    const now = p.counts().bytesFromUpstream + p.counts().bytesToUpstream;
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return;
    await sleep(50);
  }
  throw new Error("upstream relay did not go quiet");
}

const mibps = (bytes: number, s: number) => bytes / MiB / s;
/** Layer payloads (MiB) of the test-7 image: 6 layers, 64 MiB of random bytes in all. */
const SKOPEO_LAYER_MIB = [24, 16, 10, 8, 4, 2];
const rotate = <T>(xs: T[], by: number) =>
  xs.map((_, i) => xs[(i + by) % xs.length]);

// ---------------------------------------------------------------- main

interface BlobTarget {
  key: string;
  label: string;
  /** Base URL of the server clients talk to. */
  url: string;
  kind: "ocicache" | "peer" | "upstream";
}

async function main(cleanup: Cleanup): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  const started = performance.now();
  const size = opts.sizeMiB * MiB;
  const notes: string[] = [];

  // ---- preflight
  if (!which("docker-registry")) {
    throw new Error(
      "docker-registry is not installed: apt-get install docker-registry",
    );
  }
  const deno = which("deno") ?? process.execPath;
  if (!existsSync(join(ROOT, "node_modules", "@libsql", "client"))) {
    log("node_modules missing: running deno install");
    const r = await runCmd(deno, ["install"], {
      cwd: ROOT,
      timeoutMs: 300_000,
      inherit: true,
    });
    if (r.code !== 0) throw new Error("deno install failed");
  }
  const variants: Variant[] = [];
  const binPath = join(ROOT, "dist", "ocicache-linux-x64");
  let binaryNote = "";
  if (opts.binary && arch() === "x64" && existsSync(binPath)) {
    const v = await runCmd(binPath, ["version"], { timeoutMs: 30_000 });
    if (v.code === 0) {
      variants.push({
        key: "ocicache_bin",
        label: `ocicache binary (${/\((\w+)\)/.exec(v.stdout)?.[1] ?? "?"})`,
        command: [binPath],
      });
    } else {binaryNote =
        `dist/ocicache-linux-x64 exists but \`version\` failed (exit ${v.code}); measured \`deno run\` only`;}
  } else if (opts.binary) {
    binaryNote =
      "dist/ocicache-linux-x64 is missing (build it with `deno task build`); measured `deno run` only";
  }
  if (binaryNote) {
    notes.push(binaryNote);
    log(binaryNote);
  }
  variants.push({
    key: "ocicache_deno",
    label: "ocicache deno run",
    command: [deno, "run", "-A", join(ROOT, "src", "main.ts")],
  });

  const results: Results = {
    meta: {
      date: new Date().toISOString(),
      machine: await machine(),
      versions: {
        deno: await firstLine(deno, ["--version"]),
        bench: typeof (globalThis as { Deno?: unknown }).Deno !== "undefined"
          ? `deno ${process.versions.deno}`
          : `bun ${process.versions.bun}`,
        bun: which("bun")
          ? await firstLine("bun", ["--version"])
          : "not installed",
        "docker-registry": (await firstLine("docker-registry", ["--version"]))
          .replace(/^.*?distribution\s+/, ""),
        client: clientKind === "curl"
          ? (await firstLine("curl", ["--version"])).split(" ").slice(0, 2)
            .join(" ")
          : "fetch (curl not found)",
        "ocicache commit": await (async () => {
          const head = await runCmd("git", ["rev-parse", "--short", "HEAD"], {
            cwd: ROOT,
            timeoutMs: 10_000,
          });
          const dirty = await runCmd("git", [
            "status",
            "--porcelain",
            "--",
            "src",
          ], { cwd: ROOT, timeoutMs: 10_000 });
          return head.code === 0
            ? `${head.stdout.trim()}${
              dirty.stdout.trim() ? " + uncommitted changes in src/" : ""
            }`
            : "unknown";
        })(),
        "ocicache binary": variants.some((v) => v.key === "ocicache_bin")
          ? `${binPath.replace(ROOT + "/", "")} (built ${
            (await stat(binPath)).mtime.toISOString().slice(0, 19)
          }Z)`
          : "not measured",
      },
      settings: {
        sizeMiB: opts.sizeMiB,
        warmReps: opts.warmReps,
        coldReps: opts.coldReps,
        concurrentClients: opts.clients,
        manifestSeconds: opts.manifestSeconds,
        manifestConcurrency: opts.manifestConcurrency,
        startupRuns: opts.startupRuns,
        rssClients: opts.clients,
        skopeoReps: opts.skopeoReps,
        skopeoLayerMiB: SKOPEO_LAYER_MIB.join("+"),
      },
      client: clientKind,
      loadavgStart: loadavg(),
      notes,
    },
    warm: [],
    cold: [],
    components: [],
    concurrent: [],
    manifest: [],
    startup: [],
    rss: [],
    skopeo: [],
  };
  log(
    `machine: ${results.meta.machine.nproc} cores, ${results.meta.machine.memory}, ${
      results.meta.machine["CPU model"]
    }; load ${loadavg().map((x) => x.toFixed(2)).join(" ")}`,
  );

  // ---- disk space: every fresh layer lands upstream and in one cache (twice for the peer's)
  const tmpBase = tmpdir();
  const freshBlobs = 1 +
    (opts.only.has(2) ? opts.coldReps * (variants.length + 2) : 0) +
    (opts.only.has(3) ? opts.coldReps * 2 * (variants.length + 1) : 0);
  const needMiB = opts.sizeMiB * (freshBlobs * 2.2 + 4) + 512 +
    (opts.only.has(7) ? 80 * (variants.length + 5) : 0);
  const df = await runCmd("df", ["-Pk", tmpBase]);
  const availMiB =
    Number(df.stdout.trim().split("\n").pop()?.split(/\s+/)[3] ?? NaN) / 1024;
  if (Number.isFinite(availMiB) && availMiB < needMiB) {
    throw new Error(
      `${tmpBase} has ${fmt(availMiB)} MiB free; this run needs about ${
        fmt(needMiB)
      } MiB (try --size-mib or --cold-reps)`,
    );
  }

  const tmp = await mkdtemp(join(tmpBase, "ocicache-bench-"));
  cleanup.add(
    `temp dir ${tmp}`,
    () => rm(tmp, { recursive: true, force: true }),
  );
  log(`temp dir ${tmp}; ~${fmt(needMiB / 1024, 1)} GiB of disk at most`);

  const base = join(tmp, "base.bin");
  await writeRandomFile(base, size - 64);

  // ---- registries
  const upstream = await startDockerRegistry();
  cleanup.add("upstream docker-registry", () => upstream.stop());
  const peer = await startDockerRegistry({ proxyRemoteUrl: upstream.url });
  cleanup.add("peer docker-registry", () => peer.stop());
  log(`upstream ${upstream.url}, peer (proxy) ${peer.url}`);

  const ocis = new Map<string, OcicacheProcess>();
  const startMain = async (v: Variant) => {
    const dir = join(tmp, v.key);
    await mkdir(join(dir, "tmp"), { recursive: true });
    const p = await startOcicache(v, {
      storage: join(dir, "storage"),
      upstream: upstream.url,
      tmpDir: join(dir, "tmp"),
      cwd: ROOT,
    });
    cleanup.add(v.label, () => p.stop());
    ocis.set(v.key, p);
    return p;
  };
  for (const v of variants) log(`${v.label}: ${(await startMain(v)).url}`);

  const blobTargets: BlobTarget[] = [
    ...variants.map((v) => ({
      key: v.key,
      label: v.label,
      url: ocis.get(v.key)!.url,
      kind: "ocicache" as const,
    })),
    {
      key: "peer",
      label: "peer (distribution proxy)",
      url: peer.url,
      kind: "peer",
    },
    {
      key: "upstream",
      label: "upstream direct",
      url: upstream.url,
      kind: "upstream",
    },
  ];
  const blobUrl = (t: { url: string }, b: Blob) =>
    `${t.url}/v2/bench/big/blobs/${b.digest}`;
  const push = () => pushFreshBlob(upstream.url, "bench/big", base);

  // ---- content
  const image = await pushSmallImage(upstream.url, "bench/app", "v1");
  const warmBlob = await push();
  log(
    `pushed bench/app:v1 (${
      image.digest.slice(0, 19)
    }…) and a ${opts.sizeMiB} MiB layer ${warmBlob.digest.slice(0, 19)}…`,
  );

  // ---- 1. warm blob GET (also fills the caches for 6)
  if (opts.only.has(1) || opts.only.has(6)) {
    for (const t of blobTargets) {
      const first = await verifiedGet(blobUrl(t, warmBlob), warmBlob.digest);
      if (t.kind === "peer") await peerStored(peer, warmBlob);
      log(
        `  ${t.label}: first GET verified (sha256), ${
          fmt(mibps(first.bytes, first.seconds))
        } MiB/s ${t.kind === "upstream" ? "" : "(cold fill)"}`,
      );
    }
  }
  if (opts.only.has(1)) {
    log(`1. warm blob GET × ${opts.warmReps}`);
    const stored = await storedFile(ocis.get(variants[0].key)!.storage, size);
    if (!stored) {
      throw new Error(
        "could not find the stored copy of the warm layer in ocicache's storage",
      );
    }
    const rows: ThroughputRow[] = [
      ...blobTargets.map((t) => ({
        key: t.key,
        label: t.label,
        mibps: [] as number[],
      })),
      { key: "disk", label: "disk read (node:fs, 1 MiB)", mibps: [] },
    ];
    for (const t of blobTargets) await timedGet(blobUrl(t, warmBlob), size); // unmeasured warm-up
    await readFileTimed(stored);
    for (let r = 0; r < opts.warmReps; r++) {
      for (const t of rotate(blobTargets, r)) {
        const x = await timedGet(blobUrl(t, warmBlob), size);
        rows.find((row) => row.key === t.key)!.mibps.push(
          mibps(x.bytes, x.seconds),
        );
      }
      const d = await readFileTimed(stored);
      rows.at(-1)!.mibps.push(mibps(d.bytes, d.seconds));
    }
    for (const row of rows) {
      log(`  ${row.label}: ${row.mibps.map((x) => fmt(x)).join(", ")} MiB/s`);
    }
    results.warm = rows;
  }

  // ---- 2. cold blob GET
  if (opts.only.has(2)) {
    const targets = blobTargets;
    log(
      `2. cold blob GET: pushing ${
        opts.coldReps * targets.length
      } fresh layers`,
    );
    const pool = new Map<string, Blob[]>();
    for (const t of targets) {
      const list: Blob[] = [];
      for (let r = 0; r < opts.coldReps; r++) list.push(await push());
      pool.set(t.key, list);
    }
    await runCmd("sync", [], { timeoutMs: 120_000 });
    const rows: ThroughputRow[] = targets.map((t) => ({
      key: t.key,
      label: t.label,
      mibps: [],
      ttfbMs: [],
      ...(t.kind === "upstream" ? {} : { storedMs: [] }),
    }));
    const cpuRows: CpuRow[] = variants.map((v) => ({
      key: v.key,
      label: v.label,
      transferS: [],
      storedS: [],
      parts: {},
    }));
    const upstreamPid = await findRegistryPid(upstream.rootDir);
    // Every process that serves test 2: each GET waits until they have all gone quiet.
    const idlePids = [upstreamPid, await findRegistryPid(peer.rootDir), ...variants.map((v) => ocis.get(v.key)!.pid)];
    for (let r = 0; r < opts.coldReps; r++) {
      for (const t of rotate(targets, r)) {
        const b = pool.get(t.key)![r];
        // Every GET starts with no dirty pages left by the one before (fair to every target).
        await runCmd("sync", [], { timeoutMs: 120_000 });
        const oci = t.kind === "ocicache" ? ocis.get(t.key)! : undefined;
        const cpu = oci ? await cpuSnapshot(oci.pid, upstreamPid) : undefined;
        const x = await timedGet(blobUrl(t, b), size);
        const row = rows.find((row) => row.key === t.key)!;
        row.mibps.push(mibps(x.bytes, x.seconds));
        row.ttfbMs!.push(x.ttfbSeconds * 1000);
        // Both caches store the blob after (or while) the client gets it: wait until it is
        // stored, so the next measurement does not share the CPU with that work.
        const t0 = performance.now();
        if (t.kind === "peer") await peerStored(peer, b);
        if (t.kind === "ocicache") await ociStored(blobUrl(t, b));
        row.storedMs?.push(performance.now() - t0);
        await processesIdle(idlePids);
        if (cpu) {
          const cr = cpuRows.find((c) => c.key === t.key)!;
          cr.transferS.push(x.seconds);
          cr.storedS.push(x.seconds + (performance.now() - t0) / 1000);
          for (const [k, v] of await cpu.since()) (cr.parts[k] ??= []).push(v);
        }
        await sleep(200);
      }
    }
    results.coldCpu = cpuRows;
    for (const row of rows) {
      log(`  ${row.label}: ${row.mibps.map((x) => fmt(x)).join(", ")} MiB/s`);
    }
    results.cold = rows;
    results.components = await measureComponents(
      base,
      join(tmp, "components.bin"),
    );
    log(
      `  steps: ${
        results.components.map((c) => `${c.label} ${fmt(c.mibps)} MiB/s`).join(
          "; ",
        )
      }`,
    );
  }

  // ---- 3. concurrent cold clients, upstream traffic counted on the wire
  // Caches whose upstream traffic is counted by a relay (tests 3 and 4), made when first needed.
  type CountedTarget = BlobTarget & {
    relay: CountingProxy;
    registry?: RealRegistry;
    /** The cache's process (ocicache, or the peer's docker-registry). */
    pid?: number;
  };
  let countedSetup:
    | Promise<{ targets: CountedTarget[]; stop: () => Promise<void> }>
    | undefined;
  const counted = () =>
    countedSetup ??= (async () => {
      const relayOci = await startCountingProxy(upstream.url);
      cleanup.add("relay (ocicache)", () => relayOci.stop());
      const relayPeer = await startCountingProxy(upstream.url);
      cleanup.add("relay (peer)", () => relayPeer.stop());
      const peerCounted = await startDockerRegistry({
        proxyRemoteUrl: relayPeer.url,
      });
      cleanup.add("peer docker-registry (counted)", () => peerCounted.stop());
      const targets: CountedTarget[] = [];
      const procs: OcicacheProcess[] = [];
      for (const v of variants) {
        const dir = join(tmp, `${v.key}-counted`);
        await mkdir(join(dir, "tmp"), { recursive: true });
        const p = await startOcicache(v, {
          storage: join(dir, "storage"),
          upstream: relayOci.url,
          tmpDir: join(dir, "tmp"),
          cwd: ROOT,
        });
        cleanup.add(`${v.label} (counted)`, () => p.stop());
        procs.push(p);
        targets.push({
          key: v.key,
          label: v.label,
          url: p.url,
          kind: "ocicache",
          relay: relayOci,
          pid: p.pid,
        });
      }
      targets.push({
        key: "peer",
        label: "peer (distribution proxy)",
        url: peerCounted.url,
        kind: "peer",
        relay: relayPeer,
        registry: peerCounted,
        pid: await findRegistryPid(peerCounted.rootDir),
      });
      // Stopping early only frees resources; cleanup would do it too (stop() is idempotent).
      const stop = async () => {
        for (const p of procs) await p.stop();
        await peerCounted.stop();
      };
      return { targets, stop };
    })();

  // ---- 3. concurrent cold clients, upstream traffic counted on the wire
  if (opts.only.has(3)) {
    log(
      `3. ${opts.clients} concurrent cold clients vs 1 (upstream traffic through a counting relay)`,
    );
    const { targets } = await counted();
    const pool = new Map<string, Blob[]>();
    for (const t of targets) {
      const list: Blob[] = [];
      for (let i = 0; i < opts.coldReps * 2; i++) list.push(await push());
      pool.set(t.key, list);
    }
    await runCmd("sync", [], { timeoutMs: 120_000 });
    const rows: ConcurrentRow[] = targets.map((t) => ({
      key: t.key,
      label: t.label,
      clients: opts.clients,
      single: { wallS: [], upstreamBytes: [], upstreamBlobGets: [] },
      many: {
        wallS: [],
        upstreamBytes: [],
        upstreamBlobGets: [],
        slowestClientS: [],
      },
    }));
    const settle = async (t: CountedTarget, b: Blob) => {
      if (t.registry) await peerStored(t.registry, b);
      if (t.kind === "ocicache") await ociStored(blobUrl(t, b));
      await proxyQuiet(t.relay);
      const c = t.relay.counts();
      return {
        bytes: c.bytesFromUpstream,
        blobGets: c.requests.filter((q) =>
          q === `GET /v2/bench/big/blobs/${b.digest}`
        ).length,
      };
    };
    for (let r = 0; r < opts.coldReps; r++) {
      for (const t of rotate(targets, r)) {
        const row = rows.find((x) => x.key === t.key)!;
        const [b1, bn] = pool.get(t.key)!.slice(2 * r, 2 * r + 2);
        await proxyQuiet(t.relay);
        await runCmd("sync", [], { timeoutMs: 120_000 });
        t.relay.reset();
        // CPU of the cache and of the curl clients, from the first request until stored.
        let cpu = await cpuSnapshot(t.pid, undefined);
        const t0 = performance.now();
        await timedGet(blobUrl(t, b1), size);
        row.single.wallS.push((performance.now() - t0) / 1000);
        const s1 = await settle(t, b1);
        let used = cacheAndClients(await cpu.since());
        row.single.upstreamBytes.push(s1.bytes);
        row.single.upstreamBlobGets.push(s1.blobGets);
        (row.single.cacheCpuS ??= []).push(used.cache);
        (row.single.clientCpuS ??= []).push(used.clients);

        await runCmd("sync", [], { timeoutMs: 120_000 });
        t.relay.reset();
        cpu = await cpuSnapshot(t.pid, undefined);
        const many = await concurrentGets(blobUrl(t, bn), opts.clients, size);
        row.many.wallS.push(many.wallSeconds);
        row.many.slowestClientS.push(
          Math.max(...many.transfers.map((x) => x.seconds)),
        );
        const sn = await settle(t, bn);
        used = cacheAndClients(await cpu.since());
        row.many.upstreamBytes.push(sn.bytes);
        row.many.upstreamBlobGets.push(sn.blobGets);
        (row.many.cacheCpuS ??= []).push(used.cache);
        (row.many.clientCpuS ??= []).push(used.clients);
        log(
          `  ${t.label}: 1 client ${fmt(row.single.wallS.at(-1), 2)} s / ${
            fmt(s1.bytes / MiB)
          } MiB up (${s1.blobGets} GETs); ${opts.clients} clients ${
            fmt(many.wallSeconds, 2)
          } s / ${fmt(sn.bytes / MiB)} MiB up (${sn.blobGets} GETs)`,
        );
        await sleep(200);
      }
    }
    results.concurrent = rows;
    for (const row of rows) {
      const x = median(row.many.upstreamBytes) / size;
      if (row.key === "peer") {
        notes.push(
          `The peer (distribution ${
            results.meta.versions["docker-registry"]
          } in proxy mode) pulled ${
            fmt(median(row.single.upstreamBytes) / size, 2)
          }× the layer from upstream for one cold client and ${
            fmt(x, 2)
          }× for ${opts.clients} concurrent clients (upstream blob GETs: ${
            median(row.single.upstreamBlobGets)
          } and ${median(row.many.upstreamBlobGets)}).`,
        );
      } else {
        notes.push(
          `${row.label} pulled ${
            fmt(x, 2)
          }× the layer from upstream for ${opts.clients} concurrent cold clients (${
            median(row.many.upstreamBlobGets)
          } upstream blob GET); their wall time was ${
            fmt(median(row.many.wallS) / median(row.single.wallS), 2)
          }× that of one client.` + concurrentCpuNote(row),
        );
      }
    }
  }

  // ---- 4. warm manifest by tag
  if (opts.only.has(4)) {
    log(
      `4. manifest by tag, ${opts.manifestConcurrency} connections × ${opts.manifestSeconds} s`,
    );
    const headers = { accept: OCI_MANIFEST };
    for (const t of blobTargets) {
      const url = `${t.url}/v2/bench/app/manifests/v1`;
      const res = await fetch(url, {
        headers,
        signal: AbortSignal.timeout(30_000),
      });
      const body = new Uint8Array(await res.arrayBuffer());
      if (
        res.status !== 200 || body.length !== image.size ||
        res.headers.get("docker-content-digest") !== image.digest
      ) {
        throw new Error(
          `${t.label}: GET ${url} → HTTP ${res.status}, ${body.length} bytes, digest ${
            res.headers.get("docker-content-digest")
          }`,
        );
      }
      await closedLoop(
        url,
        headers,
        opts.manifestConcurrency,
        1000,
        image.size,
      );
      const load = await closedLoop(
        url,
        headers,
        opts.manifestConcurrency,
        opts.manifestSeconds * 1000,
        image.size,
      );
      log(
        `  ${t.label}: ${fmt(load.rps)} req/s, p50 ${
          fmt(load.p50Ms, 2)
        } ms, p99 ${fmt(load.p99Ms, 2)} ms, ${load.errors} errors`,
      );
      results.manifest.push({ key: t.key, label: t.label, load });
      await sleep(300);
    }
    // What a warm tag GET costs upstream: sequential GETs through the counted caches.
    const n = 100;
    for (const t of (await counted()).targets) {
      const url = `${t.url}/v2/bench/app/manifests/v1`;
      const get = async () => {
        const res = await fetch(url, {
          headers,
          signal: AbortSignal.timeout(30_000),
        });
        await res.arrayBuffer();
        if (res.status !== 200) {
          throw new Error(`${t.label}: GET ${url} → HTTP ${res.status}`);
        }
      };
      await get();
      await proxyQuiet(t.relay, 200);
      t.relay.reset();
      for (let i = 0; i < n; i++) await get();
      await proxyQuiet(t.relay, 200);
      const reqs = t.relay.counts().requests.filter((q) =>
        q.includes("/manifests/")
      );
      const upstreamRequests = reqs.length;
      const kinds = [
        ...new Set(
          reqs.map((q) =>
            q.split(" ")[0] + " …/manifests/" + q.split("/manifests/")[1]
          ),
        ),
      ].join(", ");
      const row = results.manifest.find((x) => x.key === t.key);
      if (row) row.upstreamPer100 = (upstreamRequests * 100) / n;
      log(
        `  ${t.label}: ${upstreamRequests} upstream manifest requests for ${n} warm tag GETs${
          kinds ? ` (${kinds})` : ""
        }`,
      );
    }
  }
  if (countedSetup) await (await countedSetup).stop();

  // ---- 7. skopeo copy of a multi-layer image, warm (before 6: 6 stops the main ocicaches)
  if (opts.only.has(7)) {
    if (!which("skopeo")) {
      const n = "skopeo is not installed (apt-get install skopeo): test 7 skipped";
      notes.push(n);
      log(n);
    } else {
      log(
        `7. skopeo copy of a ${SKOPEO_LAYER_MIB.length}-layer image × ${opts.skopeoReps} (warm)`,
      );
      const layout = await makeImageLayout(join(tmp, "skopeo-layout"), {
        seed: `ocicache-bench-${Date.now()}`,
        layerSizes: SKOPEO_LAYER_MIB.map((m) => m * MiB),
        tag: "v1",
      });
      const hostOf = (url: string) => new URL(url).host;
      await pushLayout(layout.dir, "v1", hostOf(upstream.url), "bench/multi");
      const imageBytes = layout.blobs.reduce((n, b) => n + b.size, 0);
      const img = layout.images[0];
      log(
        `  pushed bench/multi:v1 (${img.layers.length} layers, ${
          fmt(imageBytes / MiB, 1)
        } MiB) with skopeo`,
      );
      await rm(layout.dir, { recursive: true, force: true });
      const targets = [
        ...variants.map((v) => ({
          key: v.key,
          label: v.label,
          src: `docker://${hostOf(ocis.get(v.key)!.url)}/up/bench/multi:v1`,
          peer: false,
        })),
        {
          key: "peer",
          label: "peer (distribution proxy)",
          src: `docker://${hostOf(peer.url)}/bench/multi:v1`,
          peer: true,
        },
        {
          key: "upstream",
          label: "upstream direct",
          src: `docker://${hostOf(upstream.url)}/bench/multi:v1`,
          peer: false,
        },
      ];
      const outBase = join(tmp, "skopeo-out");
      await mkdir(outBase, { recursive: true });
      let seq = 0;
      const copy = async (src: string, verify = false) => {
        const out = join(outBase, String(seq++));
        const t0 = performance.now();
        const r = await skopeoCopy(src, `dir:${out}`, [], { timeoutMs: 120_000 });
        const s = (performance.now() - t0) / 1000;
        if (r.code !== 0) {
          throw new Error(
            `skopeo copy ${src} failed (code ${r.code}${
              r.timedOut ? ", timed out" : ""
            }): ${r.stderr.trim()}`,
          );
        }
        if (verify) {
          const got = await verifyDirCopy(out);
          if (got.length !== img.layers.length + 1) {
            throw new Error(
              `skopeo copy ${src}: ${got.length} blobs, want ${img.layers.length + 1}`,
            );
          }
        }
        await rm(out, { recursive: true, force: true });
        return s;
      };
      const rows: SkopeoRow[] = [];
      for (const t of targets) {
        const firstS = await copy(t.src, true); // cold: fills the cache
        if (t.peer) {
          for (const b of [img.config, ...img.layers]) await peerStored(peer, b);
        }
        await copy(t.src); // unmeasured warm copy
        rows.push({
          key: t.key,
          label: t.label,
          firstS,
          wallS: [],
          imageBytes,
          layers: img.layers.length,
        });
        log(`  ${t.label}: first copy (verified) ${fmt(firstS, 2)} s`);
      }
      await runCmd("sync", [], { timeoutMs: 120_000 });
      for (let r = 0; r < opts.skopeoReps; r++) {
        for (const t of rotate(targets, r)) {
          rows.find((x) => x.key === t.key)!.wallS.push(await copy(t.src));
        }
      }
      for (const row of rows) {
        log(
          `  ${row.label}: ${row.wallS.map((x) => fmt(x, 3)).join(", ")} s`,
        );
      }
      results.skopeo = rows;
      const peerWall = median(rows.find((x) => x.key === "peer")!.wallS);
      for (const row of rows.filter((x) => x.key.startsWith("ocicache"))) {
        notes.push(
          `skopeo: a warm \`skopeo copy\` of the ${row.layers}-layer image through ${row.label} took ${
            fmt(median(row.wallS), 3)
          } s, ${fmt(median(row.wallS) / peerWall, 2)}× the peer's ${
            fmt(peerWall, 3)
          } s (the peer revalidates the tag upstream on every pull; skopeo's own start-up and disk writes are in both).`,
        );
      }
    }
  }

  // ---- 6. peak RSS during concurrent warm GETs
  if (opts.only.has(6)) {
    log(`6. memory during ${opts.clients} concurrent warm GETs`);
    const sampleDuring = async (pid: number, url: string) => {
      let maxRss = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const m = await procMem(pid);
          if (m) maxRss = Math.max(maxRss, m.rssKiB);
          await sleep(20);
        }
      })();
      const many = await concurrentGets(url, opts.clients, size).finally(
        () => (sampling = false),
      );
      await sampler;
      return { maxRss, many };
    };
    for (const v of variants) {
      const old = ocis.get(v.key)!;
      await old.stop();
      const dir = join(tmp, v.key);
      const p = await startOcicache(v, {
        storage: old.storage,
        upstream: upstream.url,
        tmpDir: join(dir, "tmp"),
        cwd: ROOT,
      });
      cleanup.add(`${v.label} (rss)`, () => p.stop());
      const m = await fetch(`${p.url}/v2/bench/app/manifests/v1`, {
        headers: { accept: OCI_MANIFEST },
      });
      await m.arrayBuffer();
      const baseMem = (await procMem(p.pid))!;
      const { maxRss, many } = await sampleDuring(p.pid, blobUrl(p, warmBlob));
      const after = (await procMem(p.pid))!;
      const row: RssRow = {
        key: v.key,
        label: v.label,
        baselineKiB: baseMem.rssKiB,
        hwmKiB: after.hwmKiB,
        sampledMaxKiB: maxRss,
        aggregateMiBps: (opts.clients * opts.sizeMiB) / many.wallSeconds,
      };
      results.rss.push(row);
      log(
        `  ${v.label}: RSS ${
          fmt(row.baselineKiB / 1024)
        } MiB after start, VmHWM ${fmt(row.hwmKiB / 1024)} MiB, ${
          fmt(row.aggregateMiBps)
        } MiB/s aggregate`,
      );
      await p.stop();
    }
    const peerPid = await findRegistryPid(peer.rootDir);
    if (peerPid) {
      const baseMem = (await procMem(peerPid))!;
      const { maxRss, many } = await sampleDuring(
        peerPid,
        blobUrl(peer, warmBlob),
      );
      const after = (await procMem(peerPid))!;
      results.rss.push({
        key: "peer",
        label: "peer (distribution proxy)",
        baselineKiB: baseMem.rssKiB,
        hwmKiB: after.hwmKiB,
        sampledMaxKiB: maxRss,
        aggregateMiBps: (opts.clients * opts.sizeMiB) / many.wallSeconds,
        note: "long-running: VmHWM covers its whole life",
      });
    }
  }

  // ---- 5. start-up time (last: nothing else is busy)
  if (opts.only.has(5)) {
    log(`5. start-up to a ready /v2/ (1 + ${opts.startupRuns} starts each)`);
    for (const v of variants) {
      const ms: number[] = [];
      let firstMs = NaN;
      for (let i = 0; i <= opts.startupRuns; i++) {
        const dir = join(tmp, "startup", `${v.key}-${i}`);
        await mkdir(join(dir, "tmp"), { recursive: true });
        const p = await startOcicache(v, {
          storage: join(dir, "storage"),
          upstream: upstream.url,
          tmpDir: join(dir, "tmp"),
          cwd: ROOT,
          pollMs: 5,
        });
        await p.stop();
        if (i === 0) firstMs = p.readyMs;
        else ms.push(p.readyMs);
      }
      results.startup.push({
        key: v.key,
        label: v.label.replace(/^ocicache /, ""),
        firstMs,
        ms,
      });
      log(
        `  ${v.label}: median ${fmt(median(ms))} ms (${
          ms.map((x) => fmt(x)).join(", ")
        }), first ${fmt(firstMs)} ms`,
      );
    }
  }

  // ---- report
  results.meta.loadavgEnd = loadavg();
  results.meta.totalSeconds = (performance.now() - started) / 1000;
  const warm = results.warm;
  const med = (key: string) =>
    median(warm.find((x) => x.key === key)?.mibps ?? []);
  for (const v of variants) {
    if (warm.length && med(v.key) < 0.7 * med("peer")) {
      notes.push(
        `${v.label} serves a warm layer at ${
          fmt(med(v.key) / med("peer"), 2)
        }× the peer's throughput.`,
      );
    }
  }
  for (
    const [name, rows] of [["warm", results.warm], [
      "cold",
      results.cold,
    ]] as const
  ) {
    for (const row of rows) {
      const m = median(row.mibps);
      const low = row.mibps.filter((x) => x < 0.25 * m);
      if (low.length) {
        notes.push(
          `Outlier: one ${name} GET through ${row.label} ran at ${
            low.map((x) => fmt(x)).join(", ")
          } MiB/s against a median of ${
            fmt(m)
          } (see the range column; raw values in bench.json).`,
        );
      }
    }
  }
  const cores = Number(results.meta.machine.nproc) || 1;
  const [la0, la1] = [results.meta.loadavgStart[0], results.meta.loadavgEnd[0]];
  if (la0 > 0.75 * cores) { // at the start only: the bench itself adds ~2-3 while it runs
    notes.push(
      `The machine was busy with other work (1-min load average ${
        la0.toFixed(1)
      } at the start, ${
        la1.toFixed(1)
      } at the end, on ${cores} cores): absolute figures are depressed and noisy; the ratios, measured side by side and interleaved, hold up better.`,
    );
  }
  const coldMed = (key: string) =>
    median(results.cold.find((x) => x.key === key)?.mibps ?? []);
  if (results.cold.length) {
    const up = coldMed("upstream");
    for (const v of variants) {
      const cpu = results.coldCpu?.find((c) => c.key === v.key);
      const parts = Object.entries(cpu?.parts ?? {}).map(([k, xs]) => [k, median(xs)] as const);
      const total = parts.reduce((n, [, x]) => n + x, 0);
      const blake = parts.find(([k]) => k.startsWith("BLAKE3"))?.[1] ?? 0;
      const cores = cpus().length;
      const budget = opts.sizeMiB / (0.8 * up); // seconds a transfer at 0.8× upstream may take
      notes.push(
        `Cold fill: ${v.label} delivers a fresh layer at ${fmt(coldMed(v.key))} MiB/s, ${
          fmt(coldMed(v.key) / coldMed("peer"), 2)
        }× the peer and ${fmt(coldMed(v.key) / up, 2)}× the upstream direct.` +
          (total > 0
            ? ` One cold GET costs ${fmt(total, 2)} CPU seconds in all (table 2c: ${
              parts.map(([k, x]) => `${k} ${fmt(x, 2)}`).join(", ")
            }); on ${cores} cores that allows at best ${fmt(opts.sizeMiB / (total / cores))} MiB/s. ` +
              `0.8× the upstream (${fmt(0.8 * up)} MiB/s) would need the whole GET to fit in ${fmt(cores * budget, 2)} CPU seconds; ` +
              `BLAKE3 (hash-wasm) alone takes ${fmt(blake, 2)}.`
            : ""),
      );
      const io = cpu?.parts["I/O and fetch threads"] ?? [];
      if (io.length > 1 && Math.max(...io) > 2 * Math.min(...io)) {
        notes.push(
          `${v.label}: its I/O threads (file writes, mostly) used between ${fmt(Math.min(...io), 2)} and ${
            fmt(Math.max(...io), 2)
          } CPU seconds per cold GET of the same size in this run: on this VM writing new file data costs more the more memory the run has touched (see the README's Performance section); cold figures move with it.`,
        );
      }
    }
  }
  const peerManifest = results.manifest.find((x) => x.key === "peer");
  if (peerManifest?.upstreamPer100 !== undefined) {
    notes.push(
      `Tag GETs: the peer sent ${
        fmt(peerManifest.upstreamPer100)
      } upstream manifest requests per 100 warm tag GETs (it revalidates every tag request); ocicache sent ${
        results.manifest.filter((x) => x.key.startsWith("ocicache")).map((x) =>
          fmt(x.upstreamPer100)
        ).join(" / ")
      } (tag TTL 5 min).`,
    );
  }
  const text = renderText(results);
  console.log(`\n${text}\n`);
  for (const n of notes) console.log(`note: ${n}`);
  const outDir = join(ROOT, "test-output");
  await mkdir(outDir, { recursive: true });
  await writeFile(
    join(outDir, "bench.json"),
    JSON.stringify(results, null, 2) + "\n",
  );
  log(`wrote test-output/bench.json`);
  if (opts.docs) {
    await writeFile(
      join(ROOT, "docs", "benchmarks.md"),
      renderMarkdown(results),
    );
    log(`wrote docs/benchmarks.md`);
    const svg = renderSvg(results);
    if (svg) {
      await writeFile(join(ROOT, "docs", "benchmarks.svg"), svg);
      log(`wrote docs/benchmarks.svg`);
    }
  }
  log(`total ${fmt(results.meta.totalSeconds)} s`);
  return 0;
}

// ---------------------------------------------------------------- entry

const cleanup = new Cleanup();
let cleaning: Promise<void> | undefined;
/** Run the cleanup once (later callers wait for the same run), then exit. */
async function finish(code: number): Promise<never> {
  cleaning ??= cleanup.run();
  await cleaning;
  process.exit(code);
}
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    console.error(`\nbench: ${sig}, cleaning up`);
    void finish(130);
  });
}
const maxMinutes = (() => {
  const i = process.argv.findIndex((a) => a.startsWith("--max-minutes"));
  const v = i < 0
    ? undefined
    : process.argv[i].includes("=")
    ? process.argv[i].split("=")[1]
    : process.argv[i + 1];
  return Number(v) > 0 ? Number(v) : 20;
})();
const watchdog = setTimeout(() => {
  console.error(
    `bench: still running after ${maxMinutes} min (--max-minutes); aborting and cleaning up`,
  );
  void finish(124);
}, maxMinutes * 60_000);
try {
  const code = await main(cleanup);
  clearTimeout(watchdog);
  await finish(code);
} catch (e) {
  clearTimeout(watchdog);
  console.error(`bench failed: ${(e as Error)?.stack ?? e}`);
  await finish(1);
}
