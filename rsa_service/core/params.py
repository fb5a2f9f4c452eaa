"""The parameters of one Markovian RSA run, validated where they enter the system.

Rounds follow the ZAYA1 report: `rounds` (T) counts *aggregation* rounds, so a run has T+1 generation stages.
The RSA paper counts stages instead: its "T=10" is 1 initial stage + 9 aggregation rounds, i.e. `rounds=9` here.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rsa_service.core.reasoning import TailSource

SelectMode = Literal["vote", "aggregate", "sample"]
StragglerPolicy = Literal["wait", "quorum"]
StageName = Literal["initial", "aggregation", "final"]


class Limits(BaseModel):
    """Operator-set ceilings. Defaults admit the report's "extra-high" setting (T=8, N=32, K=4, β=32K)."""

    model_config = ConfigDict(frozen=True)

    max_population: int = Field(default=64, gt=0)
    max_rounds: int = Field(default=16, ge=0)
    max_trace_tokens: int = Field(default=131_072, gt=0)
    max_problem_chars: int = Field(default=100_000, gt=0)


DEFAULT_LIMITS = Limits()


class RSAParams(BaseModel):
    """N, K, T, β, τ and friends. Defaults are the ZAYA1 report's deployment setting (T=2, N=16, K=4, 16K/4K/40K)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    population: int = Field(default=16, gt=0, description="N: traces per round.")
    subset: int = Field(default=4, gt=0, description="K: tails shown in one aggregation prompt.")
    rounds: int = Field(default=2, ge=0, description="T: aggregation rounds (T+1 stages).")
    trace_tokens: int = Field(default=16_384, gt=0, description="β: max new tokens of a non-final generation.")
    tail_tokens: int = Field(default=4_096, gt=0, description="τ: tokens of reasoning carried to the next round.")
    final_tokens: int = Field(default=40_960, gt=0, description="Max new tokens in the final stage.")
    select: SelectMode = "vote"
    final_n: int = Field(
        default=1,
        gt=0,
        description="With select=aggregate: low-temperature aggregations in the final stage, voted on.",
    )
    tail_source: TailSource = "reasoning"
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, gt=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    # Sampling of the extra `aggregate` selection call, as in the published proxy.
    select_temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    select_top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    select_top_k: int | None = Field(default=40, gt=0)
    # Budgets and stopping rules; None disables each.
    max_total_tokens: int | None = Field(default=None, gt=0, description="Stop once this many tokens are spent.")
    max_output_tokens: int | None = Field(
        default=None, gt=0, description="Stop once the generations have produced this many tokens."
    )
    max_wall_s: float | None = Field(default=None, gt=0, description="Stop after this much wall time.")
    round_deadline_s: float | None = Field(default=None, gt=0, description="Per-round deadline for stragglers.")
    straggler_policy: StragglerPolicy = "wait"
    quorum: float = Field(
        default=0.75,
        gt=0.0,
        le=1.0,
        description="With straggler_policy=quorum: share of a round's slots that must succeed for it to proceed.",
    )
    stop_agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Stop early once this share of a round agrees on its answer (0: off).",
    )
    stop_stability: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Stop early once a round's modal answer, held by this share, is the previous round's (0: off).",
    )
    consensus_from_round: int = Field(
        default=0,
        ge=0,
        description="First round whose agreement counts, to stop after it or to short-cut over its traces "
        "(1: only aggregated answers, when independent samples can share one slip).",
    )
    consensus_shortcut: bool = Field(
        default=False,
        description="An aggregation slot whose K candidates all finished with one answer carries one of them "
        "forward instead of calling the model.",
    )
    # Stage routing: names of operator-configured backends; None runs the stage on the job's backend.
    initial_backend: str | None = Field(default=None, max_length=64, description="Backend of round 0.")
    aggregation_backend: str | None = Field(
        default=None, max_length=64, description="Backend of the aggregation rounds before the last."
    )
    final_backend: str | None = Field(
        default=None, max_length=64, description="Backend of the last round and of the `aggregate` selection call."
    )

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.subset > self.population:
            raise ValueError(f"subset (K={self.subset}) must be at most population (N={self.population})")
        if self.tail_tokens > self.trace_tokens:
            raise ValueError(
                f"tail_tokens (τ={self.tail_tokens}) must be at most trace_tokens (β={self.trace_tokens}); "
                "τ = β is full-chain RSA"
            )
        if self.select == "aggregate" and self.rounds == 0:
            raise ValueError("select=aggregate needs rounds (T) of at least 1: its final stage aggregates round T-1")
        if self.final_n > self.population:
            raise ValueError(f"final_n ({self.final_n}) must be at most population (N={self.population})")
        needed = self.required_survivors(0)
        if self.straggler_policy == "quorum" and self.rounds > 0 and needed < self.subset:
            raise ValueError(
                f"quorum ({self.quorum:g} of N={self.population} = {needed} traces) must leave at least K="
                f"{self.subset} survivors for an aggregation prompt: raise quorum to at least "
                f"{self.subset / self.population:g} or lower subset"
            )
        return self

    def check_limits(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Raise ValueError naming the first field over its operator limit."""
        checks = (
            ("population", self.population, limits.max_population),
            ("rounds", self.rounds, limits.max_rounds),
            ("trace_tokens", self.trace_tokens, limits.max_trace_tokens),
            ("final_tokens", self.final_tokens, limits.max_trace_tokens),
        )
        for name, value, ceiling in checks:
            if value > ceiling:
                raise ValueError(f"{name} ({value}) is over the limit of {ceiling}")

    @property
    def stages(self) -> int:
        return self.rounds + 1

    def stage_of(self, round_index: int) -> StageName:
        """Which routed stage a generation belongs to: round 0 is `initial` (also when T=0), the last round (with
        `aggregate`, its final aggregations) is `final`, the rounds between are `aggregation`."""
        if round_index == 0:
            return "initial"
        return "final" if round_index >= self.rounds else "aggregation"

    def stage_backend(self, round_index: int) -> str | None:
        """The backend name routed to `round_index`, or None for the job's own backend."""
        stage = self.stage_of(round_index)
        return {
            "initial": self.initial_backend,
            "aggregation": self.aggregation_backend,
            "final": self.final_backend,
        }[stage]

    @property
    def routed_backends(self) -> set[str]:
        return {name for name in (self.initial_backend, self.aggregation_backend, self.final_backend) if name}

    def population_of(self, round_index: int) -> int:
        """Slots of one stage: N, except the final stage of `aggregate`, which runs `final_n` aggregations."""
        return self.final_n if self.select == "aggregate" and round_index == self.rounds else self.population

    @property
    def total_generations(self) -> int:
        return sum(self.population_of(index) for index in range(self.stages))

    def final_sampling(self, round_index: int) -> bool:
        """Whether a stage samples at the low selection temperature: the final aggregations of `aggregate`."""
        return self.select == "aggregate" and round_index == self.rounds

    def required_survivors(self, round_index: int) -> int:
        """The one rule for how many of a stage's generations must succeed for the job to go on.

        Under the quorum policy it is the quorum, which is also where a round's stragglers are cut (validated to
        leave at least K survivors); otherwise half the stage. When fewer than K survive, an aggregation prompt
        shows every survivor: K is lowered to the survivor count for that round.
        """
        slots = self.population_of(round_index)
        share = self.quorum if self.straggler_policy == "quorum" else 0.5
        return max(1, math.ceil(share * slots - 1e-9))  # 0.7 × 10 is 7.000000000000001 in floats

    def max_tokens_for(self, round_index: int) -> int:
        """β for intermediate stages; the final budget for the last stage (round T)."""
        return self.final_tokens if round_index == self.rounds else self.trace_tokens


def check_problem(problem: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """The problem text, stripped; ValueError when empty or over the size limit."""
    text = problem.strip()
    if not text:
        raise ValueError("problem: must not be empty")
    if len(text) > limits.max_problem_chars:
        raise ValueError(f"problem: {len(text)} characters is over the limit of {limits.max_problem_chars}")
    return text
