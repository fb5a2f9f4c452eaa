"""The job resource: create (idempotent), read, list, cancel, delete, and the audit view of its steps."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from rsa_service.api.auth import tenant
from rsa_service.api.errors import ApiError, field_error, problem_responses
from rsa_service.api.server_settings import ApiSettings, default_backend
from rsa_service.api.views import json_response, owned_record, progress_many, read_job, step_records, to_job
from rsa_service.backends.base import BackendError, ContextLengthError
from rsa_service.core.conversation import Conversation
from rsa_service.core.params import RSAParams, check_problem
from rsa_service.jobs.errors import NotDeadLettered, TooManyActive
from rsa_service.jobs.idempotency import MAX_KEY_CHARS, KeyInFlight, KeyReused, create_once, fingerprint
from rsa_service.jobs.listing import BadCursor, list_jobs
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.requests import check_fits
from rsa_service.jobs.store import JobStore, Priority, new_job_id
from rsa_service.settings import Settings, params_defaults
from rsa_service.wire import TERMINAL_STATUSES, FieldError, Job, JobCreate, JobPage, JobStatus, StepList

log = logging.getLogger(__name__)

MAX_PAGE = 100
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Tenant = Annotated[str, Depends(tenant)]
COMMON = (401, 404, 422, 503)


# Dependencies are coroutines: a plain function would be run on a worker thread, a hop per request.
async def _store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Store = Annotated[JobStore, Depends(_store)]
Options = Annotated[ApiSettings, Depends(_settings)]


def resolve_backend(shared: Settings, name: str | None, field: str = "backend") -> str:
    """The configured backend a request names (422 naming `field` otherwise); never a URL or a path."""
    configured = shared.backends
    if name is None:
        default = default_backend(shared)
        if default is None:
            raise field_error(field, f"required: name one of the configured backends {sorted(configured)}")
        return default
    if any(mark in name for mark in (":", "/", "\\")):
        raise field_error(field, "must be the name of a configured backend, not a URL or path")
    if name not in configured:
        raise field_error(field, f"unknown backend {name!r}; configured: {sorted(configured)}")
    return name


def build_spec(settings: ApiSettings, request: Request, body: JobCreate, conversation: Conversation = ()) -> JobSpec:
    """Validate a create body against the operator's limits: 422 naming the first offending field.
    `conversation` is the chat the problem came in (see `core.conversation`), kept with the job."""
    limits = settings.limits
    try:
        problem = check_problem(body.problem, limits)
    except ValueError as exc:
        raise field_error("problem", str(exc).removeprefix("problem: ")) from None
    backend = resolve_backend(request.app.state.shared, body.backend)
    overrides = body.model_dump(exclude_none=True, exclude={"problem", "backend", "model"})
    spec = request.app.state.shared.backends.get(backend)
    params = RSAParams.model_validate(params_defaults(spec) | overrides)  # cross-field errors → 422
    for field in ("initial_backend", "aggregation_backend", "final_backend"):
        if (routed := getattr(params, field)) is not None:
            resolve_backend(request.app.state.shared, routed, field)
    try:
        params.check_limits(limits)
    except ValueError as exc:
        raise field_error(str(exc).split(" ", 1)[0], str(exc)) from None
    return JobSpec(
        problem=problem,
        params=params,
        backend=backend,
        model=body.model or request.app.state.shared.model,
        templates=request.app.state.templates,
        conversation=conversation,
    )


async def check_context(request: Request, spec: JobSpec) -> None:
    """The context check (`jobs.requests.check_fits`) before a job is created: 422 naming the prompt size, the
    budget and the context when the largest prompt cannot fit. A backend that cannot be asked now does not
    block the job; the job waits for it like any other."""
    try:
        backend = await request.app.state.backends.get(spec.backend, spec.model)
        await check_fits(backend, spec)
    except ContextLengthError as exc:
        field = str(exc).split(":", 1)[0]
        raise ApiError(
            422,
            str(exc),
            kind="context-length-exceeded",
            errors=[FieldError(field=field, message=str(exc).removeprefix(f"{field}: "))],
        ) from None
    except (BackendError, ValueError) as exc:  # ValueError: the configured spec cannot be opened here
        log.warning("backend %s: context check skipped, the backend did not answer: %s", spec.backend, exc)


async def create_job(
    request: Request,
    store: JobStore,
    owner: str,
    spec: JobSpec,
    job_id: str,
    fp: str,
    *,
    priority: Priority = "interactive",
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write the job durably, refusing (429) a tenant at its limit of unfinished jobs."""
    settings: ApiSettings = request.app.state.settings
    try:
        await store.create(
            spec,
            tenant=owner,
            fingerprint=fp,
            job_id=job_id,
            max_active=settings.max_active_jobs,
            priority=priority,
            extra=extra,
        )
    except TooManyActive:
        raise ApiError(
            429,
            f"this tenant already has {settings.max_active_jobs} unfinished jobs (the limit); retry later",
            kind="too-many-jobs",
            headers={"Retry-After": str(settings.busy_retry_after_s)},
        ) from None
    request.app.state.metrics.jobs_created.labels(request.url.path).inc()


