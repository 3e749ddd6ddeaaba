/* finetuned monitor page: live by server-sent events, steering through the JSON API. */
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  status: null, queue: null, health: null, jobs: [], previews: null, asks: null, asking: false,
  job: { id: null, points: [], label: "" }, line: null, view: "job",
  offset: 0, connected: false, lastEvent: 0, lineFetched: 0,
};

/* --- helpers ------------------------------------------------------------- */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}
const num = (v) => typeof v === "number" && isFinite(v);
const fmtLoss = (v) => (num(v) ? (Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4)) : "–");
const fmtLr = (v) => (num(v) ? v.toExponential(2) : "–");
const fmtInt = (v) => (num(v) ? Math.round(v).toLocaleString("en-US") : "–");
function fmtRate(v) { return !num(v) ? "–" : v >= 100 ? fmtInt(v) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
function fmtDuration(s) {
  if (!num(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
const serverNow = () => Date.now() / 1000 + S.offset;
const shortTime = (text) => (text ? String(text).slice(5, 16).replace("T", " ") : "");

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin", headers: { Accept: "application/json" } }, options));
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) location.href = "/login";
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : `${response.status} ${response.statusText}`);
  return body;
}

let toastTimer = null;
function toast(text, error) {
  const t = $("toast");
  t.textContent = text;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), error ? 6000 : 3500);
}

/* --- status and liveness -------------------------------------------------- */
function daemonState() {
  const d = S.status && S.status.daemon;
  if (!d) return { key: "unknown", text: "connecting" };
  const age = num(d.heartbeat_unix) ? serverNow() - d.heartbeat_unix : null;
  const staleAfter = (S.status.settings || {}).stale_after_seconds || 10;
  if (!S.connected && S.lastEvent && Date.now() - S.lastEvent > 3000)
    return { key: "stale", text: "monitor unreachable", age, alert: `The monitor is not answering: the daemon may have stopped. Data is ${fmtDuration(age)} old.` };
  if (d.state === "stopped") return { key: "stopped", text: "stopped", age, alert: "The daemon has stopped." };
  if (age == null || age > staleAfter)
    return { key: "stale", text: "not responding", age, alert: `Daemon not responding, data is ${fmtDuration(age)} old.` };
  if (d.state === "training" && d.paused) return { key: "paused", text: "pausing…", age };
  if (d.state === "holding") return { key: "holding", text: "holding", age, alert: `Holding the queue: ${d.reason || d.hold}` };
  const alert = d.config_error ? `config.json is invalid: ${d.config_error}; the daemon keeps its last good settings.` : null;
  return { key: d.state || "unknown", text: d.state || "unknown", age, alert };
}

function renderLiveness() {
  const st = daemonState();
  const pill = $("state-pill");
  pill.className = `pill pill-${st.key === "holding" ? "paused" : ["training", "paused", "idle", "stopped", "stale"].includes(st.key) ? st.key : "unknown"}`;
  pill.textContent = st.text;
  $("heartbeat").textContent = num(st.age) ? `heartbeat ${st.age < 10 ? st.age.toFixed(1) : Math.round(st.age)} s ago` : "";
  $("h-beat").textContent = num(st.age) ? `${st.age.toFixed(1)} s ago` : "–";
  $("h-beat").className = st.key === "stale" ? "bad-text" : "";
  document.body.classList.toggle("is-stale", st.key === "stale");
  const alert = $("alert");
  alert.hidden = !st.alert;
  alert.textContent = st.alert || "";
}

