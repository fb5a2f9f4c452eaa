"""The tiny model's reasoning task: the last digit of a sum of products, one checkable line at a time.

Problem: ``Find the last digit of 4*2 + 9*5 + 9*9 + 3*2 + 4*8 + 9*4 + 2*7 + 3*6.`` The trace writes every product
as two digits on its own line, then a running sum of last digits whose lines name each product's last digit
again (``3+1=4``). Every line is a lookup of two single digits, which a 2M-parameter model learns in minutes
(multi-digit addition it does not, in this budget); its slips at temperature 1.0 are independent across samples,
so one try of 15 lines is often wrong somewhere while several tries rarely share a slip. The last 64 tokens of
a trace (the Markovian tail) hold the whole running sum and the last products, so an aggregator can check
candidates line by line instead of voting on final answers. Pure Python, no torch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TERMS = 8
FACTOR_RANGE = (2, 9)
MULTIPLIER_RANGE = (2, 9)
PREFIX = "Find the last digit of "


@dataclass(frozen=True)
class Problem:
    """One instance: the pairs (a, b) whose products are summed."""

    pairs: tuple[tuple[int, int], ...]

    @property
    def prompt(self) -> str:
        return PREFIX + " + ".join(f"{a}*{b}" for a, b in self.pairs) + "."

    @property
    def answer(self) -> str:
        return str(sum(a * b for a, b in self.pairs) % 10)


def generate_problem(rng: random.Random, terms: int = TERMS) -> Problem:
    """A uniformly random instance; the same rng state always gives the same problem."""
    return Problem(tuple((rng.randint(*FACTOR_RANGE), rng.randint(*MULTIPLIER_RANGE)) for _ in range(terms)))


def parse_prompt(prompt: str) -> Problem:
    """Inverse of `Problem.prompt`, so held-out rows (prompt + answer only) rebuild their reference trace."""
    body = prompt.removeprefix(PREFIX).rstrip(".")
    pairs = []
    for term in body.split(" + "):
        a, b = term.split("*")
        pairs.append((int(a), int(b)))
    return Problem(tuple(pairs))


def solution_steps(problem: Problem) -> list[str]:
    """The reference reasoning, one line per step: two-digit products, then the running sum of last digits."""
    products = [a * b for a, b in problem.pairs]
    lines = [f"{a}*{b}={p:02d}" for (a, b), p in zip(problem.pairs, products, strict=True)]
    total = products[0] % 10
    for p in products[1:]:
        lines.append(f"{total}+{p % 10}={(total + p) % 10}")
        total = (total + p) % 10
    return lines


def reasoning_text(problem: Problem) -> str:
    """What the model writes inside <think>...</think>."""
    return "\n".join(solution_steps(problem))


def answer_text(answer: str) -> str:
    """What the model writes after </think>: only the boxed answer."""
    return f"\\boxed{{{answer}}}"


def check(answer: str | None, problem: Problem | str) -> bool:
    """Whether an extracted final answer is right; `problem` may be a Problem or a reference answer string."""
    if answer is None:
        return False
    reference = problem.answer if isinstance(problem, Problem) else problem
    return answer.strip().replace(",", "") == reference.strip()


def problems(seed: int, count: int, exclude: frozenset[str] = frozenset()) -> Iterator[Problem]:
    """`count` distinct problems from one seed, skipping prompts in `exclude` (the held-out set)."""
    rng = random.Random(seed)
    seen = set(exclude)
    made = 0
    while made < count:
        problem = generate_problem(rng)
        if problem.prompt in seen:
            continue
        seen.add(problem.prompt)
        made += 1
        yield problem


def load_heldout(path: Path) -> list[dict[str, str]]:
    """Rows with `id`, `prompt`, `answer`, as committed."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


HELDOUT_SEED = 20260506
HELDOUT_SIZE = 500


def write_heldout(path: Path, seed: int = HELDOUT_SEED, size: int = HELDOUT_SIZE) -> None:
    """Regenerate the committed held-out file (deterministic in `seed`)."""
    rows = [{"id": f"tiny-{i:04d}", "prompt": p.prompt, "answer": p.answer} for i, p in enumerate(problems(seed, size))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


if __name__ == "__main__":
    write_heldout(Path(__file__).resolve().parent / "heldout.jsonl")
