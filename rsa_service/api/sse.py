"""GET /v1/jobs/{id}/events: the job's Redis event stream as server-sent events.

Any API replica can serve any job (the stream lives in Redis). Each SSE `id` is the Redis stream id, so a
client that reconnects with `Last-Event-ID` continues exactly after the last event it saw: nothing lost,
nothing repeated. The stream ends after the job's terminal event; comments keep idle connections alive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from rsa_service.api.auth import tenant
from rsa_service.api.errors import field_error, problem_responses
from rsa_service.api.views import owned_record
from rsa_service.jobs.events import follow
from rsa_service.jobs.store import JobStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _valid_stream_id(value: str) -> bool:
    left, sep, right = value.partition("-")
    return bool(sep) and left.isdigit() and right.isdigit()


@router.get(
    "/{job_id}/events",
    responses={
        200: {
            "description": "Server-sent events: `id` (the Redis stream id), `event` (the type), `data` (JSON)",
            "content": {"text/event-stream": {"schema": {}}},
        },
        **problem_responses(401, 404, 422, 503),
    },
    response_class=EventSourceResponse,
    summary="Follow a job's events (resumable with Last-Event-ID)",
)
async def events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64, description="Start after this event id.")] = None,
) -> EventSourceResponse:
    owner = await tenant(request)
    store: JobStore = request.app.state.store
    await owned_record(store, job_id, owner)
    start = last_event_id or after or "0-0"
    if not _valid_stream_id(start):
        raise field_error("Last-Event-ID" if last_event_id else "after", f"{start!r} is not an event id")
    settings = request.app.state.settings

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in follow(store, job_id, start, settings.sse_block_ms):
            yield ServerSentEvent(data=json.dumps(event.data), event=event.type, id=event.id)

    return EventSourceResponse(stream(), ping=settings.sse_ping_s, headers={"Cache-Control": "no-store"})
