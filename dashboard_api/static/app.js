// Live dashboard: initial state over REST, then WebSocket pushes (readings, alerts, fleet, pipeline,
// heartbeat). Charts: uPlot, vendored under /static/vendor (see its README.md), no CDN.
"use strict";

// Auth: the session is an HttpOnly cookie (POST /auth/login, or the /?token= link); this script never
// sees the token. role: "viewer" (read) or "operator" (may acknowledge alerts).
let role = null;
const $ = (sel) => document.querySelector(sel);
const devices = new Map();   // device_id -> state {device_id, device_type, seq, ts, status, open_alerts, metrics}
const tiles = new Map();     // device_id -> element
const alerts = new Map();    // alert_id -> alert (with .ack)
const pipelineHistory = new Map(); // stage -> [rate, ...]
let selected = null;         // {id, range, series: {metric: {resolution, points}}, live: {metric: [[ts, v]]}}
let received = 0;
let heartbeatS = 10;

// ---------------------------------------------------------------- REST
async function api(path, options = {}) {
  const res = await fetch(path, { ...options, credentials: "same-origin" });
  if (res.status === 401) showLogin("session expired: log in again");
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

// ---------------------------------------------------------------- login
function showLogin(message) {
  $("#login").classList.remove("hidden");
  $("#login-error").textContent = message || "";
  $("#login-token").focus();
}

async function ensureLogin() {
  const res = await fetch("/auth/me", { credentials: "same-origin" });
  if (!res.ok) { showLogin(); return false; }
  role = (await res.json()).role;
  $("#whoami").textContent = role;
  return true;
}

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const res = await fetch("/auth/login", {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("#login-token").value }) });
  $("#login-token").value = "";
  if (res.ok) location.reload();
  else showLogin("wrong token");
});

async function loadFleet() {
  let offset = 0;
  for (;;) {
    const page = await api(`/api/devices?limit=1000&offset=${offset}`);
    page.items.forEach((d) => upsertDevice(d));
    offset += page.items.length;
    if (offset >= page.total || page.items.length === 0) break;
  }
  refreshTypeFilter();
}

async function loadAlerts() {
  const list = await api("/api/alerts?limit=1000");
  alerts.clear();
  list.items.forEach((a) => alerts.set(a.alert_id, a));
  renderAlerts();
}

// Units of each device type's metrics, from the device profiles (docs/device-profiles.md).
const units = new Map();     // "type/metric" -> unit
async function loadProfiles() {
  const list = await api("/api/profiles");
  list.items.forEach((p) => Object.entries(p.profile.metrics).forEach(([m, spec]) => units.set(`${p.device_type}/${m}`, spec.unit)));
}
function unitHtml(type, metric) {
  const u = units.get(`${type}/${metric}`);
  return u ? ` <span class="unit">${esc(u)}</span>` : "";
}

// ---------------------------------------------------------------- fleet grid
function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  return a >= 1000 ? v.toFixed(0) : a >= 100 ? v.toFixed(1) : v.toFixed(2);
}

// seq is the device's counter: the simulator starts it at the epoch millisecond, so group its digits;
// it is optional in the schema ("—" when a device sends none).
const SEQ_FORMAT = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
function seqText(seq) {
  return seq === null || seq === undefined || seq === "" ? "—" : SEQ_FORMAT.format(seq);
}

function statusOf(d) {
  if (d.status === "offline") return "offline";
  return d.open_alerts > 0 ? "alerting" : "online";
}

function upsertDevice(d) {
  const prev = devices.get(d.device_id) || {};
  const state = { ...prev, ...d, metrics: { ...(prev.metrics || {}), ...(d.metrics || {}) } };
  devices.set(d.device_id, state);
  renderTile(state);
  return state;
}

