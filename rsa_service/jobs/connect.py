"""Open the job store: the configured Redis, or the embedded one when none is configured.

The client retries a command that hit a dropped connection (a restarted Redis, a failover) with jittered
exponential backoff before the error reaches the caller. Every transition is safe to send twice: commit is
set-if-absent, finish recognises its own earlier write, renew and cancel are idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rsa_service.jobs.embedded import EmbeddedRedis
from rsa_service.jobs.redis_urls import redis_client
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings


def raise_if_cancelled() -> None:
    """Raise the cancellation a library swallowed. Loops that retry Redis errors call it on every pass.

    redis-py can absorb a `Task.cancel()` that lands mid-command: it retries, or reports a connection error that such
    a loop retries. The task then runs on with `cancelling()` set. That happened to a lease keeper. It outlived its
    attempt, the attempt's TaskGroup never exited, and the keeper kept renewing the job's lease for good.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[JobStore]:
    embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir, appendfsync=settings.appendfsync)
    url = settings.redis_url if embedded is None else await asyncio.to_thread(embedded.start)
    assert url is not None
    client = redis_client(url)
    try:
        # Before any concurrent use: redis-py's cluster client, first used by many tasks at once, maps the slots in
        # each of them and closes connections the others are writing to.
        await client.ping()
        yield JobStore(
            client,
            namespace=settings.namespace,
            retention_s=settings.retention_s,
            min_replicas=settings.redis_min_replicas,
            replica_timeout_ms=settings.redis_replica_timeout_ms,
        )
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
