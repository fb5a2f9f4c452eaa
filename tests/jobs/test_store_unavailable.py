"""Redis errors stop at the store: callers see one StoreUnavailable, and nothing above the store imports redis."""

from __future__ import annotations

import ast
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rsa_service.jobs.errors import StoreUnavailable
from rsa_service.jobs.idempotency import create_once
from rsa_service.jobs.listing import list_jobs
from rsa_service.jobs.store import JobStore

PACKAGE = Path(__file__).resolve().parents[2] / "rsa_service"
# The store and its peers at the Redis boundary: connecting, the embedded server, the error boundary itself, and the
# event hub's stream readers (their own connections, retried in place).
REDIS_MODULES = {
    "jobs/store.py",
    "jobs/errors.py",
    "jobs/connect.py",
    "jobs/redis_urls.py",
    "jobs/embedded.py",
    "jobs/hub.py",
}


@pytest.fixture
async def unreachable() -> AsyncIterator[JobStore]:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0), decode_responses=True)
    yield JobStore(client, namespace="unreachable")
    await client.aclose()


async def test_every_kind_of_store_call_raises_store_unavailable(unreachable: JobStore) -> None:
    calls = [
        unreachable.get("j1"),
        unreachable.event_entries(["j1"]),
        unreachable.next_queued(0.01),
        list_jobs(unreachable, "tenant"),
        create_once(unreachable, "tenant", "key", "fingerprint", lambda job_id: unreachable.get(job_id)),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable, match="ConnectionError"):
            await call


def _imports_redis(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(name == "redis" or name.startswith("redis.") for name in names):
            return True
    return False


def test_nothing_above_the_store_imports_redis() -> None:
    above = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in REDIS_MODULES and _imports_redis(path)
    ]
    assert above == []
