/* Charts of the monitor, drawn by uPlot (vendored beside this file, MIT licence). */
"use strict";

const COLORS = {
  raw: "rgba(87,181,255,0.45)", smooth: "#57b5ff", val: "#e0a84a", grid: "rgba(255,255,255,0.06)",
  axis: "#8a96a6", boundary: "rgba(181,156,255,0.55)", label: "#b59cff", exact: "#3fb97a",
  chosen: "#3fb97a", rejected: "#f0706a", margin: "#57b5ff",
};

/* Debiased exponential moving average, as TensorBoard smooths: the first points are not dragged to zero. */
function smooth(values, weight) {
  const out = new Array(values.length);
  let last = 0, n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !isFinite(v)) { out[i] = null; continue; }
    last = last * weight + (1 - weight) * v;
    n++;
    out[i] = last / (1 - Math.pow(weight, n));
  }
  return out;
}

function fmtAxis(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 1000) return (v / 1e3).toFixed(1) + "k";
  return String(+v.toFixed(4));
}

/* Vertical lines where a job begins, labelled with its file: the model line's history at a glance. */
function boundariesPlugin(getSegments) {
  return {
    hooks: {
      draw: (u) => {
        const segs = getSegments();
        if (!segs || segs.length < 2) return;
        const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height, dpr = devicePixelRatio || 1;
        ctx.save();
        ctx.font = `${11 * dpr}px system-ui, sans-serif`;
        ctx.textBaseline = "top";
        let lastLabelEnd = -Infinity;
        for (let i = 0; i < segs.length; i++) {
          let x = Math.round(u.valToPos(segs[i].start, "x", true));
          if (x > u.bbox.left + u.bbox.width) continue;
          if (i > 0 && x >= u.bbox.left) {
            ctx.strokeStyle = COLORS.boundary;
            ctx.setLineDash([4 * dpr, 4 * dpr]);
            ctx.lineWidth = dpr;
            ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
          }
          x = Math.max(x, u.bbox.left);
          const name = segs[i].file || segs[i].job_id;
          const label = name.length > 22 ? name.slice(0, 21) + "…" : name;
          const w = ctx.measureText(label).width;
          if (x + 4 * dpr > lastLabelEnd && x + w < u.bbox.left + u.bbox.width) {
            ctx.fillStyle = COLORS.label;
            ctx.fillText(label, x + 4 * dpr, top + 4 * dpr);
            lastLabelEnd = x + w + 12 * dpr;
          }
        }
        ctx.restore();
      },
    },
  };
}

function axis(extra) {
  return Object.assign({
    stroke: COLORS.axis, grid: { stroke: COLORS.grid, width: 1 }, ticks: { stroke: COLORS.grid, width: 1 },
    font: "11px system-ui, sans-serif",
  }, extra);
}

class LossChart {
  constructor(el, height) {
    this.el = el;
    this.height = height;
    this.segments = [];
    this.data = [[], [], [], []];
    this.plot = null;
    new ResizeObserver(() => this.resize()).observe(el);
  }

  options(width) {
    return {
      width, height: this.heightFor(width), pxAlign: false,
      cursor: { points: { size: 6 }, drag: { x: true, y: false } },
      legend: { show: false },
      scales: { x: { time: false } },
      axes: [axis({ values: (u, vals) => vals.map(fmtAxis) }), axis({ size: 52, values: (u, vals) => vals.map(fmtAxis) })],
      series: [
        { label: "step" },
        { label: "train", stroke: COLORS.raw, width: 1, points: { show: false } },
        { label: "smoothed", stroke: COLORS.smooth, width: 2, points: { show: false } },
        { label: "validation", stroke: COLORS.val, width: 2, spanGaps: true,
          points: { show: true, size: 6, fill: COLORS.val, stroke: COLORS.val } },
      ],
      plugins: [boundariesPlugin(() => this.segments)],
    };
  }

  /* xs ascending; losses and vals aligned with xs (null where not measured). */
  set(xs, losses, vals, segments) {
    this.segments = segments || [];
    const weight = xs.length > 400 ? 0.97 : xs.length > 60 ? 0.9 : 0.6;
    this.data = [xs, losses, smooth(losses, weight), vals];
    if (!this.plot) {
      if (!xs.length) return;
      this.plot = new uPlot(this.options(this.width()), this.data, this.el);
    } else {
      this.plot.setData(this.data);
    }
  }

