"""Slow and keyless clients against `rsa serve`: bodies and headers have deadlines, and a request takes a gate slot
only once its body is read and its key checked, so health checks and other tenants stay fast."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import httpx2

from tests.api.conftest import KEY_A, ApiFactory
from tests.api.processes import rsa_serve
from tests.redis_topologies import RedisServer

A = {"Authorization": f"Bearer {KEY_A}"}
SLOW_CLIENTS = 70
BODY_TIMEOUT_S = 4
SLOW_HEAD = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"


async def _trickle(port: int, answers: list[bytes]) -> None:
    """A keyless client sending its body a byte a second, as long as the server lets it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(SLOW_HEAD)
    try:
        for _ in range(BODY_TIMEOUT_S * 4):
            writer.write(b" ")
            await writer.drain()
            try:
                answers.append(await asyncio.wait_for(reader.read(200), 1.0))
                return
            except TimeoutError:
                continue
    except ConnectionError:
        answers.append(b"reset")
    finally:
        writer.close()


def _latencies(url: str, path: str, reads: int, headers: dict[str, str] | None = None) -> list[float]:
    found = []
    with httpx2.Client(base_url=url, headers=headers, timeout=30) as http:
        for _ in range(reads):
            started = time.monotonic()
            assert http.get(path).status_code == 200
            found.append(time.monotonic() - started)
            time.sleep(0.05)
    return found


async def _attack(url: str, port: int) -> tuple[list[bytes], list[float], list[float]]:
    answers: list[bytes] = []
    slow = [asyncio.create_task(_trickle(port, answers)) for _ in range(SLOW_CLIENTS)]
    await asyncio.sleep(1.0)  # every slow client is mid-body
    health = await asyncio.to_thread(_latencies, url, "/healthz", 20)
    reads = await asyncio.to_thread(_latencies, url, "/v1/jobs", 10, A)
    await asyncio.gather(*slow)
    return answers, health, reads


def test_70_slow_keyless_clients_leave_health_and_reads_fast(redis_server: RedisServer, namespace: str) -> None:
    env = {"RSA_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "RSA_MAX_CONCURRENT_REQUESTS": "64"}
    with rsa_serve(redis_server, namespace, "http://127.0.0.1:9/v1", workers=0, **env) as url:
        unloaded = _latencies(url, "/healthz", 10)
        started = time.monotonic()
        answers, health, reads = asyncio.run(_attack(url, int(url.rsplit(":", 1)[1])))
        elapsed = time.monotonic() - started
    bound = max(0.1, 10 * statistics.median(unloaded))
    assert max(health) < bound, (sorted(health)[-3:], sorted(unloaded)[-3:])
    assert max(reads) < 10 * bound
    assert len(answers) == SLOW_CLIENTS and all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
    assert elapsed < BODY_TIMEOUT_S * 3


def _raw(port: int, data: bytes, wait_s: float) -> bytes:
    """Send `data`, then read until the server closes the connection (at most `wait_s`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<still open>")
        return b"".join(chunks)


def test_headers_have_a_deadline(redis_server: RedisServer, namespace: str) -> None:
    env = {"RSA_HEADER_TIMEOUT_S": "1"}
    with rsa_serve(redis_server, namespace, "http://127.0.0.1:9/v1", workers=0, **env) as url:
        port = int(url.rsplit(":", 1)[1])
        started = time.monotonic()
        assert _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", wait_s=10).startswith(b"HTTP/1.1 408")
        assert _raw(port, b"", wait_s=10).startswith(b"HTTP/1.1 408")  # connected and silent
        assert time.monotonic() - started < 8
        assert b'"ok"' in _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_s=10)


def test_bodies_over_the_limit_are_413_chunked_or_not(make_api: ApiFactory) -> None:
    api = make_api(workers=0, max_body_bytes=100)

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"problem": "' + b"x" * 200 + b'"}'

    with httpx2.Client(base_url=api.url, headers=A, timeout=10) as http:
        chunked = http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        declared = http.post("/v1/jobs", json={"problem": "x" * 200})
    for answer in (chunked, declared):
        assert answer.status_code == 413 and "limit of 100 bytes" in answer.json()["detail"]
        assert answer.headers["content-type"] == "application/problem+json"
