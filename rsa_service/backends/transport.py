"""The remote backend's HTTP transport: httpx2's own, over a pool whose idle-connection probe is cheap.

Before handing out a keep-alive connection, httpcore2 checks every idle pooled connection for a server-side close,
on each request and on each response close. Its anyio streams answer that probe by rebuilding their socket
attributes (a dict of lambdas and a getpeername call) every time: with 64 generations in flight against a fast
server, the probe was a fifth of a worker's CPU. The streams here keep their socket and poll it directly, which is
what the probe asks in the end. `AsyncHTTPTransport` takes no network backend, so the pool it builds is replaced by
an identical one that has ours; with a proxy in the environment httpx2 is left to its own transports.
"""

from __future__ import annotations

import select
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2


def is_readable(sock: socket.socket | None) -> bool:
    """True when reading would not block. On an idle keep-alive connection that means the server closed it (or
    sent something unasked), so the pool must not reuse it; a socket that is gone counts as readable too."""
    if sock is None or sock.fileno() < 0:
        return True
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore2.AsyncNetworkStream):
    """Delegates everything to anyio's stream except the readability probe."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's API)
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore2.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_readable(self._socket)
        return self._inner.get_extra_info(info)


class _Backend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


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
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )
    return transport
