// The job page: header and cancel, the live lineage graph, answers per round, agreement, and a trace's detail.
import { api, el, follow, number, setUpKeyButton, statusBadge } from "./common.js";
import { Clusters } from "./clusters.js";
import { describe, keyOf, LineageGraph } from "./graph.js";
import { drawAgreement, drawDistribution, drawLegend, roundCounts } from "./charts.js";

const root = document.getElementById("job");
const jobId = root.dataset.jobId;
const clusters = new Clusters();
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
// What tests and benchmarks read: render time, connections made, step events applied.
const probe = { renderMs: null, paintedAt: null, buildMs: null, connections: 0, stepEvents: 0, duplicates: 0, flushes: [] };
const delivered = new Set(); // positions the stream has delivered: one seen twice would be a replayed event
window.rsaJob = probe;
let job = null;
let graph = null;
let pending = [];
let flushing = false;

const jobPath = (suffix = "") => `/v1/jobs/${encodeURIComponent(jobId)}${suffix}`;
const position = (d) => `r${d.round}:s${d.slot}`;
// Slots of each round: N, except `aggregate`'s last stage, which runs `final_n` aggregations.
const sizes = (p) => Array.from({ length: p.rounds + 1 },
  (_, r) => (p.select === "aggregate" && r === p.rounds ? p.final_n ?? 1 : p.population));

function fact(list, term, value) {
  list.append(el("div", {}, el("dt", { text: term }), el("dd", { text: value })));
}