function renderStatus() {
  const s = S.status;
  if (!s) return;
  const d = s.daemon || {}, t = s.training;
  $("workspace").textContent = s.workspace || "";
  $("workspace").title = s.workspace || "";
  $("h-daemon").textContent = d.pid ? `pid ${d.pid}${d.worker_pid ? ` · worker ${d.worker_pid}` : ""}` : "–";
  $("now-empty").hidden = !!t;
  $("now-body").hidden = !t;
  $("now-empty").textContent = d.state === "holding" ? `Holding the queue: ${d.reason || d.hold}`
    : d.phase ? `Nothing is training yet: ${d.phase}.` : "Nothing is training. Drop a JSONL file into the queue to start.";
  const paused = !!d.paused;
  $("btn-pause").hidden = paused;
  $("btn-resume").hidden = !paused;
  $("btn-stop").disabled = $("btn-skip").disabled = !t;
  renderLiveness();
  if (!t) return;
  $("now-file").textContent = t.file || t.id;
  $("now-id").textContent = t.id;
  $("now-phase").textContent = t.phase || t.status || "";
  setBadge($("now-priority"), t.priority === "high" ? "priority" : "normal", t.priority === "high" ? "high" : "");
  setBadge($("now-status"), t.status, t.status);
  const pct = num(t.percent) ? t.percent : 0;
  $("now-bar").style.width = `${pct}%`;
  $("now-steps").textContent = num(t.step) ? `step ${fmtInt(t.step)} / ${num(t.total_steps) ? fmtInt(t.total_steps) : "?"}` : "";
  $("now-percent").textContent = `${pct}%`;
  $("st-loss").textContent = fmtLoss(t.loss);
  $("st-val").textContent = fmtLoss(t.val_loss);
  $("st-lr").textContent = fmtLr(t.learning_rate);
  $("st-tps").textContent = fmtRate(t.tokens_per_second);
  $("st-eps").textContent = num(t.examples_per_second) ? "≈ " + fmtRate(t.examples_per_second) : "–";
  $("st-sps").textContent = fmtRate(t.steps_per_second);
  renderWorld(t);
  const running = t.status === "training";
  $("st-eta").textContent = running ? fmtDuration(t.eta_seconds) : t.status || "–";
  $("st-etaq").textContent = running && num(s.eta_queue_seconds) ? (s.eta_queue_partial ? "> " : "") + fmtDuration(s.eta_queue_seconds) : "–";
  if (S.job.id !== t.id) loadJobMetrics(t.id, t.file);
}

// A job on several ranks: how many, and each rank's memory as its last logged step measured it.
function renderWorld(t) {
  const size = num(t.world_size) ? t.world_size : 1;
  $("st-world-box").hidden = size < 2;
  if (size < 2) return;
  const ranks = Array.isArray(t.rank_memory_gb) ? t.rank_memory_gb : [];
  const used = ranks.map((m) => (m && num(m.device_peak) ? m.device_peak : m && m.ram)).filter(num);
  $("st-world").textContent = used.length ? `${size} · ${used.map((gb) => gb.toFixed(1)).join(" / ")} GB` : `${size}`;
  $("st-world").title = ranks.map((m, i) => `rank ${i}: ${num(m && m.ram) ? m.ram.toFixed(2) + " GB RAM" : "?"}` +
    (m && num(m.device_peak) ? `, ${m.device_peak.toFixed(2)} GB GPU peak` : "")).join("\n");
}

function setBadge(el, text, kind) {
  el.textContent = text || "";
  el.className = "badge" + (kind ? ` badge-${kind}` : "");
}

/* --- controls ------------------------------------------------------------- */
async function control(action) {
  if (action === "skip") {
    const t = S.status && S.status.training;
    $("confirm-text").textContent = `${t ? t.file : "The current job"} will be abandoned: its file goes to data/skipped/, its checkpoint is kept for recovery, and no adapter is published.`;
    const dialog = $("confirm");
    dialog.returnValue = "";
    dialog.showModal();
    const answer = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
    if (answer !== "ok") return;
  }
  try {
    const result = await api(`/api/control/${action}`, { method: "POST" });
    toast(result.message);
    if (S.status && S.status.daemon) { S.status.daemon.paused = result.paused; renderStatus(); }
  } catch (err) { toast(err.message, true); }
}

