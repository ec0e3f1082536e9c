// Live dashboard: initial state over REST, then WebSocket pushes (readings, alerts, fleet, pipeline,
// heartbeat). No external libraries: charts are drawn on <canvas> here.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "dev-token";
const HEADERS = { Authorization: `Bearer ${token}` };
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
  const res = await fetch(path, { ...options, headers: { ...HEADERS, ...(options.headers || {}) } });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

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

// ---------------------------------------------------------------- fleet grid
function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  return a >= 1000 ? v.toFixed(0) : a >= 100 ? v.toFixed(1) : v.toFixed(2);
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
    .map(([k, v]) => `<div class="m"><span>${esc(k)}</span><span class="v" data-metric="${esc(k)}">${fmt(v)}</span></div>`)
    .join("");
  el.innerHTML = `<div class="id" title="${esc(d.device_id)}">${esc(d.device_id)}</div>` +
    `<div class="type">${esc(d.device_type)} · seq <span class="seq">${d.seq}</span>` +
    `${d.open_alerts > 0 ? ` · <b>${d.open_alerts} alert${d.open_alerts > 1 ? "s" : ""}</b>` : ""}</div>${metrics}`;
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
  if (prev && prev.seq > last.seq) return; // older than what we show
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
  } else if (a.state === "open") {
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
    hist.push(rate);
    if (hist.length > 120) hist.shift();
    pipelineHistory.set(s.stage, hist);
    let el = root.querySelector(`[data-stage="${s.stage}"]`);
    if (!el) {
      el = document.createElement("div");
      el.className = "stage";
      el.dataset.stage = s.stage;
      el.innerHTML = `<div class="name"></div><div class="rate"></div><div class="detail"></div><canvas></canvas>`;
      root.appendChild(el);
    }
    el.querySelector(".name").textContent = s.stage;
    const reporting = Object.keys(s.counters).length > 0 || s.updated_ms;
    el.querySelector(".rate").textContent = reporting ? `${fmt(rate)} ${key}/s` : "not reporting yet";
    const others = Object.entries(s.rates).filter(([k]) => k !== key).map(([k, v]) => `${k} ${fmt(v)}/s`);
    if (s.lag !== null && s.lag !== undefined) others.push(`lag ${s.lag}`);
    if (s.age_s !== null && s.age_s !== undefined) others.push(`reported ${s.age_s.toFixed(0)} s ago`);
    el.querySelector(".detail").textContent = others.join(" · ") || "—";
    sparkline(el.querySelector("canvas"), hist);
  }
  const dlq = Object.values(p.deadletter).reduce((x, y) => x + y, 0);
  $("#pipeline-note").textContent = `dead letters ${dlq} · dashboard clients ${p.websocket.clients}, ` +
    `frames dropped ${p.websocket.dropped}, coalesced ${p.websocket.coalesced}`;
}

function sparkline(canvas, values) {
  const ctx = setupCanvas(canvas);
  const { width: w, height: h } = canvas.getBoundingClientRect();
  const max = Math.max(1, ...values);
  const step = w / Math.max(30, values.length - 1);
  ctx.strokeStyle = "#58a6ff";
  ctx.fillStyle = "rgba(88,166,255,0.15)";
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = w - (values.length - 1 - i) * step;
    const y = h - 2 - (v / max) * (h - 4);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.lineTo(w, h); ctx.lineTo(w - (values.length - 1) * step, h); ctx.closePath(); ctx.fill();
}