function renderTile(d, flash = false) {
  let el = tiles.get(d.device_id);
  if (!el) {
    el = document.createElement("div");
    el.className = "tile";
    el.dataset.device = d.device_id;
    el.addEventListener("click", () => openDevice(d.device_id));
    tiles.set(d.device_id, el);
    const grid = $("#fleet");
    const after = [...grid.children].find((c) => c.dataset.device > d.device_id);
    grid.insertBefore(el, after || null);
  }
  const status = statusOf(d);
  el.className = `tile ${status}${selected && selected.id === d.device_id ? " selected" : ""}`;
  el.dataset.status = status;
  el.dataset.type = d.device_type;
  const metrics = Object.entries(d.metrics || {}).slice(0, 3)
    .map(([k, v]) => `<div class="m"><span>${esc(k)}${unitHtml(d.device_type, k)}</span><span class="v" data-metric="${esc(k)}">${fmt(v)}</span></div>`)
    .join("");
  el.innerHTML = `<div class="id" title="${esc(d.device_id)}">${esc(d.device_id)}</div>` +
    `<div class="type">${esc(d.device_type)}` +
    `${d.open_alerts > 0 ? ` · <b>${d.open_alerts} alert${d.open_alerts > 1 ? "s" : ""}</b>` : ""}</div>` +
    `<div class="seqline">seq <span class="seq" data-seq="${esc(d.seq ?? "")}">${seqText(d.seq)}</span></div>${metrics}`;
  applyFilter(el);
  scheduleSummary();
  if (flash) {
    el.classList.add("flash");
    requestAnimationFrame(() => requestAnimationFrame(() => el.classList.remove("flash")));
  }
}

function applyFilter(el) {
  const type = $("#type-filter").value;
  const status = $("#status-filter").value;
  el.style.display = (!type || el.dataset.type === type) && (!status || el.dataset.status === status) ? "" : "none";
}

