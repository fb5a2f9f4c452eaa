"""Open the job store: the configured Redis, or the embedded one when none is configured.

The client retries a command that hit a dropped connection (a restarted Redis, a failover) with jittered
exponential backoff before the error reaches the caller. Every transition is safe to send twice: commit is
set-if-absent, finish recognises its own earlier write, renew and cancel are idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from rsa_service.config import Settings
from rsa_service.jobs.embedded import EmbeddedRedis
from rsa_service.jobs.store import JobStore

REDIS_RETRIES = 8  # with the backoff below: about 5 s of outage hidden from callers
REDIS_BACKOFF_BASE_S = 0.05
REDIS_BACKOFF_CAP_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 10.0  # longer than any blocking read the workers issue
HEALTH_CHECK_INTERVAL_S = 30
# Connections per process; past this, a command waits (up to the socket timeout) for one to come free.
REDIS_MAX_CONNECTIONS = 128


def redis_client(url: str, max_connections: int = REDIS_MAX_CONNECTIONS) -> Redis:
    """A client whose pool makes a command wait for a free connection rather than fail.

    redis-py's default pool raises "Too many connections" past 100 connections in use, which a worker running
    more than ~90 generations at once reached on its commits: the error looked like a Redis outage, so the attempt
    stopped and its job waited out the lease. A full pool is back-pressure, not an outage.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=REDIS_SOCKET_TIMEOUT_S,
        decode_responses=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        retry=Retry(ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP_S, base=REDIS_BACKOFF_BASE_S), REDIS_RETRIES),
    )
    return Redis.from_pool(pool)


def reader_client(redis: Redis, max_connections: int) -> Redis:
    """A client to the same server as `redis` with a pool of its own, for blocking reads (event streams) that must
    never hold the connections commands need."""
    pool = redis.connection_pool
    own = BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=max_connections,
        timeout=REDIS_SOCKET_TIMEOUT_S,
        **pool.connection_kwargs,
    )
    return Redis.from_pool(own)


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
    url = settings.redis_url or await asyncio.to_thread(embedded.start)  # type: ignore[union-attr]
    client = redis_client(url)
    try:
        await client.ping()
        yield JobStore(client, namespace=settings.namespace, retention_s=settings.retention_s)
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
