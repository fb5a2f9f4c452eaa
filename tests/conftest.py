"""Shared fixtures: a real redis-server per test session (a cluster and a Sentinel setup for the tests that ask),
and a fresh key namespace per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    """Three primaries and three replicas on loopback, started once for the tests that ask for it."""
    cluster = ClusterProcesses(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelProcesses]:
    """A primary, a replica and three sentinels on loopback, started once for the tests that ask for it."""
    sentinel = SentinelProcesses(tmp_path_factory.mktemp("sentinel"))
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()
