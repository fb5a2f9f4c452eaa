"""uvicorn's httptools protocol with a deadline on request headers, which uvicorn itself does not have.

A connection that opens and sends nothing, or sends its headers a byte at a time, holds a socket and a parser for
as long as it likes under plain uvicorn. Here each request's headers must be complete within
`RSA_HEADER_TIMEOUT_S` of the connection opening (first request) or of the request's first byte (later ones on
a kept-alive connection); otherwise the answer is 408 and the connection is closed. Body reads have their own
deadline (`api.admission.BodyReader`).
"""

from __future__ import annotations

import asyncio
from functools import cache

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rsa_service.api.server_settings import ApiSettings

TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@cache
def header_timeout_s() -> float:
    """Read once per process: uvicorn creates the protocol itself, in each of `--processes` too."""
    return ApiSettings().header_timeout_s


class HeaderDeadline(HttpToolsProtocol):
    """`rsa serve`'s HTTP protocol (uvicorn `http=`)."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(header_timeout_s(), self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(TIMED_OUT)
            self.transport.close()
