"""One attempt at one job: claim it, keep the lease alive, run it, and settle how it ended.

Shared by `rsa reason` (one job in this process) and `rsa worker` (jobs from the queue). The lease keeper renews
often enough that a cancel (which moves the fence) stops the runner within about a second: renewal doubles as
the cancellation check, so there is one mechanism, not two.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Literal

import psutil

from rsa_service.backends.base import Backend
from rsa_service.jobs.models import JobResult
from rsa_service.jobs.runner import JobRunner
from rsa_service.jobs.store import JobStore, LeaseLost

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
FENCE_CHECK_INTERVAL_S = 0.5

AttemptEnd = Literal["completed", "failed", "cancelled", "lost", "busy", "terminal", "poisoned", "missing"]


@dataclass(frozen=True)
class AttemptOutcome:
    end: AttemptEnd
    result: JobResult | None = None
    detail: str = ""


def process_owner_id() -> str:
    """host/pid/start-time: unique per process, and checkable for liveness on this host."""
    me = psutil.Process()
    return f"{socket.gethostname()}/{me.pid}/{int(me.create_time() * 1000)}"


def dead_local_owner(owner: str) -> str:
    """`owner` if it names a process of this host that no longer runs (its lease can be taken at once), else ''."""
    host, _, rest = owner.partition("/")
    pid_text, _, started_text = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit() or not started_text.isdigit():
        return ""
    pid = int(pid_text)
    if pid == os.getpid():
        return ""
    try:
        alive = int(psutil.Process(pid).create_time() * 1000) == int(started_text)
    except psutil.NoSuchProcess:
        alive = False
    return "" if alive else owner


async def keep_lease(store: JobStore, job_id: str, fence: int, lease_s: float) -> None:
    """Renew until cancelled; raises LeaseLost the moment the fence moves."""
    interval = min(lease_s / 3, FENCE_CHECK_INTERVAL_S)
    while True:
        await asyncio.sleep(interval)
        await store.renew(job_id, fence, lease_ms=int(lease_s * 1000))


async def run_attempt(
    store: JobStore,
    backend: Backend,
    job_id: str,
    owner: str,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    max_attempts: int = 5,
    concurrency: int | None = None,
    steal_from: str = "",
) -> AttemptOutcome:
    claim = await store.claim(
        job_id, owner, lease_ms=int(lease_s * 1000), max_attempts=max_attempts, steal_from=steal_from
    )
    if claim.outcome != "claimed":
        return AttemptOutcome(claim.outcome, detail=claim.status or claim.owner)
    job = await store.get(job_id)
    runner = JobRunner(store, backend, job, claim.fence, concurrency=concurrency)
    log.info("job %s: claimed by %s (fence %d, attempt %d)", job_id, owner, claim.fence, claim.attempts)
    result: JobResult | None = None
    try:
        async with asyncio.TaskGroup() as group:
            keeper = group.create_task(keep_lease(store, job_id, claim.fence, lease_s))
            result = await runner.run()
            keeper.cancel()
    except* LeaseLost:
        pass  # settled below: `return` may not appear in an except* block
    if result is None:
        return await _settle_lost(store, job_id, runner)
    return AttemptOutcome(result.status, result=result)  # type: ignore[arg-type]


async def _settle_lost(store: JobStore, job_id: str, runner: JobRunner) -> AttemptOutcome:
    """Fenced off: either a cancel (settle it, keeping partial results) or another worker took over."""
    record = await store.get(job_id)
    if record.status == "cancelling":
        result = runner.result()
        await store.settle_cancelled(job_id, result)
        return AttemptOutcome("cancelled", result=result.model_copy(update={"status": "cancelled"}))
    if record.status == "cancelled":
        return AttemptOutcome("cancelled", result=record.result)
    log.warning("job %s: lease lost to %s; stopping this attempt", job_id, record.owner or "another worker")
    return AttemptOutcome("lost", detail=record.owner)