/* --- queue ---------------------------------------------------------------- */
function renderQueue() {
  const q = S.queue || { queue: [] };
  const list = $("queue-list");
  const waiting = q.queue.filter((e) => e.status === "queued").length;
  $("queue-count").textContent = q.queue.length ? `${waiting} waiting` : "";
  $("queue-empty").hidden = q.queue.length > 0;
  const firstOfClass = {};
  list.replaceChildren(...q.queue.map((e) => {
    const current = e.status !== "queued";
    const first = !current && !firstOfClass[e.priority];
    if (!current) firstOfClass[e.priority] = true;
    const size = num(e.examples) ? `${fmtInt(e.examples)} examples` : e.size;
    const progress = current && q.current && q.current.id === e.id ? ` · ${q.current.step} (${q.current.progress})` : "";
    return h("li", { class: "q-item" + (current ? " current" : ""), "data-id": e.id, "data-status": e.status },
      h("div", { class: "q-file" }, e.file,
        e.priority === "high" ? h("span", { class: "badge badge-high" }, "priority") : null,
        current ? h("span", { class: `badge badge-${e.status}` }, e.status) : null),
      h("div", { class: "q-meta" }, `${size} · added ${shortTime(e.added)}${progress}`),
      e.settings ? h("div", { class: "q-meta", title: "this file's own settings, over config.json" },
        Object.entries(e.settings).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" · ")) : null,
      current ? null : h("div", { class: "q-actions" },
        h("button", { class: "btn btn-small", title: "Move to the front of its class", disabled: first, onclick: () => queueAction(e, "front") }, "↑ Front"),
        h("button", { class: "btn btn-small btn-danger", title: "Take it out of the queue (file goes to data/skipped/)", onclick: () => queueAction(e, "cancel") }, "Cancel")));
  }));
}

async function queueAction(entry, action) {
  try {
    const result = await api(`/api/queue/${encodeURIComponent(entry.id)}/${action}`, { method: "POST" });
    toast(result.message);
  } catch (err) { toast(err.message, true); }
}

/* --- upload --------------------------------------------------------------- */
function upload(file) {
  const priority = document.querySelector('input[name="prio"]:checked').value;
  const status = $("upload-status");
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/upload?name=${encodeURIComponent(file.name)}&priority=${priority}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) status.textContent = `${file.name}: ${Math.round((100 * e.loaded) / e.total)}%`; };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON: say the status */ }
      const ok = xhr.status >= 200 && xhr.status < 300;
      const text = ok ? body.message : `${file.name}: ${typeof body.detail === "string" ? body.detail : xhr.status}`;
      status.textContent = text;
      status.className = "small " + (ok ? "ok" : "bad-text");
      toast(text, !ok);
      resolve(ok);
    };
    xhr.onerror = () => { status.textContent = `${file.name}: upload failed`; resolve(false); };
    xhr.send(file);
  });
}

async function uploadAll(files) { for (const f of files) await upload(f); }

function setupDrop() {
  const zone = $("drop");
  let depth = 0;
  document.addEventListener("dragenter", (e) => { if (e.dataTransfer.types.includes("Files")) { depth++; zone.classList.add("over"); } });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; zone.classList.remove("over"); } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) uploadAll([...e.dataTransfer.files]);
  });
  $("pick").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", (e) => { uploadAll([...e.target.files]); e.target.value = ""; });
}

/* --- loss chart ----------------------------------------------------------- */
const lossChart = new FTCharts.LossChart($("chart"), 300);
const exactChart = new FTCharts.ExactChart($("prev-chart"));
const rewardChart = new FTCharts.RewardChart($("pref-chart"));
const evalChart = new FTCharts.EvalChart($("evals-chart"));

async function loadJobMetrics(id, label) {
  S.job = { id, points: [], label: label || id };
  try {
    const body = await api(`/api/jobs/${encodeURIComponent(id)}/metrics`);
    if (S.job.id === id) { mergePoints(body.points); drawChart(); }
  } catch (_) { /* a job without metrics yet */ }
}

function mergePoints(points) {
  if (!points.length) return;
  const byStep = new Map(S.job.points.map((p) => [p.step, p]));
  for (const p of points) byStep.set(p.step, p);
  S.job.points = [...byStep.values()].sort((a, b) => a.step - b.step);
}

// A job's history comes in columns (one array per field, sent once on connect); new steps as points.
function fromColumns(c) {
  return c.step.map((step, i) => {
    const p = { step };
    for (const [name, values] of Object.entries(c)) if (values[i] !== null) p[name] = values[i];
    return p;
  });
}

