// Shared by the pages: the API key, calls to the REST API, problem+json errors, the event stream, formatting.

const KEY_STORE = "rsa.apiKey";

export class ApiProblem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Ask for a key once (when the server wants one); resolves when a key is stored.
let asking = null;
export function askForKey(message) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const error = document.getElementById("key-error");
  const input = document.getElementById("key-input");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        if (key) localStorage.setItem(KEY_STORE, key);
        asking = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return asking;
}

export function setUpKeyButton() {
  const button = document.getElementById("key-button");
  if (document.body.dataset.auth !== "on") return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    await askForKey();
    location.reload();
  });
}

// A JSON call to the API; on 401 asks for a key and tries again.
export async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, {
      ...options,
      headers: { Accept: "application/json", ...(options.body ? { "Content-Type": "application/json" } : {}),
        ...authHeaders(), ...(options.headers || {}) },
    });
    if (response.status === 401) {
      const hadKey = Boolean(localStorage.getItem(KEY_STORE));
      localStorage.removeItem(KEY_STORE);
      await askForKey(hadKey ? "That key was not accepted." : "");
      continue;
    }
    const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) throw new ApiProblem(response.status, body);
    return body;
  }
}

const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);

// Follow a job's server-sent events from `after`, reconnecting with Last-Event-ID after a dropped connection
// (or a busy server), until a terminal event or until `hooks.finished()` says the job ended without our seeing
// it. `onEvent({id, type, data})` sees each event once, in order.
export async function follow(jobId, after, onEvent, hooks = {}) {
  let last = after;
  const terminal = new Set(["completed", "failed", "cancelled"]);
  for (let attempt = 0; ; attempt++) {
    const controller = new AbortController();
    hooks.onConnect?.(controller, attempt);
    let wait = Math.min(500 * 2 ** Math.min(attempt, 4), 5000);
    try {
      const headers = { Accept: "text/event-stream", ...authHeaders() };
      if (last) headers["Last-Event-ID"] = last;
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        headers, signal: controller.signal, cache: "no-store",
      });
      if (response.status === 401) { await askForKey("That key was not accepted."); continue; }
      if (!response.ok) {
        const problem = new ApiProblem(response.status, await response.json().catch(() => null));
        if (!RETRYABLE.has(response.status)) throw problem;
        wait = Math.max(wait, 1000 * Number(response.headers.get("Retry-After") || 0));
      } else {
        for await (const event of sseEvents(response.body)) {
          last = event.id || last;
          onEvent(event);
          if (terminal.has(event.type)) return;
        }
        attempt = -1; // a stream that ran resets the back-off
        wait = 500;
      }
    } catch (error) {
      if (error instanceof ApiProblem) throw error; // not found, bad request: retrying will not help
    }
    if (await hooks.finished?.()) return;
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = { id: null, type: "message", data: "" };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") event.id = text;
        else if (field === "event") event.type = text;
        else if (field === "data") event.data += (event.data ? "\n" : "") + text;
      }
      if (event.data) yield { ...event, data: JSON.parse(event.data) };
    }
  }
}

export const number = new Intl.NumberFormat("en-US");

export function age(unixSeconds) {
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

export function statusBadge(node, status) {
  node.textContent = status.replace("_", " ");
  node.className = `badge s-${status}`;
}

export function lastAgreement(job) {
  const rounds = job.result?.rounds;
  return rounds && rounds.length ? rounds[rounds.length - 1].agreement : null;
}
