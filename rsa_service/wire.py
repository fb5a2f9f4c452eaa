"""The wire models of the REST API: what the server sends, the SDK parses and the job store keeps, defined once.

The API, the SDK and the job layer all import this module and it imports none of them, so `rsa reason --json`, a
REST job's `result` and the SDK's `job.result` are one type without the SDK pulling in the server.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from rsa_service.core.params import RSAParams, SelectMode, StragglerPolicy
from rsa_service.core.reasoning import TailSource
from rsa_service.core.steps import RoundStats, StepResult, Usage

__all__ = [
    "TERMINAL_STATUSES",
    "AnswerCluster",
    "BackendInfo",
    "BackendList",
    "Event",
    "FieldError",
    "GraphNode",
    "Job",
    "JobCreate",
    "JobGraph",
    "JobPage",
    "JobParams",
    "JobResult",
    "JobStatus",
    "Problem",
    "ProblemDetails",
    "Progress",
    "StepList",
    "StepRecord",
]

JobStatus = Literal["queued", "in_progress", "cancelling", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Problem(BaseModel):
    """RFC 9457 problem details, the one error shape everywhere."""

    type: str = "about:blank"
    title: str
    status: int = 500
    detail: str | None = None
    step: str | None = None


class JobResult(BaseModel):
    """The outcome object: `rsa reason --json`, the REST job's `result`, the SDK's `job.result`."""

    job_id: str
    status: JobStatus
    answer: str | None
    select: str
    rounds: list[RoundStats]
    usage: Usage
    usage_by_backend: dict[str, Usage] = Field(default_factory=dict, description="Tokens per backend that ran.")
    stopped_reason: str | None = None
    wall_s: float | None = None
    error: Problem | None = None


class Progress(BaseModel):
    round: int = 0
    stages: int
    steps_done: int = 0
    steps_total: int
    completion_tokens: int = 0
    prompt_tokens: int = 0
    waiting_for: str | None = Field(default=None, description="The backend the job waits for while it is down.")


class Event(BaseModel):
    """One entry of a job's event stream; `id` is the Redis stream id (the SSE event id)."""

    id: str
    type: str
    data: dict[str, Any]


class FieldError(BaseModel):
    """One invalid field of a request: its dotted path and what is wrong with it."""

    field: str
    message: str


class ProblemDetails(Problem):
    """RFC 9457 problem details as the API sends them; `errors` lists field problems of a 422."""

    instance: str | None = None
    errors: list[FieldError] | None = None


