"""The retry rule list: which failures are retried, after how long, and which are final."""

from __future__ import annotations

from email.utils import formatdate

import aiohttp
import httpx2
import pytest
from aiohttp.client_reqrep import ConnectionKey

from rsa_service.backends.aiohttp_retry import AIOHTTP_ERRORS
from rsa_service.client._base import HTTPX2_ERRORS
from rsa_service.retry import HTTPFailure, RetryPolicy, decide, retry_after


def failure(status: int, message: str = "", **headers: str) -> HTTPFailure:
    return HTTPFailure(status=status, headers={k.replace("_", "-"): v for k, v in headers.items()}, message=message)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried(status: int) -> None:
    assert decide(failure(status)).verdict == "retry"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 501, 505])
def test_permanent_statuses_are_not(status: int) -> None:
    assert decide(failure(status)).verdict == "fail"


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens",
        "the request exceeds the available context size, try increasing it",
        "Requested token count exceeds the model's maximum context length of 4096 tokens",
        "context_length_exceeded",
    ],
)
def test_context_length_is_its_own_verdict(message: str) -> None:
    assert decide(failure(400, message)).verdict == "context_length"
    # Even a status that is otherwise retryable: the same prompt will never fit.
    assert decide(failure(413, message)).verdict == "context_length"


def test_server_hint_comes_first() -> None:
    assert decide(failure(400, x_should_retry="true")).verdict == "retry"
    assert decide(failure(503, x_should_retry="false")).verdict == "fail"


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "0.25"}) == 0.25
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "-4"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    now = 1_800_000_000.0
    assert retry_after({"retry-after": formatdate(now + 7, usegmt=True)}, now_s=now) == pytest.approx(7.0)
    assert retry_after({"retry-after": formatdate(now - 7, usegmt=True)}, now_s=now) == 0.0


def test_decision_carries_retry_after() -> None:
    assert decide(failure(429, retry_after="2")).retry_after_s == 2.0
    assert decide(failure(503)).retry_after_s is None


def test_policy_caps_retry_after_and_backoff() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base_s=1.0, max_wait_s=4.0)
    assert policy.wait_s(1, retry_after_s=100.0) == 4.0
    assert policy.wait_s(1, retry_after_s=0.5) == 0.5
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        waits = [policy.wait_s(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1, "backoff must be jittered"


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (httpx2.ReadTimeout("slow"), True),
        (httpx2.ConnectError("refused"), True),
        (httpx2.ReadError("reset"), True),
        (httpx2.RemoteProtocolError("peer closed"), True),
        (httpx2.UnsupportedProtocol("ftp://"), False),
        (aiohttp.SocketTimeoutError("slow"), True),
        (aiohttp.ConnectionTimeoutError("no route"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientOSError(104, "reset"), True),
        (aiohttp.ClientPayloadError("truncated"), True),
        (aiohttp.ClientSSLError(ConnectionKey("h", 443, True, True, None, None, None), OSError("bad cert")), False),
        (aiohttp.InvalidURL("ftp://"), False),
        (ValueError("bug"), False),
    ],
)
def test_transport_errors(exc: Exception, transient: bool) -> None:
    errors = HTTPX2_ERRORS if isinstance(exc, httpx2.HTTPError) else AIOHTTP_ERRORS
    assert errors.is_transient(exc) is transient
