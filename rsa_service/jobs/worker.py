"""The worker: take job ids from the queue, run each under a lease, and keep the fleet's hints honest.

Any number of workers, in any number of processes and hosts, share one Redis. A worker claims a job only while
it has room for the job's width (its population, capped by the worker's concurrency), so an idle worker elsewhere
gets the next one. Every worker runs a janitor that queues again the jobs whose lease expired (their worker died
or froze) and the jobs whose queue hint was lost. A Redis outage is ridden out with backoff; a job whose attempt
lost Redis resumes elsewhere, or here, once its lease lapses.

`run(stop)` returns after a graceful drain: no new claims, in-flight generations get `drain_grace_s` to finish
and commit, then every remaining attempt hands its lease back (the job is queued again, the attempt not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import Counter

from rsa_service.backends import Backend
from rsa_service.jobs.attempt import DEFAULT_LEASE_S, process_owner_id, run_attempt
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.connect import raise_if_cancelled
from rsa_service.jobs.errors import JobNotFound, StoreUnavailable
from rsa_service.jobs.gate import Gate, SharedRate
from rsa_service.jobs.models import JobRecord, NewerFormat
from rsa_service.jobs.outage import OutagePolicy
from rsa_service.jobs.store import DEFAULT_MAX_ATTEMPTS, JobStore
from rsa_service.observability import log_context
from rsa_service.settings import Settings
from rsa_service.wire import Problem

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 32
DEFAULT_DRAIN_GRACE_S = 30.0
DEFAULT_REQUEUE_PENDING_AFTER_S = 60.0
QUEUE_POLL_S = 0.5  # how long one blocking pop waits; also how fast a stop is noticed
JANITOR_INTERVAL_MAX_S = 5.0
OUTAGE_BACKOFF_BASE_S = 0.1
OUTAGE_BACKOFF_MAX_S = 5.0


def outage_backoff_s(failures: int) -> float:
    """Full-jitter exponential backoff, so a fleet does not reconnect in lockstep after an outage."""
    return random.uniform(0, min(OUTAGE_BACKOFF_MAX_S, OUTAGE_BACKOFF_BASE_S * 2**failures))


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Worker:
    """Runs queued jobs until `stop` is set. Several may share a process (`rsa serve --workers K`)."""

    def __init__(
        self,
        store: JobStore,
        backends: BackendPool,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        owner: str | None = None,
        rate: SharedRate | None = None,
        drain_grace_s: float = DEFAULT_DRAIN_GRACE_S,
        requeue_pending_after_s: float = DEFAULT_REQUEUE_PENDING_AFTER_S,
        outage: OutagePolicy | None = None,
    ) -> None:
        self.store = store
        self.backends = backends
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.owner = owner or f"{process_owner_id()}/{secrets.token_hex(3)}"
        self.gate = Gate(concurrency, rate)
        self.drain_grace_s = drain_grace_s
        self.requeue_pending_after_s = requeue_pending_after_s
        self.outage = outage or OutagePolicy()
        self.outcomes: Counter[str] = Counter()
        self._attempts: dict[asyncio.Task[None], int] = {}  # running attempt → slots it reserves
        self._room = asyncio.Event()

    @classmethod
    def from_settings(cls, store: JobStore, backends: BackendPool, settings: Settings, **overrides: object) -> Worker:
        rate = SharedRate(store, settings.rate_limit_per_s, settings.rate_burst) if settings.rate_limit_per_s else None
        options: dict[str, object] = {
            "concurrency": settings.worker_concurrency,
            "lease_s": settings.lease_s,
            "max_attempts": settings.max_attempts,
            "rate": rate,
            "drain_grace_s": settings.drain_grace_s,
            "requeue_pending_after_s": settings.requeue_pending_after_s,
            "outage": OutagePolicy(
                budget_s=settings.backend_outage_budget_h * 3600, max_wait_s=settings.backend_outage_retry_max_s
            ),
        }
        return cls(store, backends, **(options | overrides))  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker %s: started (concurrency %d, lease %gs)", self.owner, self.gate.concurrency, self.lease_s)
        janitor = asyncio.create_task(self._janitor(), name="janitor")
        try:
            await self._claim_until(stop)
            await self._drain()
        finally:
            janitor.cancel()
            await self._cancel_attempts()
            await asyncio.gather(janitor, return_exceptions=True)
        log.info("worker %s: stopped (%s)", self.owner, dict(self.outcomes) or "no jobs")

    # ---- claiming -----------------------------------------------------------------------------------------

    async def _claim_until(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            raise_if_cancelled()
            if sum(self._attempts.values()) >= self.gate.concurrency:
                self._room.clear()
                await self._wait_for_room()
                continue
            try:
                job_id = await self.store.next_queued(QUEUE_POLL_S)
                if job_id is not None:
                    await self._start(job_id)
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                log.warning("worker %s: Redis unreachable (%s); retrying", self.owner, exc)
                await _sleep_unless(stop, outage_backoff_s(failures))

    async def _wait_for_room(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), QUEUE_POLL_S)

    async def _start(self, job_id: str) -> None:
        """Load the job's spec (to pick its backend) and start an attempt; claiming happens inside it."""
        try:
            record = await self.store.get(job_id)
        except JobNotFound:
            return
        except NewerFormat as exc:  # a rolling upgrade: its hints stay, and the janitor offers it to newer workers
            log.warning("worker %s: %s; left for a newer worker", self.owner, exc)
            return
        if record.terminal or job_id in self._running:
            return  # a duplicate hint: claiming again here would fence off this worker's own attempt
        try:
            backend = await self.backends.get(record.spec.backend, record.spec.model)
            # A routed stage runs another model: the job's `model` names its own backend's, not theirs.
            routed = {name: await self.backends.get(name) for name in record.spec.params.routed_backends}
        except ValueError as exc:
            await self._fail_unrunnable(record, str(exc))
            return
        task = asyncio.create_task(self._attempt(job_id, backend, routed), name=job_id)
        self._attempts[task] = min(record.spec.params.population, self.gate.concurrency)
        task.add_done_callback(self._attempt_done)

    @property
    def _running(self) -> set[str]:
        return {task.get_name() for task in self._attempts}

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.pop(task, None)
        self._room.set()

    async def _attempt(self, job_id: str, backend: Backend, routed: dict[str, Backend]) -> None:
        with log_context(job_id=job_id, worker=self.owner):
            try:
                outcome = await run_attempt(
                    self.store,
                    backend,
                    job_id,
                    self.owner,
                    lease_s=self.lease_s,
                    max_attempts=self.max_attempts,
                    gate=self.gate,
                    routed=routed,
                    outage=self.outage,
                )
                self.outcomes[outcome.end] += 1
                if outcome.end != "busy":
                    log.info("job %s: attempt ended %s %s", job_id, outcome.end, outcome.detail)
            except* StoreUnavailable as group:
                log.warning(
                    "job %s: Redis lost mid-attempt (%s); it resumes after its lease", job_id, group.exceptions[0]
                )
            except* Exception:
                log.exception("job %s: the attempt crashed; it resumes after its lease", job_id)

    async def _fail_unrunnable(self, record: JobRecord, detail: str) -> None:
        """A job whose backend cannot be resolved will never run: fail it, with the reason, for its owner to see."""
        claim = await self.store.claim(record.id, self.owner, lease_ms=int(self.lease_s * 1000))
        if claim.outcome == "claimed":
            problem = Problem(title="Unknown backend", status=422, detail=detail)
            await self.store.finish(record.id, claim.fence, error=problem)
            log.warning("job %s: failed: %s", record.id, detail)

    # ---- janitor and drain --------------------------------------------------------------------------------

    async def _janitor(self) -> None:
        interval_s = min(self.lease_s / 4, JANITOR_INTERVAL_MAX_S)
        while True:
            raise_if_cancelled()
            try:
                found = await self.store.requeue_stale(
                    lease_ms=int(self.lease_s * 1000), stale_pending_ms=int(self.requeue_pending_after_s * 1000)
                )
                if found:
                    log.info("janitor: queued %d jobs again: %s", len(found), " ".join(found))
            except StoreUnavailable as exc:
                log.debug("janitor: Redis unreachable (%s)", exc)
            await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))

    async def _drain(self) -> None:
        """Stop admitting generations; give those in flight the grace period to finish and commit."""
        self.gate.close()
        if not self._attempts:
            return
        log.info(
            "worker %s: draining %d jobs (%d generations in flight, grace %gs)",
            self.owner,
            len(self._attempts),
            self.gate.in_flight,
            self.drain_grace_s,
        )
        try:
            async with asyncio.timeout(self.drain_grace_s):
                await self.gate.idle()
        except TimeoutError:
            log.warning("worker %s: grace period over; aborting %d generations", self.owner, self.gate.in_flight)

    async def _cancel_attempts(self) -> None:
        """Cancel what still runs; each attempt hands its lease back (shielded) as it unwinds."""
        tasks = list(self._attempts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
