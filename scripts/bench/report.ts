/**
 * The benchmark's results: their shape, the tables (figures + ratios against references measured
 * in the same run), rendered for the terminal and as Markdown for docs/benchmarks.md.
 * @module
 */
import type { LoadResult } from "./client.ts";
import type { ComponentRow } from "./components.ts";
import { fmt, median, MiB, ratio } from "./util.ts";

/** Throughput samples of one target. */
export interface ThroughputRow {
  key: string;
  label: string;
  mibps: number[];
  ttfbMs?: number[];
  /** Milliseconds from the client's last byte until the cache had the blob stored. */
  storedMs?: number[];
}

/** Where the CPU went during the cold GETs of one ocicache variant (test 2). */
export interface CpuRow {
  key: string;
  label: string;
  /** Seconds of each client transfer. */
  transferS: number[];
  /** Seconds from the request until the blob was stored. */
  storedS: number[];
  /** CPU seconds per GET, by part (ocicache's thread groups, the upstream, the client). */
  parts: Record<string, number[]>;
}

/** One target of the concurrent-cold test. */
export interface ConcurrentRow {
  key: string;
  label: string;
  clients: number;
  single: {
    wallS: number[];
    upstreamBytes: number[];
    upstreamBlobGets: number[];
    /** CPU seconds of the cache process, from the request until the blob was stored. */
    cacheCpuS?: number[];
    /** CPU seconds of the curl clients. */
    clientCpuS?: number[];
  };
  many: {
    wallS: number[];
    upstreamBytes: number[];
    upstreamBlobGets: number[];
    slowestClientS: number[];
    cacheCpuS?: number[];
    clientCpuS?: number[];
  };
}

export interface ManifestRow {
  key: string;
  label: string;
  load: LoadResult;
  /** Upstream manifest requests per 100 sequential warm tag GETs (counted by the relay). */
  upstreamPer100?: number;
}

export interface StartupRow {
  key: string;
  label: string;
  firstMs: number;
  ms: number[];
}

export interface RssRow {
  key: string;
  label: string;
  /** VmRSS right after start (and one manifest GET). */
  baselineKiB: number;
  /** VmHWM after the concurrent GETs (for a process started before the run: its whole life). */
  hwmKiB: number;
  /** Highest VmRSS sampled every 20 ms during the GETs. */
  sampledMaxKiB: number;
  /** Aggregate MiB/s of the concurrent GETs. */
  aggregateMiBps: number;
  note?: string;
}

/** One target of the skopeo test (7): `skopeo copy` of a multi-layer image to `dir:`. */
export interface SkopeoRow {
  key: string;
  label: string;
  /** Wall seconds of the first (cold, filling) copy. */
  firstS: number;
  /** Wall seconds of each timed warm copy. */
  wallS: number[];
  /** Bytes of every blob of the image (manifest, config, layers). */
  imageBytes: number;
  layers: number;
}

export interface Results {
  meta: {
    date: string;
    totalSeconds?: number;
    machine: Record<string, string | number>;
    versions: Record<string, string>;
    settings: Record<string, string | number | boolean>;
    client: string;
    loadavgStart: number[];
    loadavgEnd?: number[];
    notes: string[];
  };
  warm: ThroughputRow[];
  cold: ThroughputRow[];
  /** Per-step costs of a cold fill, measured in the bench process (reference for test 2). */
  components: ComponentRow[];
  /** CPU time by part during test 2's cold GETs (absent in results written before it existed). */
  coldCpu?: CpuRow[];
  concurrent: ConcurrentRow[];
  manifest: ManifestRow[];
  startup: StartupRow[];
  rss: RssRow[];
  /** Test 7 (absent in results written before it existed). */
  skopeo?: SkopeoRow[];
}

/** A rendered table. */
export interface Table {
  title: string;
  note: string;
  headers: string[];
  rows: string[][];
}

const med = (xs: number[] | undefined) => (xs && xs.length ? median(xs) : NaN);
const spread = (
  xs: number[],
  d = 0,
) => (xs.length > 1
  ? `${fmt(Math.min(...xs), d)}–${fmt(Math.max(...xs), d)}`
  : "–");

