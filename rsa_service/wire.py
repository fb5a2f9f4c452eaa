"""The wire models of the REST API: what the server sends, the SDK parses and the job store keeps, defined once.

The API, the SDK and the job layer all import this module and it imports none of them, so `rsa reason --json`, a
REST job's `result` and the SDK's `job.result` are one type without the SDK pulling in the server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from rsa_service.core.params import RSAParams
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


class _JobCreateBase(BaseModel):
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


def _optional(name: str) -> tuple[Any, Any]:
    """The RSAParams field `name`, constraints kept, but optional: None means "the default"."""
    info = RSAParams.model_fields[name]
    constrained: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return constrained | None, Field(default=None, description=info.description)


# The flat body of POST /v1/jobs: the CLI's job flags, each RSAParams field optional (absent: the default).
JobCreate: type[_JobCreateBase] = create_model(  # type: ignore[call-overload]
    "JobCreate",
    __base__=_JobCreateBase,
    __doc__="The body of POST /v1/jobs; fields mirror the `rsa reason` flags.",
    **{name: _optional(name) for name in RSAParams.model_fields},
)


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