function setupCanvas(canvas) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(r.width * dpr) || canvas.height !== Math.round(r.height * dpr)) {
    canvas.width = Math.round(r.width * dpr);
    canvas.height = Math.round(r.height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, r.width, r.height);
  return ctx;
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
  $("#device-meta").textContent = d ? `${d.device_type} · ${statusOf(d)} · seq ${d.seq}` : "";
  const metrics = Object.keys((d && d.metrics) || {});
  const charts = $("#charts");
  charts.replaceChildren(...metrics.map((m) => {
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.metric = m;
    div.innerHTML = `<div class="title"><span>${esc(m)}</span><span class="latest"></span></div><canvas></canvas>`;
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
  if (d) $("#device-meta").textContent = `${d.device_type} · ${statusOf(d)} · seq ${d.seq}`;
  document.querySelectorAll("#charts .chart").forEach((div) => {
    const m = div.dataset.metric;
    const hist = (selected.series[m] && selected.series[m].points) || [];
    const live = selected.live[m] || [];
    const latest = live.length ? live[live.length - 1][1] : d && d.metrics[m];
    div.querySelector(".latest").textContent = fmt(latest);
    drawChart(div.querySelector("canvas"), hist, live, RANGE_MS[selected.range]);
  });
}

function drawChart(canvas, hist, live, spanMs) {
  const ctx = setupCanvas(canvas);
  const { width: w, height: h } = canvas.getBoundingClientRect();
  const pad = { l: 44, r: 8, t: 6, b: 18 };
  const end = Date.now();
  const start = end - spanMs;
  const lastHist = hist.length ? hist[hist.length - 1].ts : -Infinity;
  const livePts = live.filter(([t]) => t > lastHist && t >= start);
  hist = hist.filter((p) => p.value !== null && p.value !== undefined);  // empty buckets
  const values = [];
  hist.forEach((p) => values.push(p.min ?? p.value, p.max ?? p.value));
  livePts.forEach(([, v]) => values.push(v));
  ctx.font = "10px system-ui";
  ctx.fillStyle = "#8a95a1";
  if (!values.length) { ctx.fillText("no data in this range yet", pad.l, h / 2); return; }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { hi += 1; lo -= 1; }
  const X = (t) => pad.l + ((t - start) / spanMs) * (w - pad.l - pad.r);
  const Y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (h - pad.t - pad.b);
  // grid + labels
  ctx.strokeStyle = "#2a3038";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const v = lo + ((hi - lo) * i) / 3, y = Y(v);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(fmt(v), 2, y + 3);
  }
  for (let i = 0; i <= 4; i++) {
    const t = start + (spanMs * i) / 4;
    const d = new Date(t);
    const label = spanMs > 86400e3 ? `${d.getMonth() + 1}/${d.getDate()} ${String(d.getHours()).padStart(2, "0")}h`
      : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    ctx.fillText(label, Math.min(X(t), w - 60), h - 4);
  }
  // min/max band of downsampled history
  const banded = hist.filter((p) => p.min !== null && p.min !== undefined);
  if (banded.length > 1) {
    ctx.fillStyle = "rgba(88,166,255,0.18)";
    ctx.beginPath();
    banded.forEach((p, i) => (i ? ctx.lineTo(X(p.ts), Y(p.max)) : ctx.moveTo(X(p.ts), Y(p.max))));
    [...banded].reverse().forEach((p) => ctx.lineTo(X(p.ts), Y(p.min)));
    ctx.closePath(); ctx.fill();
  }
  line(ctx, hist.map((p) => [X(p.ts), Y(p.value)]), "#58a6ff");
  line(ctx, livePts.map(([t, v]) => [X(t), Y(v)]), "#3fb950");
  if (livePts.length) {
    const [t, v] = livePts[livePts.length - 1];
    ctx.fillStyle = "#3fb950";
    ctx.beginPath(); ctx.arc(X(t), Y(v), 3, 0, 2 * Math.PI); ctx.fill();
  }
}

function line(ctx, pts, color) {
  if (!pts.length) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
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
  const url = `${proto}://${location.host}/ws?token=${encodeURIComponent(token)}` +
    "&channels=readings,alerts,fleet,pipeline,heartbeat&client=dashboard";
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
    setConn("down", `disconnected${ev.code === 1008 ? " (token?)" : ""} — retrying in ${(wait / 1000).toFixed(1)} s`);
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
  $("#device-panel").classList.add("hidden");
  tiles.forEach((el) => el.classList.remove("selected"));
  history.replaceState(null, "", location.pathname + location.search);
});
document.querySelectorAll(".ranges button").forEach((b) =>
  b.addEventListener("click", () => selected && openDevice(selected.id, b.dataset.range)));
window.addEventListener("resize", () => { drawCharts(); });

(async () => {
  try { await Promise.all([loadFleet(), loadAlerts()]); } catch (e) { setConn("down", String(e).slice(0, 80)); }
  const m = location.hash.match(/device=([^&]+)/);
  if (m) openDevice(decodeURIComponent(m[1]));
  connect();
})();
