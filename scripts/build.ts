/**
 * `deno task build` (= `deno run -A scripts/build.ts`): builds the release
 * binaries into dist/.
 *
 *   deno run -A scripts/build.ts [--entry PATH] [--outfile PATH] [--all] [--no-minify]
 *
 * 1. `deno install` so node_modules/ exists (Bun's bundler reads it).
 * 2. Finds bun 1.4.x (scripts/tools.ts: PATH, else `.tools/`, else npm).
 * 3. Runs scripts/bun_build.ts under bun with the same arguments:
 *    dist/ocicache-linux-x64 (and with --all / OCICACHE_BUILD_ALL=1 also
 *    dist/ocicache-linux-arm64), the libSQL addon embedded.
 * 4. `deno compile` into dist/ocicache-deno-linux-x64 (`<outfile>-deno` with
 *    --outfile), only when a denort is at hand: env DENORT_BIN, or
 *    `denort-<triple>.zip` in `$DENO_DIR/dl/release/v<deno version>/`
 *    (dl.deno.land, where deno compile would fetch it, is not reachable
 *    here). Otherwise one line says it was skipped. Compiled with DENO_NO_PACKAGE_JSON=1 so a stray
 *    package.json cannot pull every node_modules package into the binary.
 *
 * Exits non-zero when the bun build (host arch) fails, or when an attempted
 * deno compile fails.
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { BUILD_OPTIONS, findBun, formatSize, lastLine, repoRoot, run, WORKER_ENTRIES } from "./tools.ts";

const root = repoRoot();

function log(msg: string): void {
  console.error(`build: ${msg}`);
}

/** `p` relative to the repo when under it, else absolute. */
function shown(p: string): string {
  const r = relative(root, p);
  return r && !r.startsWith("..") ? r : p;
}

/** `s` without ANSI colours and without a trailing "Stack backtrace:" dump. */
function withoutBacktrace(s: string): string {
  // deno-lint-ignore no-control-regex
  const plain = s.replace(/\x1b\[[0-9;]*m/g, "");
  const i = plain.indexOf("Stack backtrace:");
  return (i >= 0 ? plain.slice(0, i) : plain).trimEnd();
}

/** The first `error: …` line of a diagnostic, else its last line. */
function errorLine(s: string): string {
  const line = s.split("\n").map((l) => l.trim()).find((l) =>
    /^error:/i.test(l)
  );
  return line ?? lastLine(s);
}

/** Deno's cache dir: $DENO_DIR, else what `deno info --json` reports. */
async function denoDir(deno: string): Promise<string | null> {
  if (process.env.DENO_DIR) return resolve(process.env.DENO_DIR);
  const r = await run(deno, ["info", "--json"], { cwd: root });
  if (r.code !== 0) return null;
  try {
    return (JSON.parse(r.stdout) as { denoDir?: string }).denoDir ?? null;
  } catch {
    return null;
  }
}

/** Whether `deno compile` can work offline; returns a reason when it cannot. */
async function denortAvailable(
  deno: string,
): Promise<{ ok: true } | { ok: false; why: string }> {
  const bin = process.env.DENORT_BIN;
  if (bin) {
    return existsSync(bin)
      ? { ok: true }
      : { ok: false, why: `DENORT_BIN=${bin} does not exist` };
  }
  const triple = process.arch === "arm64"
    ? "aarch64-unknown-linux-gnu"
    : "x86_64-unknown-linux-gnu";
  const version = process.versions.deno ?? "unknown";
  const dir = await denoDir(deno);
  const zip = dir
    ? join(dir, "dl", "release", `v${version}`, `denort-${triple}.zip`)
    : null;
  if (zip && existsSync(zip)) return { ok: true };
  return {
    ok: false,
    why:
      `no denort: DENORT_BIN is unset and ${
        zip ?? `$DENO_DIR/dl/release/v${version}/denort-${triple}.zip`
      } ` +
      `is missing (dl.deno.land is unreachable)`,
  };
}

async function main(): Promise<number> {
  const t0 = performance.now();
  const argv = process.argv.slice(2);
  const { values } = parseArgs({
    args: argv,
    options: BUILD_OPTIONS,
    strict: true,
  });
  const deno = process.execPath; // this script runs under deno
  const arch = process.arch === "arm64" ? "arm64" : "x64";

  // 1. node_modules
  log("deno install");
  const inst = await run(deno, ["install", "--quiet"], {
    cwd: root,
    inherit: true,
  });
  if (inst.code !== 0) {
    log(`deno install failed (exit ${inst.code})`);
    return 1;
  }

  // 2. bun
  let bun: string;
  try {
    bun = await findBun();
  } catch (e) {
    log(`cannot get bun 1.4.x: ${(e as Error).message}`);
    return 1;
  }

  // 3. bun build
  log(`${bun} scripts/bun_build.ts ${argv.join(" ")}`.trimEnd());
  const tb = performance.now();
  const bb = await run(bun, [join(root, "scripts", "bun_build.ts"), ...argv], {
    cwd: root,
    inherit: true,
  });
  const bunOk = bb.code === 0;
  log(
    `bun build ${bunOk ? "ok" : `FAILED (exit ${bb.code})`} in ${
      ((performance.now() - tb) / 1000).toFixed(1)
    } s`,
  );

  // 4. deno compile (only with a denort at hand)
  let denoOk = true;
  const avail = await denortAvailable(deno);
  if (!avail.ok) {
    log(`deno compile skipped: ${avail.why}`);
  } else {
    const entry = resolve(values.entry ?? join(root, "src", "main.ts"));
    const out = values.outfile
      ? `${resolve(values.outfile)}-deno`
      : join(root, "dist", `ocicache-deno-linux-${arch}`);
    mkdirSync(dirname(out), { recursive: true });
    const td = performance.now();
    const dc = await run(deno, [
      "compile",
      "-A",
      "--quiet",
      "--config",
      join(root, "deno.json"),
      "--output",
      out,
      // Worker entries are loaded by URL at run time; deno compile embeds only what it is told.
      ...WORKER_ENTRIES.flatMap((w) => ["--include", join(root, w)]),
      entry,
    ], {
      cwd: root,
      env: { DENO_NO_PACKAGE_JSON: "1" },
    });
    if (dc.code !== 0 || !existsSync(out)) {
      denoOk = false;
      const diag = withoutBacktrace(dc.stderr);
      if (diag) console.error(diag);
      log(`deno compile FAILED (exit ${dc.code}): ${errorLine(diag)}`);
    } else {
      const secs = ((performance.now() - td) / 1000).toFixed(1);
      console.log(
        `${shown(out)}: ${
          formatSize(statSync(out).size)
        }, deno compile, ${secs} s`,
      );
    }
  }

  log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return bunOk && denoOk ? 0 : 1;
}

try {
  process.exitCode = await main();
} catch (e) {
  log(`error: ${(e as Error).message.split("\n")[0]}`);
  process.exitCode = 1;
}
