"""`rsa eval`: how much Markovian RSA lifts accuracy, stage by stage, beside the baselines it has to beat.

RSA is worth its tokens only if its final stage beats what the same compute buys more simply: majority vote over
the N independent round-0 traces, and one low-temperature sample. The report puts all of them side by side,
computed from the per-round answer distributions every job records (see `batch.ResultLine`).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from rsa_service.batch import ResultLine, same_answer, stage_answers, trace_accuracy
from rsa_service.core.steps import Usage


class EvalReport(BaseModel):
    problems: int
    population: int
    subset: int
    rounds: int
    seed: int
    failed: int = Field(description="Jobs that did not complete; they count as wrong everywhere.")
    stage_accuracy: list[float] = Field(description="Mean accuracy of each stage's traces (round 0 first).")
    pass_at_n: list[float] = Field(description="Per stage: share of problems with at least one correct trace.")
    majority_round0: float = Field(description="Majority vote over the N round-0 traces.")
    final_accuracy: float = Field(description="The job's selected answer (majority vote over the final stage).")
    baseline_accuracy: float | None = Field(description="One sample per problem at `baseline_temperature`.")
    baseline_temperature: float
    usage: Usage
    baseline_usage: Usage
    wall_s: float


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def evaluate(
    lines: Sequence[ResultLine],
    baseline: Sequence[ResultLine],
    *,
    stages: int,
    subset: int,
    seed: int,
    baseline_temperature: float,
    wall_s: float,
) -> EvalReport:
    """Accuracy figures over graded problems (stage by stage as `batch.stage_answers` reads them)."""
    graded = [line for line in lines if line.expected is not None]
    expected = [line.expected or "" for line in graded]
    stage_accuracy, pass_at_n = [], []
    for stage in range(stages):
        rows = [(stage_answers(line, stage), line) for line in graded]
        shares = [
            trace_accuracy(row, answer, line.population) for (row, line), answer in zip(rows, expected, strict=True)
        ]
        stage_accuracy.append(_mean(shares))
        pass_at_n.append(_mean([float(share > 0) for share in shares]))
    first = [line.rounds[0].answer if line.rounds else None for line in graded]
    graded_baseline = [line for line in baseline if line.expected is not None]
    return EvalReport(
        problems=len(graded),
        population=max((line.population for line in graded), default=0),
        subset=subset,
        rounds=stages - 1,
        seed=seed,
        failed=sum(line.status != "completed" for line in graded),
        stage_accuracy=stage_accuracy,
        pass_at_n=pass_at_n,
        majority_round0=_mean([float(same_answer(a, e)) for a, e in zip(first, expected, strict=True)]),
        final_accuracy=_mean([float(same_answer(line.answer, e)) for line, e in zip(graded, expected, strict=True)]),
        baseline_accuracy=_mean([float(same_answer(line.answer, line.expected or "")) for line in graded_baseline])
        if graded_baseline
        else None,
        baseline_temperature=baseline_temperature,
        usage=sum((line.usage for line in lines), Usage()),
        baseline_usage=sum((line.usage for line in baseline), Usage()),
        wall_s=wall_s,
    )
