"""The outcome of a run, derived only from its committed steps.

Because it is derived, a finished, cancelled or budget-stopped job can always be summarised again from Redis,
and a resumed job reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from rsa_service.core.answers import majority
from rsa_service.core.params import RSAParams, SelectMode
from rsa_service.core.plan import choose_member
from rsa_service.core.steps import RoundStats, StepResult, Usage, round_stats, step_key


class Summary(BaseModel):
    answer: str | None
    select: SelectMode
    rounds: list[RoundStats]
    usage: Usage
    usage_by_backend: dict[str, Usage] = Field(default_factory=dict, description="Tokens per routed backend.")
    stopped_reason: str | None = None
    wall_s: float | None = None
    selected_slot: int | None = Field(default=None, description="The member `sample` chose.")


def round_steps(steps: Mapping[str, StepResult], round_index: int, population: int) -> list[StepResult]:
    """The committed steps of one round, in slot order (missing slots left out)."""
    return [steps[key] for slot in range(population) if (key := step_key(round_index, slot)) in steps]


def select_answer(params: RSAParams, steps: Mapping[str, StepResult], last_round: int) -> tuple[str | None, int | None]:
    """The final answer by the chosen mode, over the last round that has answers.

    `aggregate` votes over its final stage's aggregations (or over the latest round, when a budget stopped the job
    before that stage), as `vote` does over the final population.
    """
    members = round_steps(steps, last_round, params.population_of(last_round))
    population = [step for step in members if step.status == "ok"]
    if params.select == "sample" and population:
        slot = choose_member(params.seed, [step.slot for step in population])
        return next(step.answer for step in population if step.slot == slot), slot
    return majority([step.answer for step in population])[0], None


def summarise(
    params: RSAParams,
    steps: Mapping[str, StepResult],
    *,
    stopped_reason: str | None = None,
    wall_s: float | None = None,
) -> Summary:
    """Per-round statistics and the selected answer. A budget-stopped run answers from its latest round."""
    rounds = [
        round_stats(index, members, params.population_of(index))
        for index in range(params.stages)
        if (members := round_steps(steps, index, params.population_of(index)))
    ]
    answered = [stats.round for stats in rounds if stats.answers]
    answer, slot = select_answer(params, steps, answered[-1]) if answered else (None, None)
    usage = sum((step.usage for step in steps.values()), Usage())
    by_backend: dict[str, Usage] = {}
    for step in steps.values():
        if step.backend is not None:
            by_backend[step.backend] = by_backend.get(step.backend, Usage()) + step.usage
    return Summary(
        answer=answer,
        select=params.select,
        rounds=rounds,
        usage=usage,
        usage_by_backend=by_backend,
        stopped_reason=stopped_reason,
        wall_s=wall_s,
        selected_slot=slot,
    )
