"""/v1/responses: OpenAI's Responses API over the durable jobs, with the idempotency, tenancy, limits and problem
details of /v1/jobs. `background: true` answers at once, `stream: true` streams, otherwise the call waits for the job.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel

from rsa_service.api.admission import admitted
from rsa_service.api.auth import tenant
from rsa_service.api.errors import field_error, problem_responses
from rsa_service.api.responses.mapping import (
    backend_of,
    conversation_of,
    default_request,
    job_body,
    job_id_of,
    messages_of,
    response_id,
    stored_request,
    to_response,
)
from rsa_service.api.responses.models import (
    DeletedResponse,
    InputItemPage,
    InputMessage,
    ListedItem,
    ListedPart,
    ResponseCreate,
    ResponseObject,
    StoredRequest,
)
from rsa_service.api.responses.streaming import event_stream
from rsa_service.api.routes_jobs import build_spec, check_context, create_idempotent, delete_finished
from rsa_service.api.server_settings import ApiSettings
from rsa_service.api.views import VIEW_FIELDS, json_response
from rsa_service.core.conversation import problem_of
from rsa_service.jobs.errors import JobNotFound
from rsa_service.jobs.hub import EventHub, Subscription
from rsa_service.jobs.idempotency import MAX_KEY_CHARS, fingerprint
from rsa_service.jobs.models import JobRecord
from rsa_service.jobs.store import JobStore

RESPONSE_FIELD = "response"  # the job hash field that keeps the request as the response shows it
MAX_PAGE = 100
router = APIRouter(prefix="/v1/responses", tags=["responses"])
Tenant = Annotated[str, Depends(tenant)]
Admitted = Annotated[str, Depends(admitted)]  # the tenant, holding one of the gate's slots for plain requests
COMMON = (401, 404, 422, 503)


def _documented(model: type[BaseModel], streams: bool) -> dict[int | str, dict[str, object]]:
    content: dict[str, object] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    description = "The response; with `stream: true`, server-sent events carrying `sequence_number`"
    return {200: {"model": model, "description": description if streams else "The response", "content": content}}


async def _read(store: JobStore, resource_id: str, owner: str) -> tuple[JobRecord, StoredRequest]:
    """The job behind a response of `owner` and the request it keeps; another tenant's is a missing one (404)."""
    job_id = job_id_of(resource_id)
    [(fields, _)] = await store.fields([job_id], (*VIEW_FIELDS, RESPONSE_FIELD))
    if "status" not in fields or fields.get("tenant") != owner:
        raise JobNotFound(resource_id)
    record = JobRecord.from_hash(job_id, fields)
    kept = fields.get(RESPONSE_FIELD)
    return record, StoredRequest.model_validate_json(kept) if kept else default_request(record)


async def _render(store: JobStore, record: JobRecord, request: StoredRequest) -> ResponseObject:
    steps = await store.steps(record.id) if record.terminal and record.result else {}
    return to_response(record, request, steps)


async def _follow(request: Request, record: JobRecord) -> Subscription:
    """The job's events from its first, through the process's hub (429 at the stream caps)."""
    hub: EventHub = request.app.state.hub
    return await hub.subscribe(record.id, tenant=record.tenant)


async def _stream(request: Request, record: JobRecord, kept: StoredRequest, *, after: int) -> Response:
    settings: ApiSettings = request.app.state.settings
    events = await _follow(request, record)
    return event_stream(request.app.state.store, record, kept, events, after=after, ping_s=settings.sse_ping_s)


def _gate(request: Request) -> asyncio.Semaphore:
    gate: asyncio.Semaphore = request.app.state.gate
    return gate


def _check_window(body: ResponseCreate) -> None:
    if body.completion_window == "soonest":
        return
    if not body.background or body.stream:
        raise field_error(
            "background_options.completion_window",
            f"{body.completion_window!r} needs `background: true` and no `stream` (use `soonest` otherwise)",
        )


@router.post(
    "",
    response_model=ResponseObject,
    responses={**_documented(ResponseObject, streams=True), **problem_responses(400, 401, 409, 413, 422, 429, 503)},
    summary="Create a response: a job (honours Idempotency-Key)",
)
async def create(
    request: Request,
    response: Response,
    body: ResponseCreate,
    owner: Tenant,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_KEY_CHARS)] = None,
) -> Response:
    store: JobStore = request.app.state.store
    async with _gate(request):  # the creation is a plain request; waiting for the job or streaming it is not
        job_id = await _create_job(request, response, body, owner, idempotency_key)
        record, kept = await _read(store, response_id(job_id), owner)
    if body.background and not body.stream and record.status == "in_progress":
        # The answer describes the job as created; a worker may have claimed it between the write and this read.
        record = record.model_copy(update={"status": "queued"})
    if body.stream:
        return await _stream(request, record, kept, after=-1)
    if not body.background:
        events = await _follow(request, record)
        try:
            async for _ in events:
                pass
        finally:
            events.close()
        record, kept = await _read(store, response_id(job_id), owner)
    return json_response(await _render(store, record, kept), headers=dict(response.headers))


