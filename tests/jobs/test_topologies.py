"""The store on each Redis topology `RSA_REDIS_URL` names: URLs parsed, and a commit acknowledged only once a
replica has it when RSA_REDIS_MIN_REPLICAS asks for that (WAIT on the connection that wrote it)."""

from __future__ import annotations

import time

import pytest

from rsa_service.core.steps import StepResult
from rsa_service.jobs.redis_urls import parse_nodes, redis_client
from rsa_service.jobs.store import JobStore, NotReplicated
from tests.jobs.helpers import job_spec
from tests.redis_topologies import ClusterProcesses, RedisServer, SentinelProcesses

BACKEND = "openai:http://127.0.0.1:9/v1"


def test_urls_name_every_node_and_the_primary() -> None:
    nodes = parse_nodes("redis+sentinel://:p%40ss@10.0.0.1:26379,[::1]:26380/mymaster")
    assert nodes.hosts == (("10.0.0.1", 26379), ("::1", 26380))
    assert (nodes.path, nodes.password, nodes.tls) == ("mymaster", "p@ss", False)
    assert parse_nodes("rediss+cluster://h1:7000,h2:7001").tls
    with pytest.raises(ValueError, match=r"RSA_REDIS_URL: 'h1' is not HOST:PORT"):
        parse_nodes("redis+cluster://h1,h2:7000")
    with pytest.raises(ValueError, match="name the primary"):
        redis_client("redis+sentinel://h1:26379")


async def _commit_once(url: str, namespace: str, min_replicas: int, timeout_ms: int = 1000) -> bool:
    client = redis_client(url)
    try:
        store = JobStore(client, namespace=namespace, min_replicas=min_replicas, replica_timeout_ms=timeout_ms)
        job_id = await store.create(job_spec(BACKEND))
        claim = await store.claim(job_id, "w/1/1", lease_ms=30_000)
        written = await store.commit(job_id, claim.fence, StepResult(round=0, slot=0, text="kept"), {"round": 0})
        assert (await store.step(job_id, "r0:s0")) is not None
        return written
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
async def test_a_commit_waits_for_a_replica(topology: str, namespace: str, request: pytest.FixtureRequest) -> None:
    nodes: ClusterProcesses | SentinelProcesses = request.getfixturevalue(f"redis_{topology}")
    assert await _commit_once(nodes.url, namespace, min_replicas=1)


async def test_a_commit_no_replica_confirms_is_not_acknowledged(redis_server: RedisServer, namespace: str) -> None:
    started = time.monotonic()
    with pytest.raises(NotReplicated, match="reached 0 of 1 replicas"):
        await _commit_once(redis_server.url, namespace, min_replicas=1, timeout_ms=200)
    assert time.monotonic() - started < 5
