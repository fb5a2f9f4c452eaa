"""What the service benchmarks share: the services a run talks to, and the status of its jobs."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsa_service.jobs.embedded import EmbeddedRedis
from rsa_service.jobs.store import JobStore
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_subprocess


@contextmanager
def services(config: ModelServerConfig) -> Iterator[tuple[str, ModelServerHandle, Path]]:
    """A scratch directory, the embedded Redis (AOF on) inside it and a model server process: (Redis URL, server,
    directory for logs and files), all removed afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        with EmbeddedRedis(data / "redis", shared=False) as url, serve_in_subprocess(config) as server:
            yield url, server, data


async def job_fields(store: JobStore, job_ids: Sequence[str], field: str) -> list[str | None]:
    """One field of each job's hash (`status`, `finished_ms`, ...), in one pipelined round trip."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(store.keys.job(job_id).meta, field)
        return await pipe.execute()


async def job_statuses(store: JobStore, job_ids: Sequence[str]) -> list[str | None]:
    return await job_fields(store, job_ids, "status")