function showJob(next) {
  job = next;
  statusBadge(document.getElementById("status"), job.status);
  document.getElementById("final-answer").textContent = job.result?.answer ?? "—";
  const p = job.params, progress = job.progress;
  const facts = document.getElementById("facts");
  facts.replaceChildren();
  fact(facts, "Backend", job.model ? `${job.backend} · ${job.model}` : job.backend);
  fact(facts, "Settings", `N=${p.population} K=${p.subset} T=${p.rounds} β=${number.format(p.trace_tokens)} ` +
    `τ=${number.format(p.tail_tokens)} select=${p.select} seed=${p.seed}`);
  fact(facts, "Steps", `${number.format(progress.steps_done)} of ${number.format(progress.steps_total)}`);
  fact(facts, "Tokens in / out", `${number.format(progress.prompt_tokens)} / ${number.format(progress.completion_tokens)}`);
  const wall = job.result?.wall_s ?? ((job.finished_at ?? Date.now() / 1000) - job.created_at);
  fact(facts, "Wall time", `${wall.toFixed(1)} s`);
  if (job.result?.stopped_reason) fact(facts, "Stopped", job.result.stopped_reason);
  const error = document.getElementById("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.title}: ${job.error.detail ?? ""}` : "";
  const cancel = document.getElementById("cancel");
  cancel.hidden = TERMINAL.has(job.status) || job.status === "cancelling";
  root.dataset.status = job.status;
}

// Re-reads are throttled, not debounced: a steady stream of events must not postpone them for ever.
function throttled(read, delay) {
  let timer = null;
  return (now = false) => {
    if (timer && !now) return;
    clearTimeout(timer);
    timer = setTimeout(async () => { timer = null; await read(); }, now ? 0 : delay);
  };
}

// Reads of the job may answer out of order; only one issued after the one shown may replace it.
let jobReads = 0;
let jobShown = 0;
async function readJob(request = () => api(jobPath())) {
  const issued = ++jobReads;
  const next = await request();
  if (issued > jobShown) { jobShown = issued; showJob(next); }
}

const refreshJob = throttled(readJob, 700);

// New answer spellings get their cluster from the server (math-equivalence lives there); batched.
const refreshClusters = throttled(async () => {
  const fresh = await api(jobPath("/graph"));
  if (clusters.merge(fresh.clusters)) { graph.repaintAll(); redrawCharts(); }
}, 250);

function redrawCharts() {
  const nodes = [...graph.nodes.values()].map((e) => e.data);
  const counts = roundCounts(nodes, clusters, sizes(job.params));
  drawLegend(document.getElementById("legend"), nodes, clusters);
  drawDistribution(document.getElementById("distribution"), counts, clusters);
  drawAgreement(document.getElementById("agreement"), counts);
}

// Step events are applied once a frame, in one DOM insertion.
function queue(node) {
  pending.push(node);
  if (flushing) return;
  flushing = true;
  requestAnimationFrame(() => {
    const batch = pending;
    pending = [];
    flushing = false;
    const started = performance.now();
    graph.addAll(batch);
    if (batch.some((d) => d.answer != null && !clusters.of(d.answer))) refreshClusters();
    redrawCharts();
    root.dataset.nodes = String(graph.nodes.size);
    probe.flushes.push({ nodes: batch.length, ms: performance.now() - started });
  });
}

function onEvent(event) {
  if (event.type === "step") {
    const key = keyOf(event.data.round, event.data.slot);
    if (delivered.has(key)) probe.duplicates += 1;
    delivered.add(key);
    probe.stepEvents += 1;
    root.dataset.stepEvents = String(probe.stepEvents);
    queue(event.data);
    refreshJob();
  } else {
    refreshJob(event.type !== "round");
    if (TERMINAL.has(event.type)) refreshClusters(true);
  }
}

function announce(data, cluster) {
  document.getElementById("graph-status").textContent = describe(data, cluster);
}

function markedTrace(node, text, tailStart) {
  node.scrollTop = 0;
  if (tailStart == null) { node.textContent = text || "—"; return; }
  const mark = el("mark", { class: "tail", text: text.slice(tailStart) });
  node.replaceChildren(text.slice(0, tailStart), mark);
  requestAnimationFrame(() => { node.scrollTop = Math.max(0, mark.offsetTop - node.offsetTop - 24); });
}

async function openDetail(data) {
  const box = document.getElementById("detail");
  const step = await api(jobPath(`/steps/${encodeURIComponent(position(data))}`));
  const cluster = clusters.of(step.answer);
  const facts = document.getElementById("detail-facts");
  facts.replaceChildren();
  document.getElementById("detail-title").textContent = `Round ${step.round}, slot ${step.slot}`;
  fact(facts, "Answer", step.answer == null ? "none" : `${step.answer}${cluster ? ` (cluster ${cluster.letter})` : ""}`);
  fact(facts, "Status", step.status + (step.error ? `: ${step.error}` : ""));
  fact(facts, "Finish reason", step.finish_reason);
  fact(facts, "Tokens in / out", `${number.format(step.usage.prompt_tokens)} / ${number.format(step.usage.completion_tokens)}`);
  fact(facts, "Tail", `${number.format(step.tail_tokens)} of ${number.format(step.source_tokens)} tokens`);
  fact(facts, "Attempts", String(step.attempts));
  fact(facts, "Duration", `${step.duration_s.toFixed(2)} s`);
  const from = step.round - 1;
  const shown = document.getElementById("detail-candidates");
  shown.replaceChildren(...(step.candidates.length ? ["Shown the tails of: ",
    ...step.candidates.map((c) => el("button", { type: "button", class: "chip", "data-key": keyOf(from, c),
      text: `round ${from} slot ${c}` }))] : []));
  document.getElementById("detail-prompt").textContent = step.prompt ?? "(none: a straggler record)";
  markedTrace(document.getElementById("detail-source"), step.reasoning, step.tail_field === "reasoning" ? step.tail_start : null);
  markedTrace(document.getElementById("detail-text"), step.text, step.tail_field === "text" ? step.tail_start : null);
  box.dataset.position = step.position;
  box.hidden = false;
  box.scrollIntoView({ block: "start" });
}

async function main() {
  setUpKeyButton();
  const started = performance.now();
  let snapshot;
  try {
    [job, snapshot] = await Promise.all([api(jobPath()), api(jobPath("/graph"))]);
  } catch (problem) {
    statusBadge(document.getElementById("status"), "not_found");
    const error = document.getElementById("job-error");
    error.textContent = problem.status === 404 ? `No job ${jobId} here.` : problem.message;
    error.hidden = false;
    root.setAttribute("aria-busy", "false");
    root.dataset.status = "missing";
    return;
  }
  showJob(job);
  document.getElementById("problem").textContent = snapshot.problem;
  const building = performance.now();
  clusters.merge(snapshot.clusters);
  const shape = { population: job.params.population, stages: job.params.rounds + 1, sizes: sizes(job.params) };
  graph = new LineageGraph(document.getElementById("graph"), shape, clusters, {
    onOpen: (data) => openDetail(data),
    onFocus: announce,
  });
  graph.addAll(snapshot.nodes);
  probe.graph = graph;
  redrawCharts();
  probe.buildMs = performance.now() - building;
  root.dataset.nodes = String(graph.nodes.size);
  requestAnimationFrame(() => setTimeout(() => {
    probe.paintedAt = performance.now();
    probe.renderMs = probe.paintedAt - started;
    root.dataset.renderMs = probe.renderMs.toFixed(1);
    root.setAttribute("aria-busy", "false");
  }));
  document.getElementById("detail-close").addEventListener("click", () => {
    document.getElementById("detail").hidden = true;
    graph.clear();
  });
  document.getElementById("detail-candidates").addEventListener("click", (event) => {
    const key = event.target.dataset?.key;
    if (key) graph.select(key, true);
  });
  document.getElementById("cancel").addEventListener("click", async () => {
    await readJob(() => api(jobPath("/cancel"), { method: "POST" }));
  });
  if (!TERMINAL.has(job.status)) {
    await follow(jobId, snapshot.last_event_id, onEvent, {
      onConnect: () => {
        probe.connections += 1;
        root.dataset.connections = String(probe.connections);
      },
      finished: async () => {
        const latest = await api(jobPath()).catch(() => null);
        if (!latest || !TERMINAL.has(latest.status)) return false;
        await readJob(async () => latest); // it ended while we were away: take what it committed meanwhile
        const fresh = await api(jobPath("/graph"));
        clusters.merge(fresh.clusters);
        graph.addAll(fresh.nodes.filter((d) => !graph.nodes.has(keyOf(d.round, d.slot))));
        graph.repaintAll();
        redrawCharts();
        root.dataset.nodes = String(graph.nodes.size);
        return true;
      },
    });
  }
}

main();
