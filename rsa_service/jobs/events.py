"""Following a job's event stream: the one loop behind `rsa reason`'s progress, `rsa jobs events` and SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator

from rsa_service.jobs.store import JobStore
from rsa_service.wire import TERMINAL_STATUSES, Event

DEFAULT_BLOCK_MS = 1000


async def follow(
    store: JobStore, job_id: str, after: str = "0-0", block_ms: int = DEFAULT_BLOCK_MS
) -> AsyncIterator[Event]:
    """Events after the stream id `after`, waiting in Redis for new ones, until the terminal one."""
    while True:
        for event in await store.events(job_id, after=after, block_ms=block_ms):
            after = event.id
            yield event
            if event.type in TERMINAL_STATUSES:
                return
