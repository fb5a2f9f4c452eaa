"""/readyz tells the truth: 503 naming the backend soon after its model server dies, 200 again once it is back."""

from __future__ import annotations

import time

import httpx2

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.settings import Settings
from tests.api.conftest import serve_app
from tests.api.processes import RestartableModelServer
from tests.modelserver import ModelServerConfig
from tests.redis_topologies import RedisServer

DEADLINE_S = 10.0


def _until(http: httpx2.Client, status: int) -> tuple[float, httpx2.Response]:
    started = time.monotonic()
    while (answer := http.get("/readyz")).status_code != status:
        assert time.monotonic() - started < DEADLINE_S * 2, answer.text
        time.sleep(0.2)
    return time.monotonic() - started, answer


def test_readyz_follows_the_backend_down_and_up(redis_server: RedisServer, namespace: str) -> None:
    with RestartableModelServer(ModelServerConfig()) as model:
        shared = named_backends(
            Settings(redis_url=redis_server.url, namespace=namespace, backends={"toy": f"openai:{model.base_url}"})
        )
        app = create_app(ApiSettings(readiness_timeout_s=1, readiness_cache_s=1), shared)
        with serve_app(app) as url, httpx2.Client(base_url=url, timeout=10) as http:
            assert http.get("/readyz").json() == {"status": "ready", "checks": ["backend toy", "redis"]}
            model.kill()
            took, down = _until(http, 503)
            assert took < DEADLINE_S
            assert down.headers["content-type"] == "application/problem+json"
            assert "backend toy" in down.json()["detail"] and "redis" not in down.json()["detail"]
            model.start()
            took, _ = _until(http, 200)
            assert took < DEADLINE_S
