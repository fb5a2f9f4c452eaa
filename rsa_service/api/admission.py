"""What a request must get through before it costs the service anything shared.

1. `BodyReader` (ASGI): the whole body arrives within a deadline and under the size limit, or the answer is 408 or
   413 from here; the app then reads it from memory. A client trickling its body holds only its own connection.
2. `admitted` (a route dependency): the caller's key is checked, then the request waits for one of the gate's
   slots, which bound the plain requests that use Redis at once. So neither a slow body nor a missing key ever
   holds a slot. Health checks, metrics and event streams take no slot (streams have caps of their own).

Header reads have their deadline in the HTTP protocol (`api.header_deadline`), before any of this runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rsa_service.api import errors
from rsa_service.api.auth import tenant


class BodyReader:
    """Read the request body up front: 415 unless it is JSON, 413 over `max_bytes` (declared or sent, chunked too),
    408 when it has not all arrived `timeout_s` after the request began. Requests that announce no body pass
    straight through."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"]) if scope["type"] == "http" else {}
        if b"content-length" not in headers and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        kind = headers.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower()
        if kind != b"application/json" and not kind.endswith(b"+json"):
            detail = (
                f"the request body must be JSON (Content-Type: application/json), not {kind.decode(errors='replace')}"
            )
            await self._refuse(415, detail, "unsupported-media-type", scope, receive, send, close=True)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(413, self._too_large(), "body-too-large", scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            detail = f"the request body did not arrive within {self.timeout_s:g} s"
            await self._refuse(408, detail, "body-timeout", scope, receive, send, close=True)
            return
        if body is None:
            await self._refuse(413, self._too_large(), "body-too-large", scope, receive, send, close=True)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The body, or None past the size limit (or when the client left: the app then sees its disconnect)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts)
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_bytes:
                return None
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    async def _refuse(
        status: int, detail: str, kind: str, scope: Scope, receive: Receive, send: Send, *, close: bool = False
    ) -> None:
        """Answer at once; `close` when unread body bytes remain, so the connection is not reused mid-body."""
        headers = {"Connection": "close"} if close else None
        response = errors.problem(status, detail, kind=kind, instance=scope["path"], headers=headers)
        await response(scope, receive, send)

    def _too_large(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body read up front, then passes through (to see a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def admitted(request: Request, owner: str = Depends(tenant)) -> AsyncIterator[str]:
    """Route dependency: the caller's tenant, holding a gate slot while the route runs (after the body was read and
    the key checked)."""
    gate: asyncio.Semaphore = request.app.state.gate
    async with gate:
        yield owner


class HeadAsGet:
    """Answer HEAD on every GET route (Starlette routes answer only the methods they name): the GET's status and
    headers, no body. Event streams are left out: a stream's HEAD would hold its subscription open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)
