/**
 * The status page served at `GET /`: one self-contained HTML document (CSS and a small script
 * inline; no CDN, no web fonts, no file read at run time, so it is embedded in the single binary).
 * The script reads `api/v1/stats` (and `api/v1/images`) every few seconds and draws everything,
 * the last-hour charts included (inline SVG polylines). Data is only ever put in the page as
 * text (`textContent`), never as markup. `?refresh=N` sets the interval in seconds (minimum 1).
 * @module
 */
import { createHash } from "node:crypto";

const STYLE = `
:root {
  color-scheme: light dark;
  --bg: #f6f7f9; --fg: #1c2128; --muted: #57606a; --card: #fff; --line: #d0d7de;
  --ok: #1a7f37; --bad: #cf222e; --idle: #6e7781; --ratio: #1a7f37; --tput: #0969da;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #9da7b3; --card: #161b22; --line: #30363d;
    --ok: #3fb950; --bad: #f85149; --idle: #8b949e; --ratio: #3fb950; --tput: #58a6ff;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", "DejaVu Sans", sans-serif;
}
header, main, footer { max-width: 76rem; margin: 0 auto; padding: 0 1rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 0 1rem; padding-top: .75rem; }
h1 { font-size: 1.4rem; margin: .25rem 0; }
h1 small { font-size: .85rem; color: var(--muted); font-weight: normal; }
h2 { font-size: 1.05rem; margin: 0 0 .5rem; }
h3 { font-size: .95rem; margin: 0 0 .35rem; }
#updated { margin: .25rem 0; color: var(--muted); font-size: .85rem; }
#updated.error { color: var(--bad); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .75rem 1rem; margin: 0 0 1rem; min-width: 0; }
.grid2 { display: grid; gap: 0 1rem; grid-template-columns: minmax(0, 1fr); }
@media (min-width: 52rem) { .grid2 { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); } .grid2 > section { margin-bottom: 1rem; } }
.grid2 { margin-bottom: 0; }
dl.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(9.5rem, 1fr)); gap: .5rem; margin: 0; }
dl.cards > div { border: 1px solid var(--line); border-radius: 4px; padding: .35rem .6rem; }
dl.cards dt { color: var(--muted); font-size: .8rem; }
dl.cards dd { margin: 0; font-size: 1.25rem; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
dl.cards dd small { display: block; font-size: .75rem; color: var(--muted); }
figure { margin: 0; }
figcaption { font-size: .9rem; margin-bottom: .2rem; }
figcaption .key { display: inline-block; width: .9rem; height: .2rem; vertical-align: middle; margin-right: .35rem; }
.charts { display: grid; gap: .75rem 1.25rem; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); }
svg.chart { display: block; width: 100%; height: 8rem; border-left: 1px solid var(--line); border-bottom: 1px solid var(--line); }
svg.chart .grid { stroke: var(--line); stroke-width: 1; stroke-dasharray: 3 3; }
svg.chart polyline { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg.chart polyline.dot { stroke-width: 7; stroke-linecap: round; }
#chart-ratio polyline { stroke: var(--ratio); }
#chart-tput polyline { stroke: var(--tput); }
.key.ratio { background: var(--ratio); }
.key.tput { background: var(--tput); }
.axis { display: flex; justify-content: space-between; font-size: .75rem; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .875rem; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .3rem .5rem .3rem 0; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { color: var(--muted); font-weight: 600; font-size: .8rem; white-space: nowrap; }
td.num, th.num { text-align: right; padding-right: .75rem; }
td.empty { color: var(--muted); font-style: italic; }
td small { display: block; color: var(--muted); font-size: .75rem; }
.mono { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: .8rem; overflow-wrap: anywhere; }
.msg { overflow-wrap: anywhere; min-width: 12rem; }
.state::before { content: ""; display: inline-block; width: .6rem; height: .6rem; border-radius: 50%; margin-right: .35rem; background: var(--idle); }
.state.ok::before { background: var(--ok); }
.state.failing { color: var(--bad); font-weight: 600; }
.state.failing::before { background: var(--bad); }
progress, meter { width: 100%; min-width: 7rem; height: 1rem; }
.store-bar { display: flex; align-items: center; gap: .75rem; margin-bottom: .5rem; }
.store-bar label { white-space: nowrap; }
.note { color: var(--muted); font-size: .8rem; margin: .4rem 0 0; }
footer { color: var(--muted); font-size: .8rem; padding-bottom: 1.5rem; }
a { color: var(--tput); }
@media (max-width: 30rem) { body { font-size: 14px; } section { padding: .6rem .65rem; } header, main, footer { padding: 0 .5rem; } }
`;

