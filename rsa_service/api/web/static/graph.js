// The lineage graph in hand-written SVG: rounds as columns, one node per trace, each aggregation node joined to the
// tails it was shown. Nodes and edges are added as steps commit; nothing already drawn is redrawn. Each batch's
// edges are one <path> (thousands of <line>s would cost more to style and lay out than the nodes themselves); a
// highlighted lineage is drawn over them as one more path.

const SVG = "http://www.w3.org/2000/svg";
const COLUMN_W = 132;
const LEFT = 48; // room for a column heading centred over the first and last columns
const TOP = 34;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

export const keyOf = (round, slot) => `${round}:${slot}`;

export class LineageGraph {
  // `shape`: {population, stages, sizes} (sizes[r]: slots of round r; `aggregate`'s last stage may have fewer).
  constructor(root, shape, clusters, { onOpen, onFocus }) {
    this.root = root;
    this.shape = shape;
    this.clusters = clusters;
    this.onOpen = onOpen;
    this.onFocus = onFocus;
    this.nodes = new Map(); // key -> {data, g, circle, label, title}
    this.children = new Map(); // parent key -> [child key]
    this.highlighted = [];
    this.selected = null;
    this.rowH = shape.population <= 8 ? 44 : shape.population <= 16 ? 30 : shape.population <= 32 ? 20 : 15;
    this.radius = Math.min(this.rowH * 0.4, 14);
    this.columns = shape.stages;
    const width = LEFT * 2 + (this.columns - 1) * COLUMN_W;
    const height = TOP + shape.population * this.rowH + 8;
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    root.setAttribute("width", width);
    root.setAttribute("height", height);
    root.style.minWidth = `${Math.min(width, this.columns * 56)}px`;
    root.classList.toggle("dense", shape.population > 16);
    this.edgeLayer = svg("g", { class: "edges base" });
    this.litLayer = svg("g", { class: "edges lit" });
    this.nodeLayer = svg("g", { class: "nodes" });
    const heads = svg("g", { class: "heads" });
    for (let c = 0; c < this.columns; c++) {
      const text = svg("text", { x: this.x(c), y: 16, "text-anchor": "middle", class: "head" });
      text.textContent = c === this.columns - 1 && c > 0 ? `Round ${c} · final` : `Round ${c}`;
      heads.append(text);
    }
    root.replaceChildren(heads, this.edgeLayer, this.litLayer, this.nodeLayer);
    this.bindEvents();
  }

  x(round) { return LEFT + round * COLUMN_W; }

  // A round with fewer slots than N sits centred in its column.
  y(round, slot) {
    const size = this.shape.sizes[round] ?? this.shape.population;
    return TOP + (slot + (this.shape.population - size) / 2) * this.rowH + this.rowH / 2;
  }

  // Add many nodes at once (one DOM insertion, their edges one path), or update those already drawn.
  addAll(list) {
    const nodes = document.createDocumentFragment();
    let edges = "";
    for (const data of list) edges += this.add(data, nodes);
    this.nodeLayer.append(nodes);
    if (edges) this.edgeLayer.append(svg("path", { d: edges }));
  }

  // The segment from a parent's right edge to a child's left edge, in path syntax.
  edge(parentKey, childKey) {
    const [pr, ps] = parentKey.split(":").map(Number), [cr, cs] = childKey.split(":").map(Number);
    return `M${this.x(pr) + this.radius} ${this.y(pr, ps)}L${this.x(cr) - this.radius} ${this.y(cr, cs)}`;
  }

  parents(data) { return (data.candidates || []).map((c) => keyOf(data.round - 1, c)); }

  // Draws a new node into `nodeParent` and returns its edges' path; "" for a node already drawn (repainted).
  add(data, nodeParent) {
    const key = keyOf(data.round, data.slot);
    const known = this.nodes.get(key);
    if (known) { known.data = data; this.paint(known); return ""; }
    const cx = this.x(data.round), cy = this.y(data.round, data.slot);
    const g = svg("g", { class: "node", "data-round": data.round, "data-slot": data.slot, "data-key": key,
      transform: `translate(${cx},${cy})` });
    const circle = svg("circle", { r: this.radius });
    const label = svg("text", { "text-anchor": "middle", dy: "0.35em" });
    const title = svg("title", {});
    g.append(title, circle, label);
    const entry = { data, g, circle, label, title };
    this.nodes.set(key, entry);
    this.paint(entry);
    nodeParent.append(g);
    let edges = "";
    for (const parent of this.parents(data)) {
      edges += this.edge(parent, key);
      if (!this.children.has(parent)) this.children.set(parent, []);
      this.children.get(parent).push(key);
    }
    return edges;
  }

