"""`rsa serve` as a real subprocess on a free loopback port, for tests that load it from outside (many streams,
slow clients, outages): the server's event loop is then not shared with the test's own clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from tests.api.conftest import KEY_A, KEY_B
from tests.modelserver import READY_PREFIX, ModelServerConfig, ModelServerHandle, config_argv
from tests.redis_topologies import RedisServer, _free_port

START_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parents[2]


def _inherited() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("RSA_")}


def wait_healthy(url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"rsa serve at {url} did not come up")


@contextmanager
def rsa_serve(
    redis_server: RedisServer, namespace: str, backend_url: str, *, workers: int = 2, **env: str
) -> Iterator[str]:
    """`rsa serve` with backend `toy` at `backend_url`, keys KEY_A and KEY_B; `env` adds RSA_* settings."""
    port = _free_port()
    settings = {
        "RSA_REDIS_URL": redis_server.url,
        "RSA_NAMESPACE": namespace,
        "RSA_BACKENDS": json.dumps({"toy": f"openai:{backend_url}"}),
        "RSA_API_KEYS": f"{KEY_A},{KEY_B}",
        "PYTHONPATH": str(REPO),
    }
    argv = [sys.executable, "-m", "rsa_service.cli", "serve", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen([*argv, "--log-level", "warning"], env={**_inherited(), **settings, **env}, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class RestartableModelServer:
    """The test model server as a subprocess on one fixed port, so that it can be killed and started again there
    (as a restarted model server would be)."""

    def __init__(self, config: ModelServerConfig) -> None:
        self.config = config
        self.port = _free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ModelServerHandle:
        argv = [sys.executable, "-m", "tests.modelserver", "--port", str(self.port), *config_argv(self.config)]
        self.process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"modelserver did not start: {line!r}")
        return ModelServerHandle(f"http://127.0.0.1:{self.port}", self.process)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def __enter__(self) -> RestartableModelServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()