/** The tables of a result set. */
export function tables(r: Results): Table[] {
  const out: Table[] = [];
  const size = r.meta.settings.sizeMiB;
  const get = (rows: ThroughputRow[], key: string) =>
    med(rows.find((x) => x.key === key)?.mibps);

  if (r.warm.length) {
    const peer = get(r.warm, "peer");
    const up = get(r.warm, "upstream");
    const disk = get(r.warm, "disk");
    out.push({
      title: `1. Warm blob GET, ${size} MiB layer`,
      note:
        `median of ${r.meta.settings.warmReps} GETs per target (one ${r.meta.client} client, body discarded); disk = node:fs read of the stored file in 1 MiB chunks (page cache)`,
      headers: [
        "target",
        "MiB/s (median)",
        "range",
        "vs peer",
        "vs upstream",
        "vs disk",
      ],
      rows: r.warm.map((x) => {
        const m = med(x.mibps);
        return [
          x.label,
          fmt(m),
          spread(x.mibps),
          ratio(m, peer),
          ratio(m, up),
          ratio(m, disk),
        ];
      }),
    });
  }
  if (r.cold.length) {
    const peer = get(r.cold, "peer");
    const up = get(r.cold, "upstream");
    out.push({
      title: `2. Cold blob GET, fresh ${size} MiB layer each time`,
      note:
        `median of ${r.meta.settings.coldReps} GETs per target, a different blob each GET; TTFB = time to first body byte; "stored after" = from the client's last byte until the cache has the blob stored (ocicache: a HEAD answers X-Cache: hit; peer: its blob file is complete), waited for before the next GET`,
      headers: [
        "target",
        "MiB/s (median)",
        "range",
        "TTFB ms (median)",
        "stored after ms (median)",
        "vs peer",
        "vs upstream",
      ],
      rows: r.cold.map((x) => {
        const m = med(x.mibps);
        return [
          x.label,
          fmt(m),
          spread(x.mibps),
          fmt(med(x.ttfbMs), 1),
          x.storedMs?.length ? fmt(med(x.storedMs)) : "–",
          ratio(m, peer),
          ratio(m, up),
        ];
      }),
    });
  }
  if (r.components.length) {
    const total = r.components.reduce((n, c) => n + c.secondsPerLayer, 0);
    out.push({
      title:
        "2b. Reference: the steps of a cold fill, one after another on one thread",
      note: `measured in the bench process (${
        r.meta.versions.bench ?? "deno"
      }) over the ${size} MiB layer in 64 KiB chunks; done one after another on one thread they cannot beat the serial sum, so ocicache overlaps them: sha256 on the serving thread, file writes in the background, BLAKE3 on a low-priority worker thread that follows the file (table 2c shows where the CPU goes)`,
      headers: ["step", "MiB/s", "s per layer"],
      rows: [
        ...r.components.map((
          c,
        ) => [c.label, fmt(c.mibps), fmt(c.secondsPerLayer, 2)]),
        [
          "sum (serial ceiling, before network and serving)",
          fmt(Number(size) / total),
          fmt(total, 2),
        ],
      ],
    });
  }
  if (r.coldCpu?.length) {
    const cores = Number(r.meta.machine.nproc) || 1;
    const rows: string[][] = [];
    for (const c of r.coldCpu) {
      const transfer = med(c.transferS);
      const parts = Object.entries(c.parts).map(([k, v]) => [k, med(v)] as const);
      const total = parts.reduce((n, [, v]) => n + v, 0);
      for (const [k, v] of parts) {
        rows.push([c.label, k, fmt(v, 2), `${fmt((100 * v) / total)} %`]);
      }
      rows.push([
        c.label,
        `total CPU (all parts) / ${cores} cores × ${fmt(med(c.storedS), 2)} s until stored`,
        `${fmt(total, 2)} / ${fmt(cores * med(c.storedS), 2)}`,
        `${fmt((100 * total) / (cores * med(c.storedS)))} % busy`,
      ]);
      rows.push([
        c.label,
        `transfer time; the fastest these CPU seconds allow on ${cores} cores`,
        `${fmt(transfer, 2)} s; ${fmt(total / cores, 2)} s`,
        `${fmt(Number(size) / transfer)}; ${fmt(Number(size) / (total / cores))} MiB/s`,
      ]);
    }
    out.push({
      title: "2c. Where the CPU goes in one cold GET",
      note:
        `CPU seconds per ${size} MiB cold GET (median over the GETs of table 2), from the start of the request until the blob is stored, from /proc/<pid>/task/*/stat of ocicache's threads (grouped by name), /proc/<pid>/stat of the upstream docker-registry, and the bench's exited children (curl); everything shares ${cores} cores`,
      headers: ["target", "part", "CPU s", "share"],
      rows,
    });
  }
  if (r.concurrent.length) {
    const bytes = Number(size) * MiB;
    out.push({
      title: `3. Concurrent cold clients of one fresh ${size} MiB layer`,
      note:
        `median of ${r.meta.settings.coldReps} runs each; upstream traffic counted by a TCP relay between cache and upstream ("× layer" = bytes received from upstream / layer size; GETs = upstream blob GET request lines); CPU s = CPU time of the cache process and of the curl clients from the first request until the blob is stored, on a machine with ${r.meta.machine.nproc} cores`,
      headers: [
        "target",
        "clients",
        "wall s",
        "wall vs 1 client",
        "upstream MiB",
        "× layer",
        "upstream blob GETs",
        "aggregate MiB/s",
        "cache CPU s",
        "clients CPU s",
      ],
      rows: r.concurrent.flatMap((x) => {
        const w1 = med(x.single.wallS);
        const wn = med(x.many.wallS);
        return [
          [
            x.label,
            "1",
            fmt(w1, 2),
            "1.00×",
            fmt(med(x.single.upstreamBytes) / MiB),
            fmt(med(x.single.upstreamBytes) / bytes, 2),
            fmt(med(x.single.upstreamBlobGets)),
            fmt(Number(size) / w1),
            fmt(med(x.single.cacheCpuS), 2),
            fmt(med(x.single.clientCpuS), 2),
          ],
          [
            x.label,
            String(x.clients),
            fmt(wn, 2),
            ratio(wn, w1),
            fmt(med(x.many.upstreamBytes) / MiB),
            fmt(med(x.many.upstreamBytes) / bytes, 2),
            fmt(med(x.many.upstreamBlobGets)),
            fmt(x.clients * Number(size) / wn),
            fmt(med(x.many.cacheCpuS), 2),
            fmt(med(x.many.clientCpuS), 2),
          ],
        ];
      }),
    });
  }
  if (r.manifest.length) {
    const peer = r.manifest.find((x) => x.key === "peer")?.load;
    out.push({
      title: "4. Warm manifest by tag",
      note:
        `${r.meta.settings.manifestConcurrency} concurrent keep-alive connections, closed loop, ${r.meta.settings.manifestSeconds} s after a 1 s warm-up; fetch-based load generator in the bench process (shares the ${r.meta.machine.nproc} cores); upstream requests counted by the relay over 100 sequential GETs through a second instance of each cache`,
      headers: [
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "req/s vs peer",
        "p99 vs peer",
        "upstream req per 100 GETs",
      ],
      rows: r.manifest.map((x) => [
        x.label,
        fmt(x.load.rps),
        fmt(x.load.p50Ms, 2),
        fmt(x.load.p99Ms, 2),
        fmt(x.load.maxMs, 1),
        fmt(x.load.errors),
        ratio(x.load.rps, peer?.rps),
        ratio(x.load.p99Ms, peer?.p99Ms),
        x.key === "upstream" ? "n/a" : fmt(x.upstreamPer100),
      ]),
    });
  }
  if (r.startup.length) {
    out.push({
      title: "5. Start-up to a ready GET /v2/",
      note:
        `spawn → first 200 on /v2/ (polled every 5 ms), fresh empty storage each time; median of ${r.meta.settings.startupRuns} after one unmeasured first start`,
      headers: ["how", "median ms", "range ms", "first start ms"],
      rows: r.startup.map((
        x,
      ) => [x.label, fmt(med(x.ms)), spread(x.ms), fmt(x.firstMs)]),
    });
  }
  if (r.rss.length) {
    out.push({
      title:
        `6. Memory during ${r.meta.settings.rssClients} concurrent warm GETs of the ${size} MiB layer`,
      note:
        'ocicache: a fresh process on the warm store; VmHWM from /proc/<pid>/status after the GETs; VmRSS sampled every 20 ms; the peer row is a reference from the long-running peer (its "after start" = just before these GETs)',
      headers: [
        "process",
        "RSS after start MiB",
        "peak VmHWM MiB",
        "max sampled RSS MiB",
        "aggregate MiB/s",
        "note",
      ],
      rows: r.rss.map((
        x,
      ) => [
        x.label,
        fmt(x.baselineKiB / 1024, 1),
        fmt(x.hwmKiB / 1024, 1),
        fmt(x.sampledMaxKiB / 1024, 1),
        fmt(x.aggregateMiBps),
        x.note ?? "",
      ]),
    });
  }
  if (r.skopeo?.length) {
    const peer = med(r.skopeo.find((x) => x.key === "peer")?.wallS);
    const x0 = r.skopeo[0];
    out.push({
      title: `7. skopeo copy of a ${x0.layers}-layer image (${
        fmt(x0.imageBytes / MiB)
      } MiB), warm — lower wall time is better`,
      note:
        `\`skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG dir:FRESH_TMP\`, median of ${r.meta.settings.skopeoReps} warm copies per target (interleaved, after one cold filling copy and one unmeasured warm copy); wall time includes skopeo's own start-up, tag resolution and writing the blobs to disk; "vs peer" = wall time ÷ the peer's (below 1.00× = faster than the peer)`,
      headers: [
        "target",
        "warm wall s (median)",
        "range s",
        "MiB/s",
        "cold first copy s",
        "wall vs peer (lower is better)",
      ],
      rows: r.skopeo.map((x) => {
        const m = med(x.wallS);
        return [
          x.label,
          fmt(m, 3),
          spread(x.wallS, 3),
          fmt(x.imageBytes / MiB / m),
          fmt(x.firstS, 2),
          ratio(m, peer),
        ];
      }),
    });
  }
  return out;
}