  // Colour, letter and tooltip from the node's data and the clusters known now.
  paint(entry) {
    const d = entry.data;
    const cluster = this.clusters.of(d.answer);
    let style, letter;
    if (d.status === "failed") { style = "failed"; letter = "×"; }
    else if (d.status === "straggler") { style = "straggler"; letter = "…"; }
    else if (d.answer == null) { style = "none"; letter = "–"; }
    else if (!cluster) { style = "pending"; letter = "?"; }
    else { style = this.clusters.styleClass(cluster); letter = cluster.letter; }
    entry.g.setAttribute("class", `node ${style}${d.finish_reason === "length" ? " truncated" : ""}` +
      `${entry.g.classList.contains("hl") ? " hl" : ""}${this.selected === entry ? " sel" : ""}`);
    entry.g.dataset.cluster = cluster ? cluster.letter : "";
    entry.label.textContent = letter;
    entry.title.textContent = describe(d, cluster);
  }

  repaintAll() { for (const entry of this.nodes.values()) this.paint(entry); }

  lineage(key) {
    const seen = new Set([key]);
    const walk = (start, next) => {
      const stack = [start];
      while (stack.length) {
        for (const other of next(stack.pop())) if (!seen.has(other)) { seen.add(other); stack.push(other); }
      }
    };
    walk(key, (k) => { const entry = this.nodes.get(k); return entry ? this.parents(entry.data) : []; });
    walk(key, (k) => this.children.get(k) || []);
    return seen;
  }

  highlight(key) {
    for (const node of this.highlighted) node.classList.remove("hl");
    this.highlighted = [];
    this.root.classList.toggle("focusing", key !== null);
    if (key === null) { this.litLayer.replaceChildren(); return; }
    const members = this.lineage(key);
    let edges = "";
    for (const member of members) {
      const entry = this.nodes.get(member);
      if (!entry) continue;
      this.highlighted.push(entry.g);
      for (const parent of this.parents(entry.data)) if (members.has(parent)) edges += this.edge(parent, member);
    }
    for (const node of this.highlighted) node.classList.add("hl");
    this.litLayer.replaceChildren(...(edges ? [svg("path", { d: edges })] : []));
  }

  select(key, open = false) {
    const entry = this.nodes.get(key);
    if (!entry) return;
    this.selected?.g.classList.remove("sel");
    this.selected = entry;
    entry.g.classList.add("sel");
    this.highlight(key);
    this.onFocus(entry.data, this.clusters.of(entry.data.answer));
    if (open) this.onOpen(entry.data);
  }

  clear() {
    this.selected?.g.classList.remove("sel");
    this.selected = null;
    this.highlight(null);
  }

  // Arrow keys move between drawn nodes: up/down within a round, left/right to the nearest slot of the next round.
  move(dRound, dSlot) {
    if (!this.selected) { const first = this.nodes.keys().next().value; if (first) this.select(first); return; }
    const { round, slot } = this.selected.data;
    const candidates = [...this.nodes.values()].map((e) => e.data);
    let best = null;
    for (const d of candidates) {
      if (dSlot && (d.round !== round || Math.sign(d.slot - slot) !== dSlot)) continue;
      if (dRound && Math.sign(d.round - round) !== dRound) continue;
      const cost = dSlot ? Math.abs(d.slot - slot)
        : Math.abs(d.round - round) * 1000 + Math.abs(this.y(d.round, d.slot) - this.y(round, slot));
      if (!best || cost < best.cost) best = { d, cost };
    }
    if (best) {
      this.select(keyOf(best.d.round, best.d.slot));
      this.selected.g.scrollIntoView?.({ block: "nearest", inline: "nearest" });
    }
  }

  bindEvents() {
    const keyAt = (event) => event.target.closest?.("g.node")?.dataset.key;
    this.root.addEventListener("click", (event) => { const key = keyAt(event); if (key) this.select(key, true); });
    this.root.addEventListener("mouseover", (event) => { const key = keyAt(event); if (key) this.highlight(key); });
    this.root.addEventListener("mouseleave", () => this.highlight(this.selected ? this.selected.g.dataset.key : null));
    this.root.addEventListener("keydown", (event) => {
      const moves = { ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0] };
      if (moves[event.key]) { event.preventDefault(); this.move(...moves[event.key]); }
      else if ((event.key === "Enter" || event.key === " ") && this.selected) {
        event.preventDefault();
        this.onOpen(this.selected.data);
      } else if (event.key === "Escape") this.clear();
    });
  }
}

export function describe(d, cluster) {
  const where = `round ${d.round}, slot ${d.slot}`;
  const what = d.status !== "ok" ? d.status : d.answer == null ? "no answer" :
    `answer ${d.answer}${cluster ? ` (cluster ${cluster.letter})` : ""}`;
  const cut = d.finish_reason === "length" ? ", truncated" : "";
  return `${where}: ${what}${cut}, ${d.completion_tokens} tokens`;
}