function refreshTypeFilter() {
  const sel = $("#type-filter");
  const have = new Set([...sel.options].map((o) => o.value));
  [...new Set([...devices.values()].map((d) => d.device_type))].sort().forEach((t) => {
    if (!have.has(t)) sel.add(new Option(t, t));
  });
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function onReadings(batch) {
  const last = batch.readings[batch.readings.length - 1];
  if (!last) return;
  received += batch.readings.length;
  const prev = devices.get(batch.device_id);
  // Order is time first (seq only breaks ties): a rebooted device restarts its seq, backfill is older.
  if (prev && (prev.ts > last.ts || (prev.ts === last.ts && (prev.seq ?? -1) > (last.seq ?? -1)))) return;
  const d = upsertDevice({ device_id: batch.device_id, device_type: batch.device_type, seq: last.seq, ts: last.ts,
    status: "online", open_alerts: prev ? prev.open_alerts : 0, metrics: last.metrics });
  renderTile(d, true);
  if (!prev) refreshTypeFilter();
  if (selected && selected.id === batch.device_id) {
    for (const r of batch.readings) {
      for (const [m, v] of Object.entries(r.metrics)) {
        (selected.live[m] = selected.live[m] || []).push([r.ts, v]);
        if (selected.live[m].length > 5000) selected.live[m].shift();
      }
    }
    scheduleCharts();
  }
}

// ---------------------------------------------------------------- alerts feed
function onAlert(a) {
  if (a.event === "ack") {
    const cur = alerts.get(a.alert_id) || a;
    cur.ack = a.ack;
    alerts.set(a.alert_id, cur);
  } else if (a.state === "resolved") {
    const cur = alerts.get(a.alert_id);
    if (cur) { alerts.set(a.alert_id, { ...a, ack: cur.ack }); setTimeout(() => { alerts.delete(a.alert_id); renderAlerts(); }, 30000); }
  } else {
    const cur = alerts.get(a.alert_id);
    alerts.set(a.alert_id, { ...a, ack: cur ? cur.ack : null });
  }
  recountDeviceAlerts();
  renderAlerts();
}

function recountDeviceAlerts() {
  const counts = new Map();
  for (const a of alerts.values()) if (a.state === "open") counts.set(a.device_id, (counts.get(a.device_id) || 0) + 1);
  for (const d of devices.values()) {
    const n = counts.get(d.device_id) || 0;
    if (n !== d.open_alerts) { d.open_alerts = n; renderTile(d); }
  }
}

function renderAlerts() {
  const ul = $("#alerts");
  const list = [...alerts.values()].sort((a, b) => b.last_seen - a.last_seen);
  ul.replaceChildren(...list.map(alertItem));
  $("#alerts-empty").style.display = list.length ? "none" : "";
  const unacked = list.filter((a) => !a.ack && a.state === "open").length;
  $("#alerts-count").textContent = `${list.length} open · ${unacked} unacknowledged`;
  scheduleSummary();
}

let summaryPending = false;
function scheduleSummary() {
  if (summaryPending) return;
  summaryPending = true;
  requestAnimationFrame(() => { summaryPending = false; renderSummary(); });
}

function alertItem(a) {
  const li = document.createElement("li");
  li.className = `alert ${a.severity}${a.ack ? " acked" : ""}${a.state === "resolved" ? " resolved" : ""}`;
  li.dataset.alertId = a.alert_id;
  const head = document.createElement("div");
  head.className = "head";
  head.innerHTML = `<span class="sev">${esc(a.severity)}</span><span class="dev">${esc(a.device_id)}</span>` +
    `<span class="muted small">${esc(a.rule)}${a.metric ? " · " + esc(a.metric) : ""}</span>`;
  head.querySelector(".dev").addEventListener("click", () => openDevice(a.device_id));
  if (a.ack) {
    const info = document.createElement("span");
    info.className = "ackinfo";
    info.textContent = `✓ acked by ${a.ack.by}`;
    head.appendChild(info);
  } else if (a.state === "open" && role === "operator") {  // a viewer's token may not acknowledge
    const btn = document.createElement("button");
    btn.className = "ack";
    btn.textContent = "Acknowledge";
    btn.addEventListener("click", () => acknowledge(a.alert_id, btn));
    head.appendChild(btn);
  }
  const msg = document.createElement("div");
  msg.className = "msg";
  msg.textContent = a.message || `${a.metric} = ${fmt(a.value)}`;
  const when = document.createElement("div");
  when.className = "when";
  when.textContent = `${a.state} · first ${new Date(a.first_seen).toLocaleTimeString()} · last ` +
    `${new Date(a.last_seen).toLocaleTimeString()}`;
  li.append(head, msg, when);
  return li;
}

async function acknowledge(alertId, btn) {
  btn.disabled = true;
  try {
    const res = await api(`/api/alerts/${encodeURIComponent(alertId)}/ack`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ by: "dashboard" }) });
    const a = alerts.get(alertId);
    if (a) { a.ack = res.ack; renderAlerts(); }
  } catch (e) {
    btn.disabled = false;
    btn.textContent = "retry ack";
    console.error(e);
  }
}

// ---------------------------------------------------------------- pipeline panel
const PRIMARY = { gateway: "received", stream: "readings", sink: "rows" };