/** One bar of the ratio chart. */
interface Bar {
  group: string;
  label: string;
  value: number;
  higherIsBetter: boolean;
}

/** The ratios the chart shows: every ocicache row against its references. */
function chartBars(r: Results): Bar[] {
  const bars: Bar[] = [];
  const isOci = (key: string) => key.startsWith("ocicache");
  const tp = (rows: ThroughputRow[], key: string) =>
    med(rows.find((x) => x.key === key)?.mibps);
  const add = (group: string, label: string, a: number, b: number, hib = true) => {
    const v = a / b;
    if (Number.isFinite(v) && v > 0) bars.push({ group, label, value: v, higherIsBetter: hib });
  };
  for (const [ref, name] of [["peer", "peer"], ["upstream", "upstream direct"], ["disk", "disk read"]]) {
    for (const x of r.warm.filter((x) => isOci(x.key))) {
      add(`Warm blob GET throughput vs ${name}`, x.label, med(x.mibps), tp(r.warm, ref));
    }
  }
  for (const [ref, name] of [["peer", "peer"], ["upstream", "upstream direct"]]) {
    for (const x of r.cold.filter((x) => isOci(x.key))) {
      add(`Cold blob GET throughput vs ${name}`, x.label, med(x.mibps), tp(r.cold, ref));
    }
  }
  const peerRps = r.manifest.find((x) => x.key === "peer")?.load.rps ?? NaN;
  for (const x of r.manifest.filter((x) => isOci(x.key))) {
    add("Warm manifest-by-tag req/s vs peer", x.label, x.load.rps, peerRps);
  }
  const peerWall = med(r.skopeo?.find((x) => x.key === "peer")?.wallS);
  for (const x of (r.skopeo ?? []).filter((x) => isOci(x.key))) {
    add("skopeo copy, warm: wall time vs peer (lower is better)", x.label, med(x.wallS), peerWall, false);
  }
  return bars;
}

