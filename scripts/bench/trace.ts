/**
 * A synthetic, seeded, deterministic trace of image pulls through a registry cache, for the
 * eviction benchmark (`scripts/bench/eviction.ts`).
 *
 * The world:
 * - `baseStacks` base images (think debian, alpine, ubuntu, node, python, …), each a stack of
 *   2‥4 layers of 3‥80 MiB (log-uniform). Their popularity is Zipf too. Now and then
 *   (`baseUpdateProb` per pull) a base is rebuilt: a new top layer (sometimes all layers);
 *   images built after that use the new version.
 * - `images` application images, popularity Zipf(`zipfExponent`) over their rank. Each is a
 *   base stack plus 1‥8 app layers of 1 KiB‥200 MiB (log-uniform), a config (1‥20 KiB) and a
 *   manifest (0.5‥4 KiB). Before a pull, with probability `updateProb`, the image is rebuilt:
 *   new manifest and config, the app layers from a random point upward replaced, and rebased
 *   on its base's current version.
 * - one-hit wonders: a `oneHitFraction` of pulls are images pulled exactly once (CI artefacts,
 *   someone's test push): a popular base plus 1‥6 fresh app layers, config, manifest.
 *
 * Pulling an image requests its manifest, its config, then each layer bottom-up. Pulls follow
 * each other until the trace holds `requests` object requests.
 *
 * The PRNG is a 32-bit SplitMix-style generator, so a seed gives the same trace on every
 * runtime.
 * @module
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** Knobs of the generator, all with defaults. */
export interface TraceParams {
  seed: number;
  /** Object requests to generate (the trace stops at the end of the pull that reaches it). */
  requests: number;
  images: number;
  zipfExponent: number;
  baseStacks: number;
  baseZipfExponent: number;
  /** Per pull of a regular image: it is rebuilt first. */
  updateProb: number;
  /** Per pull: the pulled image's base gets a new version first. */
  baseUpdateProb: number;
  /** Share of pulls that are one-hit-wonder images. */
  oneHitFraction: number;
}

export const DEFAULT_TRACE_PARAMS: TraceParams = {
  seed: 42,
  requests: 200_000,
  images: 400,
  zipfExponent: 1.0,
  baseStacks: 12,
  baseZipfExponent: 1.0,
  updateProb: 0.02,
  baseUpdateProb: 0.002,
  oneHitFraction: 0.25,
};

/** Kind of object, for the per-kind figures. */
export const Kind = { Manifest: 0, Config: 1, BaseLayer: 2, AppLayer: 3 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

/** The generated trace: objects, and requests as object ids in order. */
export interface Trace {
  params: TraceParams;
  /** Object id → key (a fake sha256 digest). */
  keys: string[];
  /** Object id → bytes. */
  sizes: number[];
  /** Object id → kind. */
  kinds: Kind[];
  /** Object ids, in request order. */
  requests: Int32Array;
  pulls: number;
  oneHitPulls: number;
  imageVersions: number;
  baseVersions: number;
}

/** Summary numbers of a trace. */
export interface TraceSummary {
  requests: number;
  pulls: number;
  oneHitPulls: number;
  distinctObjects: number;
  /** Bytes of all distinct objects (the working set the capacities are fractions of). */
  workingSetBytes: number;
  /** Bytes of all requests. */
  requestedBytes: number;
  /** Objects requested exactly once, and their bytes. */
  singleUseObjects: number;
  singleUseBytes: number;
  /** The cold-miss floor: a cache of unbounded size still fetches every object once. */
  compulsoryByteMissRatio: number;
  compulsoryObjectMissRatio: number;
  byKind: Record<string, { objects: number; bytes: number; requests: number; requestedBytes: number }>;
  imageVersions: number;
  baseVersions: number;
}

/** A seeded PRNG: uniform [0, 1). SplitMix32 (a 32-bit variant of SplitMix64's mixer). */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 4294967296;
  };
}

