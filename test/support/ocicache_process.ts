/**
 * Runs ocicache as a real child process for end-to-end tests: the compiled binary named by env
 * OCICACHE_BIN, or else the source (`src/main.ts`) on the runtime running the tests (Deno or
 * Bun). Only node: built-ins and fetch, so it works under `deno test` and `bun test`.
 *
 * ```ts
 * const oc = await startOcicache(["--registry", `local=${upstream.url}`, "--default-registry", "local"]);
 * try {
 *   // … skopeo copy docker://${oc.hostPort}/local/app:1 dir:/tmp/x --src-tls-verify=false
 *   await oc.sync();                       // every request answered so far is in the log now
 *   countByCache(oc.logLines(), { kind: "blob" }); // e.g. { miss: 3 } — then { hit: 3 }
 * } finally {
 *   await oc.stop();                       // SIGTERM (SIGKILL after 10 s); removes the temp storage
 * }
 * ```
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { freePort } from "./real_registry.ts";

/** The repository root (this file lives in `test/support/`). */
export const REPO_ROOT: string = fileURLToPath(new URL("../../", import.meta.url));

/** One JSON log line of ocicache (`{"time","level","msg",…}`). */
export interface LogLine {
  time?: string;
  level?: string;
  msg?: string;
  [field: string]: unknown;
}

/** The per-request log line the HTTP layer writes (`msg: "request"`). */
export interface RequestLine extends LogLine {
  msg: "request";
  id: string;
  method: string;
  path: string;
  status: number;
  bytes: number;
  ms: number;
  /** hit | miss | stale | coalesced | revalidated | pass | none */
  cache: string;
  registry?: string;
}

/** A running ocicache process. */
export interface OcicacheProcess {
  /** `http://127.0.0.1:PORT` (no trailing slash). */
  url: string;
  /** `127.0.0.1:PORT`, the form skopeo wants in `docker://HOST/REPO:TAG`. */
  hostPort: string;
  port: number;
  /** The storage folder (a temp dir unless `--storage` was among the args). */
  storage: string;
  pid: number;
  /** Everything written to stderr so far (the JSON log lines, plus any runtime noise). */
  logs(): string;
  /** Everything written to stdout so far. */
  stdout(): string;
  /** The stderr lines that parse as JSON objects, in order. */
  logLines(): LogLine[];
  /**
   * Waits until every request answered before this call has its log line in `logLines()`: sends
   * `GET /v2/` with `x-request-id: ocicache-sync-…` and waits (bounded) for that request's line.
   * The marker lines are left out by {@link requestLines} / {@link countByCache}.
   */
  sync(timeoutMs?: number): Promise<void>;
  /** Whether the process has exited. */
  exited(): boolean;
  /**
   * Sends `signal`, sends SIGKILL after 10 s if still running, waits for the exit and resolves to
   * the exit code (null when ended by a signal). Then removes the storage if this helper created
   * it (unless `keepStorage`). Idempotent: later calls resolve to the same code.
   */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** SIGKILL (a crash) and wait for the exit. Keeps the storage; call stop() later to clean up. */
  kill9(): Promise<void>;
}

/** Options for {@link startOcicache}. */
export interface StartOcicacheOptions {
  /** Extra environment variables (on top of this process's environment minus its OCICACHE_* variables). */
  env?: Record<string, string>;
  /** Keep a temp storage this helper created when stop() is called (e.g. to restart on it). */
  keepStorage?: boolean;
  /** Readiness bound in ms (default 15000). */
  readyTimeoutMs?: number;
}

const KILL_AFTER_MS = 10_000;
const MAX_OUTPUT = 32 * 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The command that runs ocicache: OCICACHE_BIN, or the source on the current runtime. */
export function ocicacheCommand(): { cmd: string; args: string[] } {
  const bin = process.env.OCICACHE_BIN;
  // A relative path is taken from the test's working directory (the child runs in the repo root).
  if (bin) return { cmd: bin.includes("/") ? resolve(bin) : bin, args: [] };
  const main = join(REPO_ROOT, "src", "main.ts");
  // process.execPath is the deno / bun executable running these tests.
  if ("Deno" in globalThis) return { cmd: process.execPath, args: ["run", "-A", main] };
  return { cmd: process.execPath, args: [main] };
}

function hasFlag(args: string[], flag: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) return args[i + 1];
    if (args[i].startsWith(flag + "=")) return args[i].slice(flag.length + 1);
  }
  return undefined;
}

