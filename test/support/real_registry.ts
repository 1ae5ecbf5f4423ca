/**
 * A real CNCF distribution registry (Debian's `docker-registry` 2.8.x) for end-to-end
 * tests, plus helpers to detect the e2e binaries and skip (or fail) when they are missing.
 * Uses only node: built-ins and fetch, so it runs under Deno and Bun.
 */
import { spawn } from "node:child_process";
import { terminate } from "./child.ts";
import { accessSync, constants } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

/** A running docker-registry process. */
export interface RealRegistry {
  /** Base URL, e.g. `http://127.0.0.1:40123` (no trailing slash). */
  url: string;
  /** `127.0.0.1:PORT`, the form skopeo / ctr want in `docker://HOST/REPO:TAG`. */
  hostPort: string;
  /** Storage root directory (inside the temp dir removed by stop()). */
  rootDir: string;
  /** The last ~64 KiB of the registry's stdout+stderr, for diagnostics. */
  logs(): string;
  /**
   * Every request the registry has logged so far, in order (only with `accessLog: true`;
   * otherwise always empty). The registry writes a line after each response completes, so a
   * request just answered may take a moment to appear: see {@link syncAccessLog}.
   */
  accessLog(): AccessLogEntry[];
  /** Kills the process (SIGTERM, then SIGKILL after 5 s), awaits exit, removes temp dirs. Idempotent. */
  stop(): Promise<void>;
}

/** Options for {@link startDockerRegistry}. */
export interface StartRegistryOptions {
  /** Makes the registry a pull-through cache of this upstream (e.g. another RealRegistry's url). */
  proxyRemoteUrl?: string;
  /** Readiness bound in ms (default 10000). */
  readyTimeoutMs?: number;
  /** Turn on the registry's access log (one line per request on stdout), read by `accessLog()`. */
  accessLog?: boolean;
}

/** One line of docker-registry's access log (Apache combined format). */
export interface AccessLogEntry {
  method: string;
  /** Path and query as requested, e.g. `/v2/e2e/app/blobs/sha256:…`. */
  uri: string;
  status: number;
  userAgent: string;
}

