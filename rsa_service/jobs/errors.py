"""The job store's errors, and the boundary that turns redis-py's into them.

    StoreError
    ├── JobNotFound        no such job (or it expired after finishing)
    ├── LeaseLost          the caller's fence is stale: the job was cancelled, released or taken over
    ├── NotDeadLettered    requeue refused: the job did not fail for a transient reason (poison, backend outage)
    ├── TooManyActive      create refused: the tenant is at its limit of unfinished jobs
    └── StoreUnavailable   Redis did not answer or refused the command: retry later, nothing committed is lost
        └── NotReplicated  a commit reached the primary but not RSA_REDIS_MIN_REPLICAS replicas in time

(`models.NewerFormat`, a ValueError, says a job was written by a newer release than this one.)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound=type)


class StoreError(Exception):
    """Base of the store's errors."""


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class LeaseLost(StoreError):
    def __init__(self, job_id: str, fence: int) -> None:
        super().__init__(f"job {job_id}: fence {fence} is stale (cancelled, released or taken over)")
        self.job_id = job_id
        self.fence = fence


class NotDeadLettered(StoreError):
    def __init__(self, job_id: str, status: str, title: str) -> None:
        why = f"{status} ({title})" if title else status
        super().__init__(
            f"job {job_id} is {why}: only jobs that failed for a transient reason (as poison after their attempts, "
            "or their backend down past the outage budget) can be resumed"
        )
        self.job_id = job_id
        self.status = status


class TooManyActive(StoreError):
    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant {tenant} already has {limit} unfinished jobs (the limit)")
        self.tenant = tenant
        self.limit = limit


class StoreUnavailable(StoreError):
    """Redis could not be reached, timed out, or refused the command (loading, read-only replica, out of memory);
    the message names redis-py's error."""


class NotReplicated(StoreUnavailable):
    """Treated as a Redis outage by the worker (the attempt stops and the job resumes after its lease): the step is
    on the primary, but a failover now could lose it, so the run does not build on it yet."""

    def __init__(self, job_id: str, acknowledged: int, wanted: int) -> None:
        super().__init__(f"job {job_id}: a commit reached {acknowledged} of {wanted} replicas in time")
        self.job_id = job_id


def translate_redis_errors(function: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """`function`, with every redis-py error it raises turned into StoreUnavailable."""

    @functools.wraps(function)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await function(*args, **kwargs)
        except redis.RedisError as exc:
            # Not chained: the redis error's tracebacks hold the failed connection, whose socket would then outlive
            # the request until a garbage collection.
            raise StoreUnavailable(f"the job store is unavailable ({type(exc).__name__}: {exc})") from None

    return translated


def at_store_boundary(cls: C) -> C:
    """Translate redis-py errors in every public coroutine method of `cls`, methods added later included."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, translate_redis_errors(member))
    return cls
