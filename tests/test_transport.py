"""The remote backend's pooled transport: keep-alive reuse, and a server-closed idle connection never reused."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest

from rsa_service.backends.transport import is_readable, pooled_transport

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


@contextmanager
def closing_server(idle_close_s: float | None) -> Iterator[tuple[str, list[int]]]:
    """An HTTP/1.1 server answering every request on a connection, and closing it once idle for `idle_close_s`
    (never, when None). Yields its URL and a list that gets one entry per accepted connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve(conn: socket.socket) -> None:
        conn.settimeout(idle_close_s)
        with conn:
            while True:
                try:
                    request = conn.recv(65536)
                except TimeoutError:
                    return  # idle too long: close, as servers with a keep-alive timeout do
                if not request:
                    return
                conn.sendall(RESPONSE)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.close()


def client(url: str) -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
    transport = pooled_transport(url, httpx2.create_ssl_context(), limits)
    assert transport is not None
    return httpx2.AsyncClient(base_url=url, transport=transport)


async def test_keep_alive_connections_are_reused() -> None:
    with closing_server(None) as (url, accepted):
        async with client(url) as http:
            for _ in range(5):
                assert (await http.get("/")).text == "ok"
    assert len(accepted) == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    with closing_server(0.1) as (url, accepted):
        async with client(url) as http:
            assert (await http.get("/")).text == "ok"
            await asyncio.sleep(0.4)  # the server closes the idle connection meanwhile
            assert (await http.get("/")).text == "ok"  # a stale connection would fail here instead
    assert len(accepted) == 2


def test_readability_probe() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert not is_readable(left)
        right.close()
        assert is_readable(left)  # the peer closed: the next read returns b""
    assert is_readable(left)  # closed here: nothing to reuse
    assert is_readable(None)


def test_an_environment_proxy_leaves_transports_to_httpx2(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = httpx2.Limits(max_connections=1)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert pooled_transport("http://llm.example/v1", httpx2.create_ssl_context(), limits) is None
    assert pooled_transport("http://localhost:8000/v1", httpx2.create_ssl_context(), limits) is not None