function onMetrics(m) {
  if (m.reset || S.job.id !== m.job_id) {
    const t = S.status && S.status.training;
    S.job = { id: m.job_id, points: [], label: t && t.id === m.job_id ? t.file : m.job_id };
  }
  mergePoints(m.columns ? fromColumns(m.columns) : m.points);
  if (S.view === "job") drawChart();
  else if (Date.now() - S.lineFetched > 5000) loadLine();
}

async function loadLine() {
  S.lineFetched = Date.now();
  try { S.line = await api("/api/metrics/line"); } catch (_) { return; }
  if (S.view === "line") drawChart();
}

function drawChart() {
  let xs = [], loss = [], val = [], segments = [], note = "";
  if (S.view === "job") {
    for (const p of S.job.points) { xs.push(p.step); loss.push(num(p.loss) ? p.loss : null); val.push(num(p.val_loss) ? p.val_loss : null); }
    note = S.job.id ? `${S.job.label} · step` : "";
  } else if (S.line) {
    for (const p of S.line.points) { xs.push(p.x); loss.push(num(p.loss) ? p.loss : null); val.push(num(p.val_loss) ? p.val_loss : null); }
    segments = S.line.segments;
    note = `${segments.length} job${segments.length === 1 ? "" : "s"} · ${S.line.axis === "line_step" ? "model line step" : "steps trained"}`;
  }
  $("chart-note").textContent = note;
  $("chart-empty").hidden = xs.length > 0;
  lossChart.set(xs, loss, val, segments);
  drawRewards();
  drawEvals();
}

/* Suites in evals/ run at checkpoints: their scores under the loss while this job is in view. */
function drawEvals() {
  const points = S.view === "job" ? S.job.points.filter((p) => Object.keys(p).some((k) => k.startsWith("eval/"))) : [];
  $("evals").hidden = points.length === 0;
  if (!points.length) return;
  const names = [...new Set(points.flatMap((p) => Object.keys(p).filter((k) => k.startsWith("eval/"))))].sort();
  const suites = {};
  for (const key of names) suites[key.slice(5)] = points.map((p) => (num(p[key]) ? p[key] : null));
  evalChart.set(points.map((p) => p.step), suites);
  const legend = $("evals-legend");
  legend.replaceChildren(...Object.keys(suites).map((name, i) => {
    const values = suites[name].filter((v) => v != null), latest = values[values.length - 1];
    return h("span", { class: "suite" }, h("i", { class: "sw", style: `background:${FTCharts.SUITE_COLORS[i % FTCharts.SUITE_COLORS.length]}` }),
      `${name} ${latest == null ? "–" : Math.round(100 * latest) + "%"}`);
  }));
  const last = points[points.length - 1];
  $("evals-note").textContent = `evaluation · step ${fmtInt(last.step)}` + (num(last.eval_seconds) ? ` · ${last.eval_seconds.toFixed(1)} s` : "");
}

/* A preference job logs rewards (DPO, ORPO, SimPO, KTO): shown under the loss while this job is in view. */
function drawRewards() {
  const points = S.view === "job" ? S.job.points.filter((p) => num(p["rewards/chosen"]) || num(p["rewards/margins"])) : [];
  $("pref").hidden = points.length === 0;
  if (!points.length) return;
  const get = (key) => points.map((p) => (num(p[key]) ? p[key] : null));
  const margins = points.map((p) => num(p["rewards/margins"]) ? p["rewards/margins"]
    : num(p["rewards/chosen"]) && num(p["rewards/rejected"]) ? p["rewards/chosen"] - p["rewards/rejected"] : null);
  rewardChart.set(points.map((p) => p.step), get("rewards/chosen"), get("rewards/rejected"), margins);
  const last = points[points.length - 1], parts = [];
  if (num(last["rewards/accuracies"])) parts.push(`accuracy ${Math.round(100 * last["rewards/accuracies"])}%`);
  if (num(last["rewards/margins"])) parts.push(`margin ${last["rewards/margins"].toFixed(3)}`);
  if (num(last.kl)) parts.push(`KL ${last.kl.toFixed(3)}`);
  $("pref-note").textContent = `step ${fmtInt(last.step)}` + (parts.length ? " · " + parts.join(" · ") : "");
}

function setupTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      S.view = tab.dataset.view;
      for (const t of document.querySelectorAll(".tab")) { t.classList.toggle("active", t === tab); t.setAttribute("aria-selected", t === tab); }
      if (S.view === "line") loadLine();
      drawChart();
    });
  }
}

/* --- previews ------------------------------------------------------------- */
function renderPreviews() {
  const rounds = (S.previews && S.previews.rounds) || [];
  $("prev-empty").hidden = rounds.length > 0;
  const every = S.status && S.status.settings ? S.status.settings.preview_every_steps : null;
  if (every === 0) $("prev-empty").textContent = "Previews are off (previews.every_steps is 0 in config.json).";
  else if (num(every)) $("prev-empty").textContent = `No previews yet. Every ${every} steps the model answers a few held-out prompts of the current file; they appear here with the expected answers.`;
  $("prev-table").hidden = rounds.length === 0;
  $("prev-chart").hidden = rounds.length === 0;
  if (!rounds.length) { $("prev-summary").textContent = ""; return; }
  exactChart.set(rounds.map((r) => r.step), rounds.map((r) => (num(r.exact_match) ? r.exact_match : null)));
  const last = rounds[rounds.length - 1], items = last.items || [];
  const hits = items.filter((i) => i.exact).length;
  $("prev-summary").textContent = `step ${fmtInt(last.step)} · exact match ${hits}/${items.length}` +
    (num(last.exact_match) ? ` (${Math.round(100 * last.exact_match)}%)` : "") + (num(last.seconds) ? ` · ${last.seconds.toFixed(1)} s` : "");
  $("prev-table").tBodies[0].replaceChildren(...items.map((i) => h("tr", {},
    clamped("Prompt", i.prompt, true), clamped("Expected", i.expected), clamped("Model", i.answer),
    h("td", { class: "center", "data-label": "Match" }, i.exact ? h("span", { class: "mark-ok", title: "exact match" }, "✓") : h("span", { class: "mark-no", title: "differs" }, "✗")))));
}

/* A rendered chat prompt can be long: its end shows (the question), all of it on hover. */
function clamped(label, text, tail) {
  text = text == null ? "" : String(text);
  const shown = tail && text.length > 240 ? "…" + text.slice(-240) : text;
  return h("td", { class: "text", "data-label": label, title: text }, h("div", { class: "clamp" }, shown));
}

/* --- try it --------------------------------------------------------------- */
/* A question goes to the daemon as a file; the worker (between steps) or a short-lived process answers it. */
function trainingNow() { const t = S.status && S.status.training; return !!(t && t.status === "training"); }

function renderAsks() {
  const a = S.asks || { asks: [], pending: 0, max_pending: 8 };
  const training = trainingNow(), down = ["stale", "stopped"].includes(daemonState().key);
  $("try-who").textContent = down ? "the daemon is not responding: nobody can answer now"
    : training ? "answered by the training worker, between two steps" : "answered by the newest checkpoint (nothing trains)";
  const full = a.pending >= a.max_pending;
  $("try-send").disabled = full || S.asking;
  $("try-send").title = full ? `${a.pending} questions are waiting already` : "";
  $("try-empty").hidden = a.asks.length > 0;
  $("try-list").replaceChildren(...a.asks.map((q) => {
    let body;
    if (q.status === "pending") {
      body = h("div", { class: "try-a pending" }, training ? "waiting for a step boundary…" : "loading the model and answering…");
    } else if (q.error) {
      body = h("div", { class: "try-a failed" }, `no answer: ${q.error}`);
    } else {
      body = h("div", { class: "try-a" + (q.text.trim() ? "" : " blank") }, q.text.trim() ? q.text : "(an empty answer)");
    }
    const meta = [];
    if (q.status === "answered" && q.source) meta.push(h("span", { class: "src" }, q.source));
    if (num(q.seconds) && q.by !== "daemon") meta.push(`${q.seconds.toFixed(1)} s`);
    if (q.system) meta.push("with a system prompt");
    meta.push(new Date(1000 * (q.answered || q.asked)).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" }));
    return h("li", { class: "try-item", "data-id": q.id, "data-status": q.status },
      h("div", { class: "try-q" }, q.prompt), body,
      h("div", { class: "try-meta", "data-testid": "try-meta" }, ...meta.flatMap((m, i) => (i ? [" · ", m] : [m]))));
  }));
}

async function ask(event) {
  event.preventDefault();
  const prompt = $("try-prompt").value;
  if (!prompt.trim() || S.asking) return;
  const system = $("try-system").value.trim();
  S.asking = true;
  renderAsks();
  try {
    const question = await api("/api/asks", {
      method: "POST", headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, system: system || null }),
    });
    $("try-prompt").value = "";
    const a = S.asks || { asks: [], pending: 0, max_pending: 8 };
    if (!a.asks.some((q) => q.id === question.id)) S.asks = { ...a, asks: [question, ...a.asks], pending: a.pending + 1 };
  } catch (err) { toast(err.message, true); }
  S.asking = false;
  renderAsks();
}

