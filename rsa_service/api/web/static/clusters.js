// Answer clusters as the page shows them: a stable colour and letter per cluster for the page's life, found by
// any spelling the server put in it (the server decides math-equivalence; its cluster ids may shift as steps land).

export const PALETTE_SIZE = 7; // Okabe-Ito colours in app.css (.c0-.c6); later clusters share the "other" style.

export class Clusters {
  constructor() {
    this.bySpelling = new Map();
    this.list = []; // {index, label, letter, spellings:Set}
  }

  // Merge the server's clusters (`[{label, answers}]`); returns true when any spelling is newly placed.
  merge(serverClusters) {
    let changed = false;
    // New clusters take letters and colours largest first: the leading answer of a finished job is "A".
    const bySize = [...serverClusters].sort((x, y) => y.count - x.count);
    for (const group of bySize) {
      let entry = group.answers.map((s) => this.bySpelling.get(s)).find(Boolean);
      if (!entry) {
        const index = this.list.length;
        entry = { index, label: group.label, letter: letterOf(index), spellings: new Set() };
        this.list.push(entry);
      }
      for (const spelling of group.answers) {
        if (!this.bySpelling.has(spelling)) { this.bySpelling.set(spelling, entry); changed = true; }
        entry.spellings.add(spelling);
      }
    }
    return changed;
  }

  of(answer) {
    return answer == null ? null : this.bySpelling.get(answer) || null;
  }

  styleClass(entry) {
    return entry.index < PALETTE_SIZE ? `c${entry.index}` : "cx";
  }
}

function letterOf(index) {
  return index < 26 ? String.fromCharCode(65 + index) : `${index + 1}`;
}
