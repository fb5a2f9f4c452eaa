"""The lease keeper against a real Redis: a refused renewal is a lost lease, unless the job is ending."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rsa_service.jobs.attempt import keep_lease
from rsa_service.jobs.errors import LeaseLost
from rsa_service.jobs.lease import Lease
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import job_spec


async def _finished_claim(store: JobStore) -> Lease:
    job_id = await store.create(job_spec("openai:http://127.0.0.1:9/v1"))
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    await store.finish(job_id, claim.fence)
    return Lease(job_id, claim.fence, lease_s=0.3)


async def test_renewal_refused_after_finishing_stops_the_keeper_quietly(store: JobStore) -> None:
    lease = await _finished_claim(store)
    lease.finishing = True
    await asyncio.wait_for(keep_lease(store, lease), timeout=2)


async def test_renewal_refused_otherwise_is_a_lost_lease(store: JobStore) -> None:
    lease = await _finished_claim(store)
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(keep_lease(store, lease), timeout=2)


class _AbsorbingStore(JobStore):
    """A real store whose renewal absorbs a cancel landing mid-command and completes, as redis-py can do."""

    async def renew(self, job_id: str, fence: int, *, lease_ms: int) -> int:
        with contextlib.suppress(asyncio.CancelledError):  # the library retried; the command went through
            await asyncio.sleep(0.05)
        return await super().renew(job_id, fence, lease_ms=lease_ms)


async def test_the_keeper_honours_a_cancel_a_library_absorbed(store: JobStore) -> None:
    """Otherwise it outlives its attempt and renews the job's lease for ever."""
    job_id = await store.create(job_spec("openai:http://127.0.0.1:9/v1"))
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    absorbing = _AbsorbingStore(store.redis, namespace=store.keys.namespace)
    keeper = asyncio.create_task(keep_lease(absorbing, Lease(job_id, claim.fence, lease_s=0.03)))
    await asyncio.sleep(0.03)  # into a renewal
    keeper.cancel()
    done, _ = await asyncio.wait({keeper}, timeout=2)
    assert keeper in done and keeper.cancelled()
