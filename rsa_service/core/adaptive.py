"""Adaptive compute: where a run skips the model because its traces already agree.

Two decisions, both taken only from committed steps and the job seed, so a resumed job takes them again exactly:
- the consensus short-cut: an aggregation slot whose K candidates all finished with one answer (up to
  equivalence) carries one of them forward instead of asking the model to reconcile what already agrees;
- the early stops: after a round, by agreement (this share holds the modal answer) or by stability (the modal
  answer, held by this share, is the previous round's too).
Both count agreement only from `consensus_from_round` on: a model whose independent samples share a slip agrees
on a wrong answer in round 0 that aggregation, checking the traces, still corrects.
"""

from __future__ import annotations

from collections.abc import Sequence

from rsa_service.core.answers import cluster
from rsa_service.core.params import RSAParams
from rsa_service.core.plan import choose_carried
from rsa_service.core.steps import RoundStats, StepResult, Usage


def _agreeing(candidates: Sequence[StepResult]) -> bool:
    """Every candidate finished (not cut by β) with an answer, and all the answers are one."""
    if not candidates or any(c.status != "ok" or c.truncated or c.answer is None for c in candidates):
        return False
    return len(cluster([c.answer for c in candidates])) == 1


def shortcut_step(
    params: RSAParams, round_index: int, slot: int, candidates: Sequence[StepResult]
) -> StepResult | None:
    """The step a consensus short-cut commits for (round, slot) over `candidates`, or None to call the model.

    It copies the chosen candidate's trace, tail and answer, records 0 tokens and the slot it came from.
    """
    if not params.consensus_shortcut or round_index - 1 < params.consensus_from_round or not _agreeing(candidates):
        return None
    carried = choose_carried(params.seed, round_index, slot, [c.slot for c in candidates])
    source = next(c for c in candidates if c.slot == carried)
    return source.model_copy(
        update={
            "round": round_index,
            "slot": slot,
            "candidates": sorted(c.slot for c in candidates),
            "seed": None,
            "usage": Usage(),
            "attempts": 0,
            "duration_s": 0.0,
            "backend": None,
            "shortcut_from": carried,
        }
    )


def may_stop_after(params: RSAParams, round_index: int) -> bool:
    """Whether the end of `round_index` may stop the run (a threshold of 0 or None is off)."""
    enabled = bool(params.stop_agreement or params.stop_stability)
    return enabled and params.consensus_from_round <= round_index < params.rounds


def stop_reason(params: RSAParams, stats: RoundStats, previous: RoundStats | None) -> str | None:
    """Why the run ends after the round `stats` describes (never after the last), or None to go on."""
    if not may_stop_after(params, stats.round):
        return None
    agreement, stability = params.stop_agreement, params.stop_stability
    if agreement and stats.agreement >= agreement:
        return f"agreement {stats.agreement:.2f} reached {agreement:g} after round {stats.round}"
    if (
        stability
        and previous is not None
        and stats.answer is not None
        and previous.answer is not None
        and stats.agreement >= stability
        and len(cluster([stats.answer, previous.answer])) == 1
    ):
        return f"round {stats.round} kept round {previous.round}'s answer with agreement {stats.agreement:.2f}"
    return None
