"""Job records as stored in Redis: the spec a worker runs and the parsed job hash (the wire models are in
`rsa_service.wire`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rsa_service.core.conversation import Conversation
from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.keys import STORE_FORMAT_VERSION, UNVERSIONED_FORMAT
from rsa_service.wire import TERMINAL_STATUSES, JobResult, JobStatus, Problem


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
            status=fields["status"],
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
