"""The remote backend's HTTP transport: httpx2's own, over a pool made for many requests in flight to one server.

httpcore2's pool rescans every connection it holds on each request and on each response close, and probes each
idle one for a server-side close. With 64 generations in flight against a fast server, that was a quarter of a
worker's CPU. The pool here takes the most recently used idle connection and probes only that one, over asyncio's
own transports (`streams.py`). `AsyncHTTPTransport` takes no pool, so the one it builds is replaced; with a proxy
in the environment httpx2 is left to its own transports.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import urllib.request
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Self

import httpcore2
import httpx2

from rsa_service.backends.streams import AsyncioBackend

_Origin = tuple[bytes, bytes, int]  # scheme, host, port: httpcore2's Origin is not hashable


class _Returning:
    """A response body that hands its connection back to the pool when closed."""

    def __init__(
        self, stream: AsyncIterable[bytes], pool: _Pool, connection: httpcore2.AsyncHTTPConnection, origin: _Origin
    ) -> None:
        self._stream = stream
        self._pool: _Pool | None = pool
        self._connection = connection
        self._origin = origin

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self._stream)

    async def aclose(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        pool.release_slot()
        try:
            await self._stream.aclose()  # type: ignore[attr-defined]
        finally:
            await pool.put_back(self._connection, self._origin)


class _Pool:
    """HTTP/1.1 keep-alive connections for asyncio, the most recently used idle one first.

    A request costs O(1) whatever the number of connections: a connection past its keep-alive expiry or closed by
    the server is dropped when it comes up, and each check-in also drops the oldest idle one if it has expired,
    so a pool whose load fell does not keep dead sockets. `max_connections` caps the requests in flight (a request
    past it waits, up to the pool timeout), `max_keepalive_connections` the idle connections kept; httpcore2 caps
    open connections instead, idle ones included, which for one origin comes to the same."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx2.Limits) -> None:
        self._ssl_context = ssl_context
        self._keepalive_expiry = limits.keepalive_expiry
        self._max_idle = sys.maxsize if limits.max_keepalive_connections is None else limits.max_keepalive_connections
        self._slots = asyncio.Semaphore(sys.maxsize if limits.max_connections is None else limits.max_connections)
        self._waiting = 0  # requests waiting for a slot: a connection coming free is kept for them
        self._idle: dict[_Origin, deque[httpcore2.AsyncHTTPConnection]] = {}  # oldest first
        self._busy: set[httpcore2.AsyncHTTPConnection] = set()
        self._backend = AsyncioBackend()

    async def handle_async_request(self, request: httpcore2.Request) -> httpcore2.Response:
        url = request.url
        if url.scheme not in (b"http", b"https"):
            raise httpcore2.UnsupportedProtocol(f"Unsupported URL scheme {url.scheme.decode()!r}.")
        await self._acquire_slot(request.extensions.get("timeout", {}).get("pool"))
        origin = (url.origin.scheme, url.origin.host, url.origin.port)
        try:
            while True:
                connection = await self._check_out(origin, url.origin)
                try:
                    response = await connection.handle_async_request(request)
                except httpcore2.ConnectionNotAvailable:
                    await self.put_back(connection, origin)  # closed underneath: another one, on the same slot
                    continue
                except BaseException:
                    await self.put_back(connection, origin)
                    raise
                return httpcore2.Response(
                    status=response.status,
                    headers=response.headers,
                    content=_Returning(response.stream, self, connection, origin),  # type: ignore[arg-type]
                    extensions=response.extensions,
                )
        except BaseException:
            self.release_slot()
            raise

    async def _acquire_slot(self, timeout: float | None) -> None:  # noqa: ASYNC109 (httpcore's pool timeout)
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpcore2.PoolTimeout("No connection came free within the pool timeout.") from None
        finally:
            self._waiting -= 1

    def release_slot(self) -> None:
        self._slots.release()

    async def _check_out(self, key: _Origin, origin: httpcore2.Origin) -> httpcore2.AsyncHTTPConnection:
        idle = self._idle.setdefault(key, deque())
        while idle:
            connection = idle.pop()
            if not connection.has_expired():
                break
            await connection.aclose()
        else:
            connection = httpcore2.AsyncHTTPConnection(
                origin=origin,
                ssl_context=self._ssl_context,
                keepalive_expiry=self._keepalive_expiry,
                network_backend=self._backend,
            )
        self._busy.add(connection)
        return connection

    async def put_back(self, connection: httpcore2.AsyncHTTPConnection, origin: _Origin) -> None:
        """To the idle list if it can carry another request and is wanted, else closed."""
        self._busy.discard(connection)
        idle = self._idle.setdefault(origin, deque())
        if idle and idle[0].has_expired():
            await idle.popleft().aclose()
        if connection.is_available() and len(idle) < self._max_idle + self._waiting:
            idle.append(connection)
        elif not connection.is_closed():
            await connection.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        connections = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
        self._busy.clear()
        self._idle.clear()
        for connection in connections:
            await connection.aclose()


def _proxied(url: str) -> bool:
    """Whether the environment routes `url` through a proxy (then httpx2 builds its proxy transports itself)."""
    proxies = urllib.request.getproxies()
    parsed = httpx2.URL(url)
    return bool(proxies.get(parsed.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(parsed.host)


def pooled_transport(url: str, ssl_context: ssl.SSLContext, limits: httpx2.Limits) -> httpx2.AsyncHTTPTransport | None:
    """A transport for requests to `url`, or None to let httpx2 choose (a proxy applies)."""
    if _proxied(url):
        return None
    transport = httpx2.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    transport._pool = _Pool(ssl_context, limits)  # type: ignore[assignment]
    return transport