function setupAsk() {
  $("try-form").addEventListener("submit", ask);
  $("try-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("try-form").requestSubmit(); }
  });
}

/* --- history -------------------------------------------------------------- */
let historyTimer = null;
function scheduleHistory() { clearTimeout(historyTimer); historyTimer = setTimeout(loadHistory, 400); }

async function loadHistory() {
  try { S.jobs = await api("/api/jobs?limit=200"); } catch (_) { return; }
  renderHistory();
  if (S.view === "line") loadLine();
  if (!S.job.id && !(S.status && S.status.training)) {
    const last = S.jobs.find((j) => j.step > 0);
    if (last) loadJobMetrics(last.id, `last job: ${last.file}`);
  }
}

function renderHistory() {
  const done = S.jobs.filter((j) => ["completed", "failed", "skipped"].includes(j.status));
  $("hist-empty").hidden = done.length > 0;
  $("hist-table").hidden = done.length === 0;
  const counts = ["completed", "failed", "skipped"].map((s) => [s, done.filter((j) => j.status === s).length]).filter((c) => c[1]);
  $("hist-summary").textContent = counts.map(([s, n]) => `${n} ${s}`).join(" · ");
  $("hist-table").tBodies[0].replaceChildren(...done.map((j) => {
    const sum = j.summary || {};
    const detail = [];
    if (j.adapter) detail.push(h("div", { class: "h-id" }, "adapter ", h("a", { href: `/api/jobs/${j.id}`, target: "_blank" }, j.adapter)));
    if (j.status !== "completed" && j.reason) detail.push(h("div", { class: j.status === "failed" ? "h-error" : "muted small" }, j.reason));
    const own = Object.entries(j.settings || {});
    if (own.length) detail.push(h("div", { class: "muted small", title: "this file's own settings, over config.json" }, own.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" · ")));
    if (j.error) detail.push(h("details", {}, h("summary", {}, "error report"), h("pre", {}, JSON.stringify(j.error, null, 2))));
    for (const warning of j.warnings || []) detail.push(h("div", { class: "h-warning small" }, "⚠ " + warning));
    return h("tr", { "data-id": j.id },
      h("td", {}, h("div", { class: "h-file" }, j.file), h("div", { class: "h-id" }, j.id), detail),
      h("td", { "data-label": "State" }, h("span", { class: `badge badge-${j.status}` }, j.status)),
      h("td", { class: "num", "data-label": "Steps" }, num(j.step) ? `${fmtInt(j.step)}${num(j.total_steps) ? " / " + fmtInt(j.total_steps) : ""}` : "–"),
      h("td", { class: "num", "data-label": "Examples" }, fmtInt(sum.examples_trained != null ? sum.examples_trained : j.examples)),
      h("td", { class: "num", "data-label": "Loss" }, num(sum.final_loss) ? `${fmtLoss(sum.first_loss)} → ${fmtLoss(sum.final_loss)}` : "–"),
      h("td", { class: "num", "data-label": "Val loss" }, fmtLoss(sum.val_loss)),
      h("td", { class: "num", "data-label": "Time" }, j.train_seconds ? fmtDuration(j.train_seconds) : "–"),
      h("td", { class: "muted small", "data-label": "Ended" }, shortTime(j.ended)));
  }));
}

