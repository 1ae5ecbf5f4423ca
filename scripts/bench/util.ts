/**
 * Small helpers for the benchmark: statistics, formatting, timeouts, cleanup bookkeeping and
 * running short commands. node: built-ins only, so the bench runs under Deno (and Bun).
 * @module
 */
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import process from "node:process";

export const MiB = 1024 * 1024;

export const sleep = (ms: number) =>
  new Promise<void>((r) => setTimeout(r, ms));

/** Median of a non-empty list (mean of the middle two for even lengths). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Nearest-rank percentile (p in 0..100) of an ascending-sorted list. */
export function percentileSorted(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** `n` with `digits` decimals, or "–" for NaN/undefined. */
export function fmt(n: number | undefined | null, digits = 0): string {
  if (n === undefined || n === null || !Number.isFinite(n)) return "–";
  return n.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** A ratio `a/b` as "1.23×", or "–". */
export function ratio(a: number | undefined, b: number | undefined): string {
  if (
    a === undefined || b === undefined || !Number.isFinite(a) ||
    !Number.isFinite(b) || b === 0
  ) return "–";
  return `${(a / b).toFixed(2)}×`;
}

/** Reject with a clear message when `p` takes longer than `ms`. */
export function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: timed out after ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Wait until `check()` is truthy, polling every `everyMs`; throws after `ms`. */
export async function waitFor<T>(
  check: () => Promise<T | undefined | null | false>,
  ms: number,
  what: string,
  everyMs = 25,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`${what}: not reached within ${ms} ms`);
    }
    await sleep(everyMs);
  }
}

/** LIFO list of cleanup actions; each runs once, errors are reported, never thrown. */
export class Cleanup {
  #fns: { label: string; fn: () => Promise<void> | void }[] = [];
  add(label: string, fn: () => Promise<void> | void): void {
    this.#fns.push({ label, fn });
  }
  async run(): Promise<void> {
    while (this.#fns.length) {
      const { label, fn } = this.#fns.pop()!;
      try {
        await withTimeout(
          Promise.resolve().then(fn),
          20_000,
          `cleanup ${label}`,
        );
      } catch (e) {
        console.error(
          `bench: cleanup of ${label} failed: ${(e as Error).message}`,
        );
      }
    }
  }
}

/** Full path of an executable on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Run a short command; resolves with exit code and output (code 127 when it cannot start). */
export function runCmd(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; cwd?: string; inherit?: boolean } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    let stdout = "";
    let stderr = "";
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      stdio: [
        "ignore",
        opts.inherit ? "inherit" : "pipe",
        opts.inherit ? "inherit" : "pipe",
      ],
    });
    child.stdout?.on("data", (b) => (stdout += b));
    child.stderr?.on("data", (b) => (stderr += b));
    const timer = setTimeout(
      () => child.kill("SIGKILL"),
      opts.timeoutMs ?? 60_000,
    );
    child.once("error", (e) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: stderr + String(e) });
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}
