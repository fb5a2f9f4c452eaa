"""The consensus short-cut and the early stops decide from committed steps and the seed alone."""

from __future__ import annotations

from rsa_service.core.adaptive import may_stop_after, shortcut_step, stop_reason
from rsa_service.core.params import RSAParams
from rsa_service.core.steps import RoundStats, StepResult, Usage, round_stats
from rsa_service.core.summary import summarise

PARAMS = {"population": 4, "subset": 2, "rounds": 2, "trace_tokens": 10, "tail_tokens": 5}
SHORTCUT = RSAParams(**PARAMS, seed=7, consensus_shortcut=True)


def trace(slot: int, answer: str | None, **extra: object) -> StepResult:
    return StepResult(
        round=0,
        slot=slot,
        answer=answer,
        tail=f"tail {slot}",
        usage=Usage(prompt_tokens=9, completion_tokens=7),
        **extra,
    )


def stats(round_index: int, *answers: str | None) -> RoundStats:
    return round_stats(round_index, [trace(slot, answer) for slot, answer in enumerate(answers)], len(answers))


def test_agreeing_finished_candidates_carry_one_forward_with_no_tokens() -> None:
    candidates = [trace(1, "1/2"), trace(3, "0.5")]  # equivalent spellings agree
    step = shortcut_step(SHORTCUT, 1, 2, candidates)
    assert step is not None
    assert (step.round, step.slot, step.candidates, step.usage, step.seed) == (1, 2, [1, 3], Usage(), None)
    assert step.shortcut_from in (1, 3)
    source = candidates[[1, 3].index(step.shortcut_from)]
    assert (step.tail, step.answer) == (source.tail, source.answer)
    # The choice depends on (seed, round, slot) only: the same everywhere, and not always the same candidate.
    assert shortcut_step(SHORTCUT, 1, 2, candidates) == step
    assert {
        shortcut_step(SHORTCUT.model_copy(update={"seed": seed}), 1, 2, candidates).shortcut_from for seed in range(40)
    } == {1, 3}  # type: ignore[union-attr]


def test_disagreement_truncation_failure_or_no_answer_calls_the_model() -> None:
    assert shortcut_step(SHORTCUT, 1, 0, [trace(0, "1"), trace(1, "2")]) is None
    assert shortcut_step(SHORTCUT, 1, 0, [trace(0, "1"), trace(1, "1", finish_reason="length")]) is None
    assert shortcut_step(SHORTCUT, 1, 0, [trace(0, "1"), trace(1, None)]) is None
    assert shortcut_step(SHORTCUT, 1, 0, [trace(0, "1"), trace(1, "1", status="failed")]) is None


def test_agreement_counts_only_from_the_first_trusted_round() -> None:
    agreeing = [trace(0, "1"), trace(1, "1")]
    later = SHORTCUT.model_copy(update={"consensus_from_round": 1, "stop_agreement": 1.0})
    assert shortcut_step(later, 1, 0, agreeing) is None  # its candidates are round 0's
    assert shortcut_step(later, 2, 0, agreeing) is not None
    assert shortcut_step(SHORTCUT.model_copy(update={"consensus_shortcut": False}), 1, 0, agreeing) is None
    assert stop_reason(later, stats(0, "5", "5", "5", "5"), None) is None
    assert [may_stop_after(later, r) for r in range(3)] == [False, True, False]  # round 1 may start early
    assert stop_reason(later, stats(1, "5", "5", "5", "5"), None) is not None


def test_agreement_stop_never_after_the_last_round_and_zero_is_off() -> None:
    params = RSAParams(**PARAMS, stop_agreement=1.0)
    assert [may_stop_after(params, r) for r in range(3)] == [True, True, False]
    assert stop_reason(params, stats(0, "5", "5", "5", "5"), None) is not None
    assert stop_reason(params, stats(0, "5", "5", "5", "6"), None) is None
    assert stop_reason(params, stats(2, "5", "5", "5", "5"), None) is None  # the last round always ends the run
    off = RSAParams(**PARAMS, stop_agreement=0)
    assert not may_stop_after(off, 0)
    assert stop_reason(off, stats(0, "5", "5", "5", "5"), None) is None


def test_stability_stop_needs_the_previous_rounds_answer_at_the_share() -> None:
    params = RSAParams(**PARAMS, stop_stability=0.75)
    before = stats(0, "5", "5", "6", "7")
    assert stop_reason(params, stats(1, "5", "5", "5", "6"), before) is not None
    assert stop_reason(params, stats(1, "5", "5", "6", "6"), before) is None  # below the share
    assert stop_reason(params, stats(1, "6", "6", "6", "5"), before) is None  # another answer
    assert stop_reason(params, stats(0, "5", "5", "5", "5"), None) is None  # round 0 has no previous round


def test_summary_splits_usage_by_backend_and_counts_shortcuts() -> None:
    params = RSAParams(**(PARAMS | {"rounds": 1}))
    steps = [trace(slot, "1", backend="small") for slot in range(4)]
    steps += [trace(0, "1", backend="big").model_copy(update={"round": 1})]
    steps += [shortcut_step(SHORTCUT, 1, slot, steps[:2]) for slot in (1, 2, 3)]  # type: ignore[misc]
    summary = summarise(params, {step.key: step for step in steps})
    assert summary.usage_by_backend == {
        "small": Usage(prompt_tokens=36, completion_tokens=28),
        "big": Usage(prompt_tokens=9, completion_tokens=7),
    }
    assert [stats.shortcuts for stats in summary.rounds] == [0, 3]