/* --- health --------------------------------------------------------------- */
function meter(id, fraction) {
  const bar = $(id);
  bar.style.width = `${Math.round(100 * Math.min(1, Math.max(0, fraction)))}%`;
  bar.className = fraction > 0.92 ? "bad" : fraction > 0.8 ? "warn" : "";
}

function renderHealth() {
  const hl = S.health || {};
  if (num(hl.ram_total_gb)) {
    $("h-ram").textContent = `${hl.ram_used_percent}% of ${hl.ram_total_gb.toFixed(0)} GB`;
    meter("h-ram-bar", hl.ram_used_percent / 100);
  }
  if (num(hl.disk_free_gb)) {
    $("h-disk").textContent = `${hl.disk_free_gb.toFixed(1)} GB of ${hl.disk_total_gb.toFixed(0)} GB`;
    meter("h-disk-bar", 1 - hl.disk_free_gb / hl.disk_total_gb);
  }
  if (num(hl.cpu_percent)) $("h-cpu").textContent = `${hl.cpu_percent}% · ${hl.cpu_count} cores`;
  const gpus = Array.isArray(hl.gpu) ? hl.gpu : hl.gpu ? [hl.gpu] : [];
  $("gpus").replaceChildren(...gpus.map((g) => {
    const used = g.memory_used_gb, total = g.memory_total_gb;
    const hot = num(g.temperature_c) && g.temperature_c >= 83;
    return h("div", { class: "gpu" },
      h("div", { class: "gpu-name" }, `GPU ${g.index != null ? g.index : ""} · ${g.name || "GPU"}`),
      h("dl", { class: "kv" },
        h("div", {}, h("dt", {}, "Memory"), h("dd", {}, num(used) ? `${used.toFixed(1)} / ${total.toFixed(0)} GB` : "–",
          h("div", { class: "meter" }, h("div", { style: `width:${num(used) && total ? Math.round((100 * used) / total) : 0}%` })))),
        h("div", {}, h("dt", {}, "Utilisation"), h("dd", {}, num(g.utilization_percent) ? `${g.utilization_percent}%` : "–")),
        h("div", {}, h("dt", {}, "Temperature"), h("dd", { class: hot ? "bad-text" : "" }, num(g.temperature_c) ? `${g.temperature_c} °C` : "–"))));
  }));
}

/* --- live updates --------------------------------------------------------- */
function connect() {
  const es = new EventSource("/api/events");
  const on = (name, fn) => es.addEventListener(name, (e) => { S.lastEvent = Date.now(); S.connected = true; fn(JSON.parse(e.data)); });
  es.onopen = () => { S.connected = true; };
  es.onerror = () => { S.connected = false; renderLiveness(); };
  on("hello", (d) => { S.offset = d.now - Date.now() / 1000; });
  on("status", (d) => { const first = !S.status; S.status = d; S.offset = d.now - Date.now() / 1000; renderStatus(); renderAsks(); if (first) renderPreviews(); });
  on("queue", (d) => { S.queue = d; renderQueue(); });
  on("metrics", onMetrics);
  on("previews", (d) => { S.previews = d; renderPreviews(); });
  on("health", (d) => { S.health = d; renderHealth(); });
  on("asks", (d) => { S.asks = d; renderAsks(); });
  on("jobs", scheduleHistory);
}

async function start() {
  for (const b of document.querySelectorAll("[data-action]")) b.addEventListener("click", () => control(b.dataset.action));
  setupDrop();
  setupTabs();
  setupAsk();
  const [previews, asked] = await Promise.all([api("/api/previews").catch(() => null), api("/api/asks").catch(() => null), loadHistory()]);
  if (previews && !S.previews) { S.previews = previews; renderPreviews(); }
  if (asked && !S.asks) { S.asks = asked; renderAsks(); }
  connect();
  setInterval(renderLiveness, 1000);
}

start();
