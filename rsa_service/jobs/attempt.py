"""One attempt at one job: claim it, keep the lease alive, run it, and settle how it ended.

Shared by `rsa reason` (one job in this process) and `rsa worker` (jobs from the queue). The lease keeper renews
often enough that a cancel (which moves the fence) stops the runner within about a second: renewal doubles as
the cancellation check, so there is one mechanism, not two. An attempt that is itself cancelled (a drain ran
out of grace, Ctrl-C) hands its lease back so the job continues elsewhere at once.
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
from rsa_service.jobs.connect import raise_if_cancelled
from rsa_service.jobs.errors import LeaseLost, StoreUnavailable
from rsa_service.jobs.execution import JobRunner
from rsa_service.jobs.gate import Gate
from rsa_service.jobs.lease import Lease
from rsa_service.jobs.outage import OutagePolicy
from rsa_service.jobs.store import DEFAULT_MAX_ATTEMPTS, JobStore
from rsa_service.observability import log_context, span
from rsa_service.wire import JobResult

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
FENCE_CHECK_INTERVAL_S = 0.5

AttemptEnd = Literal["completed", "failed", "cancelled", "lost", "busy", "terminal", "poisoned", "newer", "missing"]


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
    """`owner` if it names a process of this host that no longer runs (its lease can be taken at once), else ''.

    Owners may carry a suffix after the start time (several workers in one process): `host/pid/start/suffix`.
    """
    host, _, rest = owner.partition("/")
    pid_text, _, rest = rest.partition("/")
    started_text = rest.partition("/")[0]
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


async def keep_lease(store: JobStore, lease: Lease) -> None:
    """Renew until cancelled; raises LeaseLost the moment the fence moves.

    A Redis outage is ridden out: renewals keep being tried, and meanwhile `lease.check()` stops new generations
    once the last good renewal is a lease old. When Redis is back, the fence says whether the job is still ours.
    """
    interval = min(lease.lease_s / 3, FENCE_CHECK_INTERVAL_S)
    while True:
        await asyncio.sleep(interval)
        raise_if_cancelled()
        asked_at = lease.clock()
        try:
            await store.renew(lease.job_id, lease.fence, lease_ms=int(lease.lease_s * 1000))
        except StoreUnavailable as exc:
            log.warning("job %s: cannot renew the lease (%s); retrying", lease.job_id, exc)
            continue
        except LeaseLost:
            if lease.finishing:
                return
            raise
        lease.renewed(asked_at)


async def run_attempt(
    store: JobStore,
    backend: Backend,
    job_id: str,
    owner: str,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    concurrency: int | None = None,
    gate: Gate | None = None,
    steal_from: str = "",
    routed: dict[str, Backend] | None = None,
    outage: OutagePolicy | None = None,
) -> AttemptOutcome:
    claim = await store.claim(
        job_id, owner, lease_ms=int(lease_s * 1000), max_attempts=max_attempts, steal_from=steal_from
    )
    if claim.outcome == "newer":
        log.warning(
            "job %s: stored format %d is newer than this release's; left for a newer worker", job_id, claim.version
        )
        return AttemptOutcome("newer", detail=f"stored format {claim.version}")
    if claim.outcome != "claimed":
        return AttemptOutcome(claim.outcome, detail=claim.status or claim.owner)
    with log_context(fence=claim.fence), span("job", job_id=job_id, fence=claim.fence, attempt=claim.attempts):
        lease = Lease(job_id, claim.fence, lease_s)
        log.info("job %s: claimed by %s (fence %d, attempt %d)", job_id, owner, claim.fence, claim.attempts)
        try:
            job = await store.get(job_id)
            runner = JobRunner(
                store, backend, job, lease, gate=gate, concurrency=concurrency, routed=routed, outage=outage
            )
            result = await _run_leased(store, runner, lease)
        except asyncio.CancelledError:
            await asyncio.shield(_hand_back(store, lease))
            raise
        if result is None:
            return await asyncio.shield(_settle_lost(store, job_id, runner))
        return AttemptOutcome(result.status, result=result)  # type: ignore[arg-type]


async def _run_leased(store: JobStore, runner: JobRunner, lease: Lease) -> JobResult | None:
    """The runner beside its lease keeper; None when the lease was lost (cancelled, or taken over)."""
    result: JobResult | None = None
    try:
        async with asyncio.TaskGroup() as group:
            keeper = group.create_task(keep_lease(store, lease))
            result = await runner.run()
            keeper.cancel()
    except* LeaseLost:
        pass  # `return` may not appear in an except* block
    return result


async def _hand_back(store: JobStore, lease: Lease) -> None:
    if await store.release(lease.job_id, lease.fence):
        log.info("job %s: lease released; the job is queued again", lease.job_id)


async def _settle_lost(store: JobStore, job_id: str, runner: JobRunner) -> AttemptOutcome:
    """Fenced off: either a cancel (settle it, keeping partial results) or another worker took over."""
    record = await store.get(job_id)
    if record.status == "cancelling":
        result = runner.result()
        await store.settle_cancelled(job_id, result)
        log.info("job %s: cancelled; %d steps kept", job_id, runner.committed)
        return AttemptOutcome("cancelled", result=result.model_copy(update={"status": "cancelled"}))
    if record.status == "cancelled":
        return AttemptOutcome("cancelled", result=record.result)
    holder = record.owner or f"another worker (job {record.status})"
    log.warning("job %s: lease lost to %s; stopping this attempt", job_id, holder)
    return AttemptOutcome("lost", detail=holder)
