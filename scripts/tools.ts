/**
 * Shared helpers for the build scripts. Uses only `node:` built-ins so the
 * same file runs under Deno (`scripts/build.ts`) and Bun (`scripts/bun_build.ts`).
 *
 * Tools that the repo installs for itself (bun from npm, extracted native
 * packages) live under `<repo>/.tools/`, which is git-ignored.
 */
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  writeFileSync,
} from "node:fs";
import { delimiter, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The bun release the project builds with; any 1.4.x on PATH is accepted. */
export const BUN_VERSION = "1.4.5";

/** The flags of scripts/build.ts, which passes them on to scripts/bun_build.ts. */
export const BUILD_OPTIONS = {
  entry: { type: "string" },
  outfile: { type: "string" },
  all: { type: "boolean", default: false },
  "no-minify": { type: "boolean", default: false },
} as const;

/**
 * Worker entry points (relative to the repository root) that the compiled binary must carry next
 * to `src/main.ts`: the code loads them with `new Worker(new URL(…, import.meta.url))`.
 */
export const WORKER_ENTRIES = ["src/store/blake3_worker.ts"];

/**
 * Absolute path of the repository root (the parent of `scripts/`), derived
 * from this module's `import.meta.url`, so it does not depend on the cwd.
 */
export function repoRoot(): string {
  return resolve(fileURLToPath(new URL(".", import.meta.url)), "..");
}

/** Absolute path of `<repo>/.tools`, where the build keeps what it installs. */
export function toolsDir(): string {
  return join(repoRoot(), ".tools");
}

/** Options for {@link run}. */
export interface RunOptions {
  /** Working directory (default: the current one). */
  cwd?: string;
  /** Extra variables merged over `process.env` (a value of `undefined` removes one). */
  env?: Record<string, string | undefined>;
  /** Stream the child's stdout/stderr to ours instead of capturing them. */
  inherit?: boolean;
}

/** Result of {@link run}: the exit code (signal or spawn failure give non-zero) and captured output. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd args…` and waits for it. Never throws for a failing or missing
 * command: a spawn error (e.g. ENOENT) comes back as `code` 127 with the
 * message in `stderr`; death by signal comes back as 128 + signal number
 * (or 1 when unknown). With `inherit` the output goes straight to this
 * process's stdout/stderr and the returned strings are empty.
 */
export function run(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  return new Promise((done) => {
    const env: Record<string, string> = {};
    for (
      const [k, v] of Object.entries({ ...process.env, ...(opts.env ?? {}) })
    ) {
      if (v !== undefined) env[k] = v;
    }
    let child;
    try {
      child = spawn(cmd, args, {
        cwd: opts.cwd,
        env,
        stdio: opts.inherit
          ? ["ignore", "inherit", "inherit"]
          : ["ignore", "pipe", "pipe"],
      });
    } catch (e) {
      done({
        code: 127,
        stdout: "",
        stderr: `${cmd}: ${(e as Error).message}`,
      });
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on("data", (b: Buffer) => out.push(b));
    child.stderr?.on("data", (b: Buffer) => err.push(b));
    let settled = false;
    child.on("error", (e: Error) => {
      if (settled) return;
      settled = true;
      done({ code: 127, stdout: "", stderr: `${cmd}: ${e.message}` });
    });
    child.on("close", (code: number | null, signal: string | null) => {
      if (settled) return;
      settled = true;
      const sigCodes: Record<string, number> = {
        SIGHUP: 1,
        SIGINT: 2,
        SIGKILL: 9,
        SIGTERM: 15,
      };
      done({
        code: code ?? (signal ? 128 + (sigCodes[signal] ?? 0) : 1),
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

/**
 * Searches `PATH` for an executable file named `name` and returns its
 * absolute path, or `null` when there is none.
 */
export function which(name: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const p = resolve(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

/** Returns the trimmed `--version` output of `bin` when it is bun 1.4.x, else `null`. */
async function bun14Version(bin: string): Promise<string | null> {
  const r = await run(bin, ["--version"]);
  const v = r.stdout.trim();
  return r.code === 0 && /^1\.4\.\d+/.test(v) ? v : null;
}

/**
 * Returns a path to a bun 1.4.x executable:
 *  1. `bun` found on PATH, when its `--version` is 1.4.x;
 *  2. else `<repo>/.tools/node_modules/.bin/bun`, when present and 1.4.x;
 *  3. else installs `bun@1.4.5` from npm into `<repo>/.tools` (one line on
 *     stderr says so) and returns that path.
 *
 * npm 11 rejects `--allow-scripts` on a project-scoped install (EALLOWSCRIPTS),
 * so bun's postinstall (which puts the native binary in place) is approved
 * through an `allowScripts` field in `.tools/package.json` instead. Throws
 * when the install fails or the result does not report 1.4.x.
 */
export async function findBun(): Promise<string> {
  const onPath = which("bun");
  if (onPath && (await bun14Version(onPath))) return onPath;

  const tools = toolsDir();
  const local = join(tools, "node_modules", ".bin", "bun");
  if (existsSync(local) && (await bun14Version(local))) return local;

  console.error(`tools: installing bun@${BUN_VERSION} from npm into ${tools}`);
  mkdirSync(tools, { recursive: true });
  writeFileSync(
    join(tools, "package.json"),
    JSON.stringify({ private: true, allowScripts: { bun: true } }, null, 2) +
      "\n",
  );
  const r = await run("npm", [
    "install",
    "--prefix",
    tools,
    "--no-save",
    "--no-audit",
    "--no-fund",
    `bun@${BUN_VERSION}`,
  ]);
  if (r.code !== 0) {
    throw new Error(
      `npm install bun@${BUN_VERSION} failed (exit ${r.code}): ${
        npmError(r.stderr)
      }`,
    );
  }
  const v = await bun14Version(local);
  if (!v) throw new Error(`installed ${local} does not report bun 1.4.x`);
  return local;
}

/**
 * Fetches `name@version` from npm with `npm pack` (no platform checks, no
 * install scripts, nothing else in `.tools` touched) and unpacks it into
 * `<repo>/.tools/npm/<name>@<version>/`; returns that package directory.
 * Reuses an earlier extraction. Used for native packages of another CPU.
 */
export async function fetchNpmPackage(
  name: string,
  version: string,
): Promise<string> {
  const dest = join(toolsDir(), "npm", `${name}@${version}`);
  if (existsSync(join(dest, "package.json"))) return dest;
  const tmp = join(toolsDir(), "npm", ".pack");
  mkdirSync(tmp, { recursive: true });
  const p = await run("npm", [
    "pack",
    "--loglevel=error",
    "--pack-destination",
    tmp,
    `${name}@${version}`,
  ]);
  if (p.code !== 0) {
    throw new Error(
      `npm pack ${name}@${version} failed: ${npmError(p.stderr)}`,
    );
  }
  const tgz = join(tmp, p.stdout.trim().split("\n").pop()!.trim());
  mkdirSync(dest, { recursive: true });
  const t = await run("tar", ["-xzf", tgz, "-C", dest, "--strip-components=1"]);
  if (t.code !== 0) {
    throw new Error(`tar -xzf ${tgz} failed: ${lastLine(t.stderr)}`);
  }
  return dest;
}

/**
 * One-line summary of npm's stderr: `code: message`, e.g. `ECONNREFUSED:
 * FetchError: request to … failed` or `ETARGET: notarget No matching version…`.
 */
export function npmError(stderr: string): string {
  const lines = stderr.split("\n")
    .filter((l) => l.startsWith("npm error "))
    .map((l) => l.slice("npm error ".length).trim());
  const code = lines.find((l) => l.startsWith("code "))?.slice(5);
  const msg = lines.find((l) =>
    l && !/^(code|syscall|errno|at) /.test(l) &&
    !l.startsWith("A complete log") && !/^[{}]/.test(l)
  );
  const out = [code, msg].filter(Boolean).join(": ");
  return out || lastLine(stderr);
}

/** Last non-empty line of `s` (for one-line error messages). */
export function lastLine(s: string): string {
  const lines = s.split("\n").map((l) => l.trim()).filter(Boolean);
  return lines.at(-1) ?? "";
}

/** Human-readable size, e.g. `109.4 MB` (10^6 bytes) with the exact byte count. */
export function formatSize(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB (${bytes} bytes)`;
}