const xml = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/**
 * docs/benchmarks.svg: horizontal bars of ocicache's ratios against the references, on a log2
 * axis centred on 1× (a bar to the right = a higher figure than the reference). Green = better
 * than the reference, orange = worse. Undefined when there is nothing to chart.
 */
export function renderSvg(r: Results): string | undefined {
  const bars = chartBars(r);
  if (!bars.length) return undefined;
  const logs = bars.map((b) => Math.log2(b.value));
  const lo = Math.min(-1, Math.floor(Math.min(...logs)));
  const hi = Math.max(1, Math.ceil(Math.max(...logs)));
  const labelW = 230, plotW = 520, valueW = 70, padX = 16;
  const rowH = 20, groupH = 26, top = 58, axisH = 24;
  const width = padX * 2 + labelW + plotW + valueW;
  const x = (v: number) => padX + labelW + ((Math.log2(v) - lo) / (hi - lo)) * plotW;
  const groups = [...new Set(bars.map((b) => b.group))];
  const height = top + groups.length * groupH + bars.length * rowH + axisH + 30;
  const el: string[] = [];
  const plotTop = top - 6, plotBottom = height - axisH - 30;
  for (let e = lo; e <= hi; e++) {
    const gx = x(2 ** e).toFixed(1);
    el.push(
      `<line x1="${gx}" y1="${plotTop}" x2="${gx}" y2="${plotBottom}" stroke="${e === 0 ? "#444" : "#ddd"}" stroke-width="${e === 0 ? 1.5 : 1}"/>`,
      `<text x="${gx}" y="${plotBottom + 16}" text-anchor="middle" class="t">${2 ** e >= 1 ? 2 ** e : `1/${2 ** -e}`}×</text>`,
    );
  }
  let y = top;
  for (const g of groups) {
    el.push(`<text x="${padX}" y="${y + 17}" class="g">${xml(g)}</text>`);
    y += groupH;
    for (const b of bars.filter((b) => b.group === g)) {
      const better = b.higherIsBetter ? b.value >= 1 : b.value <= 1;
      const x1 = x(1), x2 = x(b.value);
      const left = Math.min(x1, x2), w = Math.max(1, Math.abs(x2 - x1));
      el.push(
        `<text x="${padX + 12}" y="${y + 14}" class="t">${xml(b.label)}</text>`,
        `<rect x="${left.toFixed(1)}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${better ? "#2e9e5b" : "#e08a2e"}"><title>${xml(`${b.group}: ${b.label} ${b.value.toFixed(2)}×`)}</title></rect>`,
        `<text x="${(b.value >= 1 ? x2 + 4 : padX + labelW + plotW + 4).toFixed(1)}" y="${y + 14}" class="t">${b.value.toFixed(2)}×</text>`,
      );
      y += rowH;
    }
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="-apple-system, Segoe UI, Helvetica, Arial, sans-serif">`,
    `<style>.t{font-size:12px;fill:#222}.g{font-size:13px;font-weight:600;fill:#111}.h{font-size:15px;font-weight:700;fill:#111}.s{font-size:11px;fill:#555}</style>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${padX}" y="22" class="h">ocicache vs its references (ratio, log scale; 1× = same as the reference)</text>`,
    `<text x="${padX}" y="40" class="s">${xml(`deno task bench, ${r.meta.date.slice(0, 10)}, ${r.meta.machine.nproc} cores · green = better than the reference, orange = worse`)}</text>`,
    ...el,
    `<text x="${padX + labelW + plotW / 2}" y="${height - 10}" text-anchor="middle" class="s">ratio ocicache / reference</text>`,
    `</svg>`,
    "",
  ].join("\n");
}

function pad(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) =>
    Math.max(...rows.map((r) => (r[i] ?? "").length))
  );
  return rows.map((r) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ").trimEnd()
  );
}