class JobCreate(BaseModel):
    """The body of POST /v1/jobs; fields mirror the `rsa reason` flags. Each RSA parameter is optional (absent or
    null: the default) and keeps the constraints of its `RSAParams` field (a test holds the two together)."""

    # JSON's Infinity and NaN are no budget: refused rather than kept as a limit that is shown back as null.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    problem: str = Field(min_length=1, description="The problem text.")
    backend: str | None = Field(
        default=None,
        max_length=64,
        description="The name of a backend the operator configured (never a URL or path); default: the default.",
    )
    model: str | None = Field(default=None, max_length=256, description="Model name sent to the backend.")

    @field_validator("*", mode="before")
    @classmethod
    def _no_truth_values_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`true` is not 1: pydantic would take a JSON boolean for a number, and a typo would pass as a setting."""
        annotation = cls.model_fields[info.field_name or ""].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value

    population: int | None = Field(default=None, gt=0, description="N: traces per round.")
    subset: int | None = Field(default=None, gt=0, description="K: tails shown in one aggregation prompt.")
    rounds: int | None = Field(default=None, ge=0, description="T: aggregation rounds (T+1 stages).")
    trace_tokens: int | None = Field(default=None, gt=0, description="β: max new tokens of a non-final generation.")
    tail_tokens: int | None = Field(default=None, gt=0, description="τ: tokens of reasoning carried to the next round.")
    final_tokens: int | None = Field(default=None, gt=0, description="Max new tokens in the final stage.")
    select: SelectMode | None = Field(default=None)
    final_n: int | None = Field(
        default=None,
        gt=0,
        description="With select=aggregate: low-temperature aggregations in the final stage, voted on.",
    )
    tail_source: TailSource | None = Field(default=None)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, gt=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    select_temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    select_top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    select_top_k: int | None = Field(default=None, gt=0)
    max_total_tokens: int | None = Field(default=None, gt=0, description="Stop once this many tokens are spent.")
    max_output_tokens: int | None = Field(
        default=None, gt=0, description="Stop once the generations have produced this many tokens."
    )
    max_wall_s: float | None = Field(default=None, gt=0, description="Stop after this much wall time.")
    round_deadline_s: float | None = Field(default=None, gt=0, description="Per-round deadline for stragglers.")
    straggler_policy: StragglerPolicy | None = Field(default=None)
    quorum: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="With straggler_policy=quorum: share of a round's slots that must succeed for it to proceed.",
    )
    stop_agreement: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Stop early once this share of a round agrees on its answer (0: off)."
    )
    stop_stability: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Stop early once a round's modal answer, held by this share, is the previous round's (0: off).",
    )
    consensus_from_round: int | None = Field(
        default=None,
        ge=0,
        description=(
            "First round whose agreement counts, to stop after it or to short-cut over its traces "
            "(1: only aggregated answers, when independent samples can share one slip)."
        ),
    )
    consensus_shortcut: bool | None = Field(
        default=None,
        description=(
            "An aggregation slot whose K candidates all finished with one answer carries one of them forward "
            "instead of calling the model."
        ),
    )
    initial_backend: str | None = Field(default=None, max_length=64, description="Backend of round 0.")
    aggregation_backend: str | None = Field(
        default=None, max_length=64, description="Backend of the aggregation rounds before the last."
    )
    final_backend: str | None = Field(
        default=None, max_length=64, description="Backend of the last round and of the `aggregate` selection call."
    )


class JobParams(TypedDict, total=False):
    """The RSA parameters of `jobs.create` in the SDK, as keyword arguments an editor can complete."""

    population: int
    subset: int
    rounds: int
    trace_tokens: int
    tail_tokens: int
    final_tokens: int
    select: SelectMode
    final_n: int
    tail_source: TailSource
    temperature: float
    top_p: float
    top_k: int | None
    min_p: float | None
    seed: int
    select_temperature: float
    select_top_p: float
    select_top_k: int | None
    max_total_tokens: int | None
    max_output_tokens: int | None
    max_wall_s: float | None
    round_deadline_s: float | None
    straggler_policy: StragglerPolicy
    quorum: float
    stop_agreement: float | None
    stop_stability: float | None
    consensus_from_round: int
    consensus_shortcut: bool
    initial_backend: str | None
    aggregation_backend: str | None
    final_backend: str | None


class Job(BaseModel):
    """A job resource (AIP-151 style long-running operation; OpenAI background-mode field names)."""

    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    created_at: int = Field(description="Unix seconds.")
    updated_at: int = Field(description="Unix seconds.")
    finished_at: int | None = Field(default=None, description="Unix seconds, once terminal.")
    backend: str = Field(description="The backend name the job runs on.")
    model: str | None = None
    params: RSAParams
    progress: Progress
    result: JobResult | None = None
    error: Problem | None = None
    problem_excerpt: str | None = Field(default=None, description="The problem's opening characters, for listings.")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobPage(BaseModel):
    """One page of GET /v1/jobs; pass `next_cursor` as `after` for the next page."""

    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    next_cursor: str | None = None


class StepRecord(StepResult):
    """A committed step with its position and the exact prompt it was generated from (rebuilt for audit)."""

    position: str = Field(description="`r{round}:s{slot}`.")
    prompt: str | None = Field(description="The user message sent; null for a straggler record.")
    tail_field: Literal["reasoning", "text"] | None = Field(
        default=None, description="Which of `reasoning` and `text` the tail was cut from; null if neither holds it."
    )
    tail_start: int | None = Field(default=None, description="Where the tail begins in that field (a character index).")


class StepList(BaseModel):
    object: Literal["list"] = "list"
    job_id: str
    data: list[StepRecord]


class GraphNode(BaseModel):
    """One committed step as the lineage graph draws it: no texts, just where it sits and what it answered."""

    round: int
    slot: int
    position: str
    status: str
    candidates: list[int] = Field(description="Previous-round slots whose tails this step was shown.")
    answer: str | None
    cluster: int | None = Field(description="Index into `clusters` (math-equivalent answers share one); null: none.")
    finish_reason: str
    completion_tokens: int
    tail_tokens: int


class AnswerCluster(BaseModel):
    """Math-equivalent answers of one job: `label` is the first spelling seen, `answers` every spelling seen."""

    id: int
    label: str
    answers: list[str]
    count: int


class JobGraph(BaseModel):
    """A job's lineage so far. `last_event_id` was read before the steps, so following the event stream after it
    misses nothing (a step may arrive twice: once here, once as an event)."""

    object: Literal["job.graph"] = "job.graph"
    job_id: str
    problem: str
    last_event_id: str | None
    nodes: list[GraphNode]
    clusters: list[AnswerCluster]


class BackendInfo(BaseModel):
    """A backend the operator configured, by name, with the parameter defaults a job on it gets."""

    name: str
    default: bool
    params: dict[str, Any]


class BackendList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BackendInfo]
    limits: dict[str, int]
