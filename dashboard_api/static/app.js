// Minimal live fleet table: initial state over REST, then WebSocket pushes.
const token = new URLSearchParams(location.search).get("token") || "dev-token";
const rows = new Map();
const tbody = document.getElementById("fleet");
const statusEl = document.getElementById("status");
let received = 0;

function render(d) {
  let tr = rows.get(d.device_id);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.device = d.device_id;
    rows.set(d.device_id, tr);
    tbody.appendChild(tr);
  }
  const metrics = Object.entries(d.metrics).map(([k, v]) => `${k}=${Number(v).toFixed(2)}`).join("  ");
  tr.innerHTML = `<td>${d.device_id}</td><td>${d.device_type}</td>` +
    `<td class="${d.status || "online"}">${d.status || "online"}</td><td class="seq">${d.seq}</td>` +
    `<td>${new Date(d.ts).toISOString()}</td><td class="metrics">${metrics}</td>`;
}

async function load() {
  const res = await fetch("/api/devices?limit=1000", { headers: { Authorization: `Bearer ${token}` } });
  if (!res.ok) { statusEl.textContent = `REST error ${res.status}`; return; }
  (await res.json()).items.forEach(render);
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?token=${token}&channels=readings`);
  ws.onopen = () => { statusEl.textContent = "live"; };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.channel === "readings") {
      const b = msg.data;
      const last = b.readings[b.readings.length - 1];
      received += b.readings.length;
      render({ device_id: b.device_id, device_type: b.device_type, seq: last.seq, ts: last.ts,
               status: "online", metrics: last.metrics });
      statusEl.textContent = `live — ${received} readings received`;
    }
  };
  ws.onclose = () => { statusEl.textContent = "disconnected, retrying…"; setTimeout(connect, 1000); };
}

load().then(connect);
