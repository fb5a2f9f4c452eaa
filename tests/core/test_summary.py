from rsa_service.core.params import RSAParams
from rsa_service.core.plan import choose_member
from rsa_service.core.steps import StepResult, Usage
from rsa_service.core.summary import summarise


def step(r: int, s: int, answer: str | None, **extra: object) -> StepResult:
    return StepResult(
        round=r, slot=s, answer=answer, tail="t", usage=Usage(prompt_tokens=10, completion_tokens=5), **extra
    )


def steps_of(*items: StepResult) -> dict[str, StepResult]:
    return {item.key: item for item in items}


def test_round_stats_and_vote() -> None:
    params = RSAParams(population=4, subset=2, rounds=1, trace_tokens=10, tail_tokens=5)
    steps = steps_of(
        step(0, 0, "1"),
        step(0, 1, "2", finish_reason="length"),
        step(0, 2, None),
        step(0, 3, "1"),
        step(1, 0, "2"),
        step(1, 1, "2"),
        step(1, 2, "2"),
        StepResult(round=1, slot=3, status="failed", error="x"),
    )
    summary = summarise(params, steps)
    first, last = summary.rounds
    assert [(a.answer, a.count) for a in first.answers] == [("1", 2), ("2", 1)]
    assert (first.agreement, first.truncated, first.no_answer) == (0.5, 1, 1)
    assert (last.agreement, last.failed) == (0.75, 1)
    assert summary.answer == "2"
    assert summary.usage == Usage(prompt_tokens=70, completion_tokens=35)


def test_sample_and_aggregate_selection() -> None:
    base = dict(population=3, subset=2, rounds=0, trace_tokens=10, tail_tokens=5)
    steps = steps_of(step(0, 0, "a"), step(0, 1, "b"), step(0, 2, "b"))
    sampled = summarise(RSAParams(**base, select="sample", seed=11), steps)
    assert sampled.selected_slot == choose_member(11, [0, 1, 2])
    assert sampled.answer == "ab"[min(sampled.selected_slot, 1)]


def test_aggregate_votes_over_its_final_stage_of_final_n() -> None:
    params = RSAParams(population=3, subset=2, rounds=1, trace_tokens=10, tail_tokens=5, select="aggregate", final_n=3)
    steps = steps_of(step(0, 0, "a"), step(0, 1, "a"), step(0, 2, "a"), step(1, 0, "z"), step(1, 1, "y"))
    steps |= steps_of(step(1, 2, "z"))
    summary = summarise(params, steps)
    assert summary.answer == "z" and summary.rounds[-1].agreement == 2 / 3
    one = params.model_copy(update={"final_n": 1})
    summary = summarise(one, steps_of(step(0, 0, "a"), step(0, 1, "a"), step(0, 2, "a"), step(1, 0, "z")))
    assert summary.answer == "z" and summary.rounds[-1].agreement == 1.0  # one aggregation is its whole stage


def test_budget_stop_answers_from_latest_round_with_answers() -> None:
    params = RSAParams(population=2, subset=1, rounds=2, trace_tokens=10, tail_tokens=5)
    steps = steps_of(step(0, 0, "4"), step(0, 1, "4"), step(1, 0, None))
    summary = summarise(params, steps, stopped_reason="token budget")
    assert summary.answer == "4" and len(summary.rounds) == 2 and summary.stopped_reason == "token budget"
