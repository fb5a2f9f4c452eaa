"""Open the job store: the configured Redis, or the embedded one when none is configured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from rsa_service.config import Settings
from rsa_service.jobs.embedded import EmbeddedRedis
from rsa_service.jobs.store import JobStore


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[JobStore]:
    embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir, appendfsync=settings.appendfsync)
    url = settings.redis_url or await asyncio.to_thread(embedded.start)  # type: ignore[union-attr]
    client = Redis.from_url(url, decode_responses=True, health_check_interval=30)
    try:
        await client.ping()
        yield JobStore(client, namespace=settings.namespace, retention_s=settings.retention_s)
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
