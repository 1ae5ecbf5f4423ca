/**
 * Compiles ocicache into single-file executables with Bun's bundler.
 * Runs under Bun (`bun scripts/bun_build.ts`); `scripts/build.ts` calls it.
 *
 *   bun scripts/bun_build.ts [--entry PATH] [--outfile PATH] [--all] [--no-minify]
 *
 * - Default entry `src/main.ts`, default output `dist/ocicache-linux-<arch>`
 *   for the host arch (target `bun-linux-<arch>`).
 * - `--all` (or env `OCICACHE_BUILD_ALL=1`) also builds the other Linux arch
 *   (x64 <-> arm64). Bun downloads that target's runtime from npm; the libSQL
 *   addon for it comes from `npm pack @libsql/linux-<arch>-gnu` into `.tools/`.
 *   A failure there prints one line and is not an error. With `--outfile`,
 *   the other arch's file name replaces `x64`/`arm64` in it, or appends `-<arch>`.
 *
 * The libSQL native addon is embedded: libsql's `index.js` loads it with
 * ``require(`@libsql/${target}`)``, which the bundler cannot follow, so a
 * plugin rewrites that call into a static `require("/abs/…/index.node")` of
 * the package for the build's target. A compiled binary then needs no
 * node_modules; at run time Bun writes the addon to `$TMPDIR/.bun-*.node`
 * and loads it from there.
 *
 * Exit code: 0 when the host-arch binary was built, 1 otherwise.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { basename, dirname, join, relative, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { BUILD_OPTIONS, fetchNpmPackage, formatSize, repoRoot, WORKER_ENTRIES } from "./tools.ts";

// Minimal typing of the parts of the Bun API used here (no bun-types in the
// repo, and `deno check scripts/` must pass).
interface OnLoadArgs {
  path: string;
}
interface PluginBuilder {
  onResolve(
    opts: { filter: RegExp },
    cb: (args: { path: string; importer: string }) => undefined,
  ): void;
  onLoad(
    opts: { filter: RegExp },
    cb: (args: OnLoadArgs) => Promise<{ contents: string; loader: string }>,
  ): void;
}
interface BunPlugin {
  name: string;
  setup(build: PluginBuilder): void;
}
interface BuildLog {
  message?: string;
  level?: string;
  position?: { file?: string; line?: number } | null;
}
interface BuildOutput {
  success: boolean;
  logs: BuildLog[];
}
interface BunApi {
  version: string;
  build(config: {
    entrypoints: string[];
    compile: { target: string; outfile: string };
    minify: boolean;
    plugins: BunPlugin[];
  }): Promise<BuildOutput>;
  resolveSync(specifier: string, from: string): string;
}

const Bun = (globalThis as unknown as { Bun?: BunApi }).Bun;

type Arch = "x64" | "arm64";

/** Where the libsql JS package sits and which version it is. */
interface Libsql {
  index: string;
  version: string;
}

/** Regex for libsql's entry file, in a plain or Deno (`node_modules/.deno/…`) layout. */
const LIBSQL_INDEX = /[\\/]node_modules[\\/]libsql[\\/]index\.js$/;
/** The dynamic require that picks the platform package. */
const DYNAMIC_REQUIRE = /require\(\s*`@libsql\/\$\{target\}`\s*\)/;

/** `p` relative to the cwd when it lies under it, else absolute (for messages). */
function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith("..") ? r : p;
}

function fail(msg: string): never {
  console.error(`bun_build: ${msg}`);
  process.exit(1);
}

/** Finds libsql as the entry's dependency graph reaches it: entry -> @libsql/client -> libsql. */
function locateLibsql(entry: string): Libsql | null {
  let client: string;
  try {
    client = Bun!.resolveSync("@libsql/client", dirname(entry));
  } catch {
    return null; // entry does not use libSQL (or node_modules is missing: the build will say so)
  }
  const index = Bun!.resolveSync("libsql", dirname(client));
  const pkg = JSON.parse(
    readFileSync(join(dirname(index), "package.json"), "utf8"),
  );
  return { index, version: pkg.version };
}

/**
 * Path of `index.node` from `@libsql/linux-<arch>-gnu` at libsql's version:
 * the installed one next to libsql when present, else fetched with npm pack.
 */
async function nativeAddon(libsql: Libsql, arch: Arch): Promise<string> {
  const name = `@libsql/linux-${arch}-gnu`;
  try {
    const pj = createRequire(libsql.index).resolve(`${name}/package.json`);
    const v = JSON.parse(readFileSync(pj, "utf8")).version;
    const node = join(dirname(pj), "index.node");
    if (v === libsql.version && existsSync(node)) return node;
  } catch {
    // not installed here (normal for a foreign arch)
  }
  const dir = await fetchNpmPackage(name, libsql.version);
  const node = join(dir, "index.node");
  if (!existsSync(node)) {
    throw new Error(`${name}@${libsql.version} has no index.node`);
  }
  return node;
}

/** What the plugin saw during one build. */
interface Seen {
  /** Imports of the bare specifier `libsql` (so the bundle needs the addon). */
  imports: number;
  /** libsql index.js files whose require was rewritten. */
  rewritten: string[];
}

/**
 * Plugin that turns libsql's dynamic platform require into a static one of
 * `addon`, and records in `seen` whether libsql was imported at all.
 */
