"""httpcore2's network backend on asyncio's own transports.

httpcore2's default streams go through anyio, which opens a cancel scope, a checkpoint and an exception map around
every read and write, and answers the pool's "has the server closed this idle connection?" probe by rebuilding
the socket's attributes. With hundreds of small requests a second that was a tenth of a worker's CPU. Here a
protocol buffers what the event loop reads, so a read is a buffer slice, a timeout is one `asyncio.timeout`, and
the probe is a look at the buffer: on an idle keep-alive connection, anything received (the server's close, or an
unasked `408`) means the connection must not be reused.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import httpcore2

T = TypeVar("T")
# Received bytes buffered before the transport stops reading (a consumer slower than the server): a bound on
# memory, and the server sees the pressure as a full TCP window, as with asyncio's own streams.
READ_HIGH_WATER = 1 << 20


class _Protocol(asyncio.Protocol):
    """Buffers incoming bytes for one reader; sends what one writer wrote once per loop iteration."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.closed = False
        self.error: Exception | None = None
        self._unsent: list[bytes] = []
        self._reading_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > READ_HIGH_WATER and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        _wake(self._readable)

    def eof_received(self) -> None:
        self.closed = True
        _wake(self._readable)  # returning None lets the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        _wake(self._readable)
        _wake(self._writable)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        _wake(self._writable)
        self._writable = None

    def take(self, max_bytes: int) -> bytes | None:
        """Up to `max_bytes` received, b"" once the server has closed, None while there is nothing yet."""
        if self.received:
            data = bytes(self.received[:max_bytes])
            del self.received[:max_bytes]
            if self._reading_paused and len(self.received) <= READ_HIGH_WATER // 2 and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            return data
        if self.error is not None:
            raise self.error
        return b"" if self.closed else None

    async def readable(self) -> None:
        self._readable = asyncio.get_running_loop().create_future()
        try:
            await self._readable
        finally:
            self._readable = None

    def write(self, data: bytes) -> None:
        """Queued until the loop's next iteration, so a request's head and body leave in one segment (one
        wake-up of the server instead of two); whatever does not yield between writes is coalesced."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise self.error or ConnectionResetError("the connection is closed")
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self.flush)
        self._unsent.append(data)

    def flush(self) -> None:
        if self._unsent and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._unsent))
        self._unsent.clear()

    @property
    def write_paused(self) -> bool:
        return self._writable is not None

    async def drained(self) -> None:
        if self._writable is not None:
            await self._writable
        if self.error is not None:
            raise self.error


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _mapped(
    work: Awaitable[T],
    timeout: float | None,  # noqa: ASYNC109 (httpcore's per-operation timeouts)
    on_timeout: type[Exception],
    on_error: type[Exception],
) -> T:
    """`work` within `timeout`, its failures raised as the httpcore2 exceptions httpx2 maps to its own."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        raise on_timeout("timed out") from None
    except (OSError, ssl.SSLError) as exc:
        raise on_error(str(exc) or type(exc).__name__) from exc


class _Stream(httpcore2.AsyncNetworkStream):
    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's API)
        protocol = self._protocol
        try:
            data = protocol.take(max_bytes)
            while data is None:
                await _mapped(protocol.readable(), timeout, httpcore2.ReadTimeout, httpcore2.ReadError)
                data = protocol.take(max_bytes)
        except OSError as exc:
            raise httpcore2.ReadError(str(exc) or type(exc).__name__) from exc
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            self._protocol.write(buffer)
        except OSError as exc:
            raise httpcore2.WriteError(str(exc) or type(exc).__name__) from exc
        if self._protocol.write_paused:  # the transport's buffer is full: wait for the server to read
            await _mapped(self._protocol.drained(), timeout, httpcore2.WriteTimeout, httpcore2.WriteError)

    async def aclose(self) -> None:
        if (transport := self._protocol.transport) is not None:
            transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore2.AsyncNetworkStream:
        protocol = self._protocol
        assert protocol.transport is not None
        protocol.flush()
        loop = asyncio.get_running_loop()
        upgrade = loop.start_tls(protocol.transport, protocol, ssl_context, server_hostname=server_hostname)
        protocol.transport = await _mapped(upgrade, timeout, httpcore2.ConnectTimeout, httpcore2.ConnectError)
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._protocol.transport
        if info == "is_readable":
            return bool(self._protocol.received) or self._protocol.closed
        if transport is None:
            return None
        if info in ("ssl_object", "socket"):
            return transport.get_extra_info(info)
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        return None


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    """Connections for httpcore2 on the running asyncio loop (uvloop's too); TCP_NODELAY is asyncio's default."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        return await self._connect(
            lambda loop: loop.create_connection(_Protocol, host, port, local_addr=local), timeout, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return await self._connect(lambda loop: loop.create_unix_connection(_Protocol, path), timeout, socket_options)

    async def _connect(
        self,
        connect: Callable[[asyncio.AbstractEventLoop], Awaitable[tuple[asyncio.BaseTransport, _Protocol]]],
        timeout: float | None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None,
    ) -> _Stream:
        connecting = connect(asyncio.get_running_loop())
        _, protocol = await _mapped(connecting, timeout, httpcore2.ConnectTimeout, httpcore2.ConnectError)
        sock: socket.socket | None = protocol.transport.get_extra_info("socket") if protocol.transport else None
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
        return _Stream(protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
