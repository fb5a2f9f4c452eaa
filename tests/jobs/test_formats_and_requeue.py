"""Stored-format versions (an older job is read and resumed; a newer one is refused and left queued) and the
operator's requeue of dead-lettered jobs, against a real Redis and the model server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from subprocess import PIPE

import pytest

from rsa_service.core.prompts import PromptTemplates
from rsa_service.core.steps import StepResult, Usage
from rsa_service.jobs.errors import NotDeadLettered
from rsa_service.jobs.keys import STORE_FORMAT_VERSION, UNVERSIONED_FORMAT
from rsa_service.jobs.models import NewerFormat
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import PROBLEM, SMALL, finished, job_spec, running
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread

ROUND_ZERO_STEPS = SMALL["population"]
ALL_STEPS = (SMALL["rounds"] + 1) * SMALL["population"]


def round_zero_step(slot: int) -> StepResult:
    reasoning = f"slot {slot} reasons it through and finds \\boxed{{70}}"
    return StepResult(
        round=0,
        slot=slot,
        text="\\boxed{70}",
        reasoning=reasoning,
        tail=reasoning,
        answer="70",
        usage=Usage(prompt_tokens=12, completion_tokens=30),
    )


async def write_unversioned_job(store: JobStore, backend: str) -> str:
    """A job as a worker of stored format 0 left it: no `v` or `started_ms`, round 0 committed in the old step
    layout, queued again (its hints written as any release writes them)."""
    job_id = "job_0000000000000legacy"
    keys = store.keys.job(job_id)
    now_ms = await store.now_ms()
    spec = {"problem": PROBLEM, "params": SMALL, "backend": backend, "templates": PromptTemplates.load().model_dump()}
    await store.redis.hset(
        keys.meta,
        mapping={
            "status": "queued",
            "spec": json.dumps(spec),
            "tenant": "local",
            "fingerprint": "",
            "fence": 1,
            "attempts": 1,
            "owner": "",
            "lease_until_ms": 0,
            "created_ms": now_ms,
            "updated_ms": now_ms,
        },
    )
    old_fields = ("round", "slot", "text", "reasoning", "tail", "answer", "finish_reason", "usage")
    for slot in range(ROUND_ZERO_STEPS):
        step = round_zero_step(slot).model_dump(include=set(old_fields))
        await store.redis.hset(keys.steps, f"r0:s{slot}", json.dumps(step))
    await store.enqueue(job_id, tenant="local")
    return job_id


@pytest.fixture
def model() -> Iterator[ModelServerHandle]:
    with serve_in_thread(ModelServerConfig(p_correct=1.0)) as server:
        yield server


async def test_a_job_of_the_unversioned_format_is_read_and_resumed(store: JobStore, model: ModelServerHandle) -> None:
    job_id = await write_unversioned_job(store, model.base_url)
    record = await store.get(job_id)
    assert (record.version, record.status, record.started_ms) == (UNVERSIONED_FORMAT, "queued", None)
    assert record.spec.params.population == SMALL["population"] and record.spec.params.straggler_policy == "wait"
    old_step = (await store.steps(job_id))["r0:s1"]
    assert (old_step.status, old_step.attempts, old_step.candidates, old_step.duration_s) == ("ok", 1, [], 0.0)

    async with running(store):
        assert await finished(store, job_id) == "completed"

    assert len(model.requests()) == ALL_STEPS - ROUND_ZERO_STEPS  # round 0 was never generated again
    steps = await store.steps(job_id)
    assert len(steps) == ALL_STEPS and steps["r0:s1"] == old_step
    record = await store.get(job_id)
    assert record.version == STORE_FORMAT_VERSION  # claimed by this release, so its later steps are in its format
    assert record.result is not None and record.result.answer == "70"


async def test_a_job_of_a_newer_format_is_refused_and_left_queued(store: JobStore, model: ModelServerHandle) -> None:
    job_id = await store.create(job_spec(model.base_url))
    meta = store.keys.job(job_id).meta
    newer_spec = json.loads(await store.redis.hget(meta, "spec")) | {"a_field_from_the_future": True}
    await store.redis.hset(meta, mapping={"v": STORE_FORMAT_VERSION + 1, "spec": json.dumps(newer_spec)})

    with pytest.raises(NewerFormat, match=f"stored format {STORE_FORMAT_VERSION + 1}"):
        await store.get(job_id)
    claim = await store.claim(job_id, "old-worker", lease_ms=10_000)
    assert (claim.outcome, claim.version) == ("newer", STORE_FORMAT_VERSION + 1)

    async with running(store, requeue_pending_after_s=0.2):
        await asyncio.sleep(1.0)  # the hint is popped, refused, and offered again by the janitor
    assert not model.requests()
    fields = await store.redis.hgetall(meta)
    assert (fields["status"], fields["attempts"], fields["fence"], fields["owner"]) == ("queued", "0", "0", "")
    assert await store.redis.zscore(store.keys.pending, job_id) is not None  # still offered to newer workers


async def poison(store: JobStore, job_id: str) -> None:
    """Claim the job, commit round 0, then let it be abandoned until claim dead-letters it."""
    claim = await store.claim(job_id, "host/1/1", lease_ms=1)
    for slot in range(ROUND_ZERO_STEPS):
        await store.commit(job_id, claim.fence, round_zero_step(slot), {"round": 0, "slot": slot})
    await asyncio.sleep(0.01)
    assert (await store.claim(job_id, "host/2/2", lease_ms=1, max_attempts=1)).outcome == "poisoned"


async def test_requeue_resumes_a_dead_lettered_job_from_its_steps(
    store: JobStore, model: ModelServerHandle, cli_env: dict[str, str]
) -> None:
    dead = await store.create(job_spec(model.base_url))
    await store.next_queued(0.1)
    await poison(store, dead)
    done = await store.create(job_spec(model.base_url))
    claim = await store.claim(done, "host/1/1", lease_ms=10_000)
    await store.finish(done, claim.fence, error=None, result=None)
    assert await store.redis.ttl(store.keys.job(dead).meta) > 0  # the terminal transition set the retention

    command = [sys.executable, "-m", "rsa_service.cli", "jobs", "requeue", dead, done, "--json"]
    process = await asyncio.create_subprocess_exec(*command, env=cli_env, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, err.decode()
    requeued, refused = json.loads(out)
    assert requeued == {"job_id": dead, "requeued": True, "status": "queued"}
    assert not refused["requeued"] and f"job {done} is completed" in refused["error"]

    record = await store.get(dead)
    assert (record.status, record.attempts, record.error, record.result, record.owner) == ("queued", 0, None, None, "")
    assert all([await store.redis.ttl(key) == -1 for key in store.keys.job(dead).all])  # no expiry mid-run
    assert not await store.redis.sismember(store.keys.dead, dead)
    with pytest.raises(NotDeadLettered, match="only jobs that failed for a transient reason"):
        await store.requeue(dead)  # queued now: nothing to requeue

    async with running(store):
        assert await finished(store, dead) == "completed"
    assert len(model.requests()) == ALL_STEPS - ROUND_ZERO_STEPS
    steps = await store.steps(dead)
    assert len(steps) == ALL_STEPS and steps["r0:s0"] == round_zero_step(0)
    assert (await store.get(dead)).attempts == 1