async def _create_job(
    request: Request, response: Response, body: ResponseCreate, owner: str, idempotency_key: str | None
) -> str:
    settings: ApiSettings = request.app.state.settings
    _check_window(body)
    messages = messages_of(body)
    backend = backend_of(body.model, request.app.state.shared.backends, settings.model_aliases)
    conversation = conversation_of(body, messages)
    spec = build_spec(settings, request, job_body(body, backend, problem_of(conversation)), conversation)
    await check_context(request, spec)
    return await create_idempotent(
        request,
        response,
        owner,
        idempotency_key,
        fingerprint(body.model_dump(mode="json", exclude_none=True)),
        spec,
        priority="interactive" if body.completion_window == "soonest" else "background",
        extra={RESPONSE_FIELD: stored_request(body, messages).model_dump_json()},
    )


@router.get(
    "/{response_id}",
    response_model=ResponseObject,
    responses={**_documented(ResponseObject, streams=True), **problem_responses(*COMMON)},
    summary="Get a response; `stream=true` follows it, resuming after `starting_after`",
)
async def retrieve(
    request: Request,
    response_id: str,
    owner: Tenant,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, description="Stream events after this sequence number.")] = None,
    include: Annotated[list[str] | None, Query(description="Accepted; responses carry no optional parts.")] = None,
) -> Response:
    store: JobStore = request.app.state.store
    if stream:
        record, kept = await _read(store, response_id, owner)
        return await _stream(request, record, kept, after=-1 if starting_after is None else starting_after)
    if starting_after is not None:
        raise field_error("starting_after", "only with `stream=true`")
    async with _gate(request):
        return json_response(await _render(store, *await _read(store, response_id, owner)))


@router.post(
    "/{response_id}/cancel",
    response_model=ResponseObject,
    responses=problem_responses(*COMMON),
    summary="Cancel a response (idempotent): its job stops and keeps its committed steps",
)
async def cancel(request: Request, response_id: str, owner: Admitted) -> Response:
    store: JobStore = request.app.state.store
    record, kept = await _read(store, response_id, owner)
    await store.cancel(record.id)
    record, kept = await _read(store, response_id, owner)
    return json_response(await _render(store, record, kept))


@router.delete(
    "/{response_id}",
    response_model=DeletedResponse,
    responses=problem_responses(401, 404, 409, 422, 503),
    summary="Delete a finished response and its job",
)
async def delete(request: Request, response_id: str, owner: Admitted) -> Response:
    store: JobStore = request.app.state.store
    await _read(store, response_id, owner)
    await delete_finished(store, job_id_of(response_id), owner)
    return json_response(DeletedResponse(id=response_id))


@router.get(
    "/{response_id}/input_items",
    response_model=InputItemPage,
    responses=problem_responses(*COMMON),
    summary="The input messages of a response",
)
async def input_items(
    request: Request,
    response_id: str,
    owner: Admitted,
    after: Annotated[str | None, Query(max_length=128, description="An item id: list the items after it.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    order: Literal["asc", "desc"] = "desc",
    include: Annotated[list[str] | None, Query(description="Accepted; items carry no optional parts.")] = None,
) -> Response:
    _, kept = await _read(request.app.state.store, response_id, owner)
    items = [_listed(response_id, index, message) for index, message in enumerate(kept.input)]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise field_error("after", f"no input item {after!r} in this response")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    first, last = (page[0].id, page[-1].id) if page else (None, None)
    return json_response(InputItemPage(data=page, first_id=first, last_id=last, has_more=len(items) > limit))


def _listed(resource_id: str, index: int, message: InputMessage) -> ListedItem:
    said = message.role == "assistant"
    part = ListedPart(type="output_text", text=message.text, annotations=[]) if said else None
    parts = [part or ListedPart(type="input_text", text=message.text)]
    return ListedItem(id=f"msg_{resource_id.removeprefix('resp_')}_{index}", role=message.role, content=parts)
