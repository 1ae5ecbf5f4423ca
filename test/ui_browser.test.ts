/**
 * The status page in a real browser: Debian's Chromium (`apt-get install chromium
 * fonts-liberation`) driven by playwright-core (from npm, via deno.json), against an ocicache
 * process (the compiled binary when OCICACHE_BIN is set) fronting in-process fake upstreams.
 * Loads `/`, pulls images through the cache, watches the counters and the chart change on the
 * page's own refresh, sees a download in flight as a labelled progress bar, checks the phone
 * layout, and saves screenshots under OCICACHE_TEST_OUTPUT (default test-output/). No console
 * errors allowed. Without Chromium or playwright-core the test is skipped loudly; with
 * OCICACHE_E2E_REQUIRED=1 it fails instead.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { type FakeRegistry, imageManifest, randomBytes, startFakeRegistry } from "./support/fake_registry.ts";
import { REPO_ROOT, startOcicache } from "./support/ocicache_process.ts";
import { freePort } from "./support/real_registry.ts";

const CHROMIUM = process.env.OCICACHE_CHROMIUM ?? "/usr/bin/chromium";
/** The flags that work here as root without a display (see /work/shared/toolchain.md). */
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const OUT = resolve(process.env.OCICACHE_TEST_OUTPUT ?? join(REPO_ROOT, "test-output"));
const MANIFEST = "application/vnd.oci.image.manifest.v1+json";

// deno-lint-ignore no-explicit-any
type Playwright = any;

/** The browser's globals, inside functions Playwright runs in the page (no DOM types here). */
// deno-lint-ignore no-explicit-any
type Page = any;

/** playwright-core and Chromium, or why not: skipped loudly, failed with OCICACHE_E2E_REQUIRED=1. */
async function browserOrSkip(t: { skip?: (m?: string) => void }): Promise<Playwright | null> {
  let why: string | undefined;
  let pw: Playwright = null;
  if (!existsSync(CHROMIUM)) why = `${CHROMIUM} not found; apt-get install chromium fonts-liberation`;
  else {
    try {
      pw = await import("playwright-core");
    } catch (e) {
      why = `playwright-core cannot be imported (${(e as Error).message.split("\n")[0]}); run \`deno install\``;
    }
  }
  if (!why) return pw;
  if (process.env.OCICACHE_E2E_REQUIRED === "1") throw new Error(`OCICACHE_E2E_REQUIRED=1 but ${why}`);
  console.error(`\n*** SKIPPED: status page browser test: ${why} (set OCICACHE_E2E_REQUIRED=1 to fail instead) ***\n`);
  t.skip?.(why);
  return null;
}

/** Put an image (config + layers) in a fake upstream under `repo:tag`. */
function putImage(up: FakeRegistry, repo: string, tag: string, layerSizes: number[], seed: number) {
  const config = randomBytes(400, seed);
  const layers = layerSizes.map((n, i) => randomBytes(n, seed * 10 + i + 1));
  const c = { digest: up.putBlob(config), size: config.length };
  const ls = layers.map((b) => ({ digest: up.putBlob(b), size: b.length }));
  up.putManifest(repo, imageManifest(c, ls), MANIFEST, tag);
  return { config: c, layers: ls };
}

/** Pull an image the way a client does: the manifest by tag, then every blob it names. Returns the requests made. */
async function pull(base: string, path: string, tag: string): Promise<number> {
  const res = await fetch(`${base}/v2/${path}/manifests/${tag}`, { headers: { accept: MANIFEST } });
  assert.equal(res.status, 200, `manifest of ${path}:${tag}`);
  const m = await res.json();
  const digests: string[] = [m.config.digest, ...m.layers.map((l: { digest: string }) => l.digest)];
  for (const d of digests) {
    const b = await fetch(`${base}/v2/${path}/blobs/${d}`);
    assert.equal(b.status, 200, `blob ${d} of ${path}`);
    await b.arrayBuffer();
  }
  return 1 + digests.length;
}

