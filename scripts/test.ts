/**
 * The whole test suite: `deno task test`.
 *
 * 1. lays out node_modules (`deno install`) and finds (or installs, pinned, from npm) Bun;
 * 2. builds the single binary (`scripts/build.ts`) — the end-to-end tests run against it
 *    (OCICACHE_BIN), so a packaging regression fails the suite;
 * 3. runs every `test/*.test.ts` under `deno test`, then under `bun test`;
 * 4. prints per-runtime counts and, last, one line `N passed, N failed`.
 *
 * Flags: `--only deno|bun` runs one runtime; extra arguments are test file filters.
 * @module
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { findBun, repoRoot } from "./tools.ts";

interface Counts {
  passed: number;
  failed: number;
  skipped: number;
}

const root = repoRoot();
const args = process.argv.slice(2);
let only: string | undefined;
const filters: string[] = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--only") only = args[++i];
  else filters.push(args[i]);
}

/** Run a command, streaming its output through, and resolve with exit code and the output. */
function tee(cmd: string, argv: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      process.stdout.write(d);
    });
    child.stderr.on("data", (d) => {
      out += d;
      process.stderr.write(d);
    });
    child.on("error", (e) => {
      out += String(e);
      resolve({ code: 127, out });
    });
    child.on("close", (code) => resolve({ code: code ?? 1, out }));
  });
}

/** Leaf test counts from Deno's JUnit report (describe blocks and their steps both appear as testcases). */
function denoCounts(junitPath: string): Counts {
  const xml = readFileSync(junitPath, "utf8");
  const cases = [...xml.matchAll(/<testcase name="([^"]*)"[^>]*>([\s\S]*?)<\/testcase>/g)].map((m) => ({
    name: m[1],
    body: m[2],
  }));
  const names = cases.map((c) => c.name);
  const leaves = cases.filter((c) => !names.some((n) => n.startsWith(c.name + " &gt; ")));
  const failed = leaves.filter((c) => /<failure/.test(c.body)).length;
  const skipped = leaves.filter((c) => /<skipped/.test(c.body)).length;
  return { passed: leaves.length - failed - skipped, failed, skipped };
}

/** Counts from Bun's closing lines (` N pass`, ` N fail`, ` N skip`). */
function bunCounts(out: string): Counts {
  const n = (w: string) => Number(new RegExp(`^\\s*(\\d+) ${w}$`, "m").exec(out)?.[1] ?? 0);
  return { passed: n("pass"), failed: n("fail"), skipped: n("skip") };
}

const testFiles = readdirSync(join(root, "test"))
  .filter((f) => f.endsWith(".test.ts"))
  .filter((f) => !filters.length || filters.some((x) => f.includes(x)))
  .sort()
  .map((f) => `test/${f}`);

const outDir = join(root, "test-output");
mkdirSync(outDir, { recursive: true });
const results: Record<string, Counts> = {};
let broken = false;

const deno = process.execPath;
if ((await tee(deno, ["install"])).code !== 0) {
  console.error("test: `deno install` failed");
  process.exit(1);
}
const bun = await findBun();

console.error("test: building the single binary (the end-to-end tests run against it)");
const build = await tee(deno, ["run", "-A", "scripts/build.ts"]);
const bin = join(root, "dist", "ocicache-linux-x64");
if (build.code !== 0 || !existsSync(bin)) {
  console.error("test: the build failed; the end-to-end tests need the binary");
  console.log("0 passed, 1 failed");
  process.exit(1);
}
const env = { OCICACHE_BIN: bin, OCICACHE_TEST_OUTPUT: outDir, BUN_BIN: bun };

if (!only || only === "deno") {
  const junit = join(outDir, "deno-junit.xml");
  rmSync(junit, { force: true });
  const r = await tee(deno, ["test", "-A", `--junit-path=${junit}`, ...testFiles], env);
  results.deno = existsSync(junit) ? denoCounts(junit) : { passed: 0, failed: 1, skipped: 0 };
  if (r.code !== 0 && results.deno.failed === 0) results.deno.failed = 1, broken = true;
}
if (!only || only === "bun") {
  const r = await tee(bun, ["test", "--timeout", "180000", ...testFiles.map((f) => `./${f}`)], env);
  results.bun = bunCounts(r.out);
  if (r.code !== 0 && results.bun.failed === 0) results.bun.failed = 1, broken = true;
}

const total: Counts = { passed: 0, failed: 0, skipped: 0 };
for (const [name, c] of Object.entries(results)) {
  console.log(`${name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
  total.passed += c.passed;
  total.failed += c.failed;
  total.skipped += c.skipped;
}
if (broken) console.log("a test runner exited with an error that no test reported (see above)");
console.log(`${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exit(total.failed ? 1 : 0);
