"""The embedded redis-server: left running while other processes share it, unless it is a scratch server."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rsa_service.jobs.embedded import EmbeddedRedis


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
