// ncsweep dashboard: live tables, run page, refreshed plots (no build step, no dependencies); sweep page: sweep.js.
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const pct = (f) => `${(100 * (f || 0)).toFixed(0)}%`;
const bar = (f, cls = "") => `<div class="bar ${cls}"><div style="width:${(100 * Math.min(1, f || 0)).toFixed(1)}%"></div></div>`;
const eta = (s) => s == null ? "" : s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m` : `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
const gib = (b) => b == null ? "" : (b / 2 ** 30).toFixed(1);
const whole = (x) => x == null ? "—" : x.toFixed(0);
const config = (r) => Object.entries(r.grid || {}).map(([k, v]) => `${k}=${v}`).join(" ") + ` seed=${r.seed}`;
const chip = (status, text = status) => `<span class="chip st-${esc(status)}">${esc(text)}</span>`;
const init = () => JSON.parse(($("#init") || {}).textContent || "{}");
const pages = {};  // page name (body's data-page) → its setup; sweep.js adds the sweep page

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

// the nav's ● : green while this page's polls or event stream succeed, red when they fail, grey when idle
const live = {
  set(state, title) { const el = $("#live"); if (el) { el.className = `live ${state}`; el.title = title; } },
  ok(what) { live.set("on", `live: ${what} updated ${new Date().toLocaleTimeString()}`); },
  fail(what, err) { live.set("down", `server unreachable: ${what} failed (${err.message}) at ${new Date().toLocaleTimeString()}; retrying`); },
  idle(why) { live.set("idle", why); },
};

// calls fn every ms while started (stop() inside fn ends it); reports each outcome on the live indicator
function poller(fn, ms, what, onIdle = () => live.idle(`${what}: not polling`)) {
  let timer = null, active = false;
  const tick = async () => {
    clearTimeout(timer);
    timer = null;
    try { await fn(); if (active) live.ok(what); else onIdle(); } catch (e) { console.warn(e.message); live.fail(what, e); }
    if (active && !timer) timer = setTimeout(tick, ms);
  };
  return {
    start() { active = true; if (!timer) timer = setTimeout(tick, ms); },
    stop() { active = false; clearTimeout(timer); timer = null; },
    now: tick,
  };
}

// validate jobs re-evaluate a run's checkpoints: shown apart, never in a sweep's run counts or cell means
const validateJobs = (byStatus, href) => {
  const n = Object.values(byStatus || {}).reduce((a, b) => a + b, 0);
  const title = esc(Object.entries(byStatus || {}).map(([k, v]) => `${k} ${v}`).join(", "));
  return n ? ` <a class="validate-jobs" href="${href}" title="${title}"><small>+ validate jobs ${n}</small></a>` : "";
};

// -- sweeps list ---------------------------------------------------------------------------------
function renderSweeps(sweeps) {
  const rows = sweeps.map((s) => `<tr data-sweep="${s.id}"><td><a href="/ui/sweeps/${s.id}">${s.id}</a></td>
    <td class="name"><a href="/ui/sweeps/${s.id}">${esc(s.name)}</a></td><td>${esc(s.axes.join(", "))}</td><td>${s.runs}</td>
    <td>${bar(s.progress)} <span class="pct">${pct(s.progress)}</span></td>
    <td>${Object.entries(s.counts).map(([k, v]) => chip(k, `${k} ${v}`)).join(" ")}${validateJobs(s.validate_jobs, `/ui/sweeps/${s.id}#validate`)}</td>
    <td>${esc(s.created_at.slice(0, 19))}</td></tr>`);
  $("#sweeps tbody").innerHTML = rows.join("") || `<tr><td colspan="7">no sweeps yet</td></tr>`;
}

// -- workers page --------------------------------------------------------------------------------
function renderWorkers(workers) {
  $("#workers tbody").innerHTML = workers.map((w) => {
    const mem = w.memory_total ? w.memory_used / w.memory_total : 0;
    const run = w.run ? `<a href="/ui/runs/${w.run.id}">${w.run.id}</a>` : "";
    return `<tr data-worker="${esc(w.name)}" data-status="${w.status}"><td>${esc(w.name)}<br><small>${esc(w.host)} pid ${w.pid ?? ""}</small></td>
      <td>${chip(w.status)}</td><td>${esc(w.gpu_name || w.device)}</td>
      <td>${bar((w.util_percent || 0) / 100)} ${w.util_percent == null ? "" : w.util_percent.toFixed(0) + "%"}</td>
      <td>${bar(mem)} ${gib(w.memory_used)}/${gib(w.memory_total)} GiB</td>
      <td>${w.temperature_c == null ? "" : w.temperature_c.toFixed(0) + " °C"}</td><td>${run}</td>
      <td>${w.run ? `${bar(w.run.progress)} ep ${w.run.epoch}/${w.run.epochs_total} ${eta(w.run.eta_s)}` : ""}</td>
      <td>${w.age_s.toFixed(0)} s ago</td></tr>`;
  }).join("") || `<tr><td colspan="9">no workers have reported yet: <code>ncsweep worker</code></td></tr>`;
}

// -- run page ------------------------------------------------------------------------------------
function renderRun(v) {
  const [steps, rate] = v.unit;
  $("#run-status").className = `chip st-${v.status}`;
  $("#run-status").textContent = v.status;
  $("#run-attempt").textContent = `${v.attempt}/${v.max_attempts}`;
  $("#run-worker").textContent = v.worker || "—";
  $("#run-bar").style.width = `${(100 * Math.min(1, v.progress || 0)).toFixed(1)}%`;
  $("#run-progress").textContent = `${steps} ${v.epoch}/${v.epochs_total}` + (v.kind === "train" ? ` · step ${v.step}/${v.steps_total}` : "")
    + (v.samples_per_s ? ` · ${v.samples_per_s.toFixed(0)} ${rate}` : "") + (v.eta_s ? ` · ETA ${eta(v.eta_s)}` : "");
  const t = v.telemetry;
  $("#run-telemetry").textContent = t.samples ? `telemetry: peak memory ${t.peak_memory ? (t.peak_memory / 2 ** 30).toFixed(2) : "—"} GiB`
    + ` · mean ${whole(t.mean_samples_per_s)} / peak ${whole(t.peak_samples_per_s)} ${rate}` : "";
  $("#run-error").innerHTML = v.error ? `<h2>Error</h2><pre id="error">${esc(v.error)}</pre>` : "";
}

function runPage() {
  let view = init().run, lastPlot = Date.now();
  const done = () => live.idle(`run ${view.id} ${view.status}: no more updates`);
  const poll = poller(async () => {
    const next = await getJSON(`/ui/runs/${view.id}.json`);
    const changed = next.status !== view.status;
    view = next;
    renderRun(view);
    if (changed || (view.status === "running" && Date.now() - lastPlot >= 10000)) { lastPlot = Date.now(); refreshPlots(); }
    if (view.finished) poll.stop();
  }, 3000, `run ${view.id}`, done);
  renderRun(view);
  refreshPlots();
  if (view.finished) done(); else poll.start();
}

pages.index = () => poller(async () => renderSweeps(await getJSON("/ui/sweeps.json")), 3000, "sweeps").start();
pages.workers = () => { renderWorkers(init().workers); poller(async () => renderWorkers(await getJSON("/ui/workers.json")), 2000, "workers").start(); };
pages.run = runPage;
document.addEventListener("DOMContentLoaded", () => (pages[document.body.dataset.page] || (() => {}))());
