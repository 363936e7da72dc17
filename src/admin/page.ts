/**
 * The status page served at `/` of the admin endpoint: one self-contained HTML document (no build
 * step, no files to ship, nothing fetched from the network) that polls /status, /readyz and
 * /history and draws them. It shows only what those endpoints return, so what a person sees and
 * what a script reads never disagree.
 */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgebridge</title>
<style>
  :root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; --ingest: #0969da; --forward: #8250df; --backlog: #bc4c00; }
  * { box-sizing: border-box; }
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
  header { display: flex; flex-wrap: wrap; align-items: center; gap: 12px; padding: 12px 20px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  .badge { padding: 2px 10px; border-radius: 12px; font-weight: 600; color: #fff; background: var(--muted); }
  .badge.ok { background: var(--ok); } .badge.warn { background: var(--warn); } .badge.bad { background: var(--bad); }
  #reason { color: var(--muted); }
  #updated { margin-left: auto; color: var(--muted); font-size: 12px; }
  main { padding: 16px 20px; display: grid; gap: 16px; }
  .tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
  .tile { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
  .tile .label { color: var(--muted); font-size: 12px; }
  .tile .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .tile.alert .value { color: var(--bad); }
  section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px; overflow-x: auto; }
  td { overflow-wrap: break-word; }
  .axis { color: var(--muted); }
  section h2 { font-size: 14px; margin: 0 0 8px; }
  .cols > .wide { grid-column: 1 / -1; }
  .cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 16px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eaeef2; }
  th { color: var(--muted); font-weight: 500; font-size: 12px; }
  td.n, th.n { text-align: right; }
  .empty { color: var(--muted); }
  .bar { height: 10px; background: #eaeef2; border-radius: 5px; overflow: hidden; }
  .bar > div { height: 100%; background: var(--forward); }
  svg { width: 100%; height: 160px; display: block; }
  .legend span { margin-right: 12px; font-size: 12px; }
  .legend i { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin-right: 4px; }
  code { font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>edgebridge <span id="gateway-id"></span></h1>
  <span id="ready" class="badge">…</span>
  <span>forwarder: <strong id="forwarder">…</strong></span>
  <span id="reason"></span>
  <span id="updated">connecting…</span>
</header>
<main>
  <div class="tiles">
    <div class="tile" id="tile-backlog"><div class="label">backlog (records not yet in Kafka)</div><div class="value" id="backlog">–</div></div>
    <div class="tile" id="tile-age"><div class="label">oldest unsent record</div><div class="value" id="backlog-age">–</div></div>
    <div class="tile"><div class="label">backlog bytes</div><div class="value" id="backlog-bytes">–</div></div>
    <div class="tile"><div class="label">ingest / s</div><div class="value" id="ingest-rate">–</div></div>
    <div class="tile"><div class="label">forward / s</div><div class="value" id="forward-rate">–</div></div>
    <div class="tile"><div class="label">connected clients</div><div class="value" id="clients">–</div></div>
    <div class="tile"><div class="label">devices active / silent</div><div class="value"><span id="devices-active">–</span> / <span id="devices-silent">–</span></div></div>
    <div class="tile"><div class="label">stored / forwarded since start</div><div class="value"><span id="received">–</span> / <span id="forwarded">–</span></div></div>
    <div class="tile"><div class="label">log on disk</div><div class="value" id="storage">–</div></div>
  </div>
  <section id="drain" hidden>
    <h2>Draining the backlog</h2>
    <div class="bar"><div id="drain-bar" style="width:0%"></div></div>
    <p id="drain-text"></p>
  </section>
  <section>
    <h2>Last <span id="chart-minutes">–</span></h2>
    <div class="legend"><span><i style="background:var(--ingest)"></i>ingest / s</span><span><i style="background:var(--forward)"></i>forward / s</span><span><i style="background:var(--backlog)"></i>backlog</span><span id="chart-scale" class="axis"></span></div>
    <svg id="chart" viewBox="0 0 600 160" preserveAspectRatio="none" role="img" aria-label="ingest and forward rates and backlog over the last minutes"></svg>
  </section>
  <div class="cols">
    <section><h2>Devices with the largest backlog</h2><table id="top-backlog"><thead><tr><th>device</th><th class="n">records</th><th class="n">bytes</th><th class="n">oldest</th></tr></thead><tbody></tbody></table></section>
    <section><h2>Busiest devices</h2><table id="top-rate"><thead><tr><th>device</th><th class="n">per minute</th><th class="n">last seen</th></tr></thead><tbody></tbody></table></section>
    <section><h2>Silent devices (&gt; <span id="silent-after">–</span>)</h2><table id="silent"><thead><tr><th>device</th><th class="n">silent for</th></tr></thead><tbody></tbody></table></section>
    <section class="wide"><h2>Routes</h2><table id="routes"><thead><tr><th>MQTT</th><th>Kafka topic</th><th class="n">stored</th><th class="n">duplicates</th></tr></thead><tbody></tbody></table></section>
  </div>
  <section><h2>Recent problems</h2><table id="errors"><thead><tr><th>when</th><th>level</th><th>code</th><th>message</th><th class="n">times</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
var $ = function (id) { return document.getElementById(id); };
function num(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
function bytes(n) {
  if (n == null) return "–";
  var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}
function age(s) {
  if (s == null) return "–";
  s = Math.round(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
function text(id, value) { $(id).textContent = value; }
function rows(tableId, items, cells, emptyText) {
  var body = $(tableId).tBodies[0];
  body.textContent = "";
  if (!items || items.length === 0) {
    var tr = body.insertRow(), td = tr.insertCell();
    td.colSpan = $(tableId).tHead.rows[0].cells.length; td.className = "empty"; td.textContent = emptyText;
    return;
  }
  items.forEach(function (item) {
    var tr = body.insertRow();
    cells(item).forEach(function (c) {
      var td = tr.insertCell();
      if (typeof c === "object") { td.textContent = c.v; td.className = "n"; } else td.textContent = c;
    });
  });
}
function n(v) { return { v: v }; }

var lastDetail = null;
function showStatus(s, r) {
  text("gateway-id", s.gatewayId);
  var ready = $("ready");
  var unhealthy = r.status !== "ready" && ["fenced", "log-unwritable", "log-error", "unauthenticated", "unauthorized"].indexOf(r.status) >= 0;
  ready.textContent = r.status === "ready" ? "ready" : unhealthy ? "unhealthy: " + r.status : "not ready";
  ready.className = "badge " + (r.status === "ready" ? "ok" : unhealthy ? "bad" : "warn");
  text("reason", r.reason || "");
  text("forwarder", s.forwarder);
  text("backlog", num(s.backlog));
  text("backlog-age", age(s.backlogOldestAgeSeconds));
  $("tile-age").className = "tile" + (s.backlogOldestAgeSeconds > 60 ? " alert" : "");
  // the detail is left out while a scan of this backlog is under way: keep showing the last one
  var inFlight = s.forwarder === "forwarding" && s.backlogOldestAgeSeconds < 10;
  // an estimate (the log being read) does not replace the devices of the last reading
  if (s.backlogDetail && (!s.backlogDetail.estimated || inFlight || !lastDetail || lastDetail.estimated)) lastDetail = s.backlogDetail;
  var detail = s.backlog === 0 ? null : lastDetail;
  text("backlog-bytes", s.backlog === 0 ? bytes(0) : detail ? (detail.estimated ? "≈ " : "") + bytes(detail.bytes) : "–");
  text("clients", num(s.mqttClients));
  text("devices-active", num(s.devices.active));
  text("devices-silent", num(s.devices.silent));
  text("received", num(s.received));
  text("forwarded", num(s.forwarded));
  text("storage", bytes(s.storageBytes));
  text("silent-after", age(s.devices.silentAfterSeconds));
  var d = s.drain;
  $("drain").hidden = !d;
  if (d) {
    var pct = d.total > 0 ? Math.floor((100 * d.done) / d.total) : 0;
    $("drain-bar").style.width = pct + "%";
    text("drain-text", num(d.done) + " of " + num(d.total) + " records forwarded (" + pct + " %), " + num(d.ratePerSecond) + " / s, " +
      (d.etaSeconds == null ? "not shrinking" : "about " + age(d.etaSeconds) + " to go"));
  }
  var now = Date.now();
  rows("top-backlog", detail ? detail.topDevices : [], function (x) { return [x.deviceId, n(num(x.records)), n(bytes(x.bytes)), n(age(x.oldestAgeSeconds))]; }, s.backlog === 0 ? "no backlog" : inFlight ? "only records in flight: no device is behind" : "reading the log…");
  rows("top-rate", s.devices.topByRate, function (x) { return [x.deviceId, n(num(x.perMinute)), n(age(x.lastSeenSecondsAgo) + " ago")]; }, "no device heard from");
  rows("silent", s.devices.silentDevices, function (x) { return [x.deviceId, n(age(x.silentSeconds) + (x.seenSinceStart ? "" : " (not since start)"))]; }, "none");
  rows("routes", s.routes, function (x) { return [x.route, x.topic, n(num(x.stored)), n(num(x.duplicates))]; }, "nothing stored yet");
  rows("errors", s.errors, function (x) { return [new Date(x.at).toTimeString().slice(0, 8), x.level, x.code || "", x.message + (x.detail ? ": " + x.detail : ""), n(num(x.count))]; }, "none since start");
  text("updated", "updated " + new Date(now).toTimeString().slice(0, 8));
}

function showHistory(h) {
  var samples = h.samples || [];
  var last = samples[samples.length - 1];
  text("ingest-rate", last ? num(last.ingestPerSecond) : "–");
  text("forward-rate", last ? num(last.forwardPerSecond) : "–");
  var minutes = Math.max(1, Math.round((samples.length * h.intervalSeconds) / 60));
  text("chart-minutes", minutes === 1 ? "minute" : minutes + " minutes");
  var svg = $("chart"), W = 600, H = 160, pad = 4;
  svg.textContent = "";
  if (samples.length < 2) return;
  var t0 = samples[0].at, t1 = last.at;
  var rateMax = 1, backlogMax = 1;
  samples.forEach(function (p) { rateMax = Math.max(rateMax, p.ingestPerSecond, p.forwardPerSecond); backlogMax = Math.max(backlogMax, p.backlog); });
  function x(p) { return pad + ((p.at - t0) / Math.max(1, t1 - t0)) * (W - 2 * pad); }
  function line(key, max, color, fill) {
    var pts = samples.map(function (p) { return x(p).toFixed(1) + "," + (H - pad - (p[key] / max) * (H - 2 * pad)).toFixed(1); });
    var el = document.createElementNS("http://www.w3.org/2000/svg", fill ? "polygon" : "polyline");
    if (fill) pts = [x(samples[0]).toFixed(1) + "," + (H - pad)].concat(pts, [x(last).toFixed(1) + "," + (H - pad)]);
    el.setAttribute("points", pts.join(" "));
    el.setAttribute("fill", fill ? color : "none");
    if (fill) el.setAttribute("fill-opacity", "0.15");
    el.setAttribute("stroke", color);
    el.setAttribute("stroke-width", "2");
    el.setAttribute("vector-effect", "non-scaling-stroke");
    el.setAttribute("data-series", key);
    svg.appendChild(el);
  }
  var css = getComputedStyle(document.documentElement);
  line("backlog", backlogMax, css.getPropertyValue("--backlog").trim(), true);
  line("ingestPerSecond", rateMax, css.getPropertyValue("--ingest").trim(), false);
  line("forwardPerSecond", rateMax, css.getPropertyValue("--forward").trim(), false);
  text("chart-scale", "top of the chart: " + num(rateMax) + " / s, " + num(backlogMax) + " records");
}

function get(path) {
  return fetch(path, { cache: "no-store" }).then(function (res) {
    return res.json();
  });
}
var polls = 0;
function poll() {
  var wantHistory = polls++ % 2 === 0;
  Promise.all([get("/status"), get("/readyz"), wantHistory ? get("/history") : null]).then(function (got) {
    showStatus(got[0], got[1]);
    if (got[2]) showHistory(got[2]);
  }).catch(function (err) {
    var ready = $("ready");
    ready.textContent = "gateway unreachable";
    ready.className = "badge bad";
    text("reason", String(err));
  }).then(function () { setTimeout(poll, 2000); });
}
poll();
</script>
</body>
</html>
`;