  width() { return Math.max(200, this.el.clientWidth); }

  /* Shorter on a phone, so the chart does not fill the screen with one line. */
  heightFor(width) { return Math.round(Math.min(this.height, Math.max(200, width * 0.6))); }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: this.heightFor(this.width()) });
  }
}

class ExactChart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    new ResizeObserver(() => { if (this.plot) this.plot.setSize({ width: Math.max(200, el.clientWidth), height: 120 }); }).observe(el);
  }

  set(steps, rates) {
    const data = [steps, rates.map((r) => (r == null ? null : 100 * r))];
    if (this.plot) { this.plot.setData(data); return; }
    if (!steps.length) return;
    this.plot = new uPlot({
      width: Math.max(200, this.el.clientWidth), height: 120, legend: { show: false },
      scales: { x: { time: false }, y: { range: [0, 100] } },
      axes: [axis({ values: (u, vals) => vals.map(fmtAxis) }), axis({ size: 44, values: (u, vals) => vals.map((v) => v + "%") })],
      series: [{}, { label: "exact match", stroke: COLORS.exact, width: 2, fill: "rgba(63,185,122,0.10)",
        points: { show: true, size: 5, fill: COLORS.exact } }],
    }, data, this.el);
  }
}

/* Preference jobs: the implicit rewards of the chosen and the rejected answers, and their margin. */
class RewardChart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    new ResizeObserver(() => { if (this.plot) this.plot.setSize({ width: Math.max(200, el.clientWidth), height: 140 }); }).observe(el);
  }

  set(steps, chosen, rejected, margins) {
    const weight = steps.length > 60 ? 0.9 : 0.6;
    const data = [steps, smooth(chosen, weight), smooth(rejected, weight), smooth(margins, weight)];
    if (this.plot) { this.plot.setData(data); return; }
    if (!steps.length) return;
    const line = (label, stroke) => ({ label, stroke, width: 2, spanGaps: true, points: { show: false } });
    this.plot = new uPlot({
      width: Math.max(200, this.el.clientWidth), height: 140, legend: { show: false },
      scales: { x: { time: false } },
      axes: [axis({ values: (u, vals) => vals.map(fmtAxis) }), axis({ size: 52, values: (u, vals) => vals.map(fmtAxis) })],
      series: [{}, line("chosen", COLORS.chosen), line("rejected", COLORS.rejected), line("margin", COLORS.margin)],
    }, data, this.el);
  }
}

/* Evaluation suites (evals/): each suite's share of cases passed, at the steps it was measured. */
const SUITE_COLORS = ["#3fb97a", "#57b5ff", "#e0a84a", "#b59cff", "#f0706a", "#4fd1c5", "#f6c177", "#9aa5b1"];

class EvalChart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.names = "";
    new ResizeObserver(() => { if (this.plot) this.plot.setSize({ width: Math.max(200, el.clientWidth), height: 140 }); }).observe(el);
  }

  set(steps, suites) {
    const names = Object.keys(suites);
    const data = [steps, ...names.map((n) => suites[n].map((r) => (r == null ? null : 100 * r)))];
    if (this.plot && this.names === names.join("\n")) { this.plot.setData(data); return; }
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    this.names = names.join("\n");
    if (!steps.length) return;
    const line = (label, i) => ({ label, stroke: SUITE_COLORS[i % SUITE_COLORS.length], width: 2, spanGaps: true,
      points: { show: true, size: 5, fill: SUITE_COLORS[i % SUITE_COLORS.length] } });
    this.plot = new uPlot({
      width: Math.max(200, this.el.clientWidth), height: 140, legend: { show: false },
      scales: { x: { time: false }, y: { range: [0, 100] } },
      axes: [axis({ values: (u, vals) => vals.map(fmtAxis) }), axis({ size: 44, values: (u, vals) => vals.map((v) => v + "%") })],
      series: [{}, ...names.map(line)],
    }, data, this.el);
  }
}

window.FTCharts = { LossChart, ExactChart, RewardChart, EvalChart, SUITE_COLORS, smooth };