function onPipeline(p) {
  const root = $("#pipeline");
  for (const s of p.stages) {
    const key = PRIMARY[s.stage] || Object.keys(s.rates)[0];
    const rate = key ? s.rates[key] || 0 : 0;
    const hist = pipelineHistory.get(s.stage) || [];
    hist.push([Date.now() / 1000, rate]);
    if (hist.length > 120) hist.shift();
    pipelineHistory.set(s.stage, hist);
    let el = root.querySelector(`[data-stage="${s.stage}"]`);
    if (!el) {
      el = document.createElement("div");
      el.className = "stage";
      el.dataset.stage = s.stage;
      el.innerHTML = `<div class="name"></div><div class="rate"></div><div class="detail"></div><div class="spark"></div>`;
      root.appendChild(el);
    }
    el.querySelector(".name").textContent = s.stage;
    const reporting = Object.keys(s.counters).length > 0 || s.updated_ms;
    el.querySelector(".rate").textContent = reporting ? `${fmt(rate)} ${key}/s` : "not reporting yet";
    const others = Object.entries(s.rates).filter(([k]) => k !== key).map(([k, v]) => `${k} ${fmt(v)}/s`);
    if (s.lag !== null && s.lag !== undefined) others.push(`lag ${s.lag}`);
    if (s.age_s !== null && s.age_s !== undefined) others.push(`reported ${s.age_s.toFixed(0)} s ago`);
    el.querySelector(".detail").textContent = others.join(" · ") || "—";
    sparkline(el.querySelector(".spark"), hist);
  }
  const dlq = Object.values(p.deadletter).reduce((x, y) => x + y, 0);
  $("#pipeline-note").textContent = `dead letters ${dlq} · dashboard clients ${p.websocket.clients}, ` +
    `frames dropped ${p.websocket.dropped}, coalesced ${p.websocket.coalesced}`;
}

// ---------------------------------------------------------------- charts (uPlot)
const AXIS = { stroke: "#8a95a1", font: "10px system-ui", grid: { stroke: "#2a3038", width: 1 },
  ticks: { stroke: "#2a3038", width: 1 } };
const sparks = new Map();    // stage element -> uPlot

function sparkline(box, hist) {
  const data = [hist.map(([t]) => t), hist.map(([, v]) => v)];
  let u = sparks.get(box);
  if (!u) {
    u = new uPlot({
      width: Math.max(box.clientWidth, 50), height: 36, padding: [2, 0, 0, 0],
      legend: { show: false }, cursor: { show: false }, select: { show: false },
      axes: [{ show: false }, { show: false }],
      scales: { x: { time: true }, y: { range: (_u, _lo, hi) => [0, Math.max(1, hi)] } },
      series: [{}, { stroke: "#58a6ff", fill: "rgba(88,166,255,0.15)", width: 1, points: { show: false } }],
    }, data, box);
    sparks.set(box, u);
  } else {
    u.setData(data);
  }
}

// The summary line is computed from what the page shows; the server's fleet summary (every 2 s) tells
// when the page missed something (a device that went offline or appeared without a reading).
function renderSummary() {
  const list = [...devices.values()];
  const count = (st) => list.filter((d) => statusOf(d) === st).length;
  const unacked = [...alerts.values()].filter((a) => !a.ack && a.state === "open").length;
  $("#fleet-summary").textContent = `${list.length} devices · ${count("online")} online · ` +
    `${count("offline")} offline · ${count("alerting")} alerting · ${unacked} unacknowledged alerts`;
}

let fleetReload = null;
function onFleet(s) {
  const list = [...devices.values()];
  const offline = list.filter((d) => d.status === "offline").length;
  if ((s.total !== list.length || s.offline !== offline) && !fleetReload) {
    fleetReload = loadFleet().catch(console.error).finally(() => { fleetReload = null; });
  }
}

// ---------------------------------------------------------------- device panel + charts
const RANGE_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };

async function openDevice(id, range) {
  range = range || (selected && selected.id === id ? selected.range : "1h");
  selected = { id, range, series: {}, live: {} };
  history.replaceState(null, "", `${location.pathname}${location.search}#device=${encodeURIComponent(id)}`);
  $("#device-panel").classList.remove("hidden");
  $("#device-title").textContent = id;
  document.querySelectorAll(".ranges button").forEach((b) => b.classList.toggle("active", b.dataset.range === range));
  tiles.forEach((el, key) => el.classList.toggle("selected", key === id));
  const d = devices.get(id);
  $("#device-meta").textContent = d ? `${d.device_type} · ${statusOf(d)} · seq ${seqText(d.seq)}` : "";
  const metrics = Object.keys((d && d.metrics) || {});
  const charts = $("#charts");
  plots.forEach((u) => u.destroy());
  plots.clear();
  charts.replaceChildren(...metrics.map((m) => {
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.metric = m;
    div.innerHTML = `<div class="title"><span>${esc(m)}${d ? unitHtml(d.device_type, m) : ""}</span><span class="latest"></span></div>` +
      `<div class="plot"><span class="nodata muted small hidden">no data in this range yet</span></div>`;
    return div;
  }));
  $("#device-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
  const mine = selected;
  const results = await Promise.all(metrics.map((m) =>
    api(`/api/devices/${encodeURIComponent(id)}/history?metric=${encodeURIComponent(m)}&range=${range}&max_points=300`)
      .catch((e) => ({ error: String(e), points: [], resolution: "?" }))));
  if (selected !== mine) return;
  metrics.forEach((m, i) => { selected.series[m] = results[i]; });
  const res = [...new Set(results.map((r) => r.resolution))].join(", ");
  $("#device-resolution").textContent = `resolution: ${res || "–"}`;
  drawCharts();
}

let chartsPending = false;
function scheduleCharts() {
  if (chartsPending) return;
  chartsPending = true;
  setTimeout(() => { chartsPending = false; drawCharts(); }, 250);
}

function drawCharts() {
  if (!selected) return;
  const d = devices.get(selected.id);
  if (d) $("#device-meta").textContent = `${d.device_type} · ${statusOf(d)} · seq ${seqText(d.seq)}`;
  document.querySelectorAll("#charts .chart").forEach((div) => {
    const m = div.dataset.metric;
    const hist = (selected.series[m] && selected.series[m].points) || [];
    const live = selected.live[m] || [];
    const latest = live.length ? live[live.length - 1][1] : d && d.metrics[m];
    div.querySelector(".latest").textContent = fmt(latest);
    drawChart(div, hist, live, RANGE_MS[selected.range]);
  });
}

// One uPlot per metric: x in seconds; series 1 = history (bucket mean or raw value), 2/3 = bucket min/max
// (drawn as a band), 4 = live readings since the history was loaded. Empty buckets are gaps (null).
const plots = new Map();     // chart element -> uPlot

function chartData(hist, live, start) {
  const lastHist = hist.length ? hist[hist.length - 1].ts : -Infinity;
  const h = [hist.map((p) => p.ts / 1000), hist.map((p) => p.value), hist.map((p) => p.min ?? p.value),
    hist.map((p) => p.max ?? p.value)];
  const livePts = live.filter(([t]) => t > lastHist && t >= start);
  const l = [livePts.map(([t]) => t / 1000), livePts.map(([, v]) => v)];
  const points = hist.filter((p) => p.value !== null && p.value !== undefined).length + livePts.length;
  return { data: uPlot.join([h, l]), points };
}

function drawChart(div, hist, live, spanMs) {
  const box = div.querySelector(".plot");
  const end = Date.now();
  const { data, points } = chartData(hist, live, end - spanMs);
  div.dataset.points = points;
  div.querySelector(".nodata").classList.toggle("hidden", points > 0);
  let u = plots.get(div);
  if (!u) {
    const fmtAxis = (_u, vals) => vals.map((v) => fmt(v));
    u = new uPlot({
      width: Math.max(box.clientWidth, 100), height: 160, legend: { show: false },
      cursor: { points: { size: 5 } }, select: { show: false },
      scales: { x: { time: true } },
      axes: [{ ...AXIS }, { ...AXIS, size: 48, values: fmtAxis }],
      series: [
        {},
        { label: "history", stroke: "#58a6ff", width: 1.5, points: { show: false } },
        { label: "min", stroke: "transparent", points: { show: false } },
        { label: "max", stroke: "transparent", points: { show: false } },
        { label: "live", stroke: "#3fb950", width: 1.5, spanGaps: true, points: { show: false } },
      ],
      bands: [{ series: [3, 2], fill: "rgba(88,166,255,0.18)" }],
    }, data, box);
    plots.set(div, u);
  } else {
    u.setData(data, false);
  }
  u.setScale("x", { min: (end - spanMs) / 1000, max: end / 1000 });
}

// ---------------------------------------------------------------- WebSocket with reconnect + backoff
let ws = null;
let backoff = 500;
let lastFrame = 0;

function setConn(cls, text) {
  const el = $("#conn");
  el.className = `conn ${cls}`;
  el.textContent = text;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // authenticated by the session cookie the browser sends with the handshake (no token in the URL)
  const url = `${proto}://${location.host}/ws?channels=readings,alerts,fleet,pipeline,heartbeat&client=dashboard`;
  setConn("connecting", "connecting…");
  ws = new WebSocket(url);
  ws.onopen = async () => {
    backoff = 500;
    lastFrame = Date.now();
    setConn("live", "live");
    try { await Promise.all([loadFleet(), loadAlerts()]); } catch (e) { console.error(e); }  // fill the gap
  };
  ws.onmessage = (ev) => {
    lastFrame = Date.now();
    const msg = JSON.parse(ev.data);
    switch (msg.channel) {
      case "readings": onReadings(msg.data); break;
      case "alerts": onAlert(msg.data); break;
      case "fleet": onFleet(msg.data); break;
      case "pipeline": onPipeline(msg.data); break;
      case "heartbeat":
        if (msg.data.dropped) setConn("live", `live (slow: ${msg.data.dropped} frames dropped)`);
        break;
      default: break;
    }
    $("#counters").textContent = `${received} readings received`;
  };
  ws.onclose = (ev) => {
    const wait = Math.min(backoff, 15000) * (0.8 + Math.random() * 0.4);
    backoff = Math.min(backoff * 2, 15000);
    setConn("down", `disconnected${ev.code === 1008 ? " (login?)" : ""} — retrying in ${(wait / 1000).toFixed(1)} s`);
    setTimeout(connect, wait);
  };
}

// no frame for 3 heartbeats: the connection is dead even if the socket did not say so
setInterval(() => {
  if (ws && ws.readyState === WebSocket.OPEN && Date.now() - lastFrame > 3 * heartbeatS * 1000) ws.close();
}, 2000);
// statuses (offline) change without a reading: refresh the fleet from time to time
setInterval(() => { if (ws && ws.readyState === WebSocket.OPEN) loadFleet().catch(console.error); }, 15000);
setInterval(() => { if (selected) scheduleCharts(); }, 5000);  // let the time axis move

$("#type-filter").addEventListener("change", () => tiles.forEach(applyFilter));
$("#status-filter").addEventListener("change", () => tiles.forEach(applyFilter));
$("#device-close").addEventListener("click", () => {
  selected = null;
  plots.forEach((u) => u.destroy());
  plots.clear();
  $("#device-panel").classList.add("hidden");
  tiles.forEach((el) => el.classList.remove("selected"));
  history.replaceState(null, "", location.pathname + location.search);
});
document.querySelectorAll(".ranges button").forEach((b) =>
  b.addEventListener("click", () => selected && openDevice(selected.id, b.dataset.range)));
window.addEventListener("resize", () => {
  plots.forEach((u, div) => u.setSize({ width: Math.max(div.querySelector(".plot").clientWidth, 100), height: 160 }));
  sparks.forEach((u, box) => u.setSize({ width: Math.max(box.clientWidth, 50), height: 36 }));
});

(async () => {
  if (!(await ensureLogin())) return;
  await loadProfiles().catch(console.error);  // units only: the page works without them
  try { await Promise.all([loadFleet(), loadAlerts()]); } catch (e) { setConn("down", String(e).slice(0, 80)); }
  const m = location.hash.match(/device=([^&]+)/);
  if (m) openDevice(decodeURIComponent(m[1]));
  connect();
})();
