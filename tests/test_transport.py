"""The remote backend's pooled transport: keep-alive reuse, a server-closed idle connection never reused, and the
connection cap, keep-alive cap and pool timeout of httpcore2's pool."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest
import trustme

from rsa_service.backends.transport import pooled_transport

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@contextmanager
def closing_server(
    idle_close_s: float | None, delay_s: float = 0, tls: ssl.SSLContext | None = None, say_408: bool = False
) -> Iterator[tuple[str, list[int]]]:
    """An HTTP/1.1 server answering every request on a connection after `delay_s`, and closing it once idle for
    `idle_close_s` (never, when None); with `say_408` it first sends an unasked 408 and waits a second before
    closing, as some servers do. Yields its URL and a list that gets one entry per accepted connection and -1 per
    connection the client closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve(conn: socket.socket) -> None:
        if tls is not None:
            conn = tls.wrap_socket(conn, server_side=True)
        conn.settimeout(idle_close_s)
        with conn:
            while True:
                try:
                    request = conn.recv(65536)
                except TimeoutError:
                    if say_408:
                        conn.sendall(REQUEST_TIMEOUT)
                        time.sleep(1)
                    return  # idle too long: close, as servers with a keep-alive timeout do
                if not request:
                    accepted.append(-1)
                    return
                time.sleep(delay_s)
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
        scheme = "http" if tls is None else "https"
        yield f"{scheme}://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.close()


def client(
    url: str,
    connections: int = 4,
    keepalive: int = 4,
    pool_timeout_s: float = 5,
    ssl_context: ssl.SSLContext | None = None,
    keepalive_expiry_s: float = 5,
) -> httpx2.AsyncClient:
    limits = httpx2.Limits(
        max_connections=connections, max_keepalive_connections=keepalive, keepalive_expiry=keepalive_expiry_s
    )
    transport = pooled_transport(url, ssl_context or httpx2.create_ssl_context(), limits)
    assert transport is not None
    return httpx2.AsyncClient(base_url=url, transport=transport, timeout=httpx2.Timeout(5, pool=pool_timeout_s))


def opened(accepted: list[int]) -> int:
    return accepted.count(1)


def closed(accepted: list[int]) -> int:
    return accepted.count(-1)


async def test_keep_alive_connections_are_reused() -> None:
    with closing_server(None) as (url, accepted):
        async with client(url) as http:
            for _ in range(5):
                assert (await http.get("/")).text == "ok"
    assert opened(accepted) == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    with closing_server(0.1) as (url, accepted):
        async with client(url) as http:
            assert (await http.get("/")).text == "ok"
            await asyncio.sleep(0.4)  # the server closes the idle connection meanwhile
            assert (await http.get("/")).text == "ok"  # a stale connection would fail here instead
    assert opened(accepted) == 2


async def test_connections_are_capped_and_surplus_idle_ones_closed() -> None:
    with closing_server(None, delay_s=0.05) as (url, accepted):
        async with client(url, connections=3, keepalive=1) as http:
            answers = await asyncio.gather(*(http.get("/") for _ in range(9)))
            assert [a.text for a in answers] == ["ok"] * 9
            assert opened(accepted) == 3  # six requests waited for a connection instead of opening one
            for _ in range(3):
                assert (await http.get("/")).text == "ok"  # on the one connection kept alive
            assert opened(accepted) == 3
            await asyncio.sleep(0.1)
            assert closed(accepted) == 2


async def test_connections_left_idle_after_the_load_falls_are_closed_once_expired() -> None:
    with closing_server(None, delay_s=0.05) as (url, accepted):
        async with client(url, keepalive_expiry_s=0.2) as http:
            await asyncio.gather(*(http.get("/") for _ in range(3)))  # three connections
            for _ in range(8):  # then one request at a time, on the newest connection
                assert (await http.get("/")).text == "ok"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            assert (opened(accepted), closed(accepted)) == (3, 2)


async def test_waiting_for_a_connection_past_the_pool_timeout_fails() -> None:
    with closing_server(None) as (url, _):
        async with client(url, connections=1, pool_timeout_s=0.1) as http:
            async with http.stream("GET", "/"):  # holds the only connection until closed
                with pytest.raises(httpx2.PoolTimeout):
                    await http.get("/")
            assert (await http.get("/")).text == "ok"  # closing the response freed it


async def test_a_response_closed_before_its_end_does_not_return_its_connection() -> None:
    with closing_server(None) as (url, accepted):
        async with client(url, connections=1) as http:
            async with http.stream("GET", "/"):
                pass  # body never read: the connection is mid-response, unusable for another request
            assert (await http.get("/")).text == "ok"
            await asyncio.sleep(0.1)
            assert (opened(accepted), closed(accepted)) == (2, 1)


async def test_a_cancelled_request_frees_its_connection() -> None:
    with closing_server(None, delay_s=0.3) as (url, accepted):
        async with client(url, connections=1, pool_timeout_s=0.1) as http:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await http.get("/")
            assert (await http.get("/")).text == "ok"  # within the pool timeout: the slot came back at once
        assert opened(accepted) == 2  # the cancelled request's connection was mid-request: not reused


async def test_an_idle_connection_that_received_an_unasked_answer_is_not_reused() -> None:
    with closing_server(0.1, say_408=True) as (url, accepted):
        async with client(url) as http:
            assert (await http.get("/")).text == "ok"
            await asyncio.sleep(0.3)  # the 408 has arrived; the server closes only later
            assert (await http.get("/")).text == "ok"
    assert opened(accepted) == 2


async def test_https_through_the_pool() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with closing_server(None, tls=server_context) as (url, accepted):
        async with client(url, ssl_context=client_context) as http:
            for _ in range(3):
                assert (await http.get("/")).text == "ok"
    assert opened(accepted) == 1


async def test_a_large_answer_read_slowly_arrives_whole() -> None:
    """More than the read buffer's high-water mark: the transport stops reading, then resumes as it drains."""
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(head + body)

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        async with client(url) as http, http.stream("GET", "/") as response:
            await asyncio.sleep(0.3)  # the server has sent what the buffers hold; reading is paused
            received = b"".join([chunk async for chunk in response.aiter_raw()])
        assert received == body
    finally:
        listener.close()


async def test_connection_failures_are_httpx2_errors() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    async with client(url) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.get("/")


def test_an_environment_proxy_leaves_transports_to_httpx2(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = httpx2.Limits(max_connections=1)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert pooled_transport("http://llm.example/v1", httpx2.create_ssl_context(), limits) is None
    assert pooled_transport("http://localhost:8000/v1", httpx2.create_ssl_context(), limits) is not None
