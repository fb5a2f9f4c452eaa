"""The plain chat pass-through is a clean proxy within limits: decoded bytes for the official `openai` client
whatever the upstream compresses, no cookie carried from one tenant's answer to another's request, `max_tokens`
and `n` within the server's limits, and a bounded number in flight. The backend pool is bounded too."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import openai
import pytest

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.settings import Settings
from tests.api.conftest import KEY_A, KEY_B, serve_app
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread
from tests.redis_topologies import RedisServer

A = {"Authorization": f"Bearer {KEY_A}"}
CHAT = {"model": "toy", "messages": [{"role": "user", "content": "Say it. ANSWER=3"}]}


@pytest.fixture
def upstream() -> Iterator[ModelServerHandle]:
    with serve_in_thread(ModelServerConfig(gzip=True, set_cookie="session=tenant-a-secret; Path=/")) as server:
        yield server


@pytest.fixture
def proxy_url(upstream: ModelServerHandle, redis_server: RedisServer, namespace: str) -> Iterator[str]:
    shared = named_backends(
        Settings(redis_url=redis_server.url, namespace=namespace, backends={"toy": f"openai:{upstream.base_url}"})
    )
    settings = ApiSettings(api_keys=[KEY_A, KEY_B], max_pass_through_tokens=1000, max_pass_through_n=2)
    with serve_app(create_app(settings, shared)) as url:
        yield url


def test_the_openai_client_reads_a_compressing_upstream_and_no_cookie_crosses_tenants(
    upstream: ModelServerHandle, proxy_url: str
) -> None:
    for key in (KEY_A, KEY_B):
        client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="toy", messages=CHAT["messages"], max_tokens=200)
        assert "3" in (answer.choices[0].message.content or "")
    requests = upstream.requests()
    assert len(requests) == 2 and [request["cookie"] for request in requests] == [None, None]
    with httpx2.Client(base_url=proxy_url, headers=A) as http:
        relayed = http.post("/v1/chat/completions", json=CHAT | {"max_tokens": 50})
    assert "set-cookie" not in relayed.headers and "content-encoding" not in relayed.headers


def test_max_tokens_and_n_are_within_the_limits(upstream: ModelServerHandle, proxy_url: str) -> None:
    with httpx2.Client(base_url=proxy_url, headers=A) as http:
        for field, value in (("max_tokens", 10**9), ("max_completion_tokens", 1001), ("n", 1000), ("n", True)):
            refused = http.post("/v1/chat/completions", json=CHAT | {field: value})
            assert refused.status_code == 422, (field, refused.text)
            assert refused.json()["errors"][0]["field"] == field
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert [request["body"]["max_tokens"] for request in upstream.requests()] == [1000]  # none went up but this


async def test_the_backend_pool_is_bounded() -> None:
    pool = BackendPool(Settings(backends={"toy": "openai:http://127.0.0.1:9/v1"}, max_open_backends=4))
    opened = [await pool.get("toy", f"model-{n}") for n in range(300)]
    assert pool.open_count == 4
    assert await pool.get("toy", "model-299") is opened[-1]  # the recent ones stay open
    await pool.aclose()
