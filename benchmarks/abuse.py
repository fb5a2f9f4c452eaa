"""One client against the service: each attack of an adversarial user, bounded in time, while a prober measures
`GET /healthz` and `GET /v1/jobs/{id}` latency; the same figures unloaded first, side by side.

Starts the embedded Redis, the test model server and `rsa serve --workers 1` (defaults for every limit but the
header and body deadlines, 5 s so that a short attack outlives them) as subprocesses on loopback. Attacks (each
`--seconds` long):

- streams: 200 event streams from one tenant on a running job (the cap lets 100 in; the rest get 429);
- resumed: 130 clients reconnecting as soon as their stream ends, each resumed at a finished job's last event;
- slow-bodies: 70 keyless clients sending a body a byte a second;
- slow-headers: 70 clients sending their headers a byte a second;
- pass-through: 50 clients asking for `max_tokens: 1e9` and `n: 1000` through the plain chat route, in a loop.

    .venv/bin/python benchmarks/abuse.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx2
from harness import services

from tests.modelserver import ModelServerConfig

KEY = "abuse-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[1]
JOB = {"population": 4, "subset": 2, "rounds": 3, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 200}
SLOW_DEADLINE_S = 5
Attack = Callable[[str, str, float, Counter[str]], Awaitable[None]]


def serve(redis_url: str, backend_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSA_")} | {
        "RSA_REDIS_URL": redis_url,
        "RSA_BACKENDS": json.dumps({"toy": f"openai:{backend_url}"}),
        "RSA_API_KEYS": KEY,
        "RSA_HEADER_TIMEOUT_S": str(SLOW_DEADLINE_S),  # shorter than the defaults, so that an attack sees them
        "RSA_BODY_TIMEOUT_S": str(SLOW_DEADLINE_S),
        "PYTHONPATH": str(REPO),
    }
    argv = [sys.executable, "-m", "rsa_service.cli", "serve", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen([*argv, "--log-level", "error"], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("rsa serve did not start")


def probe(url: str, job_id: str, stop: threading.Event) -> dict[str, list[float]]:
    """Latency of the two reads, alternately every 50 ms until `stop`; a failed or timed-out read counts 5 s."""
    seen: dict[str, list[float]] = {"healthz": [], "job": []}
    with httpx2.Client(base_url=url, headers=AUTH, timeout=5) as http:
        while not stop.is_set():
            for name, path in (("healthz", "/healthz"), ("job", f"/v1/jobs/{job_id}")):
                started = time.monotonic()
                try:
                    ok = http.get(path).status_code == 200
                except httpx2.HTTPError:
                    ok = False
                seen[name].append(time.monotonic() - started if ok else 5.0)
            time.sleep(0.05)
    return seen


async def streams(url: str, job_id: str, seconds: float, outcome: Counter[str]) -> None:
    async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=seconds + 5, limits=_many(200)) as http:

        async def one() -> None:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events") as answer:
                outcome[str(answer.status_code)] += 1
                async for _ in answer.aiter_lines():
                    pass

        await _for(seconds, [one() for _ in range(200)])


async def resumed(url: str, job_id: str, seconds: float, outcome: Counter[str]) -> None:
    async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=10, limits=_many(130)) as http:
        last = [line async for line in _lines(http, job_id) if line.startswith("id: ")][-1].removeprefix("id: ")

        async def reconnecting() -> None:
            while True:
                async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last}) as a:
                    outcome[str(a.status_code)] += 1
                    await a.aread()

        await _for(seconds, [reconnecting() for _ in range(130)])


async def slow_bodies(url: str, job_id: str, seconds: float, outcome: Counter[str]) -> None:
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    await _for(seconds, [_trickle(url, head, b" ", outcome) for _ in range(70)])


async def slow_headers(url: str, job_id: str, seconds: float, outcome: Counter[str]) -> None:
    await _for(seconds, [_trickle(url, b"GET /v1/jobs HTTP/1.1\r\n", b"X", outcome) for _ in range(70)])


async def pass_through(url: str, job_id: str, seconds: float, outcome: Counter[str]) -> None:
    body = {"model": "toy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9, "n": 1000}
    async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=_many(50)) as http:

        async def looping() -> None:
            while True:
                outcome[str((await http.post("/v1/chat/completions", json=body)).status_code)] += 1

        await _for(seconds, [looping() for _ in range(50)])


async def _trickle(url: str, head: bytes, byte: bytes, outcome: Counter[str]) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    try:
        while True:
            writer.write(byte)
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(64), 1.0)
            except TimeoutError:
                continue
            outcome[answer[9:12].decode(errors="replace") or "closed"] += 1
            return
    except ConnectionError:
        outcome["reset"] += 1
    finally:
        writer.close()


async def _lines(http: httpx2.AsyncClient, job_id: str):  # type: ignore[no-untyped-def]
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as answer:
        async for line in answer.aiter_lines():
            yield line


async def _for(seconds: float, clients: list[Awaitable[None]]) -> None:
    """Run the attack's clients for `seconds`, then cut them off."""
    tasks = [asyncio.ensure_future(client) for client in clients]
    await asyncio.wait(tasks, timeout=seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _many(n: int) -> httpx2.Limits:
    return httpx2.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)


def _figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{p50 * 1000:7.1f} {p99 * 1000:8.1f}"


def measure(
    url: str, job_id: str, seconds: float, attack: Attack | None
) -> tuple[dict[str, list[float]], Counter[str]]:
    stop, outcome, result = threading.Event(), Counter[str](), {}
    thread = threading.Thread(target=lambda: result.update(probe(url, job_id, stop)))
    thread.start()
    try:
        if attack is None:
            time.sleep(seconds)
        else:
            asyncio.run(attack(url, job_id, seconds, outcome))
    finally:
        stop.set()
        thread.join()
    return result, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    attacks: dict[str, Attack | None] = {
        "unloaded": None,
        "streams": streams,
        "resumed": resumed,
        "slow-bodies": slow_bodies,
        "slow-headers": slow_headers,
        "pass-through": pass_through,
    }
    with services(ModelServerConfig(reasoning_words=20, latency_ms=1500)) as (redis_url, backend, _):
        server = serve(redis_url, backend.base_url, port)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx2.Client(base_url=url, headers=AUTH, timeout=30) as http:
                finished = http.post("/v1/jobs", json={"problem": "Done. ANSWER=1", "backend": "toy", **JOB}).json()[
                    "id"
                ]
                http.post(f"/v1/jobs/{finished}/cancel")
                print(f"{'attack':<13} {'healthz p50':>11} {'p99 ms':>8}   {'job p50':>7} {'p99 ms':>8}   answers")
                for name, attack in attacks.items():
                    running = http.post("/v1/jobs", json={"problem": "Run. ANSWER=2", "backend": "toy", **JOB})
                    target = finished if name == "resumed" else running.json()["id"]
                    seen, outcome = measure(url, target, args.seconds, attack)
                    answers = ", ".join(f"{code}×{n}" for code, n in sorted(outcome.items())) or "-"
                    print(f"{name:<13} {_figures(seen['healthz'])}   {_figures(seen['job'])}   {answers}", flush=True)
                    http.post(f"/v1/jobs/{running.json()['id']}/cancel")
        finally:
            server.terminate()
            server.wait(15)


if __name__ == "__main__":
    main()
