"""A response's stream events, derived from its job's event stream in Redis.

Each job event maps to the same response events every time it is read (the snapshots and texts they carry come
from the job's spec, the event itself, and, at the end, the finished job, which no longer changes), so numbering
them in order gives sequence numbers that any API replica reproduces: a client that resumes with
`starting_after=N` gets exactly the events after N, whichever replica it reaches. OpenAI's stream has no event for
a cancelled response: it ends with `response.failed` carrying the response in status `cancelled`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from rsa_service.api.responses.mapping import (
    budget_stopped,
    final_text,
    item_id,
    message_item,
    round_summary,
    to_response,
)
from rsa_service.api.responses.models import ReasoningItem, StoredRequest, SummaryText
from rsa_service.core.steps import RoundStats
from rsa_service.jobs.hub import Subscription
from rsa_service.jobs.models import JobRecord
from rsa_service.jobs.store import JobStore
from rsa_service.wire import Event

TEXT_CHUNK_CHARS = 64  # the answer is already whole when the job ends; deltas keep OpenAI's shape
REASONING_INDEX = 0
MESSAGE_INDEX = 1

Payload = dict[str, Any]


class Translator:
    """Turns a job's events, read from the start, into response events (without sequence numbers)."""

    def __init__(self, store: JobStore, record: JobRecord, request: StoredRequest) -> None:
        self.store = store
        self.record = record
        self.request = request
        self.queued = False
        self.started = False
        self.rounds: dict[int, str] = {}

    async def on(self, event: Event) -> list[Payload]:
        if event.type == "queued" and not self.queued:
            self.queued = True
            return [self._snapshot("response.created", "queued"), self._snapshot("response.queued", "queued")]
        if event.type == "claimed" and not self.started:
            self.started = True
            added = {"type": "response.output_item.added", "output_index": REASONING_INDEX, "item": self._reasoning()}
            return [self._snapshot("response.in_progress", "in_progress"), added]
        if event.type == "round":
            return self._round(RoundStats.model_validate(event.data))
        if event.type in ("completed", "failed", "cancelled"):
            return await self._end()
        return []

    def _snapshot(self, kind: str, status: str) -> Payload:
        response = to_response(self.record, self.request, {}, status=status)  # type: ignore[arg-type]
        return {"type": kind, "response": response.model_dump(mode="json")}

    def _reasoning(self, status: str = "in_progress") -> Payload:
        summary = [SummaryText(text=line) for _, line in sorted(self.rounds.items())]
        item = ReasoningItem(id=item_id("rs", self.record.id), summary=summary, status=status)
        return item.model_dump(mode="json")

    def _round(self, stats: RoundStats) -> list[Payload]:
        """A round's line as one summary part; a round summed again by a worker resuming the job adds nothing."""
        if stats.round in self.rounds or not self.started:
            return []
        params = self.record.spec.params
        line = round_summary(stats, params.population, params.stages)
        index = len(self.rounds)
        self.rounds[stats.round] = line
        where = {"item_id": item_id("rs", self.record.id), "output_index": REASONING_INDEX, "summary_index": index}
        return [
            {"type": "response.reasoning_summary_part.added", **where, "part": {"type": "summary_text", "text": ""}},
            {"type": "response.reasoning_summary_text.delta", **where, "delta": line},
            {"type": "response.reasoning_summary_text.done", **where, "text": line},
            {"type": "response.reasoning_summary_part.done", **where, "part": {"type": "summary_text", "text": line}},
        ]

    async def _end(self) -> list[Payload]:
        record = await self.store.get(self.record.id)
        steps = await self.store.steps(record.id) if record.result else {}
        final = to_response(record, self.request, steps)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(final.status)
        if not self.started:
            return [{"type": kind or "response.failed", "response": final.model_dump(mode="json")}]
        done = "completed" if record.status == "completed" and not budget_stopped(record) else "incomplete"
        events: list[Payload] = [
            {"type": "response.output_item.done", "output_index": REASONING_INDEX, "item": self._reasoning(done)}
        ]
        text = final_text(record, steps)
        if text:
            events += message_events(record, text, done)
        events.append({"type": kind or "response.failed", "response": final.model_dump(mode="json")})
        return events


def message_events(record: JobRecord, text: str, status: str) -> list[Payload]:
    """The answer as an assistant message: the item, its one text part, the text in deltas, then each closed."""
    where = {"item_id": item_id("msg", record.id), "output_index": MESSAGE_INDEX, "content_index": 0}
    opened = message_item(record, "", "in_progress").model_copy(update={"content": []})
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    chunks = [text[i : i + TEXT_CHUNK_CHARS] for i in range(0, len(text), TEXT_CHUNK_CHARS)]
    return [
        {"type": "response.output_item.added", "output_index": MESSAGE_INDEX, "item": opened.model_dump(mode="json")},
        {"type": "response.content_part.added", **where, "part": empty},
        *({"type": "response.output_text.delta", **where, "delta": chunk, "logprobs": []} for chunk in chunks),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": empty | {"text": text}},
        {
            "type": "response.output_item.done",
            "output_index": MESSAGE_INDEX,
            "item": message_item(record, text, status).model_dump(mode="json"),
        },
    ]


async def numbered(
    store: JobStore, record: JobRecord, request: StoredRequest, events: Subscription, after: int
) -> AsyncIterator[Payload]:
    """The response's events with their sequence numbers, those after `after` only, until the job ends. `events`
    must follow the job from its first event: the numbering counts from there."""
    translator = Translator(store, record, request)
    sequence = 0
    async for event in events:
        for payload in await translator.on(event):
            if sequence > after:
                yield {**payload, "sequence_number": sequence}
            sequence += 1


def event_stream(
    store: JobStore, record: JobRecord, request: StoredRequest, events: Subscription, *, after: int, ping_s: float
) -> EventSourceResponse:
    # No SSE `id` lines: the sequence number is in each event, and OpenAI's decoder, which keeps the last id,
    # would turn every keep-alive comment after one into an empty event.
    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for payload in numbered(store, record, request, events, after):
            yield ServerSentEvent(data=json.dumps(payload), event=payload["type"])

    return EventSourceResponse(
        stream(), ping=ping_s, headers={"Cache-Control": "no-store"}, background=BackgroundTask(events.aclose)
    )
