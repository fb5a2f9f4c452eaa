// The job list (newest first, status filter, cursor pages, live status) and the new-job form.
import { api, ApiProblem, age, el, lastAgreement, number, setUpKeyButton, statusBadge } from "./common.js";

const POLL_MS = 3000;
const FIELDS = ["problem", "backend", "population", "subset", "rounds", "trace_tokens", "tail_tokens", "final_tokens", "seed", "select"];
const state = { cursors: [null], page: 0, timer: null };

function row(job) {
  const status = el("span");
  statusBadge(status, job.status);
  const p = job.progress;
  const agreement = lastAgreement(job);
  const link = el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, class: "problem-link",
    text: job.problem_excerpt || job.id, title: job.problem_excerpt || "" });
  return el("tr", { "data-job-id": job.id },
    el("td", {}, link),
    el("td", {}, status),
    el("td", { class: "answer" }, job.result?.answer ?? "—"),
    el("td", { class: "num" }, agreement === null ? "—" : `${Math.round(agreement * 100)}%`),
    el("td", { class: "num" }, `${Math.min(p.round + (p.steps_done ? 1 : 0), p.stages)}/${p.stages}`),
    el("td", { class: "num" }, number.format(p.prompt_tokens + p.completion_tokens)),
    el("td", { class: "num" }, el("time", { datetime: new Date(job.created_at * 1000).toISOString(),
      text: age(job.created_at) })),
  );
}

async function load() {
  clearTimeout(state.timer);
  const status = document.getElementById("status-filter").value;
  const query = new URLSearchParams({ limit: "20" });
  if (status) query.append("status", status);
  const cursor = state.cursors[state.page];
  if (cursor) query.set("after", cursor);
  const error = document.getElementById("jobs-error");
  try {
    const page = await api(`/v1/jobs?${query}`);
    error.hidden = true;
    document.querySelector("#jobs tbody").replaceChildren(...page.data.map(row));
    document.getElementById("jobs-empty").hidden = page.data.length > 0;
    state.cursors[state.page + 1] = page.next_cursor;
    document.getElementById("older").disabled = !page.has_more;
    document.getElementById("newer").disabled = state.page === 0;
    const terminal = ["completed", "failed", "cancelled"];
    if (page.data.some((job) => !terminal.includes(job.status)) || state.page === 0) {
      state.timer = setTimeout(load, POLL_MS);
    }
  } catch (problem) {
    error.textContent = `Could not list jobs: ${problem.message}`;
    error.hidden = false;
    state.timer = setTimeout(load, POLL_MS * 2);
  }
}

function showErrors(problem) {
  const general = document.getElementById("form-error");
  const unplaced = [];
  for (const item of problem.body.errors || []) {
    const name = item.field.split(".")[0];
    const slot = document.getElementById(`e-${name}`);
    if (!slot) { unplaced.push(`${item.field}: ${item.message}`); continue; }
    slot.textContent = item.message;
    slot.hidden = false;
    document.getElementById(`f-${name}`).setAttribute("aria-invalid", "true");
  }
  if (unplaced.length || !(problem.body.errors || []).length) {
    general.textContent = unplaced.length ? unplaced.join("; ") : problem.message;
    general.hidden = false;
  }
  document.querySelector("[aria-invalid=true]")?.focus();
}

function clearErrors() {
  for (const node of document.querySelectorAll("#job-form .error")) { node.hidden = true; node.textContent = ""; }
  for (const node of document.querySelectorAll("#job-form [aria-invalid]")) node.removeAttribute("aria-invalid");
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const form = event.target;
  const body = {};
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value === "") continue;
    body[name] = form.elements[name].type === "number" && /^-?\d+$/.test(value) ? Number(value) : value;
  }
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", body: JSON.stringify(body) });
    location.assign(`/jobs/${encodeURIComponent(job.id)}`);
  } catch (problem) {
    if (problem instanceof ApiProblem) showErrors(problem);
    else throw problem;
  } finally {
    button.disabled = false;
  }
}

// Backends by name, and each field's default shown as its placeholder.
async function loadBackends() {
  const select = document.getElementById("f-backend");
  const { data, limits } = await api("/v1/backends");
  select.replaceChildren(...data.map((b) => el("option", { value: b.name, selected: b.default, text: b.name })));
  const defaults = () => (data.find((b) => b.name === select.value) || data[0] || { params: {} }).params;
  const fill = () => {
    for (const [name, value] of Object.entries(defaults())) {
      const input = document.getElementById(`f-${name}`);
      if (input && input.tagName === "INPUT") input.placeholder = String(value);
    }
  };
  select.addEventListener("change", fill);
  fill();
  document.getElementById("f-population").max = limits.max_population;
  document.getElementById("f-rounds").max = limits.max_rounds;
}

setUpKeyButton();
document.getElementById("status-filter").addEventListener("change", () => {
  state.cursors = [null];
  state.page = 0;
  load();
});
document.getElementById("older").addEventListener("click", () => { state.page += 1; load(); });
document.getElementById("newer").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); load(); });
document.getElementById("job-form").addEventListener("submit", submit);
load();
loadBackends();
