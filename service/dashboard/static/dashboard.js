// ncsweep dashboard: live tables, run page, refreshed plots (no build step, no dependencies); sweep page: sweep.js.
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const pct = (f) => `${(100 * (f || 0)).toFixed(0)}%`;
const bar = (f, cls = "") => `<div class="bar ${cls}"><div style="width:${(100 * Math.min(1, f || 0)).toFixed(1)}%"></div></div>`;
const eta = (s) => s == null ? "" : s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m` : `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
const gib = (b) => b == null ? "" : (b / 2 ** 30).toFixed(1);
const whole = (x) => x == null ? "—" : x.toFixed(0);
// a run's grid values in the sweep's axis order (then any other key, sorted), then its seed: one order whether
// the state came inlined in the page (its keys sorted) or from state.json
const config = (r, axes = []) => {
  const grid = r.grid || {}, keys = Object.keys(grid);
  const order = [...axes.filter((a) => a in grid), ...keys.filter((k) => !axes.includes(k)).sort()];
  return [...order.map((k) => `${k}=${grid[k]}`), `seed=${r.seed}`].join(" ");
};
const chip = (status, text = status) => `<span class="chip st-${esc(status)}">${esc(text)}</span>`;
// status chips in one fixed order everywhere, the CLI's (`ncsweep watch`): running, failed, queued, succeeded, cancelled
const CHIP_ORDER = ["running", "failed", "queued", "succeeded", "cancelled"];
const rank = (k) => { const i = CHIP_ORDER.indexOf(k); return i < 0 ? CHIP_ORDER.length : i; };
const chips = (counts) => Object.entries(counts || {}).filter(([, v]) => v).sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : 1))
  .map(([k, v]) => chip(k, `${k} ${v}`)).join(" ");
const overall = (o, etaS) => o ? `${chip(o.state, o.label)}${etaS != null && ["running", "queued"].includes(o.state) ? ` <span class="eta">ETA ${eta(etaS)}</span>` : ""}` : "";
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
  if (!res.ok) throw Object.assign(new Error(`${url}: HTTP ${res.status}`), {status: res.status});
  return res.json();
}

// a 401/403 (reads need a token: NCSWEEP_AUTH_READS, or the token was revoked): reload, and the server answers
// with its token form; at most once in 30 s from the last reload (so a page the server still serves never reloads
// in a loop; a refusal that does not reload leaves that time as it is, so a later one reloads again)
const TOKEN_RELOAD = "ncsweep-token-reload";
function tokenNeeded(why) {
  let last = 0;
  try { last = Number(sessionStorage.getItem(TOKEN_RELOAD) || 0); } catch (e) { /* no storage */ }
  if (Date.now() - last < 30000) { live.set("down", `a token is needed (${why}): reload the page to enter one`); return; }
  try { sessionStorage.setItem(TOKEN_RELOAD, String(Date.now())); } catch (e) { /* no storage */ }
  live.set("down", `a token is needed (${why}): opening the token form`);
  location.reload();
}
const refused = (err) => err && (err.status === 401 || err.status === 403);

// the nav's ● : green while this page's polls or event stream succeed, red when they fail, grey when idle
const live = {
  set(state, title) { const el = $("#live"); if (el) { el.className = `live ${state}`; el.title = title; el.setAttribute("aria-label", title); } },
  ok(what) { live.set("on", `live: ${what} updated ${new Date().toLocaleTimeString()}`); },
  fail(what, err) {
    if (refused(err)) return tokenNeeded(`${what}: HTTP ${err.status}`);
    live.set("down", `server unreachable: ${what} failed (${err.message}) at ${new Date().toLocaleTimeString()}; retrying`);
  },
  idle(why) { live.set("idle", why); },
};

