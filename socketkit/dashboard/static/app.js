// The dashboard of `socketkit up`: plain JavaScript, no build step. Everything it keeps is bounded:
// each chart holds at most the points the server keeps (900 at 1 s), the event list at most MAX_EVENTS rows.
"use strict";

const MAX_EVENTS = 200;
const COLORS = ["#2463eb", "#e0561b", "#1a9c5b", "#9b36c9", "#c79a00", "#d12f6b", "#15899b", "#6b7280", "#8a5a2b"];
const state = { span: "15m", figures: [], charts: {}, data: {}, services: [], colors: {}, socketService: "",
                dirty: new Set(), drawing: false };

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function human(n) {
  if (n === null || n === undefined) return "";
  const units = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : Math.round(n * 10) / 10) + units[i];
}
function since(seconds) {
  if (seconds < 60) return seconds.toFixed(0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}
async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

// -- services ------------------------------------------------------------------------------------
function renderServices(status) {
  const box = $("#services");
  box.textContent = "";
  state.services = status.services.map((s) => s.name);
  state.services.forEach((name, i) => { if (!state.colors[name]) state.colors[name] = COLORS[i % COLORS.length]; });
  for (const s of status.services) {
    const dl = el("dl");
    const rows = [["open", s.open], ["accepted", s.accepted], ["refused", s.refused, s.refused > 0],
                  ["errors", s.errors, s.errors > 0], ["in", human(s.bytes_in) + "B"], ["out", human(s.bytes_out) + "B"]];
    // a service's own figures: the first few in the card, all of them in its tooltip
    const details = Object.entries(s.details || {});
    for (const [k, v] of details.slice(0, 4)) rows.push([k.replace(/_/g, " "), typeof v === "number" ? human(v) : String(v)]);
    for (const [k, v, bad] of rows) dl.append(el("dt", { text: k }), el("dd", { text: String(v), class: bad ? "bad" : "" }));
    const title = el("h3", { text: s.name });
    title.style.color = state.colors[s.name];
    const card = el("div", { class: "card", "data-service": s.name }, title, el("div", { class: "desc", text: s.description }),
                    el("div", { class: "eps", text: s.endpoints.join(", ") }), dl);
    for (const note of s.notes || []) card.append(el("div", { class: "note", text: note }));
    if (details.length > 4) card.title = details.map(([k, v]) => `${k.replace(/_/g, " ")}: ${v}`).join("\n");
    box.append(card);
  }
  const nav = $("#pages");
  nav.textContent = "";
  for (const p of status.pages) nav.append(el("a", { href: p.href, text: p.title }));
  $("#summary").textContent = `${status.services.length} services in this one process, up ${since(Date.now() / 1000 - status.started)}.`;
  const select = $("#socket-service");
  if (select.options.length !== status.services.length) {
    select.textContent = "";
    for (const name of state.services) select.append(el("option", { value: name, text: name }));
    if (!state.socketService) state.socketService = state.services[0] || "";
    select.value = state.socketService;
  }
}

// -- charts --------------------------------------------------------------------------------------
function buildCharts(view) {
  state.figures = view.figures;
  const box = $("#charts");
  box.textContent = "";
  state.charts = {};
  state.data = {};
  const names = Object.keys(view.services);
  for (const [key, label] of view.figures) {
    const data = [view.times.slice()];
    for (const name of names) data.push(view.services[name][key].slice());
    state.data[key] = { names, data };
    const holder = el("div", { class: "chart", "data-figure": key }, el("h3", { text: label }));
    box.append(holder);
    const series = [{}].concat(names.map((name) => ({ label: name, stroke: state.colors[name] || "#555", width: 1.5,
                                                      points: { show: false },
                                                      value: (u, v) => (v === null ? "–" : human(v)) })));
    const width = Math.max(320, holder.clientWidth - 12);
    state.charts[key] = new uPlot({ width, height: 190, series, legend: { live: false },
                                   axes: [{}, { size: 56, values: (u, ticks) => ticks.map(human) }],
                                   scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } } }, data, holder);
  }
}
function appendPoint(point) {
  if (state.span !== "15m" || point.time === null) return;
  for (const [key] of state.figures) {
    const entry = state.data[key];
    const chart = state.charts[key];
    if (!entry || !chart) continue;
    const known = Object.keys(point.services);
    if (known.some((n) => !entry.names.includes(n))) { loadSeries(); return; }  // a new service: start over
    const [times, ...lines] = entry.data;
    if (times.length && times[times.length - 1] >= point.time) continue;
    times.push(point.time);
    entry.names.forEach((name, i) => lines[i].push(point.services[name] ? point.services[name][key] : null));
    if (times.length > 900) { times.shift(); for (const l of lines) l.shift(); }  // bounded, as on the server
    state.dirty.add(key);
  }
  // Redraw at most once a frame, whatever the tick rate: a slow machine never builds a backlog of drawings.
  if (state.dirty.size && !state.drawing) {
    state.drawing = true;
    requestAnimationFrame(() => {
      for (const key of state.dirty) if (state.charts[key]) state.charts[key].setData(state.data[key].data);
      state.dirty.clear();
      state.drawing = false;
    });
  }
}
async function loadSeries() {
  buildCharts(await getJSON("api/series?span=" + state.span));
}

