"""`rsa eval --compare`: plain Markovian RSA beside the adaptive settings, on the same problems with the same seed.

Accuracy per token is the figure that matters, so every configuration reports what it answered, how each stage
scored, and what it spent: generated and prompt tokens, and the model calls it skipped (consensus short-cuts, and
the slots of stages an early stop never ran). A job that stopped early keeps its last round's answers for the
stages it skipped: its answer stands, so those stages score what it would have answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from rsa_service.batch import ResultLine, same_answer, stage_answers, trace_accuracy
from rsa_service.core.steps import Usage

PLAIN = "plain"
# Each configuration's settings over the user's flags; plain turns every adaptive setting off explicitly, so a
# model card that turns one on by default does not leak into the reference.
OFF: dict[str, Any] = {"consensus_shortcut": False, "stop_agreement": 0.0, "stop_stability": 0.0}
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    PLAIN: OFF | {"consensus_from_round": 0},
    "shortcut": OFF | {"consensus_shortcut": True, "consensus_from_round": 0},
    "agreement-stop": OFF | {"stop_agreement": 0.75, "consensus_from_round": 1},
    "adaptive": {"consensus_shortcut": True, "stop_agreement": 0.75, "stop_stability": 0.5, "consensus_from_round": 1},
}


class Configuration(BaseModel):
    name: str
    settings: dict[str, Any] = Field(description="The RSA settings this configuration sent, flags included.")
    final_accuracy: float
    stage_accuracy: list[float] = Field(description="Mean accuracy of each stage's traces (round 0 first).")
    generated_tokens: int
    prompt_tokens: int
    model_calls: int
    skipped_calls: int = Field(description="Short-cut slots plus the slots of stages an early stop skipped.")
    stopped_early: int = Field(description="Jobs that ended before their last stage.")
    failed: int
    wall_s: float


class Baseline(BaseModel):
    name: str
    accuracy: float
    generated_tokens: int


class Comparison(BaseModel):
    problems: int
    population: int
    subset: int
    rounds: int
    seed: int
    configurations: list[Configuration] = Field(description="Plain Markovian RSA first.")
    baselines: list[Baseline] = Field(description="Majority vote over plain RSA's round 0, and one sample.")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def configuration(
    name: str, settings: dict[str, Any], lines: Sequence[ResultLine], *, stages: int, wall_s: float
) -> Configuration:
    graded = [line for line in lines if line.expected is not None]
    stage_accuracy = [
        _mean([trace_accuracy(stage_answers(line, stage), line.expected or "", line.population) for line in graded])
        for stage in range(stages)
    ]
    calls = sum(line.population - r.shortcuts for line in lines for r in line.rounds)
    planned = sum(line.population * stages for line in lines if line.status == "completed")
    completed_calls = sum(
        line.population - r.shortcuts for line in lines if line.status == "completed" for r in line.rounds
    )
    usage = sum((line.usage for line in lines), Usage())
    return Configuration(
        name=name,
        settings=settings,
        final_accuracy=_mean([float(same_answer(line.answer, line.expected or "")) for line in graded]),
        stage_accuracy=stage_accuracy,
        generated_tokens=usage.completion_tokens,
        prompt_tokens=usage.prompt_tokens,
        model_calls=calls,
        skipped_calls=planned - completed_calls,
        stopped_early=sum(line.status == "completed" and len(line.rounds) < stages for line in lines),
        failed=sum(line.status != "completed" for line in lines),
        wall_s=wall_s,
    )


def baselines(plain: Sequence[ResultLine], single: Sequence[ResultLine], population: int) -> list[Baseline]:
    """Majority@N costs plain RSA's round 0 and nothing more; the single sample costs its own run."""
    graded = [line for line in plain if line.expected is not None]
    first = [line.rounds[0] if line.rounds else None for line in graded]
    majority = _mean(
        [
            float(r is not None and same_answer(r.answer, line.expected or ""))
            for r, line in zip(first, graded, strict=True)
        ]
    )
    round0_tokens = sum(r.tokens.completion_tokens for r in first if r is not None)
    one = [line for line in single if line.expected is not None]
    return [
        Baseline(name=f"majority@{population}", accuracy=majority, generated_tokens=round0_tokens),
        Baseline(
            name="single sample",
            accuracy=_mean([float(same_answer(line.answer, line.expected or "")) for line in one]),
            generated_tokens=sum(line.usage.completion_tokens for line in single),
        ),
    ]