// the change feed (GET /events) as an EventSource that outlives HTTP errors: the browser retries a dropped stream
// itself (CONNECTING), but an HTTP error (a 401 after a restart with NCSWEEP_AUTH_READS, a 503) closes it for good
// (CLOSED); then the server is asked why (401/403: the token form), else a new one opens after a backoff (2 s,
// doubling to 60 s), from the last event seen. onReopen runs when a stream opens again after a failure; close()
// ends it for good.
function liveEvents(path, cursor, kinds, onEvent, {onOpen = () => live.ok("event stream"), onReopen = () => {}} = {}) {
  let source = null, lastId = cursor, delay = 2000, broken = false, closed = false, retry = null;
  const url = () => `${path}&since=${encodeURIComponent(lastId)}`;
  const probe = async () => {
    let status = 0;
    try {
      const ctrl = new AbortController();
      const res = await fetch(url(), {cache: "no-store", signal: ctrl.signal});
      status = res.status;
      ctrl.abort();
    } catch (e) { /* no answer */ }
    if (closed) return;
    if (status === 401 || status === 403) return tokenNeeded(`event stream: HTTP ${status}`);
    live.set("down", `event stream closed (${status ? `HTTP ${status}` : "no answer"}) at ${new Date().toLocaleTimeString()}; reopening in ${delay / 1000} s`);
    retry = setTimeout(open, delay);
    delay = Math.min(60000, delay * 2);
  };
  const open = () => {
    if (closed) return;
    source = new EventSource(url());
    for (const kind of kinds) source.addEventListener(kind, (e) => { if (e.lastEventId) lastId = e.lastEventId; onEvent(kind, e); });
    source.onopen = () => { delay = 2000; onOpen(); if (broken) { broken = false; onReopen(); } };
    source.onerror = () => {
      broken = true;
      if (source.readyState !== EventSource.CLOSED) { live.set("down", "event stream disconnected; reconnecting"); return; }
      source.close();
      probe();
    };
  };
  if (window.EventSource) open();
  return {
    isOpen: () => !!source && source.readyState === EventSource.OPEN,
    close() { closed = true; clearTimeout(retry); if (source) source.close(); },
  };
}

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
    <td>${bar(s.progress)} <span class="pct">${pct(s.progress)}</span></td><td class="state">${overall(s.overall, s.eta_s)}</td>
    <td>${chips(s.counts)}${validateJobs(s.validate_jobs, `/ui/sweeps/${s.id}#validate`)}</td>
    <td>${esc(s.created_at.slice(0, 19))}</td></tr>`);
  $("#sweeps tbody").innerHTML = rows.join("") || `<tr><td colspan="8">no sweeps yet</td></tr>`;
}

// -- workers page --------------------------------------------------------------------------------
function renderWorkers(workers) {
  $("#workers tbody").innerHTML = workers.map((w) => {
    const mem = w.memory_total ? w.memory_used / w.memory_total : 0;
    const host = w.device === "cpu" ? ` <small class="host-wide" title="a CPU worker reports the whole host's CPU and RAM use, not its run's">host-wide</small>` : "";
    const run = w.run ? `<a href="/ui/runs/${w.run.id}">${w.run.id}</a>` : "";
    return `<tr data-worker="${esc(w.name)}" data-status="${w.status}"><td>${esc(w.name)}<br><small>${esc(w.host)} pid ${w.pid ?? ""}</small></td>
      <td>${chip(w.status)}</td><td>${esc(w.gpu_name || w.device)}</td>
      <td>${bar((w.util_percent || 0) / 100)} ${w.util_percent == null ? "" : w.util_percent.toFixed(0) + "%"}${host}</td>
      <td>${bar(mem)} ${gib(w.memory_used)}/${gib(w.memory_total)} GiB${host}</td>
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
    + (t.host_wide ? " (host-wide: CPU worker, the whole machine's RAM)" : "")
    + ` · mean ${whole(t.mean_samples_per_s)} / peak ${whole(t.peak_samples_per_s)} ${rate}` : "";
  const tm = v.times || {};
  $("#run-times").textContent = `submitted ${tm.created_at} UTC` + (tm.started_at ? ` · started ${tm.started_at}` : "")
    + (tm.finished_at ? ` · finished ${tm.finished_at}` : "")
    + (tm.elapsed_s != null ? ` · ${tm.finished_at ? "took" : "running for"} ${eta(tm.elapsed_s)}` : "");
  $("#run-error").innerHTML = v.error ? `<h2>Error</h2><pre id="error">${esc(v.error)}</pre>` : "";
  // a run that ended without storing a metric never will (until retried): say so instead of empty plots
  const none = v.finished && !v.has_metrics;
  $("#no-plots").hidden = !none;
  $("#no-plots").textContent = none ? `run ${v.id} ${v.status} before storing any metric: no plots` : "";
  for (const img of document.querySelectorAll("img.plot")) img.hidden = none;
}

// polls while its run is unfinished, with no event stream open (the poll covers it); finished, it follows its
// sweep's status events of this run (a retry; a sweep-wide retry names no run) and polls again once the run is back
function runPage() {
  const {run: first, cursor} = init();
  let view = first, lastPlot = Date.now(), pending = null, stream = null;
  const done = () => live.idle(`run ${view.id} ${view.status}: no more updates unless it is retried (following its events)`);
  const onEvent = (kind, e) => {
    let ev = {};
    try { ev = JSON.parse(e.data); } catch (err) { return; }
    if (!view.finished || pending || (ev.run_id != null && ev.run_id !== view.id)) return;
    pending = setTimeout(() => { pending = null; poll.now(); }, 300);
  };
  // finished: the stream opens (once) from `since`, the newest event when the run was read; unfinished: it closes
  const follow = (since) => {
    if (!view.finished) { if (stream) stream.close(); stream = null; return; }
    if (!stream) stream = liveEvents(`/events?sweep_id=${view.sweep_id}`, since, ["status"], onEvent,
      {onOpen: () => (view.finished ? done() : live.ok("event stream")), onReopen: () => poll.now()});
  };
  const poll = poller(async () => {
    const next = await getJSON(`/ui/runs/${view.id}.json`);
    const changed = next.status !== view.status;
    view = next;
    renderRun(view);
    if (changed || (view.status === "running" && Date.now() - lastPlot >= 10000)) { lastPlot = Date.now(); refreshPlots(); }
    follow(next.cursor);
    if (view.finished) poll.stop(); else poll.start();
  }, 3000, `run ${view.id}`, done);
  renderRun(view);
  if (!(view.finished && !view.has_metrics)) refreshPlots();
  follow(cursor);
  if (view.finished) done(); else poll.start();
}

pages.index = () => poller(async () => renderSweeps(await getJSON("/ui/sweeps.json")), 3000, "sweeps").start();
pages.workers = () => { renderWorkers(init().workers); poller(async () => renderWorkers(await getJSON("/ui/workers.json")), 2000, "workers").start(); };
pages.run = runPage;
document.addEventListener("DOMContentLoaded", () => (pages[document.body.dataset.page] || (() => {}))());