/** A sampler of ranks 0‥n−1 with P(k) ∝ 1/(k+1)^s. */
export function zipf(n: number, s: number, rand: () => number): () => number {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 0; k < n; k++) {
    sum += 1 / Math.pow(k + 1, s);
    cdf[k] = sum;
  }
  return () => {
    const u = rand() * sum;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

/** Generate the trace for `params` (missing fields take the defaults). */
export function generateTrace(partial: Partial<TraceParams> = {}): Trace {
  const p: TraceParams = { ...DEFAULT_TRACE_PARAMS, ...partial };
  const rand = prng(p.seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const logUniform = (lo: number, hi: number) => Math.round(Math.exp(Math.log(lo) + rand() * (Math.log(hi) - Math.log(lo))));

  const keys: string[] = [];
  const sizes: number[] = [];
  const kinds: Kind[] = [];
  const object = (kind: Kind, size: number): number => {
    const id = keys.length;
    // A fake digest: unique, digest-shaped, deterministic.
    keys.push(`sha256:${(id + 1).toString(16).padStart(16, "0")}${"0".repeat(48)}`);
    sizes.push(size);
    kinds.push(kind);
    return id;
  };
  const baseLayer = () => object(Kind.BaseLayer, logUniform(3 * MiB, 80 * MiB));
  const appLayer = () => object(Kind.AppLayer, logUniform(1 * KiB, 200 * MiB));
  const config = () => object(Kind.Config, logUniform(1 * KiB, 20 * KiB));
  const manifest = () => object(Kind.Manifest, logUniform(512, 4 * KiB));

  // Base stacks: current layer list of each.
  let baseVersions = 0;
  const bases: number[][] = [];
  for (let b = 0; b < p.baseStacks; b++) {
    const n = int(2, 4);
    const layers: number[] = [];
    for (let i = 0; i < n; i++) layers.push(baseLayer());
    bases.push(layers);
    baseVersions++;
  }
  const pickBase = zipf(p.baseStacks, p.baseZipfExponent, rand);

  interface Image {
    base: number;
    baseLayers: number[];
    app: number[];
    config: number;
    manifest: number;
  }
  let imageVersions = 0;
  const build = (base: number, app: number[]): Image => {
    imageVersions++;
    return { base, baseLayers: bases[base], app, config: config(), manifest: manifest() };
  };
  const images: Image[] = [];
  for (let i = 0; i < p.images; i++) {
    const n = int(1, 8);
    const app: number[] = [];
    for (let j = 0; j < n; j++) app.push(appLayer());
    images.push(build(pickBase(), app));
  }
  // Shuffle which image gets which popularity rank, so rank and base choice are independent.
  const rankToImage = Array.from({ length: p.images }, (_, i) => i);
  for (let i = rankToImage.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [rankToImage[i], rankToImage[j]] = [rankToImage[j], rankToImage[i]];
  }
  const pickImage = zipf(p.images, p.zipfExponent, rand);

  const out: number[] = [];
  let pulls = 0;
  let oneHitPulls = 0;
  const pull = (img: Image) => {
    out.push(img.manifest, img.config, ...img.baseLayers, ...img.app);
    pulls++;
  };
  while (out.length < p.requests) {
    if (rand() < p.oneHitFraction) {
      const n = int(1, 6);
      const app: number[] = [];
      for (let j = 0; j < n; j++) app.push(appLayer());
      pull(build(pickBase(), app));
      oneHitPulls++;
      continue;
    }
    const idx = rankToImage[pickImage()];
    let img = images[idx];
    if (rand() < p.baseUpdateProb) {
      // Rebuild the base: usually only its top layer, sometimes all of it.
      const layers = [...bases[img.base]];
      if (rand() < 0.25) for (let i = 0; i < layers.length; i++) layers[i] = baseLayer();
      else layers[layers.length - 1] = baseLayer();
      bases[img.base] = layers;
      baseVersions++;
    }
    if (rand() < p.updateProb) {
      // Rebuild the image: the app layers from a random point upward change; rebase.
      const from = int(0, img.app.length - 1);
      const app = img.app.slice(0, from);
      for (let j = from; j < img.app.length; j++) app.push(appLayer());
      img = images[idx] = build(img.base, app);
    }
    pull(img);
  }
  return {
    params: p,
    keys,
    sizes,
    kinds,
    requests: Int32Array.from(out),
    pulls,
    oneHitPulls,
    imageVersions,
    baseVersions,
  };
}

const KIND_NAMES = ["manifest", "config", "baseLayer", "appLayer"];

/** Working set, request bytes, single-use objects, per-kind totals. */
export function summarize(t: Trace): TraceSummary {
  const seen = new Uint32Array(t.keys.length);
  let requestedBytes = 0;
  const byKind: TraceSummary["byKind"] = {};
  for (const k of KIND_NAMES) byKind[k] = { objects: 0, bytes: 0, requests: 0, requestedBytes: 0 };
  for (const id of t.requests) {
    seen[id]++;
    requestedBytes += t.sizes[id];
    const k = byKind[KIND_NAMES[t.kinds[id]]];
    k.requests++;
    k.requestedBytes += t.sizes[id];
  }
  let distinct = 0;
  let ws = 0;
  let single = 0;
  let singleBytes = 0;
  for (let id = 0; id < seen.length; id++) {
    if (seen[id] === 0) continue; // built but never pulled (an image rebuilt twice in between)
    distinct++;
    ws += t.sizes[id];
    const k = byKind[KIND_NAMES[t.kinds[id]]];
    k.objects++;
    k.bytes += t.sizes[id];
    if (seen[id] === 1) {
      single++;
      singleBytes += t.sizes[id];
    }
  }
  return {
    requests: t.requests.length,
    pulls: t.pulls,
    oneHitPulls: t.oneHitPulls,
    distinctObjects: distinct,
    workingSetBytes: ws,
    requestedBytes,
    singleUseObjects: single,
    singleUseBytes: singleBytes,
    compulsoryByteMissRatio: ws / requestedBytes,
    compulsoryObjectMissRatio: distinct / t.requests.length,
    byKind,
    imageVersions: t.imageVersions,
    baseVersions: t.baseVersions,
  };
}
