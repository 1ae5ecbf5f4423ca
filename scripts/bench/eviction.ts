/**
 * Eviction benchmark: replays the synthetic pull trace of `./trace.ts` through S3-FIFO, LRU and
 * FIFO at capacities of 10 %, 25 % and 50 % of the working set (the bytes of all distinct objects
 * in the trace) and reports the byte miss ratio (bytes fetched from upstream / bytes requested)
 * and the object miss ratio of each. Pure computation: no network, no files except the report.
 *
 *   deno run -A scripts/bench/eviction.ts [--seed N] [--requests N] [--images N] [--one-hit F]
 *                                        [--zipf S] [--update P] [--fractions 0.1,0.25,0.5]
 *                                        [--json] [--out PATH | --no-write]
 *
 * Prints a Markdown report (or, with --json, the JSON result) and writes the JSON result to
 * test-output/bench-eviction.json. `runEvictionBench()` returns the same result to callers.
 * Also runs under Bun (`bun scripts/bench/eviction.ts`).
 * @module
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type EvictionPolicy, FifoPolicy, LruPolicy } from "../../src/cache/policies.ts";
import { S3Fifo, type S3FifoCounters } from "../../src/cache/s3fifo.ts";
import { DEFAULT_TRACE_PARAMS, generateTrace, MiB, summarize, type Trace, type TraceParams, type TraceSummary } from "./trace.ts";

/** One policy at one capacity. */
export interface EvictionRow {
  policy: string;
  /** Capacity as a fraction of the working set. */
  fraction: number;
  capacityBytes: number;
  requests: number;
  misses: number;
  requestedBytes: number;
  missBytes: number;
  byteMissRatio: number;
  objectMissRatio: number;
  evictions: number;
  /** Misses on objects larger than the capacity (never admitted). */
  rejected: number;
  ms: number;
  /** S3-FIFO only: its counters after the replay. */
  s3fifo?: S3FifoCounters;
}

/** The whole result. */
export interface EvictionBenchResult {
  runtime: string;
  trace: { params: TraceParams; summary: TraceSummary; generateMs: number };
  fractions: number[];
  rows: EvictionRow[];
  /** Per capacity: S3-FIFO's byte miss ratio ≤ LRU's (the paper's claim, checked on this trace). */
  s3fifoAtOrBelowLru: { fraction: number; bytes: boolean; objects: boolean }[];
  totalMs: number;
}

/** Options of {@link runEvictionBench}. */
export interface EvictionBenchOptions {
  trace?: Partial<TraceParams>;
  fractions?: number[];
}

/** The policies compared, by row name. "s3fifo-t2" is S3-FIFO promoting after 2 hits in S. */
const POLICIES: [string, (capacity: number) => EvictionPolicy][] = [
  ["s3fifo", (capacity) => new S3Fifo({ capacity })],
  ["s3fifo-t2", (capacity) => new S3Fifo({ capacity, promoteThreshold: 2 })],
  ["lru", (capacity) => new LruPolicy(capacity)],
  ["fifo", (capacity) => new FifoPolicy(capacity)],
];

/** Replay `trace` through `policy`. */
export function replay(trace: Trace, policy: EvictionPolicy): Omit<EvictionRow, "policy" | "fraction" | "ms"> {
  const { keys, sizes, requests } = trace;
  let misses = 0;
  let missBytes = 0;
  let requestedBytes = 0;
  let evictions = 0;
  let rejected = 0;
  for (let i = 0; i < requests.length; i++) {
    const id = requests[i];
    const size = sizes[id];
    requestedBytes += size;
    const r = policy.access(keys[id], size);
    if (!r.hit) {
      misses++;
      missBytes += size;
      if (!r.admitted) rejected++;
    }
    evictions += r.evicted.length;
  }
  return {
    capacityBytes: policy.capacity,
    requests: requests.length,
    misses,
    requestedBytes,
    missBytes,
    byteMissRatio: missBytes / requestedBytes,
    objectMissRatio: misses / requests.length,
    evictions,
    rejected,
  };
}

