"""A live `rsa serve` app on loopback (uvicorn in a thread), with in-process workers, a real Redis and the
deterministic model server as its backend."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.api.workers import in_process_workers
from rsa_service.client import RSAClient
from rsa_service.settings import Settings
from tests.conftest import RedisServer
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread

KEY_A = "key-alpha-0123456789"
KEY_B = "key-bravo-0123456789"
SMALL = {"population": 4, "subset": 2, "rounds": 1, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 300}


@contextmanager
def serve_app(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            thread.join(0.025)
        if not server.started:
            raise RuntimeError("the API server did not start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@dataclass
class LiveAPI:
    url: str
    model: ModelServerHandle
    app: FastAPI

    def client(self, key: str | None = KEY_A, **options: Any) -> RSAClient:
        return RSAClient(base_url=self.url, api_key=key, **options)


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServerHandle]:
    # A context the default parameters fit (16K traces, 40K final), so jobs created with them pass the context check.
    with serve_in_thread(ModelServerConfig(reasoning_words=40, latency_ms=20, max_model_len=65536)) as server:
        yield server


ApiFactory = Callable[..., LiveAPI]


@pytest.fixture
def make_api(redis_server: RedisServer, namespace: str, model_server: ModelServerHandle) -> Iterator[ApiFactory]:
    """Start a live API; keyword arguments override ApiSettings fields; `workers=0` runs none."""
    with_stack: list[Any] = []

    def make(workers: int = 2, **overrides: Any) -> LiveAPI:
        shared = named_backends(
            Settings(
                redis_url=redis_server.url,
                namespace=namespace,
                backends={"toy": f"openai:{model_server.base_url}"},
                lease_s=3,
            )
        )
        options = {"api_keys": [KEY_A, KEY_B], "sse_ping_s": 0.5, "poll_after_s": 1} | overrides
        background = in_process_workers(workers, shared) if workers else None
        app = create_app(ApiSettings(**options), shared, background=background)
        context = serve_app(app)
        url = context.__enter__()
        with_stack.append(context)
        return LiveAPI(url, model_server, app)

    yield make
    for context in reversed(with_stack):
        context.__exit__(None, None, None)


@pytest.fixture
def api(make_api: ApiFactory) -> LiveAPI:
    return make_api()