function parseLines(text: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of text.split("\n")) {
    const s = line.trim();
    if (!s.startsWith("{")) continue;
    try {
      const v = JSON.parse(s);
      if (v && typeof v === "object" && !Array.isArray(v)) out.push(v);
    } catch {
      // not a log line (e.g. a partial line still being written)
    }
  }
  return out;
}

interface Attempt {
  child: ChildProcess;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  closed: Promise<void>;
  stderr: () => string;
  stdout: () => string;
  spawnError: () => Error | undefined;
}

function launch(cmd: string, args: string[], env: Record<string, string>): Attempt {
  // Hermetic: OCICACHE_* settings of the calling shell (log level, registries, …) are not
  // inherited; pass them in `env` when a test wants them.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("OCICACHE_")));
  const child = spawn(cmd, args, {
    cwd: REPO_ROOT,
    env: { ...inherited, NO_COLOR: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  let stdout = "";
  let spawnError: Error | undefined;
  child.stderr!.on("data", (b: Buffer) => {
    if (stderr.length < MAX_OUTPUT) stderr += b.toString();
  });
  child.stdout!.on("data", (b: Buffer) => {
    if (stdout.length < MAX_OUTPUT) stdout += b.toString();
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    child.once("error", (e) => {
      spawnError = e;
      resolve({ code: null, signal: null });
    });
  });
  const closed = new Promise<void>((resolve) => {
    child.once("close", () => resolve());
    child.once("error", () => resolve());
  });
  return { child, exit, closed, stderr: () => stderr, stdout: () => stdout, spawnError: () => spawnError };
}

/**
 * Sends a signal by pid. (Deno 2.9's `ChildProcess.kill()` makes the child's exit read as
 * `code null, signal SIGTERM` even when it handled the signal and exited 0; `process.kill` does
 * not, in both runtimes.)
 */
function sendSignal(a: Attempt, sig: NodeJS.Signals): void {
  if (!isRunning(a) || a.child.pid === undefined) return;
  try {
    process.kill(a.child.pid, sig);
  } catch {
    // already gone
  }
}

function isRunning(a: Attempt): boolean {
  return !a.spawnError() && a.child.exitCode === null && a.child.signalCode === null;
}

/** Waits for the exit, then (bounded) for stdout/stderr to be fully read. */
async function waitExit(a: Attempt): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const r = await a.exit;
  await Promise.race([a.closed, sleep(2000)]);
  return r;
}

/**
 * Starts `ocicache serve --listen 127.0.0.1:<free port> --storage <temp dir> ...args` (either of
 * the two flags is left out when `args` has it) and waits, at most 15 s, until `GET /v2/` answers
 * 200. Throws with the process's output if it exits early or never gets ready (and retries on a
 * port clash when it picked the port itself).
 */
export async function startOcicache(args: string[] = [], opts: StartOcicacheOptions = {}): Promise<OcicacheProcess> {
  const { cmd, args: base } = ocicacheCommand();
  const givenListen = hasFlag(args, "--listen");
  const givenStorage = hasFlag(args, "--storage");
  const ownStorage = givenStorage === undefined ? await mkdtemp(join(tmpdir(), "ocicache-e2e-")) : undefined;
  const storage = givenStorage ?? ownStorage!;
  const readyMs = opts.readyTimeoutMs ?? 15_000;
  const cleanup = async () => {
    if (ownStorage && !opts.keepStorage) await rm(ownStorage, { recursive: true, force: true });
  };

  for (let attempt = 1; ; attempt++) {
    let listen = givenListen;
    if (listen === undefined) listen = `127.0.0.1:${await freePort()}`;
    const port = Number(/:(\d+)$/.exec(listen)?.[1]);
    const host = /^\[?([^\]]*?)\]?:\d+$/.exec(listen)?.[1] || "127.0.0.1";
    const connectHost = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "::" ? "[::1]" : host.includes(":") ? `[${host}]` : host;
    const fullArgs = [
      ...base,
      "serve",
      ...(givenListen === undefined ? ["--listen", listen] : []),
      ...(givenStorage === undefined ? ["--storage", storage] : []),
      ...args,
    ];
    const a = launch(cmd, fullArgs, opts.env ?? {});
    const url = `http://${connectHost}:${port}`;
    const deadline = Date.now() + readyMs;
    let ready = false;
    while (Date.now() < deadline && isRunning(a)) {
      try {
        const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
        await res.body?.cancel();
        if (res.status === 200) {
          ready = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    if (!ready) {
      const running = isRunning(a);
      if (running) sendSignal(a, "SIGKILL");
      const { code, signal } = await waitExit(a);
      const output = `--- command ---\n${cmd} ${fullArgs.join(" ")}\n--- stderr ---\n${a.stderr()}\n--- stdout ---\n${a.stdout()}`;
      if (!running && givenListen === undefined && attempt < 3 && /address (already )?in use|EADDRINUSE|is port \d+ in use/i.test(a.stderr())) continue;
      await cleanup();
      const why = a.spawnError()
        ? `could not be started: ${a.spawnError()!.message}`
        : running
        ? `did not answer 200 on ${url}/v2/ within ${readyMs} ms`
        : `exited early (code ${code}, signal ${signal})`;
      throw new Error(`ocicache ${why}\n${output}`);
    }
    return wrap(a, url, port, storage, cleanup);
  }
}

function wrap(a: Attempt, url: string, port: number, storage: string, cleanup: () => Promise<void>): OcicacheProcess {
  let parsed: { upTo: number; lines: LogLine[] } = { upTo: 0, lines: [] };
  const logLines = () => {
    const text = a.stderr();
    const end = text.lastIndexOf("\n") + 1; // only complete lines
    if (end > parsed.upTo) parsed = { upTo: end, lines: [...parsed.lines, ...parseLines(text.slice(parsed.upTo, end))] };
    return [...parsed.lines];
  };
  let stopping: Promise<number | null> | undefined;
  let syncs = 0;
  return {
    url,
    hostPort: url.slice("http://".length),
    port,
    storage,
    pid: a.child.pid ?? -1,
    logs: a.stderr,
    stdout: a.stdout,
    logLines,
    exited: () => !isRunning(a),
    async sync(timeoutMs = 5000) {
      const id = `ocicache-sync-${process.pid}-${++syncs}-${Date.now()}`;
      const res = await fetch(`${url}/v2/`, { headers: { "x-request-id": id }, signal: AbortSignal.timeout(timeoutMs) });
      await res.body?.cancel();
      const deadline = Date.now() + timeoutMs;
      while (!logLines().some((l) => l.msg === "request" && l.id === id)) {
        if (Date.now() > deadline) throw new Error(`ocicache: request log line for ${id} not seen within ${timeoutMs} ms`);
        await sleep(10);
      }
    },
    stop(sig: NodeJS.Signals = "SIGTERM") {
      stopping ??= (async () => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        if (isRunning(a)) {
          sendSignal(a, sig);
          timer = setTimeout(() => sendSignal(a, "SIGKILL"), KILL_AFTER_MS);
        }
        const { code } = await waitExit(a);
        clearTimeout(timer);
        await cleanup();
        return code;
      })();
      return stopping;
    },
    async kill9() {
      sendSignal(a, "SIGKILL");
      await waitExit(a);
    },
  };
}

/** What a request path asks for: `blob`, `manifest`, `tags`, `base` or `other`. */
export function requestKind(path: string): "blob" | "manifest" | "tags" | "base" | "other" {
  if (path === "/v2/" || path === "/v2") return "base";
  if (/\/blobs\/[^/]+$/.test(path)) return "blob";
  if (/\/manifests\/[^/]+$/.test(path)) return "manifest";
  if (/\/tags\/list$/.test(path)) return "tags";
  return "other";
}

/** Filter for {@link requestLines} and {@link countByCache}. */
export interface RequestFilter {
  kind?: "blob" | "manifest" | "tags" | "base" | "other";
  method?: string;
  /** Substring of the request path, e.g. `/local/e2e/app/`. */
  pathIncludes?: string;
}

/** The request log lines (msg "request"), minus {@link OcicacheProcess.sync} markers, filtered. */
export function requestLines(lines: LogLine[], filter: RequestFilter = {}): RequestLine[] {
  return lines.filter((l): l is RequestLine =>
    l.msg === "request" &&
    typeof l.path === "string" &&
    !(typeof l.id === "string" && l.id.startsWith("ocicache-sync-")) &&
    (filter.kind === undefined || requestKind(l.path) === filter.kind) &&
    (filter.method === undefined || l.method === filter.method) &&
    (filter.pathIncludes === undefined || l.path.includes(filter.pathIncludes))
  );
}

/**
 * Counts request log lines by their cache result, e.g. `{ hit: 5, miss: 2 }` (only results that
 * occur are keys). Pass `oc.logLines().slice(mark)` to count what happened after a mark.
 */
export function countByCache(lines: LogLine[], filter: RequestFilter = {}): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const l of requestLines(lines, filter)) counts[l.cache] = (counts[l.cache] ?? 0) + 1;
  return counts;
}
