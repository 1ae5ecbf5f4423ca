/**
 * Prometheus text exposition (format 0.0.4): counters, gauges and histograms with labels, kept
 * in memory and rendered on scrape. No dependency.
 * @module
 */

type Labels = Record<string, string>;

function key(labels: Labels): string {
  return Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join("\u0000");
}

function fmtLabels(labels: Labels, extra?: Labels): string {
  const all = { ...labels, ...extra };
  const parts = Object.keys(all).map((k) => `${k}="${all[k].replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

interface Metric {
  render(): string;
}

/** A monotonically increasing count per label set. */
export class Counter implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}

  /** Add `n` (default 1) for these labels. */
  inc(labels: Labels = {}, n = 1): void {
    const k = key(labels);
    const v = this.#values.get(k);
    if (v) v.value += n;
    else this.#values.set(k, { labels, value: n });
  }

  /** The current value for these labels (0 if never incremented). */
  get(labels: Labels = {}): number {
    return this.#values.get(key(labels))?.value ?? 0;
  }

  /** Sum over every label set whose labels include `match`. */
  sum(match: Labels = {}): number {
    let s = 0;
    for (const { labels, value } of this.#values.values()) {
      if (Object.entries(match).every(([k, v]) => labels[k] === v)) s += value;
    }
    return s;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const { labels, value } of this.#values.values()) lines.push(`${this.name}${fmtLabels(labels)} ${value}`);
    return lines.join("\n");
  }
}

/** A value read when scraped. */
export class Gauge implements Metric {
  constructor(readonly name: string, readonly help: string, private readonly read: () => number | Promise<number>) {}
  #last = 0;

  /** Read the current value (kept for render). */
  async collect(): Promise<void> {
    this.#last = await this.read();
  }

  render(): string {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`, `${this.name} ${this.#last}`].join("\n");
  }
}

/** Observations in cumulative buckets, per label set. */
export class Histogram implements Metric {
  readonly #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {}

  /** Record one observation. */
  observe(labels: Labels, value: number): void {
    const k = key(labels);
    let s = this.#series.get(k);
    if (!s) {
      s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.#series.set(k, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]) s.counts[i]++;
    s.sum += value;
    s.count++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.#series.values()) {
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket${fmtLabels(s.labels, { le: String(b) })} ${s.counts[i]}`));
      lines.push(`${this.name}_bucket${fmtLabels(s.labels, { le: "+Inf" })} ${s.count}`);
      lines.push(`${this.name}_sum${fmtLabels(s.labels)} ${s.sum}`);
      lines.push(`${this.name}_count${fmtLabels(s.labels)} ${s.count}`);
    }
    return lines.join("\n");
  }
}

/** Every metric ocicache exports. */
export class Metrics {
  readonly requests = new Counter("ocicache_requests_total", "Requests answered, by endpoint, status and cache result.");
  readonly bytesServed = new Counter("ocicache_served_bytes_total", "Body bytes sent to clients (Content-Length of answered requests), by endpoint and cache result.");
  readonly upstreamRequests = new Counter("ocicache_upstream_requests_total", "Requests sent to upstream registries, by registry and kind.");
  readonly upstreamErrors = new Counter("ocicache_upstream_errors_total", "Upstream requests that failed (no answer, timeout or 5xx), by registry.");
  readonly upstreamBytes = new Counter("ocicache_upstream_bytes_total", "Body bytes received from upstream registries, by registry.");
  readonly upstreamLatency = new Histogram(
    "ocicache_upstream_request_duration_seconds",
    "Time to an upstream's response headers, by registry.",
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  );
  readonly storeFailures = new Counter("ocicache_store_failures_total", "Downloads that were not stored (digest mismatch, upstream broke off, disk error).");
  readonly #gauges: Gauge[] = [];

  /** Add a gauge read on every scrape. */
  gauge(name: string, help: string, read: () => number | Promise<number>): void {
    this.#gauges.push(new Gauge(name, help, read));
  }

  /** The exposition text. */
  async render(): Promise<string> {
    await Promise.all(this.#gauges.map((g) => g.collect()));
    const all: Metric[] = [
      this.requests,
      this.bytesServed,
      this.upstreamRequests,
      this.upstreamErrors,
      this.upstreamBytes,
      this.upstreamLatency,
      this.storeFailures,
      ...this.#gauges,
    ];
    return all.map((m) => m.render()).join("\n") + "\n";
  }
}
