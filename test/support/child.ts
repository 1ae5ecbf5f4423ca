/**
 * Child processes for tests and benchmarks: wait for an exit, stop politely then firmly, and run
 * a command to completion within a bound.
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";

/** Resolves when the child has exited (or could not be started: no exit event follows ENOENT). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => {
    child.once("exit", () => r());
    child.once("error", () => r());
  });
}

/** SIGTERM, then SIGKILL after `killAfterMs` if still running; resolves once it has exited. */
export async function terminate(child: ChildProcess, killAfterMs: number): Promise<void> {
  const running = () => child.exitCode === null && child.signalCode === null && child.pid !== undefined;
  if (!running()) return;
  const done = exited(child);
  child.kill("SIGTERM");
  const timer = setTimeout(() => running() && child.kill("SIGKILL"), killAfterMs);
  await done;
  clearTimeout(timer);
}

/** What {@link runBounded} came to. `code` is -1 when the command could not run or was killed. */
export interface BoundedResult {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** Run `cmd args…` to completion, SIGKILLed after `timeoutMs`. Never throws. */
export function runBounded(cmd: string, args: string[], timeoutMs: number): Promise<BoundedResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout!.on("data", (b: Uint8Array) => (stdout += new TextDecoder().decode(b)));
    child.stderr!.on("data", (b: Uint8Array) => (stderr += new TextDecoder().decode(b)));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    let done = false;
    const finish = (code: number, extra = "") => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ code, stdout, stderr: stderr + extra, timedOut, ms: Date.now() - started });
    };
    child.once("error", (e) => finish(-1, String(e)));
    child.once("close", (code) => finish(code ?? -1));
  });
}
