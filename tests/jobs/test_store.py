"""The Lua transitions, against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.core.steps import StepResult
from rsa_service.jobs.models import JobResult, JobSpec, Problem
from rsa_service.jobs.store import JobNotFound, JobStore, LeaseLost


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
    assert (record.status, record.tenant, record.fence, record.attempts, record.version) == ("queued", "acme", 0, 0, 1)
    assert record.spec == spec()
    assert await store.next_queued(0.1) == job_id
    assert [event.type for event in await store.events(job_id)] == ["queued"]
    with pytest.raises(JobNotFound):
        await store.get("job_nope")


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
