"""What the service benchmarks share: the services a run talks to."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsa_service.jobs.embedded import EmbeddedRedis
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_subprocess


@contextmanager
def services(config: ModelServerConfig) -> Iterator[tuple[str, ModelServerHandle, Path]]:
    """A scratch directory, the embedded Redis (AOF on) inside it and a model server process: (Redis URL, server,
    directory for logs and files), all removed afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        with EmbeddedRedis(data / "redis", shared=False) as url, serve_in_subprocess(config) as server:
            yield url, server, data
