"""The worker in-process against a real Redis and a real HTTP model server: budgets, stopping rules, janitor,
shared rate, drain, backend resolution. Crash behaviour with real processes is in test_worker_crash.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.gate import SharedRate
from rsa_service.jobs.redis_urls import redis_client
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings
from tests.conftest import RedisServer
from tests.jobs.helpers import finished, job_spec, running, status_of, step_events, wait_until
from tests.modelserver import ModelServerConfig, serve_in_thread


async def test_token_budget_completes_with_the_best_answer_and_says_why(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig()) as server:
        job_id = await store.create(job_spec(server.base_url, max_total_tokens=600))
        async with running(store):
            assert await finished(store, job_id) == "completed"
    result = (await store.get(job_id)).result
    assert result is not None and result.stopped_reason is not None
    assert result.stopped_reason.startswith("token budget of 600 reached")
    assert result.answer is not None and result.usage.prompt_tokens + result.usage.completion_tokens >= 600
    assert sum((await step_events(store, job_id)).values()) < 12


async def test_wall_budget_stops_mid_round(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig(latency_ms=400)) as server:
        job_id = await store.create(job_spec(server.base_url, max_wall_s=0.6))
        async with running(store):
            assert await finished(store, job_id) == "completed"
    result = (await store.get(job_id)).result
    assert result is not None and result.stopped_reason == "wall time budget of 0.6s reached"
    assert result.answer is not None
    assert [r.round for r in result.rounds] == [0]


async def test_round_deadline_with_quorum_records_the_straggler(store: JobStore) -> None:
    slow_first = ModelServerConfig(p_correct=1.0, faults=[{"delay_s": 5, "times": 1}])
    with serve_in_thread(slow_first) as server:
        spec = job_spec(server.base_url, round_deadline_s=0.5, straggler_policy="quorum", quorum=0.75)
        job_id = await store.create(spec)
        async with running(store):
            assert await finished(store, job_id) == "completed"
    steps = await store.steps(job_id)
    stragglers = [key for key, step in steps.items() if step.status == "straggler"]
    assert len(stragglers) == 1 and stragglers[0].startswith("r0:")
    result = (await store.get(job_id)).result
    assert result is not None and result.rounds[0].stragglers == 1 and result.answer == "70"


async def test_agreement_threshold_stops_early(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig(p_correct=1.0)) as server:
        job_id = await store.create(job_spec(server.base_url, stop_agreement=0.9))
        async with running(store):
            assert await finished(store, job_id) == "completed"
        assert len(server.requests()) == 4
    result = (await store.get(job_id)).result
    assert result is not None and result.answer == "70"
    assert result.stopped_reason == "agreement 1.00 reached 0.9 after round 0"


async def test_janitor_requeues_an_expired_lease_and_a_lost_hint(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig()) as server:
        abandoned = await store.create(job_spec(server.base_url))
        await store.next_queued(0.1)
        await store.claim(abandoned, "otherhost/1/1", lease_ms=300)  # a worker that died holding the job
        lost_hint = await store.create(job_spec(server.base_url))
        await store.next_queued(0.1)  # popped by a worker that died before claiming
        async with running(store, requeue_pending_after_s=0.5):
            assert await finished(store, abandoned) == "completed"
            assert await finished(store, lost_hint) == "completed"
    assert (await store.get(abandoned)).attempts == 2


async def test_shared_rate_paces_every_worker_of_the_namespace(store: JobStore) -> None:
    first, second = SharedRate(store, 20, burst=1), SharedRate(store, 20, burst=1)
    started = time.monotonic()
    await asyncio.gather(*(rate.acquire() for rate in [first, second] * 5))
    elapsed = time.monotonic() - started
    assert 0.42 <= elapsed < 2.0, elapsed  # 10 requests at 20/s: 9 intervals of 50 ms


async def test_drain_lets_in_flight_generations_commit_then_releases(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig(latency_ms=800)) as server:
        job_id = await store.create(job_spec(server.base_url))
        async with running(store, concurrency=2, drain_grace_s=10):
            await wait_until(lambda: asyncio.sleep(0, len(server.requests()) == 2), 10, "two requests in flight")
        assert len(server.requests()) == 2
    record = await store.get(job_id)
    assert (record.status, record.attempts, record.owner) == ("queued", 0, "")
    assert sorted(await step_events(store, job_id)) == ["r0:s0", "r0:s1"]
    assert await store.next_queued(0.1) == job_id


async def test_drain_past_its_grace_aborts_requests_and_releases(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig(latency_ms=10_000)) as server:
        job_id = await store.create(job_spec(server.base_url))
        async with running(store, drain_grace_s=0.2):
            await wait_until(lambda: asyncio.sleep(0, len(server.requests()) == 4), 10, "round 0 in flight")
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2.0
    assert await status_of(store, job_id) == "queued" and not await store.step_count(job_id)


async def test_a_job_naming_an_unknown_backend_fails_with_the_known_names(store: JobStore) -> None:
    settings = Settings(backends={"default": "openai:http://127.0.0.1:9/v1"})
    job_id = await store.create(job_spec("openai:http://evil.example/v1"))
    async with running(store, BackendPool(settings, allow_specs=False)):
        assert await finished(store, job_id) == "failed"
    error = (await store.get(job_id)).error
    assert error is not None and error.status == 422
    assert "not a configured backend name (known: default)" in (error.detail or "")


async def test_backend_pool_resolves_names_and_shares_open_backends() -> None:
    pool = BackendPool(Settings(backends={"fast": "openai:http://127.0.0.1:9/v1"}))
    assert pool.resolve("fast") == "openai:http://127.0.0.1:9/v1"
    assert pool.resolve("http://h:1/v1") == "http://h:1/v1"
    with pytest.raises(ValueError, match="backend: 'nope'"):
        pool.resolve("nope")
    first = await pool.get("fast", "m")
    assert await pool.get("openai:http://127.0.0.1:9/v1", "m") is first
    assert await pool.get("fast", "other") is not first
    await pool.aclose()


@pytest.mark.parametrize(("words", "tau"), [(5, 100), (200, 40)])
async def test_tails_are_counted_only_when_a_trace_may_exceed_tau(store: JobStore, words: int, tau: int) -> None:
    """A trace whose whole completion is within τ is kept whole with no tokenize call; a longer one is cut."""
    with serve_in_thread(ModelServerConfig(reasoning_words=words)) as server:
        job_id = await store.create(job_spec(server.base_url, tail_tokens=tau))
        async with running(store):
            assert await finished(store, job_id) == "completed"
        tokenize_calls = server.log()["tokenize_calls"]
    steps = [step for step in (await store.steps(job_id)).values() if step.round < 2]
    assert all(step.tail_tokens <= tau and step.reasoning.endswith(step.tail) for step in steps)
    if words == 5:
        assert all(step.tail == step.reasoning and step.usage.completion_tokens <= tau for step in steps)
        assert tokenize_calls == 0
    else:
        assert all(step.source_tokens > tau and len(step.tail) < len(step.reasoning) for step in steps)
        assert tokenize_calls >= len(steps)  # at least one count a tail (the usage hint spares the whole text's)


async def test_a_full_redis_pool_is_back_pressure_not_an_outage(redis_server: RedisServer, namespace: str) -> None:
    """Far more generations in flight than pooled Redis connections: commands wait for one, no attempt is lost."""
    client = redis_client(redis_server.url, max_connections=3)
    store = JobStore(client, namespace=namespace)
    try:
        with serve_in_thread(ModelServerConfig()) as server:
            jobs = [await store.create(job_spec(server.base_url, seed=seed)) for seed in range(4)]
            async with running(store, concurrency=64) as worker:
                for job_id in jobs:
                    assert await finished(store, job_id) == "completed"
        assert worker.outcomes == {"completed": 4}
        assert [(await store.get(job_id)).attempts for job_id in jobs] == [1, 1, 1, 1]
    finally:
        await client.aclose()


async def test_a_round_cut_at_its_quorum_goes_on_with_the_quorum_it_was_cut_at(store: JobStore) -> None:
    five_slow = ModelServerConfig(p_correct=1.0, faults=[{"delay_s": 30, "times": 5}])
    with serve_in_thread(five_slow) as server:
        spec = job_spec(
            server.base_url,
            population=8,
            subset=2,
            rounds=1,
            round_deadline_s=0.5,
            straggler_policy="quorum",
            quorum=0.25,
        )
        job_id = await store.create(spec)
        async with running(store):
            assert await finished(store, job_id, timeout_s=60) == "completed"
    result = (await store.get(job_id)).result
    assert result is not None and result.error is None and result.answer == "70"
    assert result.rounds[0].stragglers >= 1
