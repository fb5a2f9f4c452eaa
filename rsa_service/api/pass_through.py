"""The plain chat pass-through (`POST /v1/chat/completions` without `rsa`) as a clean proxy within limits.

The request goes upstream on the operator's key, so it gets the service's limits: `max_tokens` (or
`max_completion_tokens`) at most `RSA_MAX_PASS_THROUGH_TOKENS` (and set to the default when absent), `n` at most
`RSA_MAX_PASS_THROUGH_N`, and at most `RSA_MAX_PASS_THROUGH_REQUESTS` in flight per process (429 beyond). The
proxy asks upstream for an uncompressed answer (it relays bytes as they come, without `Content-Encoding`), and its
HTTP client keeps no cookies, so nothing one tenant's answer sets reaches another tenant's request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx2
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from rsa_service.api.errors import ApiError, field_error
from rsa_service.api.server_settings import ApiSettings
from rsa_service.settings import backend_api_key

DEFAULT_PASS_THROUGH_TOKENS = 4096
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
RELAYED_HEADERS = ("content-type", "retry-after")


def proxy_client(timeout: httpx2.Timeout) -> httpx2.AsyncClient:
    """The proxy's HTTP client: a cookie jar whose policy accepts no cookie from any domain."""
    return httpx2.AsyncClient(timeout=timeout, cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))


def _count(body: dict[str, Any], field: str, limit: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise field_error(field, f"must be a whole number of at least 1, not {json.dumps(value)}")
    if value > limit:
        raise field_error(field, f"must be at most {limit} (this server's limit), not {value}")
    return value


def limited_body(body: dict[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """`body` within the limits (422 naming the field otherwise), with a token budget when it named none."""
    tokens = [_count(body, field, settings.max_pass_through_tokens) for field in TOKEN_FIELDS]
    _count(body, "n", settings.max_pass_through_n)
    if all(value is None for value in tokens):
        return body | {"max_tokens": min(DEFAULT_PASS_THROUGH_TOKENS, settings.max_pass_through_tokens)}
    return body


class PassThroughSlots:
    """At most `limit` pass-through requests in flight; a request past it is refused at once (429), since an
    upstream generation may hold its slot for minutes."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def take(self) -> None:
        if self.in_flight >= self.limit:
            raise ApiError(
                429,
                f"{self.limit} pass-through requests are already in flight (the limit); retry later",
                kind="too-many-requests",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.in_flight += 1

    async def release(self) -> None:
        self.in_flight -= 1


async def proxy(request: Request, base_url: str, body: dict[str, Any]) -> Response:
    """Send `body` to an OpenAI-compatible backend and relay its answer, streaming or not, holding a slot."""
    slots: PassThroughSlots = request.app.state.pass_through
    slots.take()
    try:
        answer = await _send(request, base_url, body)
    except BaseException:
        await slots.release()
        raise

    async def done() -> None:
        await answer.aclose()
        await slots.release()

    relayed = {k: v for k, v in answer.headers.items() if k.lower() in RELAYED_HEADERS}
    return StreamingResponse(
        _relay(answer), status_code=answer.status_code, headers=relayed, background=BackgroundTask(done)
    )


async def _send(request: Request, base_url: str, body: dict[str, Any]) -> httpx2.Response:
    client: httpx2.AsyncClient = request.app.state.http
    key = backend_api_key(request.app.state.shared)
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    headers |= {"authorization": f"Bearer {key}"} if key else {}
    upstream = client.build_request("POST", base_url + "/chat/completions", content=json.dumps(body), headers=headers)
    try:
        answer = await client.send(upstream, stream=True)
    except httpx2.HTTPError as exc:
        raise ApiError(502, f"the backend did not answer: {type(exc).__name__}", kind="backend-unavailable") from None
    if answer.status_code >= 500:
        detail = (await answer.aread())[:300].decode(errors="replace")
        await answer.aclose()
        raise ApiError(502, f"the backend answered {answer.status_code}: {detail}", kind="backend-error")
    return answer


async def _relay(answer: httpx2.Response) -> AsyncIterator[bytes]:
    """The answer's bytes as they come (decoded, should a server compress despite `identity`)."""
    async for chunk in answer.aiter_bytes():
        yield chunk
