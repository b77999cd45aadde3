// ncsweep dashboard: live tables, completion matrix, refreshed plots (no build step, no dependencies).
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const pct = (f) => `${(100 * (f || 0)).toFixed(0)}%`;
const bar = (f, cls = "") => `<div class="bar ${cls}"><div style="width:${(100 * Math.min(1, f || 0)).toFixed(1)}%"></div></div>`;
const eta = (s) => s == null ? "" : s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m` : `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
const gib = (b) => b == null ? "" : (b / 2 ** 30).toFixed(1);
const config = (r) => Object.entries(r.grid || {}).map(([k, v]) => `${k}=${v}`).join(" ") + ` seed=${r.seed}`;
const init = () => JSON.parse(($("#init") || {}).textContent || "{}");

function refreshPlots() {
  for (const img of document.querySelectorAll("img.plot")) {
    const src = img.dataset.src;
    img.src = src + (src.includes("?") ? "&" : "?") + "t=" + Date.now();
  }
}

async function getJSON(url) {
  const res = await fetch(url, {cache: "no-store"});
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

function poll(fn, ms) {
  const tick = async () => { try { await fn(); } catch (e) { console.warn(e.message); } setTimeout(tick, ms); };
  setTimeout(tick, ms);
}

// validate jobs re-evaluate a run's checkpoints: shown apart, never in a sweep's run counts or cell means
const validateJobs = (byStatus) => {
  const n = Object.values(byStatus || {}).reduce((a, b) => a + b, 0);
  return n ? ` <small class="validate-jobs" title="${esc(Object.entries(byStatus).map(([k, v]) => `${k} ${v}`).join(", "))}">+ validate jobs ${n}</small>` : "";
};

// -- sweeps list ---------------------------------------------------------------------------------
function renderSweeps(sweeps) {
  const rows = sweeps.map((s) => `<tr data-sweep="${s.id}"><td><a href="/ui/sweeps/${s.id}">${s.id}</a></td>
    <td><a href="/ui/sweeps/${s.id}">${esc(s.name)}</a></td><td>${esc(s.axes.join(", "))}</td><td>${s.runs}</td>
    <td>${bar(s.progress)} <span class="pct">${pct(s.progress)}</span></td>
    <td>${Object.entries(s.counts).map(([k, v]) => `<span class="chip st-${k}">${k} ${v}</span>`).join(" ")}${validateJobs(s.validate_jobs)}</td>
    <td>${esc(s.created_at.slice(0, 19))}</td></tr>`);
  $("#sweeps tbody").innerHTML = rows.join("") || `<tr><td colspan="7">no sweeps yet</td></tr>`;
}

// -- sweep page ----------------------------------------------------------------------------------
function colourScale(values) {
  const finite = values.filter((v) => v != null && isFinite(v));
  const lo = Math.min(...finite), hi = Math.max(...finite);
  return (v) => {
    if (v == null || !isFinite(v)) return "#e5e7eb";
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;  // dark purple → teal → yellow (viridis-like)
    const stops = [[68, 1, 84], [33, 145, 140], [253, 231, 37]];
    const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], (t - 0.5) * 2];
    return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * u)).join(",")})`;
  };
}

function renderMatrix(state) {
  const byValue = !!state.key;
  const scale = colourScale(state.matrix.flat().map((c) => c.value));
  const head = `<tr><th>${esc(state.row_axis || "")} \\ ${esc(state.col_axis || "")}</th>${state.cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>`;
  const body = state.matrix.map((line, i) => `<tr><th>${esc(state.rows[i])}</th>${line.map((c, j) => {
    const label = byValue ? (c.value == null ? "–" : c.value.toPrecision(3)) : `${c.done}/${c.n}`;
    const style = byValue ? ` style="background:${scale(c.value)}"` : "";
    return `<td id="cell-${i}-${j}" class="cell st-${c.status}" data-status="${c.status}"${style}
      title="runs ${c.runs.join(", ")}: ${c.status}">${label}</td>`;
  }).join("")}</tr>`);
  $("#matrix").innerHTML = `<table>${head}${body.join("")}</table>`;
}

function renderRuns(state) {
  $("#runs tbody").innerHTML = state.runs.map((r) => `<tr data-run="${r.id}" data-status="${r.status}">
    <td><a href="/ui/runs/${r.id}">${r.id}</a></td><td><span class="chip st-${r.status}">${r.status}</span></td>
    <td>${esc(config(r))}</td><td>${bar(r.progress)} ${pct(r.progress)}</td>
    <td>${r.epoch}/${r.epochs_total}</td><td>${eta(r.eta_s)}</td><td>${esc(r.worker || "")}</td><td>${esc(r.error)}</td></tr>`).join("");
  $("#sweep-bar").style.width = `${(100 * state.progress).toFixed(1)}%`;
  $("#sweep-pct").textContent = pct(state.progress);
  $("#sweep-counts").innerHTML = Object.entries(state.counts).map(([k, v]) => `<span class="chip st-${k}">${k} ${v}</span>`).join(" ");
  $("#sweep-validate-jobs").innerHTML = validateJobs(state.validate_jobs);
}

function sweepPage() {
  const {sweep_id: id, cursor, state} = init();
  const render = (s) => { renderMatrix(s); renderRuns(s); };
  render(state);
  refreshPlots();
  let pending = null, lastPlot = Date.now();
  const refresh = async () => {
    const [key, split] = ($("#colour-by").value || "|").split("|");
    const q = key ? `?key=${encodeURIComponent(key)}&split=${encodeURIComponent(split)}` : "";
    render(await getJSON(`/ui/sweeps/${id}/state.json${q}`));
    if (Date.now() - lastPlot > 5000) { lastPlot = Date.now(); refreshPlots(); }
  };
  const schedule = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh().catch((e) => console.warn(e.message)); }, 300); };
  $("#colour-by").addEventListener("change", schedule);
  if (window.EventSource) {
    const es = new EventSource(`/events?sweep_id=${id}&since=${cursor}`);
    for (const kind of ["status", "progress", "metric", "worker"]) es.addEventListener(kind, schedule);
    es.onopen = () => $("#live").classList.add("on");
    es.onerror = () => $("#live").classList.remove("on");
  }
  poll(refresh, 10000);  // fallback when events are not delivered (proxies, old browsers)
}

// -- workers page --------------------------------------------------------------------------------
function renderWorkers(workers) {
  $("#workers tbody").innerHTML = workers.map((w) => {
    const mem = w.memory_total ? w.memory_used / w.memory_total : 0;
    const run = w.run ? `<a href="/ui/runs/${w.run.id}">${w.run.id}</a>` : "";
    return `<tr data-worker="${esc(w.name)}" data-status="${w.status}"><td>${esc(w.name)}<br><small>${esc(w.host)} pid ${w.pid ?? ""}</small></td>
      <td><span class="chip st-${w.status}">${w.status}</span></td><td>${esc(w.gpu_name || w.device)}</td>
      <td>${bar((w.util_percent || 0) / 100)} ${w.util_percent == null ? "" : w.util_percent.toFixed(0) + "%"}</td>
      <td>${bar(mem)} ${gib(w.memory_used)}/${gib(w.memory_total)} GiB</td>
      <td>${w.temperature_c == null ? "" : w.temperature_c.toFixed(0) + " °C"}</td><td>${run}</td>
      <td>${w.run ? `${bar(w.run.progress)} ep ${w.run.epoch}/${w.run.epochs_total} ${eta(w.run.eta_s)}` : ""}</td>
      <td>${w.age_s.toFixed(0)} s ago</td></tr>`;
  }).join("") || `<tr><td colspan="9">no workers have reported yet: <code>ncsweep worker</code></td></tr>`;
}

const pages = {
  index: () => poll(async () => renderSweeps(await getJSON("/ui/sweeps.json")), 3000),
  sweep: sweepPage,
  workers: () => { renderWorkers(init().workers); poll(async () => renderWorkers(await getJSON("/ui/workers.json")), 2000); },
  run: () => { refreshPlots(); if (["running", "queued"].includes(init().status)) poll(async () => refreshPlots(), 10000); },
};
(pages[document.body.dataset.page] || (() => {}))();
