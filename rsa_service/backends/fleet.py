"""A backend name that lists several specs: one model served by a fleet of replicas, as one Backend.

Each generation goes to the replica with the fewest requests in flight. The requests of one lineage
(`GenerationRequest.lineage`: one slot of one job, whose prompts share the problem and template) stay on the
replica that served the lineage before, while it is up and not much busier than the least busy one, so its prefix
cache is reused. A replica that fails a request (no connection, a dropped or timed-out request, a 429 or 5xx) is
taken out for a backoff that doubles with each failure in a row, and the request is retried on another replica;
when the backoff ends the replica is in rotation again, and its next answer resets the backoff.

A replica makes one attempt per request (the fleet does the retrying), so a generation is answered by exactly one
replica and its tokens are counted once; what the replicas that failed it spent is the generation's `retry_usage`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rsa_service.backends import open_backend
from rsa_service.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    Capabilities,
    Generation,
    GenerationRequest,
    TransientBackendError,
    Usage,
    probe_backend,
)
from rsa_service.backends.retry import retry_cause
from rsa_service.core.tails import Tail
from rsa_service.metrics import (
    REPLICA_EJECTIONS,
    REPLICA_IN_FLIGHT,
    REPLICA_LATENCY,
    REPLICA_REQUESTS,
    REPLICA_UP,
    RETRIES,
)

T = TypeVar("T")

# A lineage stays on its replica while that one has at most this many more requests in flight than the least busy.
STICKY_SLACK = 2
LINEAGES_KEPT = 100_000  # the most recent lineages' replicas are remembered
# What takes a replica out: it could not be reached, or failed in a way another replica may not.
REPLICA_FAULTS = (TransientBackendError, BackendUnavailableError)


@dataclass(eq=False)
class Replica:
    spec: str
    backend: Backend
    in_flight: int = 0
    picks: int = 0
    failures: int = 0  # in a row
    out_until: float = 0.0


class FleetBackend:
    """Replicas of one model behind one backend name. Safe to share between tasks of one event loop."""

    def __init__(
        self,
        name: str,
        specs: Sequence[str],
        options: BackendOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not specs:
            raise ValueError(f"backend: {name!r} lists no replicas")
        self.name = name
        self.options = options or BackendOptions()
        self.clock = clock
        one_attempt = self.options.model_copy(update={"max_retries": 0})
        self.replicas = [Replica(spec, open_backend(spec, one_attempt)) for spec in specs]
        self._lineages: OrderedDict[str, Replica] = OrderedDict()
        for replica in self.replicas:
            REPLICA_UP.labels(name, replica.spec).set(1)

    # -- the Backend protocol ------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Generation:
        failed: set[int] = set()
        last: BackendError | None = None
        spent = Usage()  # what the replicas that failed this request still cost (see `BackendError.usage`)
        for attempt in range(self.options.max_retries + 1):
            replica = await self._choose(request.lineage, failed)
            try:
                generation = await self._serve(replica, replica.backend.generate(request))
            except REPLICA_FAULTS as exc:
                self._take_out(replica, exc)
                failed.add(id(replica))
                last = exc
                spent += exc.usage
                if attempt < self.options.max_retries:
                    RETRIES.labels(retry_cause(exc)).inc()
                continue
            except BackendError as exc:
                exc.usage = spent + exc.usage
                raise
            return generation.model_copy(update={"retry_usage": spent + generation.retry_usage})
        raise BackendUnavailableError(
            f"backend {self.name!r}: no replica answered in {self.options.max_retries + 1} attempts; last: {last}",
            usage=spent,
        ) from last

    async def count_tokens(self, request: GenerationRequest) -> int:
        return await self._any(lambda backend: backend.count_tokens(request))

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail:
        return await self._any(lambda backend: backend.tail(text, max_tokens, tokens_hint=tokens_hint))

    async def capabilities(self) -> Capabilities:
        return await self._any(lambda backend: backend.capabilities())

    async def probe(self) -> None:
        """Ready while any replica answers; the error names every replica that does not."""
        probes = [probe_backend(replica.backend) for replica in self.replicas]
        outcomes = await asyncio.gather(*probes, return_exceptions=True)
        down = [f"{r.spec}: {o}" for r, o in zip(self.replicas, outcomes, strict=True) if isinstance(o, Exception)]
        if len(down) == len(self.replicas):
            raise BackendUnavailableError(f"backend {self.name!r}: no replica answers ({'; '.join(down)})")

    async def aclose(self) -> None:
        await asyncio.gather(*(replica.backend.aclose() for replica in self.replicas))

    # -- routing -------------------------------------------------------------------------------------------

    async def _choose(self, lineage: str | None, failed: set[int]) -> Replica:
        """The lineage's replica if it is up and not too busy, else the least busy up replica (fewest picks first
        among equals). Replicas this request already failed on are avoided while others remain; with every one
        out, wait for the first to come back."""
        while True:
            now = self.clock()
            pool = [r for r in self.replicas if id(r) not in failed] or self.replicas
            up = [r for r in pool if r.out_until <= now]
            if up:
                break
            await asyncio.sleep(min(r.out_until for r in pool) - now)
        least = min(r.in_flight for r in up)
        sticky = self._lineages.get(lineage) if lineage else None
        if sticky is not None and sticky in up and sticky.in_flight <= least + STICKY_SLACK:
            choice = sticky
        else:
            choice = min(up, key=lambda r: (r.in_flight, r.picks))
        choice.picks += 1
        if lineage:
            self._lineages[lineage] = choice
            self._lineages.move_to_end(lineage)
            if len(self._lineages) > LINEAGES_KEPT:
                self._lineages.popitem(last=False)
        return choice

    async def _serve(self, replica: Replica, call: Awaitable[Generation]) -> Generation:
        labels = (self.name, replica.spec)
        replica.in_flight += 1
        REPLICA_IN_FLIGHT.labels(*labels).inc()
        started = self.clock()
        try:
            generation = await call
        except BackendError:
            REPLICA_REQUESTS.labels(*labels, "failed").inc()
            raise
        finally:
            replica.in_flight -= 1
            REPLICA_IN_FLIGHT.labels(*labels).dec()
        REPLICA_REQUESTS.labels(*labels, "ok").inc()
        REPLICA_LATENCY.labels(*labels).observe(self.clock() - started)
        self._answered(replica)
        return generation

    def _take_out(self, replica: Replica, error: BackendError) -> None:
        """Out for the retry backoff, doubling with each failure in a row (jittered, capped), or the server's
        Retry-After when it asks for longer."""
        replica.failures += 1
        opts = self.options
        backoff = min(opts.retry_backoff_s * 2 ** (replica.failures - 1), opts.retry_max_wait_s)
        backoff *= random.uniform(0.5, 1.0)
        asked = error.retry_after_s if isinstance(error, TransientBackendError) else None
        if asked is not None:
            backoff = max(backoff, min(asked, opts.retry_max_wait_s))
        replica.out_until = self.clock() + backoff
        REPLICA_UP.labels(self.name, replica.spec).set(0)
        REPLICA_EJECTIONS.labels(self.name, replica.spec).inc()

    def _answered(self, replica: Replica) -> None:
        replica.failures = 0
        REPLICA_UP.labels(self.name, replica.spec).set(1)

    async def _any(self, call: Callable[[Backend], Awaitable[T]]) -> T:
        """A call any replica can answer (token counts, capabilities): up replicas first, least busy first."""
        now = self.clock()
        last: BackendError | None = None
        for replica in sorted(self.replicas, key=lambda r: (r.out_until > now, r.in_flight)):
            try:
                answer = await call(replica.backend)
            except REPLICA_FAULTS as exc:
                self._take_out(replica, exc)
                last = exc
                continue
            self._answered(replica)
            return answer
        raise BackendUnavailableError(f"backend {self.name!r}: no replica answered; last: {last}") from last
