"""Job records as stored in Redis and as shown to users (CLI `--json`, REST, SDK)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rsa_service.core.conversation import Conversation
from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.core.steps import RoundStats, Usage
from rsa_service.jobs.keys import STORE_FORMAT_VERSION, UNVERSIONED_FORMAT

JobStatus = Literal["queued", "in_progress", "cancelling", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class NewerFormat(ValueError):
    """The job was written by a newer release (its `v` is above this code's `STORE_FORMAT_VERSION`): this code
    must neither parse nor run it. A newer worker will; the job stays where it is."""

    def __init__(self, job_id: str, version: int) -> None:
        super().__init__(
            f"job {job_id} is in stored format {version}; this release reads up to {STORE_FORMAT_VERSION} "
            "(upgrade this process)"
        )
        self.job_id = job_id
        self.version = version


class JobSpec(BaseModel):
    """Everything a worker needs to run a job, frozen at creation (templates included, so edits to a prompt
    directory never change the prompts of a job already under way)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    problem: str
    params: RSAParams
    backend: str = Field(description="A backend spec or an operator-configured backend name.")
    model: str | None = None
    templates: PromptTemplates
    conversation: Conversation = Field(
        default=(),
        description="The chat the problem came in (its last user message), sent whole in round 0; empty: the "
        "problem alone.",
    )


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


class JobRecord(BaseModel):
    """The job hash, parsed."""

    id: str
    status: JobStatus
    spec: JobSpec
    tenant: str
    fence: int = 0
    attempts: int = 0
    owner: str = ""
    lease_until_ms: int = 0
    created_ms: int
    updated_ms: int
    started_ms: int | None = None
    finished_ms: int | None = None
    result: JobResult | None = None
    error: Problem | None = None
    fingerprint: str = ""
    version: int = STORE_FORMAT_VERSION

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_hash(cls, job_id: str, fields: dict[str, str]) -> JobRecord:
        """Parse any stored format up to this code's (see `keys.STORE_FORMAT_VERSION`): absent fields default.
        A newer format raises NewerFormat before anything else is parsed (its spec may not even validate here)."""
        version = int(fields.get("v") or UNVERSIONED_FORMAT)
        if version > STORE_FORMAT_VERSION:
            raise NewerFormat(job_id, version)

        def number(name: str) -> int:
            return int(fields.get(name) or 0)

        return cls(
            id=job_id,
            status=fields["status"],  # type: ignore[arg-type]
            spec=JobSpec.model_validate_json(fields["spec"]),
            tenant=fields.get("tenant", ""),
            fence=number("fence"),
            attempts=number("attempts"),
            owner=fields.get("owner", ""),
            lease_until_ms=number("lease_until_ms"),
            created_ms=number("created_ms"),
            updated_ms=number("updated_ms"),
            started_ms=number("started_ms") or None,
            finished_ms=number("finished_ms") or None,
            result=JobResult.model_validate_json(fields["result"]) if fields.get("result") else None,
            error=Problem.model_validate_json(fields["error"]) if fields.get("error") else None,
            fingerprint=fields.get("fingerprint", ""),
            version=version,
        )


class Event(BaseModel):
    """One entry of a job's event stream; `id` is the Redis stream id (the SSE event id)."""

    id: str
    type: str
    data: dict[str, Any]

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> Event:
        return cls(id=entry_id, type=fields.get("type", "message"), data=json.loads(fields.get("data") or "{}"))
