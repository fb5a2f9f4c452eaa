"""Shared fixtures: a real redis-server per test session (a cluster and a Sentinel setup for the tests that ask),
and a fresh key namespace per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from rsa_service.jobs.datadir import server_version
from rsa_service.jobs.embedded import find_redis_server
from rsa_service.jobs.store import JobStore
from tests.redis_topologies import ClusterProcesses, RedisServer, SentinelProcesses


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: Redis, namespace: str) -> JobStore:
    return JobStore(redis_client, namespace=namespace, retention_s=3600)


@pytest.fixture
def cli_env(redis_server: RedisServer, namespace: str, tmp_path: Path) -> dict[str, str]:
    """Environment for `rsa` subprocesses that share the test's Redis and namespace."""
    env = dict(os.environ)
    env.update(RSA_REDIS_URL=redis_server.url, RSA_NAMESPACE=namespace, RSA_DATA_DIR=str(tmp_path / "data"))
    return env


def _needs_redis7() -> None:
    """Cluster and Sentinel setups use Redis 7 options (`cluster-port`, `redis-cli --cluster`); .ci/run installs it."""
    if server_version(find_redis_server()).major < 7:
        pytest.skip("needs redis-server 7 on PATH (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    """Three primaries and three replicas on loopback, started once for the tests that ask for it."""
    _needs_redis7()
    cluster = ClusterProcesses(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelProcesses]:
    """A primary, a replica and three sentinels on loopback, started once for the tests that ask for it."""
    _needs_redis7()
    sentinel = SentinelProcesses(tmp_path_factory.mktemp("sentinel"))
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report what each Redis crash test lost: an asynchronous replica may lack the last commits on failover."""
    lost = [
        (report.nodeid, value)
        for report in terminalreporter.stats.get("passed", [])
        for name, value in report.user_properties
        if name == "committed_steps_lost"
    ]
    if lost:
        terminalreporter.write_sep("-", "committed steps lost in a Redis crash (and generated again)")
        for nodeid, value in lost:
            terminalreporter.write_line(f"{value}  {nodeid}")
