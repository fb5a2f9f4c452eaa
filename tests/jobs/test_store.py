"""The Lua transitions, and the per-tenant count of unfinished jobs they keep, against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.core.steps import StepResult
from rsa_service.jobs.keys import STORE_FORMAT_VERSION
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.store import ADMITTED_GRACE_MS, JobNotFound, JobStore, LeaseLost, TooManyActive
from rsa_service.wire import JobResult, Problem


def spec() -> JobSpec:
    return JobSpec(
        problem="What is 6*7?",
        params=RSAParams(population=2, subset=1, rounds=1, trace_tokens=50, tail_tokens=10, final_tokens=50),
        backend="openai:http://127.0.0.1:1/v1",
        templates=PromptTemplates.load(),
    )


def result(job_id: str) -> JobResult:
    return JobResult(job_id=job_id, status="completed", answer="42", select="vote", rounds=[], usage={})


async def test_create_queues_a_hint_and_reads_back(store: JobStore) -> None:
    job_id = await store.create(spec(), tenant="acme")
    record = await store.get(job_id)
    assert (record.status, record.tenant, record.fence, record.attempts) == ("queued", "acme", 0, 0)
    assert record.version == STORE_FORMAT_VERSION
    assert record.spec == spec()
    assert await store.next_queued(0.1) == job_id
    assert [event.type for event in await store.events(job_id)] == ["queued"]
    with pytest.raises(JobNotFound):
        await store.get("job_nope")


async def test_background_jobs_are_claimed_after_interactive_ones(store: JobStore) -> None:
    late = await store.create(spec(), priority="background", extra={"note": "kept"})
    first = await store.create(spec())
    second = await store.create(spec())
    assert [await store.next_queued(0.1) for _ in range(4)] == [first, second, late, None]
    assert await store.redis.hget(store.keys.job(late).meta, "note") == "kept"


async def test_claim_is_exclusive_while_the_lease_lives(store: JobStore) -> None:
    job_id = await store.create(spec())
    first = await store.claim(job_id, "w1", lease_ms=10_000)
    assert (first.outcome, first.fence, first.attempts) == ("claimed", 1, 1)
    second = await store.claim(job_id, "w2", lease_ms=10_000)
    assert (second.outcome, second.owner) == ("busy", "w1")
    assert (await store.get(job_id)).status == "in_progress"


async def test_racing_claims_have_one_winner(store: JobStore) -> None:
    job_id = await store.create(spec())
    claims = await asyncio.gather(*(store.claim(job_id, f"w{i}", lease_ms=10_000) for i in range(20)))
    assert sum(claim.outcome == "claimed" for claim in claims) == 1


async def test_expired_lease_is_taken_over_and_the_old_fence_is_rejected(store: JobStore) -> None:
    job_id = await store.create(spec())
    old = await store.claim(job_id, "w1", lease_ms=50)
    await asyncio.sleep(0.1)
    assert await store.expired_leases() == [job_id]
    new = await store.claim(job_id, "w2", lease_ms=10_000)
    assert (new.outcome, new.fence) == ("claimed", old.fence + 1)
    step = StepResult(round=0, slot=0, text="x", tail="x")
    with pytest.raises(LeaseLost):
        await store.commit(job_id, old.fence, step, {})
    with pytest.raises(LeaseLost):
        await store.renew(job_id, old.fence, lease_ms=1000)
    with pytest.raises(LeaseLost):
        await store.finish(job_id, old.fence, result=result(job_id))
    assert await store.commit(job_id, new.fence, step, {"slot": 0})


async def test_a_step_is_committed_once(store: JobStore) -> None:
    job_id = await store.create(spec())
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    assert await store.commit(job_id, claim.fence, StepResult(round=0, slot=1, text="first"), {})
    assert not await store.commit(job_id, claim.fence, StepResult(round=0, slot=1, text="second"), {})
    steps = await store.steps(job_id)
    assert steps["r0:s1"].text == "first"
    assert [event.type for event in await store.events(job_id)].count("step") == 1


async def test_finish_is_terminal_and_expires_keys(store: JobStore) -> None:
    job_id = await store.create(spec())
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    await store.finish(job_id, claim.fence, result=result(job_id))
    record = await store.get(job_id)
    assert record.status == "completed" and record.result is not None and record.result.answer == "42"
    assert 0 < await store.redis.ttl(store.keys.job(job_id).meta) <= 3600
    assert (await store.claim(job_id, "w2", lease_ms=1000)).outcome == "terminal"
    assert await store.cancel(job_id) == "completed"  # cancelling a finished job changes nothing
    assert (await store.events(job_id))[-1].data["answer"] == "42"


async def test_failed_finish_keeps_the_error(store: JobStore) -> None:
    job_id = await store.create(spec())
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    await store.finish(job_id, claim.fence, error=Problem(title="Generation failed", status=502, detail="boom"))
    record = await store.get(job_id)
    assert record.status == "failed" and record.error is not None and record.error.detail == "boom"


async def test_cancel_queued_is_immediate(store: JobStore) -> None:
    job_id = await store.create(spec())
    assert await store.cancel(job_id) == "cancelled"
    assert (await store.claim(job_id, "w1", lease_ms=1000)).outcome == "terminal"


async def test_cancel_running_fences_off_the_owner_then_settles(store: JobStore) -> None:
    job_id = await store.create(spec())
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    await store.commit(job_id, claim.fence, StepResult(round=0, slot=0, text="kept"), {})
    assert await store.cancel(job_id) == "cancelling"
    assert await store.cancel(job_id) == "cancelling"  # idempotent
    with pytest.raises(LeaseLost):
        await store.renew(job_id, claim.fence, lease_ms=1000)
    assert await store.settle_cancelled(job_id, result(job_id)) == "cancelled"
    record = await store.get(job_id)
    assert record.status == "cancelled" and record.result is not None and record.result.status == "cancelled"
    assert (await store.steps(job_id))["r0:s0"].text == "kept"


async def test_cancelling_job_whose_owner_died_is_settled_by_the_next_claim(store: JobStore) -> None:
    job_id = await store.create(spec())
    await store.claim(job_id, "w1", lease_ms=50)
    await store.redis.hset(store.keys.job(job_id).meta, "status", "cancelling")
    await asyncio.sleep(0.1)
    claim = await store.claim(job_id, "w2", lease_ms=1000)
    assert (claim.outcome, claim.status) == ("terminal", "cancelled")


async def test_poison_job_is_failed_and_dead_lettered_after_the_cap(store: JobStore) -> None:
    job_id = await store.create(spec())
    for attempt in range(3):
        assert (await store.claim(job_id, f"w{attempt}", lease_ms=1, max_attempts=3)).outcome == "claimed"
        await asyncio.sleep(0.01)
    assert (await store.claim(job_id, "w9", lease_ms=1, max_attempts=3)).outcome == "poisoned"
    record = await store.get(job_id)
    assert record.status == "failed" and record.error is not None and "abandoned by 3 workers" in record.error.detail
    assert await store.redis.sismember(store.keys.dead, job_id)


async def test_release_requeues_without_counting_the_attempt(store: JobStore) -> None:
    job_id = await store.create(spec())
    await store.next_queued(0.1)
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    assert await store.release(job_id, claim.fence)
    record = await store.get(job_id)
    assert (record.status, record.attempts, record.owner) == ("queued", 0, "")
    assert await store.next_queued(0.1) == job_id
    assert (await store.claim(job_id, "w2", lease_ms=10_000)).outcome == "claimed"


async def test_steal_from_a_named_dead_owner(store: JobStore) -> None:
    job_id = await store.create(spec())
    await store.claim(job_id, "host/1/1", lease_ms=60_000)
    assert (await store.claim(job_id, "host/2/2", lease_ms=1000)).outcome == "busy"
    assert (await store.claim(job_id, "host/2/2", lease_ms=1000, steal_from="host/1/1")).outcome == "claimed"


# ---- the per-tenant limit of unfinished jobs ----------------------------------------------------------------

TENANT = "acme"


async def active(store: JobStore, tenant: str = TENANT) -> set[str]:
    return set(await store.redis.zrange(store.keys.active(tenant), 0, -1))


async def create(store: JobStore, limit: int = 0) -> str:
    return await store.create(spec(), tenant=TENANT, max_active=limit)


async def test_concurrent_creates_cannot_pass_the_limit(store: JobStore) -> None:
    outcomes = await asyncio.gather(*(create(store, limit=3) for _ in range(20)), return_exceptions=True)
    admitted = [o for o in outcomes if isinstance(o, str)]
    assert len(admitted) == 3
    assert all(isinstance(o, TooManyActive) and o.limit == 3 for o in outcomes if not isinstance(o, str))
    assert await active(store) == set(admitted)
    assert await store.redis.zcard(store.keys.listing(TENANT)) == 3  # a refused create wrote nothing


async def test_every_way_to_end_drops_the_job_from_the_count(store: JobStore) -> None:
    completed, failed, cancelled, settled, deleted, poisoned = [await create(store) for _ in range(6)]
    assert len(await active(store)) == 6
    claim = await store.claim(completed, "w", lease_ms=10_000)
    await store.finish(completed, claim.fence, result=result(completed))
    await store.finish(completed, claim.fence, result=result(completed))  # a retried finish changes nothing
    claim = await store.claim(failed, "w", lease_ms=10_000)
    await store.finish(failed, claim.fence, error=Problem(title="Generation failed", status=502))
    await store.cancel(cancelled)  # queued: cancelled at once
    await store.claim(settled, "w", lease_ms=10_000)
    assert await store.cancel(settled) == "cancelling"
    assert await active(store) == {settled, deleted, poisoned}  # cancelling still runs: it counts
    await store.settle_cancelled(settled, None)
    await store.claim(deleted, "w", lease_ms=10_000)
    await store.delete(deleted)  # not finished: a store-level delete still uncounts it
    await store.claim(poisoned, "w", lease_ms=1, max_attempts=1)
    await asyncio.sleep(0.01)
    assert (await store.claim(poisoned, "w2", lease_ms=1, max_attempts=1)).outcome == "poisoned"
    assert await active(store) == set()
    assert await store.requeue(poisoned) == TENANT  # running again: counted again
    assert await active(store) == {poisoned}


async def test_a_job_written_before_the_count_is_counted(store: JobStore) -> None:
    legacy, finished = await create(store), await create(store)
    await store.cancel(finished)
    await store.redis.delete(store.keys.active(TENANT), store.keys.active_state(TENANT))  # as before the count
    await store.redis.sadd(store.keys.legacy_active(TENANT), legacy)  # the set earlier releases kept
    new = await create(store, limit=2)
    assert await active(store) == {legacy, new}
    with pytest.raises(TooManyActive):
        await create(store, limit=2)
    assert not await store.redis.exists(store.keys.legacy_active(TENANT))


async def test_stale_entries_are_dropped_when_they_would_refuse(store: JobStore) -> None:
    done = await create(store)
    claim = await store.claim(done, "w", lease_ms=10_000)
    await store.finish(done, claim.fence, result=result(done))
    now_ms = await store.now_ms()
    stale = {done: now_ms, "job_never_written": now_ms - ADMITTED_GRACE_MS - 1, "job_being_written": now_ms}
    await store.redis.zadd(store.keys.active(TENANT), stale)  # as if removals and creates were lost mid-way
    kept = await create(store, limit=2)
    assert await active(store) == {"job_being_written", kept}  # a create in flight keeps its place
    with pytest.raises(TooManyActive):
        await create(store, limit=2)


async def test_outstanding_generations_count_what_is_left_to_do(store: JobStore) -> None:
    job_id = await store.create(spec())
    total = spec().params.total_generations
    assert await store.outstanding_generations() == total
    claim = await store.claim(job_id, "w1", lease_ms=10_000)
    await store.commit(job_id, claim.fence, StepResult(round=0, slot=0, text="x"), {})
    assert await store.outstanding_generations() == total - 1
    await store.release(job_id, claim.fence)  # queued again: still to do
    assert await store.outstanding_generations() == total - 1
    claim = await store.claim(job_id, "w2", lease_ms=10_000)
    await store.finish(job_id, claim.fence, result(job_id))
    assert await store.outstanding_generations() == 0
    assert not await store.redis.hexists(store.keys.demand, job_id)