function runtimeName(): string {
  const v = process.versions as Record<string, string | undefined>;
  if (v.deno) return `deno ${v.deno}`;
  if (v.bun) return `bun ${v.bun}`;
  return `node ${process.versions.node}`;
}

/** Generate the trace, replay it through every policy at every capacity. */
export function runEvictionBench(opts: EvictionBenchOptions = {}): Promise<EvictionBenchResult> {
  const t0 = performance.now();
  const trace = generateTrace(opts.trace);
  const summary = summarize(trace);
  const generateMs = performance.now() - t0;
  const fractions = opts.fractions ?? [0.1, 0.25, 0.5];
  const rows: EvictionRow[] = [];
  for (const fraction of fractions) {
    const capacity = Math.max(1, Math.floor(summary.workingSetBytes * fraction));
    for (const [name, make] of POLICIES) {
      const policy = make(capacity);
      const t = performance.now();
      const r = replay(trace, policy);
      const row: EvictionRow = { policy: name, fraction, ...r, ms: performance.now() - t };
      if (policy instanceof S3Fifo) row.s3fifo = { ...policy.counters };
      rows.push(row);
    }
  }
  const s3fifoAtOrBelowLru = fractions.map((fraction) => {
    const s = rows.find((r) => r.fraction === fraction && r.policy === "s3fifo")!;
    const l = rows.find((r) => r.fraction === fraction && r.policy === "lru")!;
    return { fraction, bytes: s.byteMissRatio <= l.byteMissRatio, objects: s.objectMissRatio <= l.objectMissRatio };
  });
  return Promise.resolve({
    runtime: runtimeName(),
    trace: { params: trace.params, summary, generateMs },
    fractions,
    rows,
    s3fifoAtOrBelowLru,
    totalMs: performance.now() - t0,
  });
}

// ---------------------------------------------------------------- report

const pct = (x: number, d = 2) => `${(x * 100).toFixed(d)} %`;
const gib = (b: number) => `${(b / 1024 / MiB).toFixed(1)} GiB`;
const int = (n: number) => n.toLocaleString("en-US");

/** The Markdown report: trace summary and the comparison table. */
export function renderEvictionMarkdown(r: EvictionBenchResult): string {
  const s = r.trace.summary;
  const p = r.trace.params;
  const out: string[] = [];
  out.push("## Eviction policies on a synthetic pull trace", "");
  out.push(
    `Trace (seed ${p.seed}): ${int(s.requests)} requests in ${int(s.pulls)} pulls ` +
      `(${int(s.oneHitPulls)} of one-hit-wonder images) over ${p.images} images (Zipf ${p.zipfExponent}) ` +
      `on ${p.baseStacks} base stacks; ${int(s.imageVersions)} image versions, ${int(s.baseVersions)} base versions.`,
    `Working set ${gib(s.workingSetBytes)} in ${int(s.distinctObjects)} distinct objects; ` +
      `${gib(s.requestedBytes)} requested; ${int(s.singleUseObjects)} objects (${gib(s.singleUseBytes)}) requested once. ` +
      `Cold-miss floor (infinite cache): ${pct(s.compulsoryByteMissRatio)} of bytes, ${pct(s.compulsoryObjectMissRatio)} of objects.`,
    "",
  );
  out.push("| capacity | policy | byte miss ratio | object miss ratio | bytes vs LRU | evictions | ms |");
  out.push("|---|---|--:|--:|--:|--:|--:|");
  for (const f of r.fractions) {
    const lru = r.rows.find((x) => x.fraction === f && x.policy === "lru")!;
    for (const row of r.rows.filter((x) => x.fraction === f)) {
      const rel = row.policy === "lru" ? "–" : `${((row.byteMissRatio / lru.byteMissRatio - 1) * 100).toFixed(1)} %`;
      out.push(
        `| ${(f * 100).toFixed(0)} % (${gib(row.capacityBytes)}) | ${row.policy} | ${pct(row.byteMissRatio)} | ` +
          `${pct(row.objectMissRatio)} | ${rel} | ${int(row.evictions)} | ${row.ms.toFixed(0)} |`,
      );
    }
  }
  out.push("");
  out.push("S3-FIFO counters (default promotion threshold 1):", "");
  out.push("| capacity | ghost hits | promotions S→M | reinsertions in M | evictions from S / M | ghost expired |");
  out.push("|---|--:|--:|--:|--:|--:|");
  for (const row of r.rows.filter((x) => x.policy === "s3fifo")) {
    const c = row.s3fifo!;
    out.push(
      `| ${(row.fraction * 100).toFixed(0)} % | ${int(c.ghostHits)} | ${int(c.promotions)} | ${int(c.reinsertions)} | ` +
        `${int(c.evictionsSmall)} / ${int(c.evictionsMain)} | ${int(c.ghostExpired)} |`,
    );
  }
  out.push("");
  const verdict = r.s3fifoAtOrBelowLru
    .map((v) => `${(v.fraction * 100).toFixed(0)} %: bytes ${v.bytes ? "yes" : "NO"}, objects ${v.objects ? "yes" : "NO"}`)
    .join("; ");
  out.push(`S3-FIFO at or below LRU — ${verdict}.`);
  out.push(`${r.runtime}, ${(r.totalMs / 1000).toFixed(1)} s in all (trace ${r.trace.generateMs.toFixed(0)} ms).`);
  return out.join("\n");
}

