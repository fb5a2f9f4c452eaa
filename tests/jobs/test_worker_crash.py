"""Crash-proofing with real processes: `rsa worker` subprocesses, a model server subprocess, real Redis.

A worker is killed, frozen past its lease, or loses Redis; jobs are raced for, cancelled, and poisoned. Every
test checks the two promises: nothing committed is lost, and nothing committed is generated again. The crash
tests run against each topology (`tests.redis_topologies`): one server, a 3-primary cluster, and Sentinel, where
losing Redis is the primary SIGKILLed and failed over (`sentinel-wait`: with RSA_REDIS_MIN_REPLICAS=1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rsa_service.jobs.redis_urls import redis_client
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import (
    SMALL_FLAGS,
    WorkerProcess,
    claims,
    finished,
    job_spec,
    rsa,
    status_of,
    step_events,
    wait_until,
    worker_env,
)
from tests.modelserver import ModelServerConfig, serve_in_subprocess
from tests.redis_topologies import RedisServer, SingleServer, Topology

pytestmark = pytest.mark.slow

LEASE_S = 2.0
ALL_STEPS = 12  # N=4 over T+1=3 stages
EVERY_TOPOLOGY = ["single", "cluster", "sentinel"]
MIN_REPLICAS = {"sentinel-wait": 1}


@pytest.fixture
def topology(request: pytest.FixtureRequest, redis_server: RedisServer) -> Topology:
    """One server unless a test is parametrized over topologies (indirectly, by name)."""
    name = getattr(request, "param", "single")
    if name == "single":
        return SingleServer(redis_server)
    topology: Topology = request.getfixturevalue("redis_cluster" if name == "cluster" else "redis_sentinel")
    return topology


@pytest.fixture
async def store(topology: Topology, namespace: str) -> AsyncIterator[JobStore]:
    client = redis_client(topology.url)
    yield JobStore(client, namespace=namespace, retention_s=3600)
    await client.aclose()


@pytest.fixture
def cli_env(topology: Topology, request: pytest.FixtureRequest, namespace: str, tmp_path: Path) -> dict[str, str]:
    callspec = getattr(request.node, "callspec", None)
    min_replicas = MIN_REPLICAS.get(callspec.params.get("topology", "") if callspec else "", 0)
    env = dict(os.environ, RSA_REDIS_URL=topology.url, RSA_NAMESPACE=namespace, RSA_DATA_DIR=str(tmp_path / "data"))
    return env | ({"RSA_REDIS_MIN_REPLICAS": str(min_replicas)} if min_replicas else {})


def start_workers(
    count: int, cli_env: dict[str, str], tmp_path: Path, name: str = "worker", **settings: object
) -> list[WorkerProcess]:
    env = worker_env(cli_env, **({"lease_s": LEASE_S, "worker_concurrency": 8} | settings))
    return [WorkerProcess(env, tmp_path / f"{name}{i}.log") for i in range(count)]


def owner_process(workers: list[WorkerProcess], owner: str) -> WorkerProcess:
    pid = int(owner.split("/")[1])
    return next(worker for worker in workers if worker.pid == pid)


async def committed_at_least(store: JobStore, job_id: str, count: int) -> bool:
    return await store.step_count(job_id) >= count


def seeds(steps: dict[str, Any]) -> dict[int, str]:
    return {step.seed: key for key, step in steps.items()}


async def assert_each_step_once(store: JobStore, job_id: str, requests: list[dict[str, Any]], before: dict) -> None:
    """All steps committed exactly once; none committed before the crash was requested again after it."""
    assert set((await step_events(store, job_id)).values()) == {1}
    assert await store.step_count(job_id) == ALL_STEPS
    asked = Counter(request["body"].get("seed") for request in requests)  # a body cut by SIGKILL has none
    for seed, key in seeds(before).items():
        assert asked[seed] == 1, f"committed step {key} was requested {asked[seed]} times"


@pytest.mark.parametrize("topology", EVERY_TOPOLOGY, indirect=True)
async def test_kill9_mid_round_another_worker_finishes_within_a_lease(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with serve_in_subprocess(ModelServerConfig(latency_ms=300)) as server:
        workers = start_workers(2, cli_env, tmp_path)
        try:
            job_id = await store.create(job_spec(server.base_url))
            await wait_until(lambda: committed_at_least(store, job_id, 5), 30, "round 1 under way")
            victim = owner_process(workers, (await claims(store, job_id))[0]["owner"])
            victim.kill()
            killed_ms = await store.now_ms()
            before = await store.steps(job_id)
            assert await finished(store, job_id, 60) == "completed"
        finally:
            for worker in workers:
                worker.stop()
        requests = server.requests()
    takeover = (await claims(store, job_id))[1]
    events = {event.data.get("fence"): event.id for event in await store.events(job_id) if event.type == "claimed"}
    taken_after_s = (int(events[takeover["fence"]].split("-")[0]) - killed_ms) / 1000
    assert taken_after_s <= LEASE_S + 1.5, taken_after_s  # a lease, plus the janitor's tick and some slack
    await assert_each_step_once(store, job_id, requests, before)


@pytest.mark.parametrize("topology", EVERY_TOPOLOGY, indirect=True)
async def test_sigstop_past_the_lease_then_sigcont_the_stale_worker_stops(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with serve_in_subprocess(ModelServerConfig(latency_ms=300)) as server:
        workers = start_workers(2, cli_env, tmp_path)
        try:
            job_id = await store.create(job_spec(server.base_url))
            await wait_until(lambda: committed_at_least(store, job_id, 5), 30, "round 1 under way")
            frozen = owner_process(workers, (await claims(store, job_id))[0]["owner"])
            frozen.signal(signal.SIGSTOP)
            before = await store.steps(job_id)
            assert await finished(store, job_id, 60) == "completed"
            woken_at = time.time()
            frozen.signal(signal.SIGCONT)
            await wait_until(lambda: asyncio.sleep(0, "lease lost" in frozen.log()), 10, "the stale worker to notice")
            await asyncio.sleep(1.0)
            assert frozen.process.poll() is None  # it stopped the job, not itself
        finally:
            for worker in workers:
                worker.stop()
        requests = server.requests()
    late = [
        (r["time"] - woken_at, r["body"].get("seed"), r["status"], r["fault"]) for r in requests if r["time"] > woken_at
    ]
    assert late == [], (late, [(r["time"] - woken_at, r["body"].get("seed")) for r in requests], frozen.log()[-3000:])
    assert "stale" not in (await store.get(job_id)).status
    await assert_each_step_once(store, job_id, requests, before)


@pytest.mark.parametrize("topology", [*EVERY_TOPOLOGY, "sentinel-wait"], indirect=True)
async def test_redis_kill9_mid_job_loses_nothing_committed(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path, topology: Topology, record_property: Any
) -> None:
    """One server restarts from its AOF and a cluster primary too; a Sentinel primary is failed over. Without
    RSA_REDIS_MIN_REPLICAS an asynchronous replica may lack the last commits: that figure is reported."""
    waits = "RSA_REDIS_MIN_REPLICAS" in cli_env
    with serve_in_subprocess(ModelServerConfig(latency_ms=300)) as server:
        (worker,) = start_workers(1, cli_env, tmp_path)
        try:
            job_id = await store.create(job_spec(server.base_url))
            await wait_until(lambda: committed_at_least(store, job_id, 5), 30, "round 1 under way")
            before = await store.steps(job_id)
            await asyncio.to_thread(topology.crash, store.keys.job(job_id).meta)
            assert await finished(store, job_id, 90) == "completed"
            assert worker.process.poll() is None
        finally:
            worker.stop()
        requests = server.requests()
    asked = Counter(request["body"].get("seed") for request in requests)
    lost = sorted(key for seed, key in seeds(before).items() if asked[seed] > 1)
    record_property("committed_steps_lost", len(lost))  # listed at the end of the run (tests/conftest.py)
    if topology.name == "sentinel" and not waits:
        assert await store.step_count(job_id) == ALL_STEPS
        return
    after = await store.steps(job_id)
    assert all(after[key] == step for key, step in before.items())
    await assert_each_step_once(store, job_id, requests, before)


@pytest.mark.parametrize("topology", ["single", "cluster"], indirect=True)
async def test_three_workers_race_for_thirty_jobs_one_owner_each(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with serve_in_subprocess(ModelServerConfig(latency_ms=20)) as server:
        workers = start_workers(3, cli_env, tmp_path)
        try:
            await wait_until(lambda: asyncio.sleep(0, all("started" in w.log() for w in workers)), 30, "workers")
            job_ids = [await store.create(job_spec(server.base_url, rounds=1)) for _ in range(30)]
            for job_id in job_ids * 2:  # duplicate hints: every job is raced for by several workers
                await store.enqueue(job_id)
            for job_id in job_ids:
                assert await finished(store, job_id, 90) == "completed"
        finally:
            for worker in workers:
                worker.stop()
    owners: Counter[str] = Counter()
    for job_id in job_ids:
        claimed = await claims(store, job_id)
        assert len(claimed) == 1, claimed  # one owner, never taken over
        owners[claimed[0]["owner"]] += 1
        assert set((await step_events(store, job_id)).values()) == {1}
    assert len(owners) == 3 and min(owners.values()) >= 3, owners


async def test_cancel_mid_round_aborts_requests_and_keeps_partial_steps(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    hang_aggregation = ModelServerConfig(faults=[{"delay_s": 60, "always": True, "match": "Candidate 1"}])
    with serve_in_subprocess(hang_aggregation) as server:
        (worker,) = start_workers(1, cli_env, tmp_path, lease_s=30)
        try:
            submitted = rsa(
                ["submit", "Compute it. ANSWER=70", "--backend", server.base_url, *SMALL_FLAGS, "--json"], cli_env
            )
            assert submitted.returncode == 0, submitted.stderr
            job_id = json.loads(submitted.stdout)["job_id"]
            await wait_until(lambda: asyncio.sleep(0, server.log()["in_flight"] == 4), 30, "round 1 in flight")
            cancelled = rsa(["jobs", "cancel", job_id, "--json"], cli_env)
            asked_ms = await store.now_ms()
            assert json.loads(cancelled.stdout) == {"job_id": job_id, "status": "cancelling"}
            assert await finished(store, job_id, 5) == "cancelled"
            assert (await store.now_ms()) - asked_ms < 2000
            await wait_until(lambda: asyncio.sleep(0, server.log()["in_flight"] == 0), 2, "requests aborted")
            await asyncio.sleep(0.5)
            assert len(server.requests()) == 8  # 4 in round 0, 4 aborted in round 1, nothing after
        finally:
            worker.stop()
    shown = json.loads(rsa(["jobs", "show", job_id, "--json"], cli_env).stdout)
    assert (shown["status"], shown["steps"], shown["result"]["status"]) == ("cancelled", 4, "cancelled")
    assert shown["result"]["answer"] is not None  # the partial result keeps round 0's answer
    events = [json.loads(line) for line in rsa(["jobs", "events", job_id, "--json"], cli_env).stdout.splitlines()]
    assert [e["type"] for e in events][-2:] == ["cancelling", "cancelled"]


async def test_poison_job_fails_after_the_attempt_cap_and_is_dead_lettered(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Every worker that claims this job dies (SIGKILL on claim): after `max_attempts` claims it is failed."""
    with serve_in_subprocess(ModelServerConfig(latency_ms=5_000)) as server:
        job_id = await store.create(job_spec(server.base_url))
        for attempt in range(1, 4):
            (worker,) = start_workers(1, cli_env, tmp_path, f"attempt{attempt}-", lease_s=1, max_attempts=2)
            try:
                await wait_until(
                    lambda n=attempt: _claimed_or_over(store, job_id, n), 30, f"claim {attempt} or the job's end"
                )
            except AssertionError as exc:  # seen once in CI, not reproduced since: keep what the worker said
                raise AssertionError(f"{exc}; the worker's log:\n{worker.log()[-3000:]}") from None
            finally:
                worker.kill()
    record = await store.get(job_id)
    assert record.status == "failed" and record.error is not None and record.error.title == "Poison job"
    assert len(await claims(store, job_id)) == 2
    assert await store.redis.sismember(store.keys.dead, job_id)


async def _claimed_or_over(store: JobStore, job_id: str, count: int) -> bool:
    return len(await claims(store, job_id)) >= count or await status_of(store, job_id) == "failed"