const ACCESS_LINE = /^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) \S+ "[^"]*" "([^"]*)"/;

/** Parse one access-log line, or undefined when the line is something else. */
export function parseAccessLine(line: string): AccessLogEntry | undefined {
  const m = ACCESS_LINE.exec(line);
  return m ? { method: m[1], uri: m[2], status: Number(m[3]), userAgent: m[4] } : undefined;
}

/**
 * Waits until every request the registry answered before this call is in `reg.accessLog()`:
 * sends a marker request (`GET /v2/?ocicache-sync=<n>`) and waits (bounded) for its line.
 * The marker lines stay in the log; filter them with `isSyncMarker`.
 */
export async function syncAccessLog(reg: RealRegistry, timeoutMs = 5000): Promise<void> {
  const marker = `ocicache-sync=${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const res = await fetch(`${reg.url}/v2/?${marker}`, { signal: AbortSignal.timeout(timeoutMs) });
  await res.body?.cancel();
  const deadline = Date.now() + timeoutMs;
  while (!reg.accessLog().some((e) => e.uri.endsWith(marker))) {
    if (Date.now() > deadline) throw new Error(`docker-registry access log: marker ${marker} not seen within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** True for the marker requests {@link syncAccessLog} sends. */
export function isSyncMarker(e: AccessLogEntry): boolean {
  return e.uri.includes("ocicache-sync=");
}

/** Binaries an e2e test may need. */
export type E2ETool = "docker-registry" | "skopeo" | "ctr" | "containerd";

/** Debian package that provides each tool. */
export const APT_PACKAGE: Record<E2ETool, string> = {
  "docker-registry": "docker-registry",
  skopeo: "skopeo",
  ctr: "containerd",
  containerd: "containerd",
};

/** Full path of `name` if an executable of that name is on PATH, else undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Which e2e binaries are on PATH. */
export function e2eTools(): { dockerRegistry: boolean; skopeo: boolean; ctr: boolean; containerd: boolean } {
  return {
    dockerRegistry: which("docker-registry") !== undefined,
    skopeo: which("skopeo") !== undefined,
    ctr: which("ctr") !== undefined,
    containerd: which("containerd") !== undefined,
  };
}

/**
 * Checks that every tool is on PATH. Returns true when all are present.
 * When one is missing: with env OCICACHE_E2E_REQUIRED=1 throws (the test fails),
 * otherwise prints a loud "SKIPPED: …" notice to stderr, calls `t.skip(msg)` if `t`
 * has one, and returns false — the caller must then `return` (t.skip does not stop
 * the test body; Bun reports the test as skipped, Deno's node:test reports it as ok).
 *
 * Usage: `test("x", async (t) => { if (!requireOrSkip(t, ["skopeo"])) return; ... })`.
 * `t` may be undefined (e.g. from a `before` hook).
 */
export function requireOrSkip(t: { skip?: (message?: string) => void } | undefined, tools: E2ETool[]): boolean {
  const missing = tools.filter((tool) => which(tool) === undefined);
  if (missing.length === 0) return true;
  const pkgs = [...new Set(missing.map((m) => APT_PACKAGE[m] ?? m))].join(" ");
  const msg = `${missing.join(", ")} not installed; apt-get install ${pkgs}`;
  if (process.env.OCICACHE_E2E_REQUIRED === "1") {
    throw new Error(`OCICACHE_E2E_REQUIRED=1 but ${msg}`);
  }
  console.error(`\n*** SKIPPED: ${msg} (set OCICACHE_E2E_REQUIRED=1 to fail instead) ***\n`);
  t?.skip?.(msg);
  return false;
}

/** A free TCP port on 127.0.0.1 (bound then released; a small race is possible). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error("no port"))));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function configYaml(root: string, port: number, proxy?: string, accessLog = false): string {
  return [
    "version: 0.1",
    "log:",
    "  level: warn",
    "  accesslog:",
    `    disabled: ${!accessLog}`,
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${JSON.stringify(root)}`,
    "  delete:",
    "    enabled: true",
    "  cache:",
    "    blobdescriptor: inmemory",
    "http:",
    `  addr: 127.0.0.1:${port}`,
    "  secret: ocicache-test-secret",
    ...(proxy ? ["proxy:", `  remoteurl: ${JSON.stringify(proxy)}`] : []),
    "",
  ].join("\n");
}

async function tryStart(proxy: string | undefined, readyMs: number, accessLog = false): Promise<RealRegistry | "port-in-use"> {
  const tmp = await mkdtemp(join(tmpdir(), "ocicache-registry-"));
  const rootDir = join(tmp, "storage");
  await mkdir(rootDir);
  const port = await freePort();
  const configPath = join(tmp, "config.yml");
  await writeFile(configPath, configYaml(rootDir, port, proxy, accessLog));
  const child = spawn("docker-registry", ["serve", configPath], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const onData = (b: Buffer) => {
    log = (log + b.toString()).slice(-65536);
  };
  const access: AccessLogEntry[] = [];
  let partial = "";
  child.stdout!.on("data", (b: Buffer) => {
    onData(b);
    if (!accessLog) return;
    const lines = (partial + b.toString()).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      const e = parseAccessLine(line);
      if (e) access.push(e);
    }
  });
  child.stderr!.on("data", onData);
  let spawnError: Error | undefined;
  child.once("error", (e) => (spawnError = e));

  let stopped = false;
  const stop = async () => {
    if (!stopped) {
      stopped = true;
      if (!spawnError) await terminate(child, 5000);
      child.stdout?.destroy();
      child.stderr?.destroy();
    }
    await rm(tmp, { recursive: true, force: true });
  };

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + readyMs;
  while (Date.now() < deadline) {
    if (spawnError || child.exitCode !== null || child.signalCode !== null) break;
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200) {
        return { url, hostPort: `127.0.0.1:${port}`, rootDir, logs: () => log, accessLog: () => [...access], stop };
      }
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  await stop();
  if (/address already in use/i.test(log)) return "port-in-use";
  const why = spawnError
    ? `could not be started: ${spawnError.message}`
    : child.exitCode !== null || child.signalCode !== null
    ? `exited early (code ${child.exitCode}, signal ${child.signalCode})`
    : `did not answer 200 on ${url}/v2/ within ${readyMs} ms`;
  throw new Error(`docker-registry ${why}\n--- registry output ---\n${log}`);
}

/**
 * Starts `docker-registry serve` on a free 127.0.0.1 port with a temp config and
 * storage (no auth, deletes enabled, log level warn), optionally as a pull-through
 * cache of `proxyRemoteUrl` and with its access log on (`accessLog: true`), and waits until
 * GET /v2/ answers 200.
 * Retries on a port clash; throws with the registry's output if it never gets ready.
 */
export async function startDockerRegistry(opts: StartRegistryOptions = {}): Promise<RealRegistry> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = await tryStart(opts.proxyRemoteUrl, opts.readyTimeoutMs ?? 10000, opts.accessLog);
    if (r !== "port-in-use") return r;
  }
  throw new Error("docker-registry: could not find a free port after 3 attempts");
}
