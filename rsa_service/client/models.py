"""The wire models of the REST API: what the server sends and the SDK parses, defined once for both.

`JobResult`, `Problem`, `Progress` and `Event` are the job store's own models, so `rsa reason --json`, a REST job's
`result` and the SDK's `job.result` are one type.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from rsa_service.core.params import RSAParams
from rsa_service.core.steps import StepResult
from rsa_service.jobs.models import Event, JobResult, JobStatus, Problem, Progress

__all__ = [
    "Event",
    "FieldError",
    "Job",
    "JobCreate",
    "JobPage",
    "JobResult",
    "JobStatus",
    "Problem",
    "ProblemDetails",
    "Progress",
    "StepList",
    "StepRecord",
]


class FieldError(BaseModel):
    """One invalid field of a request: its dotted path and what is wrong with it."""

    field: str
    message: str


class ProblemDetails(Problem):
    """RFC 9457 problem details as the API sends them; `errors` lists field problems of a 422."""

    instance: str | None = None
    errors: list[FieldError] | None = None


class _JobCreateBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    problem: str = Field(min_length=1, description="The problem text.")
    backend: str | None = Field(
        default=None,
        max_length=64,
        description="The name of a backend the operator configured (never a URL or path); default: the default.",
    )
    model: str | None = Field(default=None, max_length=256, description="Model name sent to the backend.")


def _optional(name: str) -> tuple[Any, Any]:
    """The RSAParams field `name`, constraints kept, but optional: None means "the default"."""
    info = RSAParams.model_fields[name]
    constrained = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
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

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


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


class StepList(BaseModel):
    object: Literal["list"] = "list"
    job_id: str
    data: list[StepRecord]