// ---------------------------------------------------------------- CLI

function parseArgs(argv: string[]) {
  const o = { trace: {} as Partial<TraceParams>, fractions: undefined as number[] | undefined, json: false, out: "" as string | null };
  const num = (flag: string, v: string | undefined) => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n)) throw new Error(`${flag} needs a number, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].includes("=") ? argv[i].split(/=(.*)/s, 2) : [argv[i], undefined];
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case "--seed": o.trace.seed = num(flag, val()); break;
      case "--requests": o.trace.requests = num(flag, val()); break;
      case "--images": o.trace.images = num(flag, val()); break;
      case "--one-hit": o.trace.oneHitFraction = num(flag, val()); break;
      case "--zipf": o.trace.zipfExponent = num(flag, val()); break;
      case "--update": o.trace.updateProb = num(flag, val()); break;
      case "--fractions": o.fractions = val()!.split(",").map((x) => num(flag, x)); break;
      case "--json": o.json = true; break;
      case "--out": o.out = val()!; break;
      case "--no-write": o.out = null; break;
      case "-h":
      case "--help":
        console.log(
          "Usage: deno run -A scripts/bench/eviction.ts [--seed 42] [--requests 200000] [--images 400]\n" +
            "       [--one-hit 0.25] [--zipf 1.0] [--update 0.02] [--fractions 0.1,0.25,0.5] [--json] [--out PATH | --no-write]\n" +
            `Defaults: ${JSON.stringify(DEFAULT_TRACE_PARAMS)}`,
        );
        process.exit(0);
        break;
      default:
        throw new Error(`unknown flag ${flag} (try --help)`);
    }
  }
  return o;
}

/** CLI entry point (also what `deno task bench eviction` should call with the remaining args). */
export async function main(argv: string[]): Promise<void> {
  const o = parseArgs(argv);
  const r = await runEvictionBench({ trace: o.trace, fractions: o.fractions });
  console.log(o.json ? JSON.stringify(r, null, 2) : renderEvictionMarkdown(r));
  if (o.out !== null) {
    const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
    const path = o.out || resolve(root, "test-output/bench-eviction.json");
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, JSON.stringify(r, null, 2) + "\n");
    if (!o.json) console.log(`JSON: ${path}`);
  }
}

if ((import.meta as ImportMeta & { main?: boolean }).main) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : String(e));
    process.exit(2);
  });
}
