/**
 * A private containerd (1.6.x, Debian's `containerd` package) for end-to-end tests, plus `ctr`
 * helpers with bounded timeouts. Only node: built-ins, so it runs under `deno test` and `bun test`.
 *
 * The daemon gets its own config (`version = 2`), its own `root` / `state` directories and gRPC
 * socket inside one temp dir, and the CRI plugin disabled, so it never touches a system
 * containerd. containerd needs root (overlayfs mounts, chown of snapshots).
 *
 * ```ts
 * if (!requireContainerdOrSkip(t)) return;
 * const cd = await startContainerd();
 * try {
 *   await writeHostsToml(cd.hostsDir, "127.0.0.1:5000", { server: "http://127.0.0.1:5000", mirrors: [...] });
 *   const r = await ctrPull(cd.address, "127.0.0.1:5000/app:1", { hostsDir: cd.hostsDir, plainHttp: true });
 * } finally {
 *   await cd.stop(); // kills the daemon, unmounts whatever is left under root, removes the temp dir
 * }
 * ```
 *
 * Observed with containerd 1.6.20 (`ctr` 1.6.20): in 1.6 `ctr images pull` resolves and fetches
 * in the ctr process itself (the daemon only stores content and unpacks), so `--hosts-dir` and
 * `--plain-http` are ctr flags; the CRI-only `[plugins."io.containerd.grpc.v1.cri".registry]
 * config_path` setting plays no part. hosts.toml lookup for a reference host `H` is
 * `<hosts dir>/H/hosts.toml` (with the port: `127.0.0.1:5000/hosts.toml`), then `_default`.
 * @module
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { type BoundedResult, runBounded, terminate } from "./child.ts";
import { requireOrSkip } from "./real_registry.ts";

/** A running private containerd. */
export interface Containerd {
  /** The gRPC unix socket (pass as `ctr --address`). */
  address: string;
  /** containerd's `root` (content store, snapshots, metadata). */
  root: string;
  /** containerd's `state` directory. */
  state: string;
  /** The temp dir holding config.toml, root, state, socket and hosts dir. */
  configDir: string;
  /** An empty directory for hosts.toml files (`<hostsDir>/<host[:port]>/hosts.toml`). */
  hostsDir: string;
  /** The daemon's pid. */
  pid: number;
  /** The last ~64 KiB of the daemon's stdout+stderr. */
  logs(): string;
  /**
   * Kills the daemon (SIGTERM, SIGKILL after 5 s), waits for it, unmounts every mount left
   * under its root and state (lazily if busy), removes the temp dir. Idempotent.
   */
  stop(): Promise<void>;
}

/** Outcome of one `ctr` run. `code` is -1 when killed (timeout) or not startable. */
export type CtrResult = BoundedResult;

/** Options for {@link startContainerd}. */
export interface StartContainerdOptions {
  /** Readiness bound in ms (default 15000). */
  readyTimeoutMs?: number;
  /** containerd's log level (default "warn"). */
  logLevel?: string;
}

const KILL_AFTER_MS = 5000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** True when this process runs as root (containerd needs it). */
export function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

/**
 * Checks that `containerd` and `ctr` are installed and that we are root. Returns true when all
 * holds. Otherwise: with OCICACHE_E2E_REQUIRED=1 throws; else prints a loud SKIPPED notice,
 * calls `t.skip(msg)` and returns false (the caller must `return`).
 */
export function requireContainerdOrSkip(t: { skip?: (message?: string) => void } | undefined): boolean {
  if (!requireOrSkip(t, ["containerd", "ctr"])) return false;
  if (isRoot()) return true;
  const msg = "containerd needs root (overlayfs mounts, own root/state dirs); run the e2e tests as root";
  if (process.env.OCICACHE_E2E_REQUIRED === "1") throw new Error(`OCICACHE_E2E_REQUIRED=1 but ${msg}`);
  console.error(`\n*** SKIPPED: ${msg} (set OCICACHE_E2E_REQUIRED=1 to fail instead) ***\n`);
  t?.skip?.(msg);
  return false;
}

