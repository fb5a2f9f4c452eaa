"""GET /v1/jobs/{id}/events: the job's Redis event stream as server-sent events, through the process's hub.

Any API replica can serve any job (the stream lives in Redis). Each SSE `id` is the Redis stream id, so a
client that reconnects with `Last-Event-ID` continues exactly after the last event it saw: nothing lost,
nothing repeated. The stream ends after the job's terminal event (`completed`, `failed` or `cancelled`), which
carries a day-long `retry`: clients close on it, and an `EventSource` left open waits that long before it
reconnects. A reconnect at or after the terminal event gets that event again at once, never an idle stream.
Streams are capped per tenant and per process (429 with `Retry-After`); comments keep idle connections alive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from rsa_service.api.auth import tenant
from rsa_service.api.errors import ApiError, problem_responses
from rsa_service.api.views import owned_record
from rsa_service.jobs.hub import EventHub, EventIdOutOfRange, Subscription
from rsa_service.wire import TERMINAL_STATUSES, FieldError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

FINISHED_RETRY_MS = 86_400_000  # the terminal event's reconnection delay: a finished job's stream has no more


def _bad_resume(field: str, exc: EventIdOutOfRange) -> ApiError:
    errors = [FieldError(field=field, message=str(exc))]
    return ApiError(400, f"{field}: {exc}", kind="bad-event-id", errors=errors)


async def _sse(subscription: Subscription) -> AsyncIterator[ServerSentEvent]:
    async for event in subscription:
        retry = FINISHED_RETRY_MS if event.type in TERMINAL_STATUSES else None
        yield ServerSentEvent(data=json.dumps(event.data), event=event.type, id=event.id, retry=retry)


@router.get(
    "/{job_id}/events",
    responses={
        200: {
            "description": "Server-sent events: `id` (the Redis stream id), `event` (the type), `data` (JSON). "
            "The terminal event is the last; resuming at or after it replays it at once.",
            "content": {"text/event-stream": {"schema": {}}},
        },
        **problem_responses(400, 401, 404, 422, 429, 503),  # 422: an id over its length limit
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
    await owned_record(request.app.state.store, job_id, owner)
    hub: EventHub = request.app.state.hub
    try:
        subscription = await hub.subscribe(job_id, last_event_id or after or "0-0", tenant=owner)
    except EventIdOutOfRange as exc:
        raise _bad_resume("Last-Event-ID" if last_event_id else "after", exc) from exc
    return EventSourceResponse(
        _sse(subscription),
        ping=request.app.state.settings.sse_ping_s,
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(subscription.aclose),
    )