const BODY = `
<header>
  <h1>ocicache <small id="version"></small></h1>
  <p id="updated" role="status" aria-live="polite">Loading…</p>
</header>
<main>
  <section aria-labelledby="h-traffic">
    <h2 id="h-traffic">Traffic since start</h2>
    <dl class="cards">
      <div><dt>Registry requests</dt><dd id="t-requests">–</dd></div>
      <div><dt>Hit ratio</dt><dd id="t-ratio">–</dd></div>
      <div><dt>Hits</dt><dd id="t-hit">–</dd></div>
      <div><dt>Misses</dt><dd id="t-miss">–</dd></div>
      <div><dt>Stale (upstream failed)</dt><dd id="t-stale">–</dd></div>
      <div><dt>Coalesced</dt><dd id="t-coalesced">–</dd></div>
      <div><dt>Revalidated</dt><dd id="t-revalidated">–</dd></div>
      <div><dt>Bytes served</dt><dd id="t-served">–</dd></div>
      <div><dt>Upstream traffic saved</dt><dd id="t-saved">–</dd></div>
      <div><dt>Manifest pulls not sent</dt><dd id="t-pulls">–</dd></div>
      <div><dt>Fetched from upstream</dt><dd id="t-upstream">–</dd></div>
    </dl>
  </section>

  <section aria-labelledby="h-hour">
    <h2 id="h-hour">Last hour</h2>
    <div class="charts">
      <figure>
        <figcaption><span class="key ratio" aria-hidden="true"></span>Hit ratio per minute: <span id="c-ratio">–</span></figcaption>
        <svg id="chart-ratio" class="chart" viewBox="0 0 600 120" preserveAspectRatio="none" role="img" aria-labelledby="chart-ratio-title">
          <title id="chart-ratio-title">Hit ratio per minute over the last hour</title>
          <line class="grid" x1="0" x2="600" y1="10" y2="10" vector-effect="non-scaling-stroke"></line>
          <line class="grid" x1="0" x2="600" y1="60" y2="60" vector-effect="non-scaling-stroke"></line>
          <g id="chart-ratio-data"></g>
        </svg>
        <div class="axis" aria-hidden="true"><span>60 min ago · 0–100 %</span><span>now</span></div>
      </figure>
      <figure>
        <figcaption><span class="key tput" aria-hidden="true"></span>Throughput to clients: <span id="c-tput">–</span></figcaption>
        <svg id="chart-tput" class="chart" viewBox="0 0 600 120" preserveAspectRatio="none" role="img" aria-labelledby="chart-tput-title">
          <title id="chart-tput-title">Bytes served per second, per minute over the last hour</title>
          <line class="grid" x1="0" x2="600" y1="10" y2="10" vector-effect="non-scaling-stroke"></line>
          <line class="grid" x1="0" x2="600" y1="60" y2="60" vector-effect="non-scaling-stroke"></line>
          <g id="chart-tput-data"></g>
        </svg>
        <div class="axis" aria-hidden="true"><span>60 min ago · 0–<span id="c-tput-max">peak</span></span><span>now</span></div>
      </figure>
    </div>
  </section>

  <div class="grid2">
    <section aria-labelledby="h-store">
      <h2 id="h-store">Store</h2>
      <div class="store-bar" id="store-bar"></div>
      <dl class="cards">
        <div><dt>Used</dt><dd id="s-bytes">–</dd></div>
        <div><dt>Bound on blobs</dt><dd id="s-bound">–</dd></div>
        <div><dt>Objects</dt><dd id="s-objects">–</dd></div>
        <div><dt>Evictions</dt><dd id="s-evictions">–</dd></div>
      </dl>
    </section>
    <section aria-labelledby="h-downloads">
      <h2 id="h-downloads">Downloads in flight</h2>
      <div class="scroll"><table>
        <thead><tr><th scope="col">Blob</th><th scope="col">Progress</th><th scope="col" class="num">Rate</th><th scope="col" class="num">Waiting clients</th></tr></thead>
        <tbody id="downloads"></tbody>
      </table></div>
    </section>
  </div>

  <section aria-labelledby="h-registries">
    <h2 id="h-registries">Upstream registries</h2>
    <div class="scroll"><table>
      <thead><tr>
        <th scope="col">Prefix</th><th scope="col">Upstream</th><th scope="col">Health</th>
        <th scope="col">Last success</th><th scope="col">Last error</th><th scope="col" class="num">Error rate (1 h)</th>
        <th scope="col" class="num">Tag TTL</th><th scope="col" class="num">Pulls not sent</th><th scope="col" class="num">Bytes saved</th>
      </tr></thead>
      <tbody id="registries"></tbody>
    </table></div>
  </section>

  <div class="grid2">
    <section aria-labelledby="h-top-pulls">
      <h2 id="h-top-pulls">Top images by pulls</h2>
      <div class="scroll"><table>
        <thead><tr><th scope="col">Image</th><th scope="col" class="num">Pulls</th><th scope="col" class="num">Bytes served</th></tr></thead>
        <tbody id="top-pulls"></tbody>
      </table></div>
    </section>
    <section aria-labelledby="h-top-bytes">
      <h2 id="h-top-bytes">Top images by bytes served</h2>
      <div class="scroll"><table>
        <thead><tr><th scope="col">Image</th><th scope="col" class="num">Bytes served</th><th scope="col" class="num">Pulls</th></tr></thead>
        <tbody id="top-bytes"></tbody>
      </table></div>
    </section>
  </div>

  <section aria-labelledby="h-images">
    <h2 id="h-images">Cached images <small id="images-count"></small></h2>
    <div class="scroll"><table>
      <thead><tr><th scope="col">Image</th><th scope="col">Tags</th><th scope="col" class="num">Size</th><th scope="col" class="num">Objects</th><th scope="col">Last pulled</th></tr></thead>
      <tbody id="images"></tbody>
    </table></div>
  </section>

  <section aria-labelledby="h-errors">
    <h2 id="h-errors">Recent errors</h2>
    <div class="scroll"><table>
      <thead><tr><th scope="col">Time</th><th scope="col">Source</th><th scope="col">Registry</th><th scope="col">Message</th></tr></thead>
      <tbody id="errors"></tbody>
    </table></div>
  </section>
</main>
<footer>
  <p>The same data as JSON: <a href="api/v1/stats">api/v1/stats</a> · <a href="api/v1/images">api/v1/images</a> · Prometheus: <a href="metrics">metrics</a>. Counters are since the process started.</p>
</footer>
`;

