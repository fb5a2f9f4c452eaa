// The legend, answers per round (stacked bars) and agreement over rounds, from the nodes drawn so far.
import { el } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const NEUTRAL = [
  ["none", "–", "no answer"],
  ["pending", "?", "answer being grouped"],
  ["failed", "×", "failed"],
  ["straggler", "…", "straggler (cut at the deadline)"],
];

// Per round (`sizes[r]` slots): counts by cluster and by neutral mark, over the round's committed slots.
export function roundCounts(nodes, clusters, sizes) {
  const rounds = sizes.map((size, round) => ({ round, size, total: 0, byCluster: new Map(), marks: {} }));
  for (const d of nodes) {
    const row = rounds[d.round];
    if (!row) continue;
    row.total += 1;
    const cluster = d.status === "ok" ? clusters.of(d.answer) : null;
    const mark = d.status !== "ok" ? d.status : d.answer == null ? "none" : cluster ? null : "pending";
    if (mark) row.marks[mark] = (row.marks[mark] || 0) + 1;
    else row.byCluster.set(cluster, (row.byCluster.get(cluster) || 0) + 1);
  }
  return rounds;
}

export function drawLegend(list, nodes, clusters) {
  const counts = new Map();
  const marks = {};
  let truncated = 0;
  for (const d of nodes) {
    const cluster = d.status === "ok" ? clusters.of(d.answer) : null;
    if (cluster) counts.set(cluster, (counts.get(cluster) || 0) + 1);
    else {
      const mark = d.status !== "ok" ? d.status : d.answer == null ? "none" : "pending";
      marks[mark] = (marks[mark] || 0) + 1;
    }
    if (d.finish_reason === "length") truncated += 1;
  }
  const items = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([cluster, count]) =>
    el("li", { "data-cluster": cluster.letter },
      el("span", { class: `swatch ${clusters.styleClass(cluster)}`, text: cluster.letter, "aria-hidden": "true" }),
      el("span", { class: "answer", text: cluster.label, title: [...cluster.spellings].join("  ·  ") }),
      el("span", { class: "count", text: `×${count}` })));
  for (const [style, letter, words] of NEUTRAL) {
    if (!marks[style]) continue;
    items.push(el("li", { class: "neutral" }, el("span", { class: `swatch ${style}`, text: letter, "aria-hidden": "true" }),
      el("span", { text: words }), el("span", { class: "count", text: `×${marks[style]}` })));
  }
  if (truncated) {
    items.push(el("li", { class: "neutral" }, el("span", { class: "swatch truncated", "aria-hidden": "true" }),
      el("span", { text: "truncated by the budget (dashed ring)" }), el("span", { class: "count", text: `×${truncated}` })));
  }
  list.replaceChildren(...items);
}

export function drawDistribution(box, rounds, clusters) {
  const rows = rounds.filter((r) => r.total > 0).map((r) => {
    const bar = el("div", { class: "bar", role: "img" });
    const words = [];
    const sorted = [...r.byCluster.entries()].sort((a, b) => b[1] - a[1]);
    for (const [cluster, count] of sorted) {
      bar.append(segment(clusters.styleClass(cluster), cluster.letter, count, r.size, `${cluster.label}: ${count}`));
      words.push(`${cluster.label} ×${count}`);
    }
    for (const [style, letter, name] of NEUTRAL) {
      const count = r.marks[style];
      if (!count) continue;
      bar.append(segment(style, letter, count, r.size, `${name}: ${count}`));
      words.push(`${name} ×${count}`);
    }
    bar.setAttribute("aria-label", `Round ${r.round}: ${words.join(", ")}`);
    const top = sorted.length ? sorted[0][1] : 0;
    return el("div", { class: "dist-row", "data-round": r.round },
      el("span", { class: "dist-label", text: `Round ${r.round}` }), bar,
      el("span", { class: "dist-agree", text: `${Math.round((100 * top) / r.size)}%` }));
  });
  box.replaceChildren(...rows);
}

function segment(style, letter, count, size, title) {
  const share = (100 * count) / size;
  const node = el("span", { class: `seg ${style}`, title, text: share >= 6 ? letter : "" });
  node.style.flexBasis = `${share}%`; // through CSSOM: the pages' CSP refuses style attributes
  return node;
}

// Agreement (the modal cluster's share of the round's slots) per round begun, as a small line chart.
export function drawAgreement(chart, rounds) {
  const W = 320, H = 140, L = 36, R = 12, T = 10, B = 26;
  const stages = rounds.length;
  const xs = (i) => L + (stages > 1 ? (i * (W - L - R)) / (stages - 1) : (W - L - R) / 2);
  const ys = (v) => T + (1 - v) * (H - T - B);
  const parts = [];
  for (const v of [0, 0.5, 1]) {
    parts.push(node("line", { x1: L, x2: W - R, y1: ys(v), y2: ys(v), class: "grid" }));
    parts.push(node("text", { x: L - 6, y: ys(v) + 4, "text-anchor": "end", class: "tick" }, `${v * 100}%`));
  }
  const points = [];
  for (const r of rounds) {
    parts.push(node("text", { x: xs(r.round), y: H - 8, "text-anchor": "middle", class: "tick" }, `${r.round}`));
    if (!r.total) continue;
    const top = Math.max(0, ...r.byCluster.values());
    points.push([xs(r.round), ys(top / r.size), top / r.size]);
  }
  if (points.length) {
    parts.push(node("polyline", { points: points.map(([x, y]) => `${x},${y}`).join(" "), class: "line" }));
    for (const [x, y, v] of points) {
      parts.push(node("circle", { cx: x, cy: y, r: 3.5, class: "dot" }, null, `${Math.round(v * 100)}%`));
    }
  }
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  chart.setAttribute("aria-label", `Agreement by round: ${points.map(([, , v]) => `${Math.round(v * 100)}%`).join(", ")}`);
  chart.replaceChildren(...parts);
}

function node(tag, attrs, text = null, title = null) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== null) n.textContent = text;
  if (title !== null) { const t = document.createElementNS(SVG, "title"); t.textContent = title; n.append(t); }
  return n;
}
