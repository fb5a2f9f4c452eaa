"""In-process workers for `rsa serve --workers K` and in-process `rsa batch`: K `Worker` tasks on the app's store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.store import JobStore
from rsa_service.jobs.worker import Worker
from rsa_service.settings import Settings


def in_process_workers(
    count: int, shared: Settings
) -> Callable[[JobStore, BackendPool], AbstractAsyncContextManager[None]]:
    """A `create_app(background=...)` that runs `count` workers until the app stops, then drains them. They use
    the app's backends (which the app closes), so an in-process model is loaded once for the API and them."""

    @asynccontextmanager
    async def run(store: JobStore, pool: BackendPool) -> AsyncIterator[None]:
        stop = asyncio.Event()
        workers = [Worker.from_settings(store, pool, shared) for _ in range(count)]
        tasks = [asyncio.create_task(worker.run(stop), name=f"worker-{i}") for i, worker in enumerate(workers)]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    return run
