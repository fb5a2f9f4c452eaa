"""Job records as API resources: the `Job` view, its progress, and the audit view of its steps."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Literal

from fastapi import Response
from pydantic import BaseModel

from rsa_service.core.steps import StepResult, step_key
from rsa_service.jobs.errors import JobNotFound
from rsa_service.jobs.models import JobRecord, JobSpec
from rsa_service.jobs.store import JobStore
from rsa_service.wire import Job, Progress, StepRecord

# The progress commit.lua and emit.lua keep in the job hash, and the fields a job resource shows besides it.
PROGRESS_FIELDS = (
    "progress_steps",
    "progress_round",
    "progress_completion_tokens",
    "progress_prompt_tokens",
    "progress_waiting",
)
VIEW_FIELDS = ("status", "tenant", "spec", "created_ms", "updated_ms", "finished_ms", "result", "error", "v")
EXCERPT_CHARS = 200


def steps_total(spec: JobSpec) -> int:
    return spec.params.total_generations


def progress_from_events(spec: JobSpec, entries: Sequence[tuple[str, dict[str, str]]]) -> Progress:
    """Progress as the job's event stream tells it: steps as committed, prompt tokens once a round is summed."""
    progress = Progress(stages=spec.params.stages, steps_total=steps_total(spec))
    for _, fields in entries:
        kind = fields.get("type")
        if kind not in ("step", "round", "waiting", "backend_back"):
            continue
        data = json.loads(fields.get("data") or "{}")
        if kind in ("waiting", "backend_back"):
            progress.waiting_for = data.get("backend") if kind == "waiting" else None
        elif kind == "step":
            progress.steps_done += 1
            progress.completion_tokens += int(data.get("completion_tokens") or 0)
            progress.round = max(progress.round, int(data.get("round") or 0))
        else:
            progress.prompt_tokens += int((data.get("tokens") or {}).get("prompt_tokens") or 0)
    return progress


def kept_progress(spec: JobSpec, fields: dict[str, str], committed: int) -> Progress | None:
    """The progress kept in the job hash, the same as its events tell; None unless it counts every committed step
    (a job begun before it was kept, a worker of an older release committing since, or a read between the two).
    A job with no step committed has none kept and needs none."""
    if int(fields.get("progress_steps", 0)) != committed:
        return None
    return Progress(
        round=int(fields.get("progress_round", 0)),
        stages=spec.params.stages,
        steps_done=committed,
        steps_total=steps_total(spec),
        completion_tokens=int(fields.get("progress_completion_tokens", 0)),
        prompt_tokens=int(fields.get("progress_prompt_tokens", 0)),
        waiting_for=fields.get("progress_waiting") or None,
    )


async def _completed(store: JobStore, records: Sequence[JobRecord], kept: list[Progress | None]) -> list[Progress]:
    """`kept`, each None filled in from its job's events (all of those read in one more round trip)."""
    folded = [record for record, progress in zip(records, kept, strict=True) if progress is None]
    streams: Iterator[list[tuple[str, dict[str, str]]]] = iter(())
    if folded:
        streams = iter(await store.event_entries([record.id for record in folded]))
    return [
        progress if progress is not None else progress_from_events(record.spec, next(streams))
        for record, progress in zip(records, kept, strict=True)
    ]


async def progress_many(store: JobStore, records: Sequence[JobRecord]) -> list[Progress]:
    """Progress of several jobs: one round trip for the kept progress, one more only for jobs without it."""
    rows = await store.fields([record.id for record in records], PROGRESS_FIELDS)
    kept = [kept_progress(r.spec, fields, committed) for r, (fields, committed) in zip(records, rows, strict=True)]
    return await _completed(store, records, kept)


async def read_job(store: JobStore, job_id: str, tenant: str) -> Job:
    """The job resource if it belongs to `tenant` (another tenant's job is indistinguishable from a missing one):
    the status read, so one round trip for the fields it shows and nothing else, unless it must fold events."""
    [(fields, committed)] = await store.fields([job_id], VIEW_FIELDS + PROGRESS_FIELDS)
    if "status" not in fields or fields.get("tenant") != tenant:
        raise JobNotFound(job_id)
    record = JobRecord.from_hash(job_id, fields)  # the shown fields only: no lease bookkeeping
    [progress] = await _completed(store, [record], [kept_progress(record.spec, fields, committed)])
    return to_job(record, progress)


def json_response(model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A model serialized once by pydantic; returning a Response skips FastAPI's second validation pass."""
    return Response(model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json")


def to_job(record: JobRecord, progress: Progress) -> Job:
    return Job(
        id=record.id,
        status=record.status,
        created_at=record.created_ms // 1000,
        updated_at=record.updated_ms // 1000,
        finished_at=record.finished_ms // 1000 if record.finished_ms else None,
        backend=record.spec.backend,
        model=record.spec.model,
        params=record.spec.params,
        progress=progress,
        result=record.result,
        error=record.error,
        problem_excerpt=record.spec.problem[:EXCERPT_CHARS],
    )


async def owned_record(store: JobStore, job_id: str, tenant: str) -> JobRecord:
    """The job if it belongs to `tenant`; another tenant's job is indistinguishable from a missing one."""
    record = await store.get(job_id)
    if record.tenant != tenant:
        raise JobNotFound(job_id)
    return record


def rebuilt_prompt(spec: JobSpec, steps: dict[str, StepResult], step: StepResult) -> str | None:
    """The user message `step` was generated from, rebuilt as the runner built it: the problem in round 0,
    else the templates over the tails of the candidates it recorded, from the previous round. None for a
    straggler record or a consensus short-cut, which never sent a prompt."""
    if step.shortcut_from is not None:
        return None
    if step.round == 0:
        return spec.problem
    if not step.candidates:
        return None
    tails = [steps[step_key(step.round - 1, candidate)].tail for candidate in step.candidates]
    return spec.templates.render(spec.problem, tails)


def tail_position(step: StepResult) -> tuple[Literal["reasoning", "text"] | None, int | None]:
    """Which field the tail was cut from and where it begins there: the field that ends with it (a tail is a
    suffix of its source), else the last place it occurs."""
    if not step.tail:
        return None, None
    fields: tuple[tuple[Literal["reasoning", "text"], str], ...] = (("reasoning", step.reasoning), ("text", step.text))
    for name, value in fields:
        if value.endswith(step.tail):
            return name, len(value) - len(step.tail)
    for name, value in fields:
        if (found := value.rfind(step.tail)) >= 0:
            return name, found
    return None, None


def step_record(spec: JobSpec, steps: dict[str, StepResult], step: StepResult) -> StepRecord:
    field, start = tail_position(step)
    return StepRecord(
        **step.model_dump(),
        position=step.key,
        prompt=rebuilt_prompt(spec, steps, step),
        tail_field=field,
        tail_start=start,
    )


def step_records(spec: JobSpec, steps: dict[str, StepResult]) -> list[StepRecord]:
    return [step_record(spec, steps, step) for step in sorted(steps.values(), key=lambda s: (s.round, s.slot))]
