"""Riding out a backend outage: a job whose model server is unreachable waits for it, with capped backoff, for an
outage budget measured in hours, instead of failing its steps. Past the budget the job fails with `OUTAGE_TITLE`,
a transient failure: `rsa jobs resume` (or `POST /v1/jobs/{id}/resume`) runs it again from its committed steps.

Only errors that may heal count: a backend that is unreachable, times out, or answers 429/5xx (after its own
retries). Any other error (a bad request, a prompt over the context, an answer that is not OpenAI's protocol)
still fails its step at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rsa_service.backends.base import BackendError, TransientBackendError
from rsa_service.wire import Problem

log = logging.getLogger(__name__)

# The title of a job failed because its backend stayed down past the budget; `lua/_prelude.lua` has the same.
OUTAGE_TITLE = "Backend unavailable"
DEFAULT_OUTAGE_BUDGET_S = 6 * 3600.0
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 30.0
ERROR_CHARS = 300


def is_outage(error: BaseException | None) -> bool:
    """Whether waiting may cure `error`: a transient error, or one caused by one (an unreachable server is
    reported as unavailable once its retries are spent). A server answering in a protocol it does not speak is a
    fault of the step, as before."""
    while error is not None:
        if isinstance(error, TransientBackendError):
            return True
        error = error.__cause__
    return False


@dataclass(frozen=True)
class OutagePolicy:
    budget_s: float = DEFAULT_OUTAGE_BUDGET_S
    first_wait_s: float = FIRST_WAIT_S
    max_wait_s: float = MAX_WAIT_S


class OutageWait:
    """The outage one job is riding out, shared by its concurrent steps: when it began and how long to wait next
    (doubling from `first_wait_s` to `max_wait_s`, with jitter so that many jobs do not retry in step). `emit`
    records the job's `waiting` and `backend_back` events."""

    def __init__(
        self,
        job_id: str,
        policy: OutagePolicy,
        emit: Callable[[str, dict[str, object]], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.policy = policy
        self.emit = emit
        self.clock = clock
        self._since: float | None = None
        self._waits = 0

    async def wait(self, backend: str, error: BackendError, check: Callable[[], None]) -> bool:
        """Wait before the next call to `backend`, which just failed with `error`; False (at once) when the outage
        has lasted the budget. `check` runs before the wait (the lease: no waiting on a job that is not ours)."""
        now, since = self.clock(), self._since
        if since is None:  # read before the await below: a step that succeeds meanwhile ends the outage
            self._since, since, self._waits = now, now, 0
            log.warning("job %s: backend %s is down (%s); waiting for it", self.job_id, backend, error)
            since_ms = time.time_ns() // 1_000_000
            await self.emit("waiting", {"backend": backend, "error": str(error)[:ERROR_CHARS], "since_ms": since_ms})
        if now - since >= self.policy.budget_s:
            return False
        check()
        wait_s = min(self.policy.max_wait_s, self.policy.first_wait_s * 2**self._waits)
        self._waits += 1
        await asyncio.sleep(min(wait_s * random.uniform(0.8, 1.0), self.policy.budget_s - (now - since)))
        return True

    async def over(self, backend: str) -> None:
        """A call to `backend` succeeded: any outage is over."""
        if self._since is None:
            return
        waited_s, self._since = self.clock() - self._since, None
        log.info("job %s: backend %s is back after %.1f s", self.job_id, backend, waited_s)
        await self.emit("backend_back", {"backend": backend, "waited_s": round(waited_s, 3)})

    def spent(self, backend: str, error: BackendError) -> Problem:
        """The job's error once the budget is spent: a transient failure, which can be resumed."""
        return Problem(
            title=OUTAGE_TITLE,
            status=503,
            detail=f"backend {backend!r} was unavailable for the whole outage budget of {self.policy.budget_s:g} s "
            f"(last error: {error}); resume the job once it is back: its committed steps are kept",
        )
