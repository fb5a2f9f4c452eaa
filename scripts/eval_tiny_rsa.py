"""Evaluate Markovian RSA on the tiny ZAYA1 exactly as the service runs it.

Round 0 samples N traces per held-out problem at temperature 1.0; rounds 1..T aggregate K tails of τ tokens,
drawn per slot by the service's own subset rule and rendered with its templates (see tiny_rsa.py).
Reports, per stage, mean accuracy, pass@N and majority@N, plus single-sample accuracy at low temperature.

    .venv/bin/python scripts/eval_tiny_rsa.py --checkpoint rsa_service/tinymodel/checkpoint --problems 200
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tiny_formats import final_answer, render_chat
from tiny_rsa import RSASettings, generate, load, run_rsa
from tiny_task import check, load_heldout

from rsa_service.tinymodel import CHECKPOINT_DIR, HELDOUT_PATH


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent extracted answer; ties go to the one seen first (deterministic); None never wins."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def stage_metrics(population: Sequence[Sequence[str]], references: Sequence[str]) -> dict[str, float]:
    """Mean accuracy of all traces, pass@N, majority@N (percent) and the share truncated (no answer)."""
    answers = [[final_answer(g) for g in slots] for slots in population]
    right = [[check(a, ref) for a in row] for row, ref in zip(answers, references, strict=True)]
    n = len(references)
    return {
        "mean": 100 * sum(sum(r) / len(r) for r in right) / n,
        "pass": 100 * sum(any(r) for r in right) / n,
        "majority": 100 * sum(check(majority(row), ref) for row, ref in zip(answers, references, strict=True)) / n,
        "no_answer": 100 * sum(a is None for row in answers for a in row) / sum(len(row) for row in answers),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--heldout", type=Path, default=HELDOUT_PATH)
    parser.add_argument("--problems", type=int, default=200, help="first P held-out problems")
    parser.add_argument("-n", "--population", type=int, default=8)
    parser.add_argument("-k", "--subset", type=int, default=4)
    parser.add_argument("-t", "--rounds", type=int, default=2)
    parser.add_argument("--trace-tokens", type=int, default=192)
    parser.add_argument("--final-tokens", type=int, default=256)
    parser.add_argument("--tail-tokens", type=int, default=64)
    parser.add_argument("--low-temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    model, tokenizer = load(args.checkpoint)
    rows = load_heldout(args.heldout)[: args.problems]
    problems, references = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    settings = RSASettings(
        population=args.population,
        subset=args.subset,
        rounds=args.rounds,
        trace_tokens=args.trace_tokens,
        final_tokens=args.final_tokens,
        tail_tokens=args.tail_tokens,
        seed=args.seed,
    )
    stages = run_rsa(model, tokenizer, problems, settings)
    report: dict[str, object] = {"settings": vars(settings) | {"problems": len(rows)}}
    for index, population in enumerate(stages):
        report[f"stage{index}"] = stage_metrics(population, references)
    low = generate(
        model,
        tokenizer,
        [render_chat(p) for p in problems],
        max_new_tokens=args.final_tokens,
        temperature=args.low_temperature,
        seed=args.seed,
    )
    report["low_temperature"] = {
        "temperature": args.low_temperature,
        "accuracy": 100 * sum(check(final_answer(g), r) for g, r in zip(low, references, strict=True)) / len(rows),
    }
    report["seconds"] = round(time.monotonic() - started)
    print(
        f"N={args.population} K={args.subset} T={args.rounds} τ={args.tail_tokens} seed={args.seed} "
        f"problems={len(rows)}"
    )
    print(f"{'stage':<8}{'mean':>8}{'pass@N':>9}{'maj@N':>8}{'no ans':>8}")
    for index in range(len(stages)):
        m = report[f"stage{index}"]
        assert isinstance(m, dict)
        print(f"{index:<8}{m['mean']:>8.1f}{m['pass']:>9.1f}{m['majority']:>8.1f}{m['no_answer']:>8.1f}")
    print(f"single sample at temperature {args.low_temperature}: {report['low_temperature']['accuracy']:.1f}")
    print(f"{report['seconds']}s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
