"""Bridge from concurrent asyncio callers to the one synchronous `Batcher`.

A single driver task collects new and cancelled sequences between steps and hands them to `Batcher.step`, which
runs in a dedicated worker thread, so the event loop never blocks on a forward pass and the batcher is only ever
touched by one thread at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from rsa_service.backends.engine.batcher import Batcher, GenSequence
from rsa_service.backends.engine.errors import EngineError

logger = logging.getLogger(__name__)


class EngineClosedError(EngineError):
    """The engine was closed while, or before, this generation ran."""


class AsyncScheduler:
    """Batches concurrent `run` calls together; cancelling an awaiting caller removes its sequence."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zaya-engine")
        self._arrived: list[GenSequence] = []
        self._cancelled: list[GenSequence] = []
        self._waiters: dict[int, asyncio.Future[GenSequence]] = {}
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, seq: GenSequence) -> GenSequence:
        """Generate `seq` to completion alongside every other caller's sequences."""
        if self._closed:
            raise EngineClosedError("engine: closed")
        waiter: asyncio.Future[GenSequence] = asyncio.get_running_loop().create_future()
        self._waiters[seq.id] = waiter
        self._arrived.append(seq)
        self._kick()
        try:
            return await waiter
        except asyncio.CancelledError:
            self._waiters.pop(seq.id, None)
            self._cancelled.append(seq)
            self._kick()
            raise

    def _kick(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive(), name="zaya-engine-driver")

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while not self._closed:
            if self._batcher.idle and not self._arrived and not self._cancelled:
                self._wake.clear()
                await self._wake.wait()
                continue
            arrived, self._arrived = self._arrived, []
            cancelled, self._cancelled = self._cancelled, []
            try:
                finished = await loop.run_in_executor(self._executor, self._batcher.step, arrived, cancelled)
            except Exception as exc:
                logger.exception("engine step failed; failing every sequence in flight")
                self._fail_all(EngineError(f"engine: forward pass failed: {exc}"))
                continue
            for seq in finished:
                waiter = self._waiters.pop(seq.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(seq)

    def _fail_all(self, error: Exception) -> None:
        """After a failed step the batch state is unknown: drop it and fail every waiter."""
        self._batcher.abort()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()

    async def aclose(self) -> None:
        """Stop the driver (after its current step) and fail whatever is still waiting."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        if self._driver is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(EngineClosedError("engine: closed before this generation finished"))
        self._waiters.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