function embedLibsqlAddon(
  libsql: Libsql,
  addon: string,
  seen: Seen,
): BunPlugin {
  return {
    name: "embed-libsql-addon",
    setup(build) {
      // Observe only: returning undefined leaves resolution to Bun.
      build.onResolve({ filter: /^libsql$/ }, () => {
        seen.imports++;
        return undefined;
      });
      build.onLoad({ filter: LIBSQL_INDEX }, async (args) => {
        const src = await readFile(args.path, "utf8");
        const pj = JSON.parse(
          await readFile(join(dirname(args.path), "package.json"), "utf8"),
        );
        if (pj.version !== libsql.version) {
          throw new Error(
            `${args.path} is libsql ${pj.version}, addon was picked for ${libsql.version}`,
          );
        }
        if (!DYNAMIC_REQUIRE.test(src)) {
          throw new Error(
            `${args.path}: no require(\`@libsql/\${target}\`) to rewrite; update scripts/bun_build.ts`,
          );
        }
        seen.rewritten.push(args.path);
        return {
          contents: src.replace(
            DYNAMIC_REQUIRE,
            `require(${JSON.stringify(addon)})`,
          ),
          loader: "js",
        };
      });
    },
  };
}

function formatLogs(logs: BuildLog[]): string {
  return logs
    .map((l) => {
      const where = l.position?.file
        ? ` (${l.position.file}:${l.position.line ?? "?"})`
        : "";
      return `  ${l.level ?? "error"}: ${l.message ?? String(l)}${where}`;
    })
    .join("\n");
}

/** Builds one target; returns null on success or a one-line reason. Prints its own details. */
async function buildOne(
  entry: string,
  arch: Arch,
  outfile: string,
  minify: boolean,
  libsql: Libsql | null,
  verbose: boolean,
): Promise<string | null> {
  const target = `bun-linux-${arch}`;
  const plugins: BunPlugin[] = [];
  const seen: Seen = { imports: 0, rewritten: [] };
  if (libsql) {
    let addon: string;
    try {
      addon = await nativeAddon(libsql, arch);
    } catch (e) {
      return `no libSQL addon for linux-${arch}: ${
        (e as Error).message.split("\n")[0]
      }`;
    }
    console.error(`bun_build: ${target}: embedding ${shown(addon)}`);
    plugins.push(embedLibsqlAddon(libsql, addon, seen));
  }
  mkdirSync(dirname(outfile), { recursive: true });
  const t0 = performance.now();
  let out: BuildOutput;
  try {
    out = await Bun!.build({
      // Workers are separate entry points: the compiled binary resolves `new Worker(new URL(…))` to them.
      entrypoints: [entry, ...WORKER_ENTRIES.map((w) => join(repoRoot(), w)).filter((w) => existsSync(w))],
      compile: { target, outfile },
      minify,
      plugins,
    });
  } catch (e) {
    // Bun.build throws an AggregateError whose `errors` are the build logs.
    const logs = (e as { errors?: BuildLog[] }).errors ?? [];
    if (verbose && logs.length) console.error(formatLogs(logs));
    const first = logs[0]?.message ?? (e as Error).message;
    return `Bun.build failed: ${String(first).split("\n")[0]}`;
  }
  if (!out.success) {
    if (verbose) console.error(formatLogs(out.logs));
    const first = out.logs[0]?.message ?? "no log";
    return `Bun.build reported failure: ${String(first).split("\n")[0]}`;
  }
  if (seen.imports > 0 && seen.rewritten.length === 0) {
    rmSync(outfile, { force: true }); // it would fail at start-up
    return "libsql is imported but its index.js was not rewritten, so the addon is not embedded";
  }
  if (libsql && seen.imports === 0) {
    console.error(
      `bun_build: ${target}: the bundle does not import libsql; no addon embedded`,
    );
  }
  if (!existsSync(outfile)) {
    return `Bun.build succeeded but ${outfile} is missing`;
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(
    `${shown(outfile)}: ${
      formatSize(statSync(outfile).size)
    }, ${target}, ${secs} s`,
  );
  return null;
}

/** Output path of the other arch, derived from the host one. */
function otherOutfile(hostOut: string, host: Arch, other: Arch): string {
  const b = basename(hostOut);
  return join(
    dirname(hostOut),
    b.includes(host) ? b.replace(host, other) : `${b}-${other}`,
  );
}

async function main(): Promise<void> {
  if (!Bun) fail("must run under Bun: bun scripts/bun_build.ts");
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: BUILD_OPTIONS,
    strict: true,
  });
  if (process.platform !== "linux") {
    fail(`only Linux hosts are supported (this is ${process.platform})`);
  }
  const host: Arch | null = process.arch === "x64"
    ? "x64"
    : process.arch === "arm64"
    ? "arm64"
    : null;
  if (!host) fail(`unsupported CPU ${process.arch}`);
  const other: Arch = host === "x64" ? "arm64" : "x64";

  const root = repoRoot();
  const entry = resolve(values.entry ?? join(root, "src", "main.ts"));
  if (!existsSync(entry)) fail(`entry ${entry} does not exist`);
  const hostOut = resolve(
    values.outfile ?? join(root, "dist", `ocicache-linux-${host}`),
  );
  const minify = !values["no-minify"];
  const all = values.all ||
    ["1", "true", "yes"].includes(
      (process.env.OCICACHE_BUILD_ALL ?? "").toLowerCase(),
    );

  const libsql = locateLibsql(entry);
  const found = libsql
    ? `libsql ${libsql.version} at ${shown(libsql.index)}`
    : "@libsql/client not reachable from the entry; no addon to embed";
  console.error(`bun_build: bun ${Bun.version}, ${found}`);

  const hostErr = await buildOne(entry, host, hostOut, minify, libsql, true);
  if (hostErr) fail(`linux-${host} build failed: ${hostErr}`);

  if (all) {
    const err = await buildOne(
      entry,
      other,
      otherOutfile(hostOut, host, other),
      minify,
      libsql,
      false,
    );
    if (err) console.error(`bun_build: linux-${other} skipped: ${err}`);
  }
}

await main();