/** Runs `ctr --address ADDRESS ...args`, killed after `timeoutMs` (default 60000). Never throws. */
export function ctr(address: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<CtrResult> {
  return runBounded("ctr", ["--address", address, ...args], opts.timeoutMs ?? 60_000);
}

/** Options for {@link ctrPull}. */
export interface CtrPullOptions {
  /** `--hosts-dir`: where ctr looks for `<host>/hosts.toml`. */
  hostsDir?: string;
  /** `--plain-http`: talk http to hosts without a scheme (the reference's own host). */
  plainHttp?: boolean;
  /** `--platform`, e.g. "linux/amd64" (default: the host platform). */
  platform?: string;
  /** `--all-platforms`. */
  all?: boolean;
  /** `--http-dump`: ctr prints every request and response header to stderr. */
  httpDump?: boolean;
  /** Kill ctr after this many ms (default 60000). */
  timeoutMs?: number;
}

/** `ctr images pull [--plain-http] [--hosts-dir D] [--platform P | --all-platforms] REF`, bounded. */
export function ctrPull(address: string, ref: string, opts: CtrPullOptions = {}): Promise<CtrResult> {
  const args = ["images", "pull"];
  if (opts.plainHttp) args.push("--plain-http");
  if (opts.hostsDir) args.push("--hosts-dir", opts.hostsDir);
  if (opts.platform) args.push("--platform", opts.platform);
  if (opts.all) args.push("--all-platforms");
  if (opts.httpDump) args.push("--http-dump");
  args.push(ref);
  return ctr(address, args, { timeoutMs: opts.timeoutMs });
}

/** One `[host."URL"]` entry of a hosts.toml. */
export interface HostsTomlMirror {
  /** Full URL with scheme, optionally with a path (`http://cache:5000/v2/local`). */
  url: string;
  /** Default ["pull", "resolve"]. */
  capabilities?: string[];
  /** `override_path = true`: the URL's path is the API root (no `/v2` appended). */
  overridePath?: boolean;
}

/** Text of a hosts.toml: `server = …` plus one `[host."…"]` table per mirror, in order. */
export function hostsToml(server: string, mirrors: HostsTomlMirror[]): string {
  const lines = [`server = ${JSON.stringify(server)}`, ""];
  for (const m of mirrors) {
    lines.push(`[host.${JSON.stringify(m.url)}]`);
    lines.push(`  capabilities = [${(m.capabilities ?? ["pull", "resolve"]).map((c) => JSON.stringify(c)).join(", ")}]`);
    if (m.overridePath) lines.push("  override_path = true");
    lines.push("");
  }
  return lines.join("\n");
}

/**
 * Writes `<hostsDir>/<registryHost>/hosts.toml` (replacing any earlier one) and returns its path
 * and text. `registryHost` is the host of the image reference, with its port (`127.0.0.1:5000`).
 */
export async function writeHostsToml(
  hostsDir: string,
  registryHost: string,
  server: string,
  mirrors: HostsTomlMirror[],
): Promise<{ path: string; text: string }> {
  const dir = join(hostsDir, registryHost);
  await mkdir(dir, { recursive: true });
  const path = join(dir, "hosts.toml");
  const text = hostsToml(server, mirrors);
  await writeFile(path, text);
  return { path, text };
}

function configToml(root: string, state: string, address: string, tmp: string, logLevel: string): string {
  return [
    "version = 2",
    `root = ${JSON.stringify(root)}`,
    `state = ${JSON.stringify(state)}`,
    // Snapshotters that cannot work here only add noise to the log; the CRI plugin would
    // start watching /etc/containerd and want a CNI setup.
    `disabled_plugins = ${
      JSON.stringify([
        "io.containerd.grpc.v1.cri",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
      ])
    }`,
    "",
    "[grpc]",
    `  address = ${JSON.stringify(address)}`,
    "",
    "[ttrpc]",
    `  address = ${JSON.stringify(address + ".ttrpc")}`,
    "",
    "[debug]",
    `  level = ${JSON.stringify(logLevel)}`,
    "",
    "[metrics]",
    '  address = ""',
    "",
    // Keep the opt plugin out of /opt/containerd.
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(join(tmp, "opt"))}`,
    "",
  ].join("\n");
}

/** Mount points at or below one of `dirs`, deepest first (from /proc/self/mountinfo). */
export async function mountsUnder(dirs: string[]): Promise<string[]> {
  let text = "";
  try {
    text = await readFile("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
  const points = new Set<string>();
  for (const line of text.split("\n")) {
    const mp = line.split(" ")[4];
    if (!mp) continue;
    const p = unescape(mp);
    if (dirs.some((d) => p === d || p.startsWith(d + "/"))) points.add(p);
  }
  return [...points].sort((a, b) => b.length - a.length);
}

async function run(cmd: string, args: string[], timeoutMs = 10_000): Promise<{ code: number; out: string }> {
  const r = await runBounded(cmd, args, timeoutMs);
  return { code: r.code, out: r.stdout + r.stderr };
}

/** Unmounts everything at or below `dirs` (deepest first; `umount -R`, then lazy `-l`). */
export async function unmountAllUnder(dirs: string[]): Promise<string[]> {
  const left: string[] = [];
  for (let round = 0; round < 3; round++) {
    const points = await mountsUnder(dirs);
    if (points.length === 0) return [];
    for (const p of points) {
      const r = await run("umount", ["-R", p]);
      if (r.code !== 0) await run("umount", ["-l", p]);
    }
  }
  left.push(...(await mountsUnder(dirs)));
  return left;
}

/**
 * Starts `containerd --config <temp>/config.toml` and waits (at most `readyTimeoutMs`, default
 * 15 s) until `ctr --address <socket> version` answers. Throws with the daemon's output if it
 * exits or never answers (after cleaning up). Needs root: check {@link requireContainerdOrSkip}.
 */
export async function startContainerd(opts: StartContainerdOptions = {}): Promise<Containerd> {
  const configDir = await mkdtemp(join(tmpdir(), "ocicache-containerd-"));
  const root = join(configDir, "root");
  const state = join(configDir, "state");
  const hostsDir = join(configDir, "hosts.d");
  const address = join(configDir, "containerd.sock");
  await Promise.all([root, state, hostsDir].map((d) => mkdir(d, { recursive: true, mode: 0o711 })));
  const configPath = join(configDir, "config.toml");
  await writeFile(configPath, configToml(root, state, address, configDir, opts.logLevel ?? "warn"));

  const child = spawn("containerd", ["--config", configPath], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const onData = (b: Buffer) => {
    log = (log + b.toString()).slice(-65536);
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  let spawnError: Error | undefined;
  child.once("error", (e) => (spawnError = e));
  const running = () => !spawnError && child.exitCode === null && child.signalCode === null;

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      if (running()) await terminate(child, KILL_AFTER_MS);
      const left = await unmountAllUnder([configDir]);
      if (left.length > 0) console.error(`containerd.stop: still mounted, not removing ${configDir}: ${left.join(", ")}`);
      else await rm(configDir, { recursive: true, force: true });
    })();
    return stopping;
  };

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 15_000);
  let last: CtrResult | undefined;
  while (Date.now() < deadline && running()) {
    last = await ctr(address, ["version"], { timeoutMs: 3000 });
    if (last.code === 0 && /Server:/.test(last.stdout)) {
      return { address, root, state, configDir, hostsDir, pid: child.pid ?? -1, logs: () => log, stop };
    }
    await sleep(100);
  }
  const why = spawnError
    ? `could not be started: ${spawnError.message}`
    : running()
    ? `did not answer \`ctr version\` within ${opts.readyTimeoutMs ?? 15_000} ms (last: ${last?.stderr.trim()})`
    : `exited early (code ${child.exitCode}, signal ${child.signalCode})`;
  await stop();
  throw new Error(`containerd ${why}\n--- containerd output ---\n${log}`);
}

/** One row of `ctr images ls`. */
export interface CtrImage {
  ref: string;
  type: string;
  digest: string;
}

/** `ctr images ls` parsed (REF, TYPE, DIGEST columns). Throws when ctr fails. */
export async function ctrImages(address: string): Promise<CtrImage[]> {
  const r = await ctr(address, ["images", "ls"], { timeoutMs: 15_000 });
  if (r.code !== 0) throw new Error(`ctr images ls failed (code ${r.code}):\n${r.stderr}`);
  const out: CtrImage[] = [];
  for (const line of r.stdout.split("\n").slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 3 && cols[2].startsWith("sha256:")) out.push({ ref: cols[0], type: cols[1], digest: cols[2] });
  }
  return out;
}

