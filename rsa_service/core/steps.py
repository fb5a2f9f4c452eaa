"""What one generation step records, and the per-round statistics derived from a round's steps.

A step is addressed by its position, (round, slot). The record
holds everything needed to rebuild the next round without calling the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rsa_service.core.answers import cluster

StepStatus = Literal["ok", "failed", "straggler"]


def step_key(round_index: int, slot: int) -> str:
    return f"r{round_index}:s{slot}"


class Usage(BaseModel):
    """Token usage as the model's tokenizer or server counted it: every request the backend ran, retried or
    failed ones included. A request aborted before the server reported usage (a straggler cut, a read timeout)
    counts an upper bound, its prompt plus its whole budget, and that part is also in `estimated_tokens`."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    estimated_tokens: int = Field(
        default=0, ge=0, description="Of the total, an upper bound for requests aborted without reported usage."
    )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            estimated_tokens=self.estimated_tokens + other.estimated_tokens,
        )

    @classmethod
    def upper_bound(cls, prompt_tokens: int, max_tokens: int) -> Usage:
        """An aborted request: its prompt and its whole budget, all marked estimated."""
        return cls(
            prompt_tokens=prompt_tokens, completion_tokens=max_tokens, estimated_tokens=prompt_tokens + max_tokens
        )

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StepResult(BaseModel):
    """One committed generation (or the record that its slot was lost)."""

    model_config = ConfigDict(frozen=True)

    round: int = Field(ge=0)
    slot: int = Field(ge=0)
    status: StepStatus = "ok"
    candidates: list[int] = Field(default_factory=list, description="Previous-round slots shown in the prompt.")
    seed: int | None = None
    text: str = ""
    reasoning: str = ""
    tail: str = ""
    tail_tokens: int = 0
    source_tokens: int = 0
    answer: str | None = None
    finish_reason: str = "stop"
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
    attempts: int = 1
    duration_s: float = 0.0
    backend: str | None = Field(default=None, description="The backend that generated it (None: the job's own).")
    shortcut_from: int | None = Field(
        default=None, description="A consensus short-cut: the candidate carried forward, with no model call."
    )

    @property
    def key(self) -> str:
        return step_key(self.round, self.slot)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class AnswerCount(BaseModel):
    answer: str
    count: int


class RoundStats(BaseModel):
    """What a user watches per round: does the population converge, and at what cost."""

    round: int
    answers: list[AnswerCount]
    no_answer: int
    agreement: float = Field(description="Share of the population holding the modal answer.")
    answer: str | None = Field(description="The modal answer (ties: first seen in slot order).")
    truncated: int
    failed: int
    stragglers: int = 0
    shortcuts: int = Field(default=0, description="Slots that carried a candidate forward without a model call.")
    tokens: Usage


def round_stats(round_index: int, steps: Sequence[StepResult], population: int) -> RoundStats:
    """Statistics over one round's committed steps; missing slots count against agreement."""
    done = [step for step in steps if step.status == "ok"]
    groups = cluster([step.answer for step in done])
    groups.sort(key=lambda group: -len(group[1]))  # stable: ties keep first-seen order
    tokens = sum((step.usage for step in steps), Usage())
    modal = groups[0] if groups else None
    return RoundStats(
        round=round_index,
        answers=[AnswerCount(answer=rep, count=len(members)) for rep, members in groups],
        no_answer=sum(1 for step in done if step.answer is None),
        agreement=len(modal[1]) / population if modal else 0.0,
        answer=modal[0] if modal else None,
        truncated=sum(1 for step in done if step.truncated),
        failed=sum(1 for step in steps if step.status == "failed"),
        stragglers=sum(1 for step in steps if step.status == "straggler"),
        shortcuts=sum(1 for step in steps if step.shortcut_from is not None),
        tokens=tokens,
    )