// -- sockets -------------------------------------------------------------------------------------
async function refreshSockets() {
  const asked = state.socketService;
  if (!asked) return;
  const { services } = await getJSON("api/sockets?service=" + encodeURIComponent(asked));
  if (asked !== state.socketService) return;  // another service was chosen meanwhile: its answer draws the table
  const svc = services[0];
  const tbody = $("#connections tbody");
  tbody.textContent = "";
  if (!svc) return;
  $("#listeners").textContent = "listening: " + svc.listeners.map((l) =>
    `${l.endpoint} (backlog ${l.backlog}${l.limits ? ", at most " + l.limits.max_connections + " connections" : ""})`).join("; ");
  for (const c of svc.connections.slice(0, 200)) {
    const what = Object.entries(c.info || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    const close = el("button", { type: "button", class: "close", text: "close", title: "close this connection" });
    close.addEventListener("click", async () => {
      await fetch("api/close", { method: "POST", body: JSON.stringify({ service: svc.name, id: c.id }) });
      refreshSockets();
    });
    tbody.append(el("tr", { "data-id": String(c.id) }, el("td", { class: "mono", text: c.peer }), el("td", { class: "mono", text: c.local }),
      el("td", { text: c.protocol }), el("td", { class: "n", text: since(c.age) }), el("td", { class: "n", text: human(c.bytes_in) + "B" }),
      el("td", { class: "n", text: human(c.bytes_out) + "B" }), el("td", { class: "n", text: since(c.idle) }),
      el("td", { text: what }), el("td", {}, close)));
  }
  if (!svc.connections.length) tbody.append(el("tr", {}, el("td", { colspan: "9", text: "no open connections" })));
}

// -- events --------------------------------------------------------------------------------------
function addEvent(e) {
  const list = $("#events");
  const t = new Date(e.time * 1000).toLocaleTimeString();
  const fields = Object.entries(e).filter(([k]) => !["id", "time", "kind", "service"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join("  ");
  const li = el("li", { "data-kind": e.kind, class: /limit|refused|flood|cut/.test(e.kind) ? "limit" : "" },
                el("time", { text: t }), el("span", { class: "svc", text: e.service }), el("span", { class: "kind", text: e.kind }),
                el("span", { text: fields }));
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// -- wiring --------------------------------------------------------------------------------------
async function refreshStatus() { renderServices(await getJSON("api/status")); }

async function main() {
  // the controls answer from the first moment, not once the first figures have arrived
  for (const b of document.querySelectorAll(".toggle button")) {
    b.addEventListener("click", () => {
      state.span = b.dataset.span;
      for (const o of document.querySelectorAll(".toggle button")) o.classList.toggle("on", o === b);
      loadSeries();
    });
  }
  $("#socket-service").addEventListener("change", (e) => { state.socketService = e.target.value; refreshSockets(); });
  await refreshStatus();
  await loadSeries();
  const { events } = await getJSON("api/events");
  for (const e of events) addEvent(e);
  const last = events.length ? events[events.length - 1].id : 0;
  const live = new EventSource("api/live?since=" + last);
  live.addEventListener("tick", (m) => appendPoint(JSON.parse(m.data)));
  live.addEventListener("event", (m) => addEvent(JSON.parse(m.data)));
  setInterval(() => refreshStatus().catch(() => {}), 2000);
  setInterval(() => refreshSockets().catch(() => {}), 2000);
  setInterval(() => { if (state.span === "24h") loadSeries().catch(() => {}); }, 60000);
  refreshSockets();
  document.body.dataset.ready = "1";
}
main().catch((e) => { document.body.dataset.error = String(e); });
