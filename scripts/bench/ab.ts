/**
 * A/B of two ocicache builds on cold pulls, taking turns on the same machine:
 *
 *   deno run -A scripts/bench/ab.ts A_BINARY B_BINARY [--rounds 2] [--reps 4] [--clients 8]
 *
 * Each round starts each build (A, then B) on an empty store in front of one Debian
 * `docker-registry`, pushes fresh 256 MiB layers to it (and syncs), then times `--reps` cold GETs
 * of one layer each (waiting until each is stored) and `--reps` runs of `--clients` concurrent
 * cold clients of one layer. Prints each
 * figure and the medians per build. Used to compare a change against the build before it (build
 * the old one from a `git worktree` with `bun scripts/bun_build.ts --outfile PATH`).
 * @module
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { startDockerRegistry } from "../../test/support/real_registry.ts";
import { pushFreshBlob, writeRandomFile } from "./blobs.ts";
import { concurrentGets, timedGet } from "./client.ts";
import { startOcicache } from "./procs.ts";
import { fmt, median, MiB, waitFor } from "./util.ts";

const { values, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: { rounds: { type: "string" }, reps: { type: "string" }, clients: { type: "string" } },
});
if (positionals.length !== 2) {
  console.error("usage: deno run -A scripts/bench/ab.ts A_BINARY B_BINARY [--rounds 2] [--reps 4] [--clients 8]");
  process.exit(2);
}
const builds = positionals.map((p) => resolve(p));
const rounds = Number(values.rounds ?? 2);
const reps = Number(values.reps ?? 4);
const clients = Number(values.clients ?? 8);
const size = 256 * MiB;

const tmp = await mkdtemp(join(tmpdir(), "ocicache-ab-"));
const upstream = await startDockerRegistry();
const results = builds.map(() => ({ coldMiBs: [] as number[], manyWallS: [] as number[] }));
try {
  const base = join(tmp, "base.bin");
  await writeRandomFile(base, size - 64);
  for (let round = 0; round < rounds; round++) {
    for (const [i, bin] of builds.entries()) {
      const dir = join(tmp, `r${round}-${i}`);
      await mkdir(join(dir, "tmp"), { recursive: true });
      const oc = await startOcicache({ key: `b${i}`, label: bin, command: [bin] }, {
        storage: join(dir, "storage"),
        upstream: upstream.url,
        tmpDir: join(dir, "tmp"),
        cwd: tmp,
      });
      try {
        const url = (digest: string) => `${oc.url}/v2/up/bench/big/blobs/${digest}`;
        const stored = (digest: string) =>
          waitFor(async () => {
            const r = await fetch(url(digest), { method: "HEAD" });
            await r.body?.cancel();
            return r.headers.get("x-cache") === "hit" || undefined;
          }, 120_000, `${digest} stored`, 20);
        // The layers are pushed (and synced to disk) first: the upstream serves them from its
        // storage, as a real registry does, rather than writing them back during the GETs.
        const fresh = [];
        for (let r = 0; r < 2 * reps; r++) fresh.push(await pushFreshBlob(upstream.url, "bench/big", base));
        await new Promise((ok) => spawn("sync").on("exit", ok));
        for (let r = 0; r < reps; r++) {
          const [b, c] = fresh.slice(2 * r, 2 * r + 2);
          const x = await timedGet(url(b.digest), size);
          await stored(b.digest);
          results[i].coldMiBs.push(size / MiB / x.seconds);
          const many = await concurrentGets(url(c.digest), clients, size);
          await stored(c.digest);
          results[i].manyWallS.push(many.wallSeconds);
          console.log(`round ${round + 1} ${"AB"[i]}: cold ${fmt(size / MiB / x.seconds)} MiB/s; ${clients} clients ${fmt(many.wallSeconds, 2)} s`);
        }
      } finally {
        await oc.stop();
      }
    }
  }
  for (const [i, bin] of builds.entries()) {
    console.log(
      `${"AB"[i]} ${bin}: cold GET median ${fmt(median(results[i].coldMiBs))} MiB/s (${
        results[i].coldMiBs.map((x) => fmt(x)).join(", ")
      }); ${clients} concurrent cold clients median ${fmt(median(results[i].manyWallS), 2)} s`,
    );
  }
} finally {
  await upstream.stop();
  await rm(tmp, { recursive: true, force: true });
}
