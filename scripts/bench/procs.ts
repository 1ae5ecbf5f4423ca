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