@router.post(
    "",
    status_code=202,
    response_model=Job,
    responses=problem_responses(400, 401, 409, 413, 422, 429, 503),  # 400: a body that is not JSON
    summary="Create a job (honours Idempotency-Key)",
)
async def create(
    request: Request,
    response: Response,
    body: JobCreate,
    owner: Tenant,
    store: Store,
    settings: Options,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=MAX_KEY_CHARS)] = None,
) -> Response:
    spec = build_spec(settings, request, body)
    await check_context(request, spec)
    fp = fingerprint(body.model_dump(mode="json", exclude_none=True))
    job_id = await create_idempotent(request, response, owner, idempotency_key, fp, spec)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return json_response(await read_job(store, job_id, owner), 202, dict(response.headers))


async def create_idempotent(
    request: Request,
    response: Response,
    owner: str,
    idempotency_key: str | None,
    fp: str,
    spec: JobSpec,
    **options: Any,
) -> str:
    """Create the job once per `Idempotency-Key` (a replay answers the first job, marked `Idempotent-Replayed`);
    `options` go to `create_job`. Returns the job id."""
    store: JobStore = request.app.state.store
    if idempotency_key is None:
        job_id = new_job_id()
        await create_job(request, store, owner, spec, job_id, fp, **options)
        return job_id
    try:
        created = await create_once(
            store,
            owner,
            idempotency_key,
            fp,
            lambda job_id: create_job(request, store, owner, spec, job_id, fp, **options),
        )
    except KeyReused as exc:
        raise ApiError(422, str(exc), kind="idempotency-key-reused") from None
    except KeyInFlight as exc:
        raise ApiError(409, str(exc), kind="idempotency-key-in-flight", headers={"Retry-After": "1"}) from None
    if created.outcome == "replayed":
        response.headers["Idempotent-Replayed"] = "true"
    return created.job_id


@router.get("", response_model=JobPage, responses=problem_responses(401, 422, 503), summary="List jobs")
async def list_(
    owner: Tenant,
    store: Store,
    settings: Options,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    after: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")] = None,
    status: Annotated[list[JobStatus] | None, Query(description="Only jobs with these statuses.")] = None,
) -> Response:
    try:
        page = await list_jobs(store, owner, limit=limit, after=after, status=frozenset(status) if status else None)
    except BadCursor as exc:
        raise field_error("after", str(exc).removeprefix("after: ")) from None
    progress = await progress_many(store, page.jobs)
    jobs = [to_job(record, p) for record, p in zip(page.jobs, progress, strict=True)]
    return json_response(JobPage(data=jobs, has_more=page.next_cursor is not None, next_cursor=page.next_cursor))


@router.get("/{job_id}", response_model=Job, responses=problem_responses(*COMMON), summary="Get a job")
async def get(job_id: str, owner: Tenant, store: Store, settings: Options) -> Response:
    job = await read_job(store, job_id, owner)
    return json_response(job, headers=None if job.terminal else {"Retry-After": str(settings.poll_after_s)})


@router.post(
    "/{job_id}/cancel", response_model=Job, responses=problem_responses(*COMMON), summary="Cancel (idempotent)"
)
async def cancel(job_id: str, owner: Tenant, store: Store) -> Job:
    await owned_record(store, job_id, owner)
    await store.cancel(job_id)
    return await read_job(store, job_id, owner)


@router.post(
    "/{job_id}/resume",
    response_model=Job,
    status_code=202,
    responses=problem_responses(*COMMON, 409),
    summary="Run a job that failed for a transient reason again, from its committed steps",
)
async def resume(job_id: str, owner: Tenant, store: Store) -> Job:
    """A job failed because its backend stayed down past the outage budget, or as poison after its attempts, is
    queued again and resumes where it stopped (no committed step is generated twice); 409 for any other job."""
    await owned_record(store, job_id, owner)
    try:
        await store.requeue(job_id)
    except NotDeadLettered as exc:
        raise ApiError(409, str(exc), kind="not-resumable", headers={"x-should-retry": "false"}) from None
    return await read_job(store, job_id, owner)


@router.delete("/{job_id}", responses=problem_responses(401, 404, 409, 422, 503), summary="Delete a finished job")
async def delete(job_id: str, owner: Tenant, store: Store) -> dict[str, object]:
    await delete_finished(store, job_id, owner)
    return {"id": job_id, "object": "job.deleted", "deleted": True}


async def delete_finished(store: JobStore, job_id: str, owner: str) -> None:
    """Delete a job of `owner` that has stopped; 409 while it runs (cancel it first), 404 for anyone else's."""
    record = await owned_record(store, job_id, owner)
    if record.status not in TERMINAL_STATUSES:
        raise ApiError(
            409,
            f"job {job_id} is {record.status}; cancel it and delete it once it has stopped",
            kind="job-not-finished",
            headers={"x-should-retry": "false"},
        )
    await store.delete(job_id)


@router.get(
    "/{job_id}/steps",
    response_model=StepList,
    responses=problem_responses(*COMMON),
    summary="Every committed step with its prompt, trace and tail (audit and replay)",
)
async def steps(job_id: str, owner: Tenant, store: Store) -> StepList:
    record = await owned_record(store, job_id, owner)
    return StepList(job_id=job_id, data=step_records(record.spec, await store.steps(job_id)))
