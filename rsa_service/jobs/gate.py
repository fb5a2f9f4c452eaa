"""Admission of generations: a cap on how many one worker runs at once, a request rate shared by every worker
of the namespace (GCRA in one Lua script, so a fleet of workers respects one limit, which a per-process
throttle cannot), and the drain switch SIGTERM flips.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rsa_service.jobs.store import JobStore


class SharedRate:
    """`requests_per_s` across every worker of one namespace, with bursts of up to `burst` requests."""

    def __init__(self, store: JobStore, requests_per_s: float, burst: int = 1) -> None:
        self.store = store
        self.requests_per_s = requests_per_s
        self.burst = burst

    async def acquire(self) -> None:
        while True:
            wait_ms = await self.store.rate_wait_ms(self.requests_per_s, self.burst)
            if not wait_ms:
                return
            await asyncio.sleep(wait_ms / 1000)


class Gate:
    """At most `concurrency` generations in flight; each takes a shared rate token first when a rate is set.

    `close()` starts a drain: generations in flight finish, new ones wait until their task is cancelled.
    """

    def __init__(self, concurrency: int, rate: SharedRate | None = None) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self._slots = asyncio.Semaphore(concurrency)
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            if self._closed.is_set():
                await asyncio.Future()  # draining: wait here until the drain cancels this task
            if self.rate is not None:
                await self.rate.acquire()
            self.in_flight += 1
            self._idle.clear()
            try:
                yield
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

    def close(self) -> None:
        self._closed.set()

    async def idle(self) -> None:
        """Return once no generation is in flight."""
        await self._idle.wait()