describe("status page in Chromium", () => {
  test("loads without console errors, follows a pull, shows a download in flight, fits a phone", async (t) => {
    const pw = await browserOrSkip(t);
    if (!pw) return;
    const cleanups: (() => Promise<unknown>)[] = [];
    try {
      // Three upstreams named like the real ones, all local: a quick one, a slow one, and one that is down.
      const hub = await startFakeRegistry();
      cleanups.push(() => hub.stop());
      const slow = await startFakeRegistry({ chunkSize: 32 * 1024, chunkDelayMs: 120 });
      cleanups.push(() => slow.stop());
      putImage(hub, "library/alpine", "3.20", [900_000], 11);
      putImage(hub, "library/nginx", "1.27", [1_500_000, 300_000], 12);
      const big = putImage(slow, "acme/api", "2.1", [1_200_000], 13);
      const downPort = await freePort(); // nothing listens there
      const dir = await mkdtemp(join(tmpdir(), "ocicache-ui-"));
      cleanups.push(() => rm(dir, { recursive: true, force: true }));
      const configPath = join(dir, "config.json");
      await writeFile(configPath, JSON.stringify({
        embeddedRegistries: false,
        registries: {
          "docker.io": { url: hub.url, dockerHub: true },
          "ghcr.io": { url: slow.url, tagTtl: "10m" },
          "quay.io": { url: `http://127.0.0.1:${downPort}` },
        },
        defaultRegistry: "docker.io",
      }));
      const oc = await startOcicache(["--config", configPath, "--max-size", "64MiB"]);
      cleanups.push(() => oc.stop());

      const browser = await pw.chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
      cleanups.push(() => browser.close());
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
      const page = await context.newPage();
      const problems: string[] = [];
      page.on("console", (m: Playwright) => {
        if (m.type() === "error" || m.type() === "warning") problems.push(`console.${m.type()}: ${m.text()}`);
      });
      page.on("pageerror", (e: Error) => problems.push(`page error: ${e.message}`));
      page.on("requestfailed", (r: Playwright) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

      // 1. The page loads and fills in from the API.
      const res = await page.goto(`${oc.url}/?refresh=1`);
      assert.equal(res.status(), 200);
      assert.equal(await page.title(), "ocicache status");
      await page.waitForFunction(() => /^Updated /.test((globalThis as Page).document.getElementById("updated").textContent));
      assert.equal(await page.textContent("#t-requests"), "0");
      assert.equal(await page.textContent("#s-bound"), "64.0 MiB");
      assert.equal(await page.getAttribute("#store-meter", "max"), String(64 * 1024 * 1024));
      assert.match(await page.textContent("label[for=store-meter]"), /^Blobs: 0\.0 % of the bound$/);
      assert.equal(await page.locator("#chart-ratio-data polyline").count(), 0, "no traffic, nothing drawn");
      assert.equal(await page.locator("#registries tr").count(), 3);
      const regText = await page.textContent("#registries");
      assert.ok(regText.includes(hub.url) && regText.includes("docker.io (default)"), regText);

      // 2. Pull through the cache: first from upstream, then again from the store; one pull fails upstream.
      let requests = 0;
      requests += await pull(oc.url, "docker.io/library/alpine", "3.20");
      requests += await pull(oc.url, "docker.io/library/nginx", "1.27");
      requests += await pull(oc.url, "docker.io/library/alpine", "3.20");
      requests += await pull(oc.url, "docker.io/library/alpine", "3.20");
      const failed = await fetch(`${oc.url}/v2/quay.io/prometheus/node-exporter/manifests/v1.8.0`);
      await failed.arrayBuffer();
      assert.ok(failed.status >= 500, `a down upstream is a 5xx (got ${failed.status})`);
      requests += 1;

      // 3. The page sees it on its next refresh: counters, ratio, chart, top images, errors.
      await page.waitForFunction((n: number) => (globalThis as Page).document.getElementById("t-requests").textContent === String(n), requests, { timeout: 30_000 });
      assert.equal(await page.textContent("#t-hit"), "6");
      assert.equal(await page.textContent("#t-miss"), "8", "7 fetched, 1 the down upstream could not answer");
      assert.equal(await page.textContent("#t-ratio"), "42.9 %");
      assert.equal(await page.textContent("#t-pulls"), "2", "two manifest GETs answered from the store");
      assert.match(await page.textContent("#t-saved"), /^1\.\d+ MiB$/);
      assert.ok((await page.locator("#chart-ratio-data polyline").count()) > 0, "the hit-ratio chart has a point now");
      assert.ok((await page.locator("#chart-tput-data polyline").count()) > 0, "the throughput chart has a point now");
      assert.match(await page.textContent("#c-ratio"), /latest 42\.9 %/);
      assert.match(await page.textContent("#top-pulls tr:first-child"), /docker\.io\/library\/alpine\s*3/);
      assert.match(await page.textContent("#top-bytes tr:first-child"), /docker\.io\/library\/(alpine|nginx)/);
      await page.waitForFunction(() => (globalThis as Page).document.getElementById("images").textContent.includes("library/nginx"), null, { timeout: 40_000 });
      assert.match(await page.textContent("#errors"), /quay\.io/);
      assert.match(await page.textContent("label[for=store-meter]"), /^Blobs: [1-9]\.\d % of the bound$/, "the store meter moved");
      assert.match(await page.textContent("#registries"), /failing/);

      // 4. A slow download shows up as a labelled progress bar with its waiting client.
      const blobUrl = `${oc.url}/v2/ghcr.io/acme/api/blobs/${big.layers[0].digest}`;
      const slowPull = fetch(blobUrl).then((r) => r.arrayBuffer());
      await page.waitForSelector("#downloads progress", { timeout: 20_000 });
      const label = await page.getAttribute("#downloads progress", "aria-label");
      assert.match(label ?? "", /^Download of sha256:[0-9a-f]{12}…/);
      // Under Bun the fake upstream's streamed body goes out chunked, without a size (oven-sh/bun#10507):
      // then the bar is indeterminate and says so.
      const max = await page.getAttribute("#downloads progress", "max");
      if (max === null) assert.match(await page.textContent("#downloads"), /of unknown size/);
      else assert.equal(max, String(big.layers[0].size));
      assert.match(await page.textContent("#downloads tr td:last-child"), /^1$/);
      await page.waitForFunction(() => /\/s$/.test((globalThis as Page).document.querySelector("#downloads td.num")?.textContent ?? ""), null, { timeout: 10_000 })
        .catch(() => {}); // the rate needs two samples; fine if the download ends first
      await mkdir(OUT, { recursive: true });
      const shot = join(OUT, `status-page-${RUNTIME}.png`);
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok(existsSync(shot));
      await slowPull;
      await page.waitForSelector("#downloads td.empty", { timeout: 20_000 });

      // 5. A phone: nothing wider than the screen (tables scroll inside their own boxes).
      await page.setViewportSize({ width: 390, height: 844 });
      await page.waitForTimeout(300);
      const overflow = await page.evaluate(() => (globalThis as Page).document.documentElement.scrollWidth - (globalThis as Page).innerWidth);
      assert.ok(overflow <= 0, `the page is ${overflow}px wider than a 390px screen`);
      await page.screenshot({ path: join(OUT, `status-page-phone-${RUNTIME}.png`), fullPage: true });

      assert.deepEqual(problems, [], "no console errors, page errors or failed requests");
    } finally {
      for (const c of cleanups.reverse()) await c().catch((e) => console.error("cleanup:", e));
    }
  });
});
