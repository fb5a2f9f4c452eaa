"""A backend name listing several replicas (`backends.fleet`), against real model servers on 127.0.0.1: lineages
stick to a replica and carry their session header; a replica killed mid-job is taken out, its requests retried
elsewhere and counted once, and it is back in rotation when it returns."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest
from prometheus_client import REGISTRY

from rsa_service.backends import BackendOptions, ChatMessage, GenerationRequest
from rsa_service.backends.fleet import FleetBackend
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings
from tests.jobs.helpers import finished, job_spec, running, wait_until
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_subprocess, serve_in_thread

N = 12
ALL_STEPS = N * 3  # T=2: three stages


def _request(lineage: str, seed: int) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage(role="user", content="Compute it. ANSWER=7"),), max_tokens=50, seed=seed, lineage=lineage
    )


def _replica_metric(name: str, backend: str, replica: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"backend": backend, "replica": replica, **labels}) or 0.0


async def test_a_lineage_stays_on_its_replica_and_carries_its_session_header() -> None:
    with serve_in_thread() as first, serve_in_thread() as second:
        fleet = FleetBackend("pair", [first.base_url, second.base_url], BackendOptions(model="toy"))
        try:
            for seed in range(4):  # one at a time: nothing in flight, so only stickiness keeps a lineage in place
                await fleet.generate(_request("job_a/s0", seed))
                await fleet.generate(_request("job_a/s1", seed))
        finally:
            await fleet.aclose()
        sessions = [Counter(r["session"] for r in server.requests()) for server in (first, second)]
    assert sorted(sessions, key=lambda c: sorted(c)) == [Counter({"job_a/s0": 4}), Counter({"job_a/s1": 4})]


def _answered(server: ModelServerHandle) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r["status"] == 200]


@pytest.mark.slow
async def test_a_replica_killed_mid_job_is_taken_out_and_back_and_nothing_is_counted_twice(store: JobStore) -> None:
    config = ModelServerConfig(latency_ms=400)
    name = f"fleet-{secrets.token_hex(3)}"  # the metrics' labels are this test's alone
    with ExitStack() as stack:
        servers = [stack.enter_context(serve_in_subprocess(config)) for _ in range(3)]
        victim_port = int(servers[2].root_url.rsplit(":", 1)[1])
        settings = Settings(
            backends={name: [server.base_url for server in servers]},
            model="toy",
            backend_retry_backoff_s=0.2,
            backend_retry_max_wait_s=1.0,
        )
        pool = BackendPool(settings)
        fleet = await pool.get(name)
        assert isinstance(fleet, FleetBackend)
        specs = [replica.spec for replica in fleet.replicas]
        async with running(store, pool, concurrency=N):
            job_id = await store.create(job_spec(name, population=N, rounds=2))
            await wait_until(lambda: asyncio.sleep(0, servers[2].log()["in_flight"] > 0), 30, "the victim busy")
            servers[2].process.kill()  # type: ignore[union-attr]
            await wait_until(lambda: asyncio.sleep(0, fleet.replicas[2].failures > 0), 30, "the victim taken out")
            assert _replica_metric("rsa_replica_ejections_total", name, specs[2]) >= 1
            revived = stack.enter_context(serve_in_subprocess(config, port=victim_port))
            assert await finished(store, job_id, 90) == "completed"
        await pool.aclose()
        answered = [_answered(server) for server in (servers[0], servers[1], revived)]
    ok = [_replica_metric("rsa_replica_requests_total", name, spec, outcome="ok") for spec in specs]
    # Every committed step was answered once, by one replica: the killed one's unanswered requests were retried
    # elsewhere and are not counted.
    assert sum(ok) == ALL_STEPS == await store.step_count(job_id)
    seeds = Counter(r["body"]["seed"] for requests in answered for r in requests)
    assert max(seeds.values()) == 1
    assert answered[2], "the revived replica was never used again"
    assert _replica_metric("rsa_replica_up", name, specs[2]) == 1
    live = ok[:2]
    assert abs(live[0] - live[1]) <= 0.2 * sum(live) / 2, ok  # the two that never failed, within 20% of even
    assert {r["session"] for requests in answered for r in requests} <= {f"{job_id}/s{slot}" for slot in range(N)}
