/**
 * The benchmark's clients: one blob GET timed by curl (a separate C process, so the bench's own
 * JavaScript does not compete for the client side), a fetch fallback when curl is missing, a
 * verifying GET (sha256 of the body), N concurrent GETs, a closed-loop manifest load generator
 * on fetch, and the read-the-file-from-disk reference.
 * @module
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { MiB, percentileSorted, which } from "./util.ts";

/** One timed transfer. */
export interface Transfer {
  status: number;
  bytes: number;
  /** Seconds from start to last byte. */
  seconds: number;
  /** Seconds to the first body byte. */
  ttfbSeconds: number;
}

const CURL = which("curl");

/** Whether transfers are timed with curl (else with fetch in this process). */
export const clientKind = CURL ? "curl" : "fetch";

function curlGet(url: string, timeoutS: number): Promise<Transfer> {
  return new Promise((resolve, reject) => {
    const child = spawn(CURL!, [
      "-sS",
      "-o",
      "/dev/null",
      "--max-time",
      String(timeoutS),
      "-w",
      "%{http_code} %{size_download} %{time_total} %{time_starttransfer}",
      url,
    ], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (b) => (out += b));
    child.stderr.on("data", (b) => (err += b));
    child.once("error", reject);
    child.once("close", (code) => {
      const [status, bytes, total, ttfb] = out.trim().split(" ").map(Number);
      if (code !== 0) {
        return reject(
          new Error(`curl ${url}: exit ${code} ${err.trim()} (${out.trim()})`),
        );
      }
      resolve({ status, bytes, seconds: total, ttfbSeconds: ttfb });
    });
  });
}

async function fetchGet(url: string, timeoutS: number): Promise<Transfer> {
  const t0 = performance.now();
  const res = await fetch(url, {
    signal: AbortSignal.timeout(timeoutS * 1000),
  });
  let ttfb = 0;
  let bytes = 0;
  if (res.body) {
    for await (const chunk of res.body) {
      if (bytes === 0) ttfb = performance.now() - t0;
      bytes += chunk.length;
    }
  }
  return {
    status: res.status,
    bytes,
    seconds: (performance.now() - t0) / 1000,
    ttfbSeconds: ttfb / 1000,
  };
}

/** GET `url`, discard the body, time it; throws unless 200 with `expectBytes` bytes. */
export async function timedGet(
  url: string,
  expectBytes: number,
  timeoutS = 300,
): Promise<Transfer> {
  const t = CURL ? await curlGet(url, timeoutS) : await fetchGet(url, timeoutS);
  if (t.status !== 200 || t.bytes !== expectBytes) {
    throw new Error(
      `GET ${url}: HTTP ${t.status}, ${t.bytes} bytes (expected 200 with ${expectBytes})`,
    );
  }
  return t;
}

/** `n` concurrent {@link timedGet}s; wall time measured here, from first spawn to last exit. */
export async function concurrentGets(
  url: string,
  n: number,
  expectBytes: number,
  timeoutS = 300,
): Promise<{ wallSeconds: number; transfers: Transfer[] }> {
  const t0 = performance.now();
  const transfers = await Promise.all(
    Array.from({ length: n }, () => timedGet(url, expectBytes, timeoutS)),
  );
  return { wallSeconds: (performance.now() - t0) / 1000, transfers };
}

/** GET with fetch, hash the body: throws unless 200 and the sha256 is `digest`. */
export async function verifiedGet(
  url: string,
  digest: string,
  timeoutS = 300,
): Promise<Transfer> {
  const t0 = performance.now();
  const res = await fetch(url, {
    signal: AbortSignal.timeout(timeoutS * 1000),
  });
  const h = createHash("sha256");
  let bytes = 0;
  let ttfb = 0;
  if (res.body) {
    for await (const chunk of res.body) {
      if (bytes === 0) ttfb = performance.now() - t0;
      h.update(chunk);
      bytes += chunk.length;
    }
  }
  const got = "sha256:" + h.digest("hex");
  if (res.status !== 200 || got !== digest) {
    throw new Error(
      `GET ${url}: HTTP ${res.status}, body hashes to ${got}, expected ${digest}`,
    );
  }
  return {
    status: res.status,
    bytes,
    seconds: (performance.now() - t0) / 1000,
    ttfbSeconds: ttfb / 1000,
  };
}

/** Read a file with node:fs in 1 MiB chunks into one reused buffer; returns seconds. */
export async function readFileTimed(
  path: string,
): Promise<{ bytes: number; seconds: number }> {
  const t0 = performance.now();
  const fh = await open(path, "r");
  let bytes = 0;
  try {
    const buf = new Uint8Array(MiB);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      bytes += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { bytes, seconds: (performance.now() - t0) / 1000 };
}

/** Result of a load run. */
export interface LoadResult {
  requests: number;
  errors: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

/**
 * Closed loop: `concurrency` workers each GET `url` (with `headers`) back to back for
 * `durationMs`, reading every body. Non-200 answers count as errors.
 */
export async function closedLoop(
  url: string,
  headers: Record<string, string>,
  concurrency: number,
  durationMs: number,
  expectBytes?: number,
): Promise<LoadResult> {
  const lat: number[] = [];
  let errors = 0;
  let firstError = "";
  const t0 = performance.now();
  const end = t0 + durationMs;
  const worker = async () => {
    while (performance.now() < end) {
      const s = performance.now();
      try {
        const res = await fetch(url, {
          headers,
          signal: AbortSignal.timeout(10_000),
        });
        const body = await res.arrayBuffer();
        if (
          res.status !== 200 ||
          (expectBytes !== undefined && body.byteLength !== expectBytes)
        ) {
          errors++;
          firstError ||= `HTTP ${res.status}, ${body.byteLength} bytes`;
          continue;
        }
        lat.push(performance.now() - s);
      } catch (e) {
        errors++;
        firstError ||= (e as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - t0) / 1000;
  if (errors > 0) {
    console.error(`  ${errors} errors from ${url}; first: ${firstError}`);
  }
  const sorted = Float64Array.from(lat).sort();
  return {
    requests: lat.length,
    errors,
    seconds,
    rps: lat.length / seconds,
    p50Ms: percentileSorted(sorted, 50),
    p90Ms: percentileSorted(sorted, 90),
    p99Ms: percentileSorted(sorted, 99),
    maxMs: sorted.length ? sorted[sorted.length - 1] : NaN,
  };
}
