"""The SDK at its seam: an injected httpx2 transport. Retries, idempotency keys, timeouts, the public surface."""

from __future__ import annotations

import inspect
import json
import time

import httpx2
import pytest

import rsa_service.client as sdk
from rsa_service.client import (
    NOT_GIVEN,
    AsyncJobs,
    AsyncRSAClient,
    Jobs,
    RateLimitError,
    RSAClient,
    UnprocessableEntityError,
    WaitTimeout,
)
from rsa_service.client._base import SSEDecoder

JOB = {
    "id": "job_1",
    "status": "queued",
    "created_at": 1,
    "updated_at": 1,
    "backend": "toy",
    "params": {},
    "progress": {"stages": 3, "steps_total": 48},
}
PROBLEM_429 = {"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "slow down"}


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") or name in ("__init__",)
    }


def _comparable(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize(("sync", "async_"), [(RSAClient, AsyncRSAClient), (Jobs, AsyncJobs)])
def test_twins_have_the_same_public_signatures(sync: type, async_: type) -> None:
    ours, theirs = _public(sync), _public(async_)
    renames = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
    assert {renames.get(name, name) for name in ours} == set(theirs)
    for name, signature in ours.items():
        assert _comparable(signature) == _comparable(theirs[renames.get(name, name)]), name


def test_all_is_exactly_the_exported_surface() -> None:
    exported = {name for name in dir(sdk) if not name.startswith("_")}
    assert set(sdk.__all__) == exported
    assert len(sdk.__all__) == len(set(sdk.__all__))


def test_retries_honour_retry_after_and_reuse_the_idempotency_key() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx2.Response(429 if len(seen) == 1 else 503, json=PROBLEM_429, headers={"Retry-After": "0.2"})
        return httpx2.Response(202, json=JOB)

    client = RSAClient(base_url="http://api", api_key="k", transport=httpx2.MockTransport(handler))
    started = time.monotonic()
    job = client.jobs.create("2+2?", population=4, rounds=1)
    assert job.id == "job_1" and time.monotonic() - started >= 0.4
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1 and keys.pop().startswith("rsa-")
    assert json.loads(seen[0].content) == {"problem": "2+2?", "population": 4, "rounds": 1}
    assert seen[0].headers["authorization"] == "Bearer k"
    client.jobs.create("again")
    assert seen[-1].headers["idempotency-key"] not in {r.headers["idempotency-key"] for r in seen[:3]}


def test_gives_up_after_max_retries_and_never_retries_422() -> None:
    calls = {"n": 0}

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls["n"] += 1
        if request.url.path == "/v1/jobs" and request.method == "GET":
            return httpx2.Response(429, json=PROBLEM_429, headers={"Retry-After": "0"})
        return httpx2.Response(422, json=PROBLEM_429 | {"status": 422, "errors": [{"field": "x", "message": "bad"}]})

    client = RSAClient(base_url="http://api", max_retries=2, transport=httpx2.MockTransport(handler))
    with pytest.raises(RateLimitError) as limited:
        client.jobs.page()
    assert calls["n"] == 3 and limited.value.problem.detail == "slow down"
    with pytest.raises(UnprocessableEntityError) as invalid:
        client.jobs.create("q")
    assert calls["n"] == 4 and invalid.value.problem.errors and invalid.value.problem.errors[0].field == "x"


def test_bad_parameters_fail_before_any_request() -> None:
    client = RSAClient(base_url="http://api", transport=httpx2.MockTransport(lambda r: pytest.fail("sent")))
    with pytest.raises(ValueError, match="subset"):
        client.jobs.create("q", population=2, subset=3)


def test_timeouts_inherit_unless_given_and_none_disables() -> None:
    client = RSAClient(base_url="http://api", timeout=httpx2.Timeout(3.0, connect=1.0))
    assert client._timeout(NOT_GIVEN) == httpx2.Timeout(3.0, connect=1.0)
    assert client._timeout(None) == httpx2.Timeout(None)
    assert client._timeout(9.0) == httpx2.Timeout(9.0)
    assert not NOT_GIVEN and repr(NOT_GIVEN) == "NOT_GIVEN"


def test_environment_supplies_base_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSA_BASE_URL", "http://elsewhere:9/")
    monkeypatch.setenv("RSA_API_KEY", "env-key")
    client = RSAClient()
    assert client.base_url == "http://elsewhere:9" and client.api_key == "env-key"


def test_wait_follows_retry_after_and_times_out() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=JOB | {"status": "in_progress"}, headers={"Retry-After": "0.05"})

    client = RSAClient(base_url="http://api", transport=httpx2.MockTransport(handler))
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        client.jobs.wait("job_1", timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0


async def test_async_client_pages_through_list() -> None:
    pages = {
        None: {"data": [JOB, JOB | {"id": "job_2"}], "has_more": True, "next_cursor": "c1"},
        "c1": {"data": [JOB | {"id": "job_3"}], "has_more": False},
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=pages[request.url.params.get("after")])

    async with AsyncRSAClient(base_url="http://api", transport=httpx2.MockTransport(handler)) as client:
        ids = [job.id async for job in client.jobs.list(limit=2)]
    assert ids == ["job_1", "job_2", "job_3"]


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = [": ping", "id: 1-0", "event: step", 'data: {"round": 0}', "", "data: no id", ""]
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert [(e.id, e.type, e.data) for e in events] == [("1-0", "step", {"round": 0})]
