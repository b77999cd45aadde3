// ncsweep dashboard, sweep page: completion matrix (by status or a metric), runs table, validate jobs, plots.
"use strict";
const STATUSES = ["queued", "partial", "running", "succeeded", "failed", "cancelled"];
const NO_VALUE = [229, 231, 235];  // a cell without a finite value: light grey

// 3 significant digits; an exponent for tiny or large values ("8.65e-7", "1.23e4"); – for no value
function formatValue(v) {
  if (v == null || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a === 0) return "0";
  return a >= 1e-3 && a < 1e3 ? v.toPrecision(3) : v.toExponential(2).replace("e+", "e");
}

// dark purple → teal → yellow (viridis-like) over [lo, hi]; returns [r, g, b]
function colourScale(lo, hi) {
  const stops = [[68, 1, 84], [33, 145, 140], [253, 231, 37]];
  return (v) => {
    if (v == null || !isFinite(v)) return NO_VALUE;
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], (t - 0.5) * 2];
    return a.map((x, i) => Math.round(x + (b[i] - x) * u));
  };
}

// dark text on a light background (relative luminance, WCAG), white on a dark one
const textOn = (rgb) => {
  const [r, g, b] = rgb.map((c) => { const s = c / 255; return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.2 ? "#111827" : "#ffffff";
};
const css = (rgb) => `rgb(${rgb.join(",")})`;

function valueRange(state) {
  const finite = state.matrix.flat().map((c) => c.value).filter((v) => v != null && isFinite(v));
  return finite.length ? [Math.min(...finite), Math.max(...finite)] : [null, null];
}

// where an unfinished run's shown value is from: "epoch 15 of 400, cancelled"
const valueFrom = (r, unit) => `${unit} ${r.value_epoch} of ${r.epochs_total}, ${r.status}`;
const UNFINISHED_NOTE = "* includes unfinished runs (last measured epoch)";
const NAN = "NaN";  // a measured value that is undefined (the metric suite says why), unlike – (nothing measured)
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// a cell's value: its mean, NaN when every measured run's value is NaN, – when none has one; (k/n) when only k of
// its n runs have a finite value
function cellLabel(c) {
  if (c.value == null) return c.nan ? NAN : "–";
  return formatValue(c.value);
}
function cellValueTitle(state, c) {
  const metric = `${state.key} [${state.split}]`;
  const parts = [c.value != null ? `${metric} mean ${formatValue(c.value)} of ${c.measured} of ${plural(c.n, "run")}`
    : c.nan ? `${metric} NaN in every measured run` : `${metric}: no run has a value yet`];
  const missing = c.n - c.measured - c.nan;
  if (c.nan) parts.push(`${plural(c.nan, "run")} NaN${(c.notes || []).length ? `: ${c.notes.join("; ")}` : ""}`);
  if (missing > 0 && c.value != null) parts.push(`${plural(missing, "run")} without a value`);
  return parts.join("\n");
}

function renderMatrix(state, unit) {
  const byValue = !!state.key;
  const [lo, hi] = valueRange(state);
  const scale = colourScale(lo, hi);
  const corner = [state.row_axis, state.col_axis].filter(Boolean).map(esc).join(" \\ ");
  const head = `<tr><th scope="col">${corner}</th>${state.cols.map((c) => `<th scope="col">${esc(c) || "—"}</th>`).join("")}</tr>`;
  const body = state.matrix.map((line, i) => `<tr><th scope="row">${esc(state.rows[i]) || "—"}</th>${line.map((c, j) => {
    const unfinished = byValue ? c.unfinished_runs || [] : [];
    const mark = unfinished.length ? `<span class="unfinished">*</span>` : "";
    const partial = byValue && c.value != null && c.measured < c.n ? `<small class="count"> (${c.measured}/${c.n})</small>` : "";
    const label = byValue ? esc(cellLabel(c)) + mark + partial : `${c.done}/${c.n}`;
    const rgb = scale(c.value);
    const style = byValue ? ` style="background:${css(rgb)};color:${textOn(rgb)}"` : "";
    const value = byValue ? `\n${cellValueTitle(state, c)}` : "";
    const from = unfinished.length ? `\n${UNFINISHED_NOTE}: ${(c.unfinished_from || []).map(([id, epoch, total, st]) =>
      `run ${id} ${unit} ${epoch} of ${total}, ${st}`).join("; ")}${unfinished.length > (c.unfinished_from || []).length ? "; …" : ""}` : "";
    const ids = c.runs.length > 12 ? `${c.runs.slice(0, 12).join(", ")}, … (${c.runs.length})` : c.runs.join(", ");
    const nan = byValue && c.value == null && c.nan ? " nan" : "";
    return `<td id="cell-${i}-${j}" class="cell st-${c.status}${byValue ? " by-value" : ""}${nan}" data-status="${c.status}"${style}
      data-unfinished="${unfinished.join(" ")}" data-measured="${c.measured ?? ""}" title="${esc(`runs ${ids}: ${c.status}${value}${from}`)}">${label}</td>`;
  }).join("")}</tr>`);
  $("#matrix").innerHTML = `<table>${head}${body.join("")}</table>`;
  renderLegend(state, lo, hi);
}

// by status: the status chips; by a metric: its min–max colour ramp, and the outlines that mark a cell's status
function renderLegend(state, lo, hi) {
  if (!state.key) { $("#legend").innerHTML = STATUSES.map((s) => chip(s)).join(" "); return; }
  const ramp = [0, 0.5, 1].map((t) => css(colourScale(0, 1)(t))).join(",");
  $("#legend").innerHTML = `<span class="scale">${esc(state.key)} [${esc(state.split)}]
    <span id="scale-min">${formatValue(lo)}</span><span class="ramp" style="background:linear-gradient(to right,${ramp})"></span><span id="scale-max">${formatValue(hi)}</span></span>
    <span class="outlines">outline: ${STATUSES.filter((s) => s !== "succeeded").map((s) => `<span class="cell-key by-value st-${s}">${s}</span>`).join(" ")}</span>
    ${state.matrix.flat().some((c) => (c.unfinished_runs || []).length) ? `<span id="unfinished-note">${UNFINISHED_NOTE} (hover a cell: which epoch)</span>` : ""}`;
}

// a run's value of the chosen metric; * and where it is from when the run has not succeeded
function runValue(state, r, unit) {
  if (!state.key || r.value_epoch == null) return `<td class="value"></td>`;
  const unfinished = r.status !== "succeeded";
  const why = r.nan ? `NaN: ${r.note || "undefined (no reason stored)"}` : "";
  const from = [why, unfinished ? valueFrom(r, unit) : ""].filter(Boolean).join("\n");
  const title = from ? ` title="${esc(from)}"` : "";
  return `<td class="value${r.nan ? " nan" : ""}"${title}>${r.nan ? NAN : esc(formatValue(r.value))}${unfinished ? `<span class="unfinished">*</span>` : ""}</td>`;
}

let runsHTML = "";  // the table's rows as last drawn: redrawn only when they change
function renderRuns(state, unit) {
  $("#value-head").textContent = state.key ? `${state.key} [${state.split}]` : "value";
  const html = state.runs.map((r) => `<tr data-run="${r.id}" data-status="${r.status}">
    <td><a href="/ui/runs/${r.id}">${r.id}</a></td><td>${chip(r.status)}</td>
    <td>${esc(config(r, state.axes))}</td><td>${bar(r.progress)} ${pct(r.progress)}</td>
    <td>${r.epoch}/${r.epochs_total}</td><td>${eta(r.eta_s)}</td><td>${esc(r.worker || "")}</td>
    ${runValue(state, r, unit)}<td class="error" title="${esc(r.error_full)}">${esc(r.error)}</td></tr>`).join("");
  if (html !== runsHTML) { runsHTML = html; $("#runs tbody").innerHTML = html; }
  const total = state.runs_total ?? state.runs.length, matching = state.runs_matching ?? total;
  $("#runs-shown").textContent = `showing ${state.runs.length} of ${matching}${state.status_filter ? ` ${state.status_filter}` : ""}`
    + (matching !== total ? ` (${total} in all)` : "") + (state.runs.length < matching ? ": running, failed and queued ones before the rest" : "");
  $("#sweep-bar").style.width = `${(100 * state.progress).toFixed(1)}%`;
  $("#sweep-pct").textContent = pct(state.progress);
  if (state.overall) {
    $("#sweep-state").className = `chip st-${state.overall.state}`;
    $("#sweep-state").textContent = state.overall.label;
  }
  $("#sweep-eta").textContent = state.eta_s != null && !state.finished ? `ETA ${eta(state.eta_s)}` : "";
  $("#sweep-counts").innerHTML = chips(state.counts);
  $("#sweep-validate-jobs").innerHTML = validateJobs(state.validate_jobs, "#validate");
}

function renderValidateRuns(state) {
  const jobs = state.validate_runs || [];
  $("#validate").hidden = !jobs.length;
  $("#validate-runs").innerHTML = jobs.map((j) => `<li data-run="${j.id}"><a href="/ui/runs/${j.id}">validate job ${j.id}</a>
    ${chip(j.status)} re-evaluates <a href="/ui/runs/${j.parent_run_id}">run ${j.parent_run_id}</a></li>`).join("");
}

// the dropdown's metrics: rebuilt when state.json names other (key, split) pairs, keeping the selection
function renderKeyOptions(keys, unit) {
  const select = $("#colour-by");
  const values = (keys || []).map((k) => `${k.key}|${k.split}`);
  const current = [...select.options].slice(1).map((o) => o.value);
  if (values.join("\n") === current.join("\n")) return;
  const chosen = select.value;
  select.innerHTML = `<option value="">status</option>` + (keys || []).map((k) =>
    `<option value="${esc(k.key)}|${esc(k.split)}">${esc(k.key)} [${esc(k.split)}], final ${esc(unit)}</option>`).join("");
  select.value = values.includes(chosen) ? chosen : "";
}

// the heatmap follows the dropdown's metric, else the sweep's default (acc, or a UFM sweep's first key on train)
function setHeatmap(state, chosen) {
  const img = $("#heatmap");
  if (!img) return;
  const {key, split} = chosen || state.heatmap;
  const src = `${img.dataset.base}&key=${encodeURIComponent(key)}&split=${encodeURIComponent(split)}`;
  img.alt = `final ${key} [${split}] heatmap`;
  if (img.dataset.src !== src) { img.dataset.src = src; img.src = `${src}&t=${Date.now()}`; }
}

const EVENT_REFETCH_MS = 2500;  // the least time between two event-driven state fetches

function sweepPage() {
  const {sweep_id: id, cursor, state: first, unit} = init();
  let state = first, lastPlot = Date.now(), lastFetch = Date.now(), events = null;
  document.title = `ncsweep · ${first.name} (sweep ${id})`;
  const chosen = () => { const [key, split] = ($("#colour-by").value || "|").split("|"); return key ? {key, split} : null; };
  const render = (s) => {
    state = s;
    renderKeyOptions(s.keys, unit);
    renderMatrix(s, unit);
    renderRuns(s, unit);
    renderValidateRuns(s);
    setHeatmap(s, chosen());
  };
  const eventsOpen = () => events && events.isOpen();
  const idle = () => eventsOpen() ? live.ok("event stream") : live.idle(`sweep ${id} finished: waiting for events`);
  // a finished sweep is polled no more and its plots stay as they are, until an event (retry, extend) arrives
  const poll = poller(async () => {
    const sel = chosen(), wasFinished = state.finished;
    lastFetch = Date.now();
    const params = new URLSearchParams(sel ? {key: sel.key, split: sel.split} : {});
    if ($("#status-filter").value) params.set("status", $("#status-filter").value);
    const q = params.toString() ? `?${params}` : "";
    render(await getJSON(`/ui/sweeps/${id}/state.json${q}`));
    const settled = state.finished && wasFinished;
    if (!settled && (state.finished || Date.now() - lastPlot > 5000)) { lastPlot = Date.now(); refreshPlots(); }
    if (state.finished) poll.stop(); else poll.start();
  }, 10000, `sweep ${id}`, idle);
  render(first);
  refreshPlots();
  // events refetch state.json 300 ms after the first of a burst, and at most once per EVENT_REFETCH_MS since
  // the last fetch: a running sweep streams progress events every step; a dropdown change fetches at once
  let pending = null;
  const fetchNow = () => { clearTimeout(pending); pending = null; poll.now(); };
  const schedule = () => {
    if (!pending) pending = setTimeout(fetchNow, Math.max(300, lastFetch + EVENT_REFETCH_MS - Date.now()));
  };
  $("#colour-by").addEventListener("change", fetchNow);
  $("#status-filter").addEventListener("change", fetchNow);
  // reopened after an HTTP error: refetch at once (events may have been missed while it was closed)
  events = liveEvents(`/events?sweep_id=${id}`, cursor, ["status", "progress", "metric", "worker"], schedule,
    {onReopen: fetchNow});
  if (!first.finished) poll.start();  // fallback when events are not delivered (proxies, old browsers)
}

pages.sweep = sweepPage;