/** Plain-text tables for the terminal. */
export function renderText(r: Results): string {
  const parts: string[] = [];
  for (const t of tables(r)) {
    const lines = pad([t.headers, ...t.rows]);
    parts.push(
      `${t.title}\n  (${t.note})\n  ${lines[0]}\n  ${
        "-".repeat(lines[0].length)
      }\n${lines.slice(1).map((l) => "  " + l).join("\n")}`,
    );
  }
  return parts.join("\n\n");
}

const esc = (s: string) => s.replace(/\|/g, "\\|");

/** docs/benchmarks.md */
export function renderMarkdown(r: Results): string {
  const m = r.meta;
  const lines: string[] = [
    "# Benchmarks",
    "",
    "Generated by `deno task bench` (`scripts/bench.ts`); rerun it to refresh this file. Raw figures:",
    "`test-output/bench.json`. Every ratio compares figures measured in the same run on the same",
    "machine. Treat them as a smoke-level picture of one small VM, not as absolute numbers.",
    "",
    "## What runs",
    "",
    "- **ocicache** as a child process, `serve --listen 127.0.0.1:PORT --storage TMP --registry up=UPSTREAM",
    "  --default-registry up --log-level warn`: the compiled binary `dist/ocicache-linux-x64` (Bun) when it",
    "  exists, and `deno run -A src/main.ts`.",
    "- **upstream**: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1, filled through its upload API",
    "  (chunked PATCH + PUT ?digest=) with random layers; each fresh layer = 64 unique random bytes + one",
    "  random base file, so every blob is different.",
    "- **peer**: a second `docker-registry` with `proxy.remoteurl` = the upstream (distribution's own",
    "  pull-through cache).",
    `- Blob transfers are timed by \`${m.client}\` (\`-o /dev/null\`, its own timer); the manifest load`,
    "  generator is fetch-based and runs inside the bench process.",
    "- Upstream traffic (test 3) is counted by a TCP relay (`scripts/bench/count_proxy.ts`) placed between",
    "  a dedicated cache instance and the upstream.",
    "- Test 7 builds a multi-layer OCI image (`makeImageLayout` from `test/support/fixtures.ts`: gzip'd",
    "  tars of random bytes), pushes it to the upstream with `skopeo copy`, and times `skopeo copy` of it",
    "  to a fresh `dir:` through each cache (`docker://CACHE/up/bench/multi:v1` for ocicache,",
    "  `docker://PEER/bench/multi:v1` for the peer).",
    "",
    "## Machine and run",
    "",
    "| | |",
    "|---|---|",
    `| date | ${m.date} |`,
    ...Object.entries(m.machine).map(([k, v]) =>
      `| ${esc(k)} | ${esc(String(v))} |`
    ),
    ...Object.entries(m.versions).map(([k, v]) => `| ${esc(k)} | ${esc(v)} |`),
    ...Object.entries(m.settings).map(([k, v]) =>
      `| setting: ${esc(k)} | ${esc(String(v))} |`
    ),
    `| load average at start / end | ${
      m.loadavgStart.map((x) => x.toFixed(2)).join(" ")
    } / ${(m.loadavgEnd ?? []).map((x) => x.toFixed(2)).join(" ")} |`,
    `| total bench run time | ${
      m.totalSeconds !== undefined ? `${m.totalSeconds.toFixed(0)} s` : "–"
    } |`,
    "",
    "## Results",
    "",
    ...(chartBars(r).length
      ? [
        "![ocicache's ratios against the peer, the upstream and the disk (log scale)](benchmarks.svg)",
        "",
        "`docs/benchmarks.svg`, drawn from the tables below: each bar is one ocicache ratio against a reference",
        "measured in the same run, on a log scale around 1×; green = better than the reference, orange = worse",
        "(for the skopeo wall time a shorter ratio is better).",
        "",
      ]
      : []),
  ];
  for (const t of tables(r)) {
    lines.push(`### ${t.title}`, "", `${t.note}.`, "");
    lines.push(`| ${t.headers.map(esc).join(" | ")} |`);
    lines.push(
      `|${
        t.headers.map((h, i) => (i === 0 || h === "note" ? "---" : "---:"))
          .join("|")
      }|`,
    );
    for (const row of t.rows) lines.push(`| ${row.map(esc).join(" | ")} |`);
    lines.push("");
  }
  if (m.notes.length) {
    lines.push("## Observations from this run", "");
    for (const n of m.notes) lines.push(`- ${n}`);
    lines.push("");
  }
  return lines.join("\n");
}
