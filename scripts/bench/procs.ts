/**
 * Process helpers for the benchmark: start ocicache as a child process (compiled binary or
 * `deno run`), wait for GET /v2/ → 200, stop it; read /proc/<pid>/status; find the pid of a
 * docker-registry started by test/support/real_registry.ts.
 * @module
 */
import { spawn } from "node:child_process";
import { terminate } from "../../test/support/child.ts";
import { readdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import process from "node:process";
import { freePort } from "../../test/support/real_registry.ts";
import { sleep } from "./util.ts";

/** How to launch one ocicache build. */
export interface Variant {
  /** Short key used in JSON, e.g. "ocicache_deno". */
  key: string;
  /** Human label, e.g. "ocicache (deno run)". */
  label: string;
  /** Program and leading arguments, before `serve …`. */
  command: string[];
}

/** A running ocicache. */
export interface OcicacheProcess {
  url: string;
  pid: number;
  storage: string;
  /** Milliseconds from spawn() to the first 200 on GET /v2/. */
  readyMs: number;
  /** The last ~64 KiB of stdout+stderr. */
  logs(): string;
  /** SIGTERM, SIGKILL after 10 s; idempotent. */
  stop(): Promise<void>;
}

export interface StartOptions {
  storage: string;
  /** Upstream base URL, configured as registry prefix "up" (also the default registry). */
  upstream: string;
  /** TMPDIR for the child (a compiled Bun binary unpacks its native addon there). */
  tmpDir: string;
  cwd: string;
  readyTimeoutMs?: number;
  /** Poll interval for readiness (ms). */
  pollMs?: number;
}

async function tryStart(
  v: Variant,
  o: StartOptions,
): Promise<OcicacheProcess | "port-in-use"> {
  const port = await freePort();
  const args = [
    ...v.command.slice(1),
    "serve",
    "--listen",
    `127.0.0.1:${port}`,
    "--storage",
    o.storage,
    "--registry",
    `up=${o.upstream}`,
    "--default-registry",
    "up",
    "--log-level",
    "warn",
  ];
  const t0 = performance.now();
  const child = spawn(v.command[0], args, {
    cwd: o.cwd,
    env: { ...process.env, TMPDIR: o.tmpDir, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const onData = (b: Uint8Array) => {
    log = (log + new TextDecoder().decode(b)).slice(-65536);
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  let spawnError: Error | undefined;
  child.once("error", (e) => (spawnError = e));
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (!spawnError) await terminate(child, 10_000);
    child.stdout?.destroy();
    child.stderr?.destroy();
  };
  const url = `http://127.0.0.1:${port}`;
  const readyMs = o.readyTimeoutMs ?? 30_000;
  const pollMs = o.pollMs ?? 5;
  const deadline = Date.now() + readyMs;
  while (Date.now() < deadline) {
    if (spawnError || child.exitCode !== null || child.signalCode !== null) {
      break;
    }
    try {
      const res = await fetch(`${url}/v2/`, {
        signal: AbortSignal.timeout(2000),
      });
      await res.body?.cancel();
      if (res.status === 200) {
        const ready = performance.now() - t0;
        return {
          url,
          pid: child.pid!,
          storage: o.storage,
          readyMs: ready,
          logs: () => log,
          stop,
        };
      }
    } catch {
      // not listening yet
    }
    await sleep(pollMs);
  }
  await stop();
  if (/address already in use|EADDRINUSE/i.test(log)) return "port-in-use";
  const why = spawnError
    ? `could not be started: ${spawnError.message}`
    : child.exitCode !== null || child.signalCode !== null
    ? `exited early (code ${child.exitCode}, signal ${child.signalCode})`
    : `did not answer 200 on ${url}/v2/ within ${readyMs} ms`;
  throw new Error(`${v.label} ${why}\n--- output ---\n${log}`);
}

/** Start ocicache (retrying a port clash) and wait until GET /v2/ answers 200. */
export async function startOcicache(
  v: Variant,
  o: StartOptions,
): Promise<OcicacheProcess> {
  for (let i = 0; i < 3; i++) {
    const r = await tryStart(v, o);
    if (r !== "port-in-use") return r;
  }
  throw new Error(`${v.label}: no free port after 3 attempts`);
}

/** VmRSS / VmHWM of a process in KiB (null when it is gone). */
export async function procMem(
  pid: number,
): Promise<{ rssKiB: number; hwmKiB: number } | null> {
  try {
    const s = await readFile(`/proc/${pid}/status`, "utf8");
    const rss = /VmRSS:\s+(\d+) kB/.exec(s);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(s);
    if (!rss || !hwm) return null;
    return { rssKiB: Number(rss[1]), hwmKiB: Number(hwm[1]) };
  } catch {
    return null;
  }
}

/**
 * Pid of the docker-registry whose command line names `<dirname(rootDir)>/config.yml`
 * (how test/support/real_registry.ts starts it), or undefined.
 */
export async function findRegistryPid(
  rootDir: string,
): Promise<number | undefined> {
  const config = join(dirname(rootDir), "config.yml");
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = (await readFile(`/proc/${name}/cmdline`, "utf8")).split("\0");
      if (
        cmd.some((a) => a.endsWith("docker-registry")) && cmd.includes(config)
      ) return Number(name);
    } catch {
      // gone
    }
  }
  return undefined;
}

/** Linux's USER_HZ: /proc CPU times are in 1/100 s on every architecture. */
const TICKS_PER_S = 100;

/** utime + stime (seconds) from the text of a /proc stat file, and the thread's name. */
function statCpu(stat: string): { name: string; seconds: number } {
  const close = stat.lastIndexOf(")");
  const name = stat.slice(stat.indexOf("(") + 1, close);
  const f = stat.slice(close + 2).split(" ");
  // Fields after "(comm)": state is [0], utime [11], stime [12], cutime [13], cstime [14].
  return { name, seconds: (Number(f[11]) + Number(f[12])) / TICKS_PER_S };
}

/**
 * CPU seconds of each thread of process `pid`, grouped by what the thread does (see
 * {@link threadGroup}); empty when the process is gone. Threads that exited in between are lost,
 * so sample around a short interval.
 */
export async function threadCpu(pid: number | undefined): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (pid === undefined) return out;
  let tids: string[];
  try {
    tids = await readdir(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const s = statCpu(await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8"));
      const g = threadGroup(s.name, Number(tid) === pid);
      out.set(g, (out.get(g) ?? 0) + s.seconds);
    } catch {
      // the thread ended
    }
  }
  return out;
}

/** What a thread of ocicache (Bun or Deno) does, from its name. */
export function threadGroup(name: string, isMain: boolean): string {
  if (isMain) return "main thread (HTTP, sha256, streams)";
  if (/^Worker$|^worker-\d+$/.test(name)) return "BLAKE3 worker (nice 19)";
  if (/^Bun Pool|^tokio-run|^HTTP Client/.test(name)) return "I/O and fetch threads";
  return "JIT and GC threads";
}

/** CPU seconds of a whole process (all its threads), or NaN when it is gone. */
export async function processCpu(pid: number): Promise<number> {
  try {
    return statCpu(await readFile(`/proc/${pid}/stat`, "utf8")).seconds;
  } catch {
    return NaN;
  }
}

/** CPU seconds of this process's children that have exited and been waited for (the curl clients). */
export async function reapedChildrenCpu(): Promise<number> {
  const stat = await readFile("/proc/self/stat", "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[13]) + Number(f[14])) / TICKS_PER_S;
}

/** CPU seconds spent since a {@link cpuSnapshot}, by part. */
export type CpuParts = Map<string, number>;

/**
 * Start counting the CPU time of ocicache's threads (grouped), the upstream registry and this
 * process's exited children (the curl client); `since()` returns what each used meanwhile.
 */
export async function cpuSnapshot(
  ocicachePid: number | undefined,
  upstreamPid: number | undefined,
): Promise<{ since(): Promise<CpuParts> }> {
  const read = async () => ({
    threads: await threadCpu(ocicachePid),
    upstream: upstreamPid ? await processCpu(upstreamPid) : NaN,
    client: await reapedChildrenCpu(),
  });
  const before = await read();
  return {
    async since() {
      const now = await read();
      const out: CpuParts = new Map();
      for (const [k, v] of now.threads) out.set(k, v - (before.threads.get(k) ?? 0));
      if (Number.isFinite(now.upstream - before.upstream)) out.set(UPSTREAM_PART, now.upstream - before.upstream);
      out.set(CLIENT_PART, now.client - before.client);
      return out;
    },
  };
}

/** The parts of {@link CpuParts} that are not the cache's own threads. */
const UPSTREAM_PART = "upstream docker-registry";
const CLIENT_PART = "client (curl)";

/** The cache's CPU seconds (all its threads; NaN when none was seen) and the clients'. */
export function cacheAndClients(parts: CpuParts): { cache: number; clients: number } {
  let cache = NaN;
  for (const [k, v] of parts) if (k !== UPSTREAM_PART && k !== CLIENT_PART) cache = (Number.isNaN(cache) ? 0 : cache) + v;
  return { cache, clients: parts.get(CLIENT_PART) ?? NaN };
}

/**
 * Wait until the processes `pids` use (almost) no CPU for `quietMs`: a cache that has answered
 * may still be working (the distribution proxy fetches a second upstream copy to store it), and
 * the next measurement must not share the CPU with that. Bounded by `timeoutMs`.
 */
export async function processesIdle(
  pids: (number | undefined)[],
  quietMs = 300,
  timeoutMs = 60_000,
): Promise<void> {
  const live = pids.filter((p): p is number => p !== undefined);
  const total = async () => {
    let n = 0;
    for (const p of live) n += (await processCpu(p)) || 0;
    return n;
  };
  const deadline = Date.now() + timeoutMs;
  let last = await total();
  let quietSince = Date.now();
  while (Date.now() < deadline) {
    await sleep(100);
    const now = await total();
    // Idle: less than 5 % of one core over the interval (background timers, GC).
    if (now - last > 0.005) quietSince = Date.now();
    else if (Date.now() - quietSince >= quietMs) return;
    last = now;
  }
}