// Plain ES2017 without template literals (this file is itself one).
const SCRIPT = `
(function () {
  "use strict";
  var q = new URLSearchParams(location.search);
  var refreshArg = Number(q.get("refresh"));
  var refresh = refreshArg >= 1 ? refreshArg : 0;
  var imagesAt = 0; // the image list is a heavier query: every sixth refresh
  function $(id) { return document.getElementById(id); }
  function set(id, text) { $(id).textContent = text; }
  function num(n) { return Number(n).toLocaleString("en-US"); }
  function bytes(n) {
    if (n == null) return "–";
    var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : 1)) + " " + u[i];
  }
  function pct(x) { return x == null ? "–" : (x * 100).toFixed(1) + " %"; }
  function dur(s) {
    if (s < 1) return "0 s";
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(s < 36000 ? 1 : 0) + " h";
    return Math.round(s / 86400) + " d";
  }
  function ago(at, now) { return at ? dur(Math.max(0, now - at) / 1000) + " ago" : "never"; }
  function clock(at) { return new Date(at).toLocaleTimeString("en-GB"); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text != null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function small(text) { return el("small", text); }
  function image(i) { return i.registry + "/" + i.repository; }
  function fill(tbody, rows, cols, empty) {
    var frag = document.createDocumentFragment();
    if (!rows.length) {
      var tr = el("tr"), td = el("td", empty, "empty");
      td.colSpan = cols;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    rows.forEach(function (cells) {
      var tr = el("tr");
      cells.forEach(function (c) { tr.appendChild(c); });
      frag.appendChild(tr);
    });
    tbody.replaceChildren(frag);
  }
  function td(text, cls) { return el("td", text, cls); }
  function th(text, cls) { var h = el("th", text, cls); h.scope = "row"; return h; }
  var NS = "http://www.w3.org/2000/svg";
  function draw(groupId, values, max) {
    var g = $(groupId), n = values.length, seg = [], frag = document.createDocumentFragment();
    function flush() {
      if (seg.length > 1) {
        var p = document.createElementNS(NS, "polyline");
        p.setAttribute("points", seg.join(" "));
        p.setAttribute("vector-effect", "non-scaling-stroke");
        frag.appendChild(p);
      }
      seg = [];
    }
    values.forEach(function (v, i) {
      if (v == null) { flush(); return; }
      var x = n > 1 ? (i * 600) / (n - 1) : 600;
      var y = 110 - (max > 0 ? Math.min(1, v / max) : 0) * 100;
      seg.push(x.toFixed(1) + "," + y.toFixed(1));
      var alone = (i === 0 || values[i - 1] == null) && (i === n - 1 || values[i + 1] == null);
      if (alone || i === n - 1) {
        // A zero-length line with round caps: a dot that stays round however the chart stretches.
        var dot = document.createElementNS(NS, "polyline"), at = x.toFixed(1) + "," + y.toFixed(1);
        dot.setAttribute("points", at + " " + at);
        dot.setAttribute("class", "dot");
        dot.setAttribute("vector-effect", "non-scaling-stroke");
        frag.appendChild(dot);
      }
    });
    flush();
    g.replaceChildren(frag);
  }
  function render(s) {
    var t = s.totals, now = s.now;
    set("version", "v" + s.version + " · up " + dur((now - s.startedAt) / 1000));
    set("t-requests", num(t.requests));
    set("t-ratio", pct(t.hitRatio));
    set("t-hit", num(t.hit));
    set("t-miss", num(t.miss));
    set("t-stale", num(t.stale));
    set("t-coalesced", num(t.coalesced));
    set("t-revalidated", num(t.revalidated));
    set("t-served", bytes(t.bytesServed));
    set("t-saved", bytes(t.bytesSaved));
    set("t-pulls", num(t.manifestPullsSaved));
    set("t-upstream", bytes(t.bytesFromUpstream));

    var pts = s.series.points;
    var ratios = pts.map(function (p) { return p.hitRatio; });
    var tput = pts.map(function (p) { return p.bytesPerSecond; });
    var peak = Math.max.apply(null, tput.concat([0]));
    draw("chart-ratio-data", ratios, 1);
    draw("chart-tput-data", tput.map(function (v, i) { return v > 0 || pts[i].requests ? v : null; }), peak);
    var lastRatio = null;
    for (var i = ratios.length - 1; i >= 0; i--) if (ratios[i] != null) { lastRatio = ratios[i]; break; }
    var hourReq = pts.reduce(function (a, p) { return a + p.requests; }, 0);
    set("c-ratio", lastRatio == null ? "no traffic yet" : "latest " + pct(lastRatio) + " · " + num(hourReq) + " requests this hour");
    set("c-tput", "now " + bytes(tput[tput.length - 1] || 0) + "/s · peak " + bytes(peak) + "/s");
    set("c-tput-max", bytes(peak) + "/s");
    set("chart-ratio-title", "Hit ratio per minute over the last hour; " + $("c-ratio").textContent);
    set("chart-tput-title", "Bytes served per second over the last hour; " + $("c-tput").textContent);

    var st = s.store, bar = $("store-bar");
    set("s-bytes", bytes(st.bytes));
    set("s-bound", st.boundBytes == null ? "unbounded" : bytes(st.boundBytes));
    $("s-objects").replaceChildren(document.createTextNode(num(st.objects)), small(num(st.blobs) + " blobs · " + num(st.manifests) + " manifests"));
    set("s-evictions", num(st.evictions));
    if (st.boundBytes == null) {
      bar.replaceChildren(el("span", bytes(st.bytes) + " used; no size bound configured (unbounded)"));
    } else {
      var m = document.createElement("meter"), lab = el("label", "Blobs: " + pct(st.blobBytes / st.boundBytes) + " of the bound");
      m.id = "store-meter"; m.min = 0; m.max = st.boundBytes; m.value = Math.min(st.blobBytes, st.boundBytes);
      m.textContent = bytes(st.blobBytes) + " of " + bytes(st.boundBytes);
      lab.htmlFor = "store-meter";
      bar.replaceChildren(lab, m);
    }

    fill($("downloads"), s.downloads.map(function (d) {
      var p = document.createElement("progress"), short = d.digest.slice(0, 19) + "…";
      var frac = d.size ? d.received / d.size : null;
      if (d.size) { p.max = d.size; p.value = d.received; }
      p.setAttribute("aria-label", "Download of " + short + (frac == null ? "" : ": " + pct(frac)));
      var cell = td(null); cell.appendChild(p);
      cell.appendChild(small(bytes(d.received) + " of " + (d.size ? bytes(d.size) : "unknown size")));
      var name = td(short, "mono"); name.title = d.digest;
      return [name, cell, td(d.bytesPerSecond == null ? "measuring…" : bytes(d.bytesPerSecond) + "/s", "num"), td(num(d.readers), "num")];
    }), 4, "No downloads in flight");

    fill($("registries"), s.registries.map(function (r) {
      var h = r.health;
      var name = th(r.prefix + (r.default ? " (default)" : "") + (r.offline ? " (offline)" : ""));
      var state = td(r.offline ? "offline" : h.state, "state " + h.state);
      var last = h.lastError ? ago(h.lastError.at, now) + ": " + h.lastError.message : "none";
      var rate = h.errorRate == null ? "–" : pct(h.errorRate) + " of " + num(h.requestsLastHour);
      return [name, td(r.url, "mono"), state, td(h.lastSuccess ? ago(h.lastSuccess.at, now) : "never"), td(last, "msg"), td(rate, "num"),
        td(dur(r.tagTtlSeconds), "num"), td(num(r.saved.manifestPulls), "num"), td(bytes(r.saved.bytes), "num")];
    }), 9, "No registries configured");

    fill($("top-pulls"), s.topImages.byPulls.map(function (i) {
      return [th(image(i), "mono"), td(num(i.pulls), "num"), td(bytes(i.bytes), "num")];
    }), 3, "No pulls yet");
    fill($("top-bytes"), s.topImages.byBytes.map(function (i) {
      return [th(image(i), "mono"), td(bytes(i.bytes), "num"), td(num(i.pulls), "num")];
    }), 3, "Nothing served yet");

    fill($("errors"), s.recentErrors.map(function (e) {
      var time = el("td"), t = el("time", clock(e.at));
      t.dateTime = new Date(e.at).toISOString();
      time.appendChild(t);
      if (e.count > 1) time.appendChild(small(e.count + " times since " + clock(e.firstAt)));
      return [time, td(e.source), td(e.registry || "–"), td(e.message, "msg")];
    }), 4, "No errors");
  }
  function renderImages(list, now) {
    var sorted = list.slice().sort(function (a, b) { return b.bytes - a.bytes; });
    set("images-count", "(" + num(list.length) + (list.length > 10 ? ", largest 10 shown" : "") + ")");
    fill($("images"), sorted.slice(0, 10).map(function (i) {
      var tags = i.tags.map(function (t) { return t.tag; }).join(", ") || "–";
      return [th(image(i), "mono"), td(tags, "mono"), td(bytes(i.bytes), "num"), td(num(i.objects), "num"), td(ago(i.lastPulled, now))];
    }), 5, "The cache holds no images yet");
  }
  async function getJson(path) {
    var res = await fetch(path, { headers: { accept: "application/json" }, cache: "no-store" });
    if (!res.ok) throw new Error(path + " answered " + res.status);
    return res.json();
  }
  async function load() {
    var status = $("updated");
    try {
      var s = await getJson("api/v1/stats");
      if (!refresh) refresh = s.refreshSeconds || 5;
      render(s);
      if (imagesAt === 0 || Date.now() - imagesAt >= refresh * 6000 - 500) {
        imagesAt = Date.now();
        renderImages(await getJson("api/v1/images"), s.now);
      }
      status.className = "";
      status.textContent = "Updated " + clock(s.now) + " · refreshes every " + refresh + " s";
    } catch (e) {
      status.className = "error";
      status.textContent = "Could not refresh (" + (e && e.message ? e.message : e) + "); retrying every " + (refresh || 5) + " s";
    }
  }
  function tick() { load().then(function () { setTimeout(tick, (refresh || 5) * 1000); }); }
  tick();
})();
`;

/** The page. */
export const PAGE_HTML: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ocicache status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>${BODY}<script>${SCRIPT}</script>
</body>
</html>
`;

const sha256 = (s: string) => `'sha256-${createHash("sha256").update(s).digest("base64")}'`;

/** Only the page's own inline style and script run; it talks to its own origin only. */
export const PAGE_CSP: string = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "img-src data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** The response for `GET /`. */
export function pageResponse(): Response {
  return new Response(PAGE_HTML, {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": PAGE_CSP,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "cache-control": "no-cache",
    },
  });
}
