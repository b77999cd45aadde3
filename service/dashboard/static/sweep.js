// ncsweep dashboard, sweep page: completion matrix (by status or a metric), runs table, validate jobs, plots.
"use strict";
const STATUSES = ["queued", "partial", "running", "succeeded", "failed", "cancelled"];
const NO_VALUE = [229, 231, 235];  // a cell without a finite value: light grey

// 3 significant digits; an exponent for tiny or large values ("8.65e-7", "1.23e4")
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

function renderMatrix(state, unit) {
  const byValue = !!state.key;
  const [lo, hi] = valueRange(state);
  const scale = colourScale(lo, hi);
  const byId = Object.fromEntries(state.runs.map((r) => [r.id, r]));
  const corner = [state.row_axis, state.col_axis].filter(Boolean).map(esc).join(" \\ ");
  const head = `<tr><th>${corner}</th>${state.cols.map((c) => `<th>${esc(c) || "—"}</th>`).join("")}</tr>`;
  const body = state.matrix.map((line, i) => `<tr><th>${esc(state.rows[i]) || "—"}</th>${line.map((c, j) => {
    const unfinished = byValue ? c.unfinished_runs || [] : [];
    const mark = unfinished.length ? `<span class="unfinished">*</span>` : "";
    const label = byValue ? esc(formatValue(c.value)) + mark : `${c.done}/${c.n}`;
    const rgb = scale(c.value);
    const style = byValue ? ` style="background:${css(rgb)};color:${textOn(rgb)}"` : "";
    const value = byValue ? ` · ${esc(state.key)} [${esc(state.split)}] ${c.value == null ? "none" : c.value}` : "";
    const from = unfinished.length ? `\n${UNFINISHED_NOTE}: ${unfinished.map((id) => byId[id]
      ? `run ${id} ${valueFrom(byId[id], unit)}` : `run ${id}`).join("; ")}` : "";
    return `<td id="cell-${i}-${j}" class="cell st-${c.status}${byValue ? " by-value" : ""}" data-status="${c.status}"${style}
      data-unfinished="${unfinished.join(" ")}" title="runs ${c.runs.join(", ")}: ${c.status}${value}${esc(from)}">${label}</td>`;
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
  const title = unfinished ? ` title="${esc(valueFrom(r, unit))}"` : "";
  return `<td class="value"${title}>${esc(formatValue(r.value))}${unfinished ? `<span class="unfinished">*</span>` : ""}</td>`;
}

function renderRuns(state, unit) {
  $("#value-head").textContent = state.key ? `${state.key} [${state.split}]` : "value";
  $("#runs tbody").innerHTML = state.runs.map((r) => `<tr data-run="${r.id}" data-status="${r.status}">
    <td><a href="/ui/runs/${r.id}">${r.id}</a></td><td>${chip(r.status)}</td>
    <td>${esc(config(r))}</td><td>${bar(r.progress)} ${pct(r.progress)}</td>
    <td>${r.epoch}/${r.epochs_total}</td><td>${eta(r.eta_s)}</td><td>${esc(r.worker || "")}</td>
    ${runValue(state, r, unit)}<td class="error" title="${esc(r.error_full)}">${esc(r.error)}</td></tr>`).join("");
  $("#sweep-bar").style.width = `${(100 * state.progress).toFixed(1)}%`;
  $("#sweep-pct").textContent = pct(state.progress);
  $("#sweep-counts").innerHTML = Object.entries(state.counts).map(([k, v]) => chip(k, `${k} ${v}`)).join(" ");
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
  const chosen = () => { const [key, split] = ($("#colour-by").value || "|").split("|"); return key ? {key, split} : null; };
  const render = (s) => {
    state = s;
    renderKeyOptions(s.keys, unit);
    renderMatrix(s, unit);
    renderRuns(s, unit);
    renderValidateRuns(s);
    setHeatmap(s, chosen());
  };
  const eventsOpen = () => events && events.readyState === EventSource.OPEN;
  const idle = () => eventsOpen() ? live.ok("event stream") : live.idle(`sweep ${id} finished: waiting for events`);
  // a finished sweep is polled no more and its plots stay as they are, until an event (retry, extend) arrives
  const poll = poller(async () => {
    const sel = chosen(), wasFinished = state.finished;
    lastFetch = Date.now();
    const q = sel ? `?key=${encodeURIComponent(sel.key)}&split=${encodeURIComponent(sel.split)}` : "";
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
  if (window.EventSource) {
    events = new EventSource(`/events?sweep_id=${id}&since=${cursor}`);
    for (const kind of ["status", "progress", "metric", "worker"]) events.addEventListener(kind, schedule);
    events.onopen = () => live.ok("event stream");
    events.onerror = () => live.fail("event stream", new Error("disconnected; reconnecting"));
  }
  if (!first.finished) poll.start();  // fallback when events are not delivered (proxies, old browsers)
}

pages.sweep = sweepPage;