/** `ctr content ls -q`: the digests in the content store. Throws when ctr fails. */
export async function ctrContent(address: string): Promise<string[]> {
  const r = await ctr(address, ["content", "ls", "-q"], { timeoutMs: 15_000 });
  if (r.code !== 0) throw new Error(`ctr content ls failed (code ${r.code}):\n${r.stderr}`);
  return r.stdout.split("\n").map((s) => s.trim()).filter((s) => s.startsWith("sha256:")).sort();
}

/**
 * Forgets an image completely so the next pull fetches everything again: `ctr images rm --sync`
 * (synchronous garbage collection of its content and snapshots), then `ctr content rm` of any
 * digest still in the store. Returns the digests left (expected: none). Throws when ctr fails.
 */
export async function ctrForget(address: string, ref: string): Promise<string[]> {
  const r = await ctr(address, ["images", "rm", "--sync", ref], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`ctr images rm ${ref} failed (code ${r.code}):\n${r.stderr}`);
  const left = await ctrContent(address);
  if (left.length > 0) {
    const rm = await ctr(address, ["content", "rm", ...left], { timeoutMs: 30_000 });
    if (rm.code !== 0) throw new Error(`ctr content rm failed (code ${rm.code}):\n${rm.stderr}`);
  }
  return ctrContent(address);
}
