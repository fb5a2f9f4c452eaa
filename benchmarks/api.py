"""REST API load: 500 concurrent job creations, then 500 concurrent status polls, against `rsa serve`.

Starts a redis-server (AOF on, appendfsync everysec) and `rsa serve --workers 0` (jobs stay queued, so only the
API and Redis are measured) as subprocesses on loopback, with auth on (one API key). This process is the load
generator: 500 HTTP/1.1 keep-alive connections, opened before the first phase, each carrying one request at a
time. Phases: all creations at once (a burst), all polls at once (bursts), then 500 pollers each polling once a
second for 10 s (twice the pace of the API's Retry-After hint), then list pages. Per phase: requests/s, client-side
latency percentiles, the CPU time each process spent per request (API, Redis, this client) read from /proc, and
(with one API process: `--processes N` gives each its own registry) the API's own time-to-first-byte histogram over
the phase, as bucket bounds. Target: p99 < 50 ms for GET /v1/jobs/{id}.

The client speaks HTTP/1.1 over asyncio protocols (on uvloop when installed) rather than through httpx, which spent
1.9-2.6 ms of CPU per GET here (with 100 pooled connections) against the server's 0.4 ms and this client's 0.03 ms:
on a small machine that steals the server's cores and inflates the very latency being measured.

    .venv/bin/python benchmarks/api.py [--jobs 500] [--polls 3] [--processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import psutil

STARTUP_TIMEOUT_S = 20.0
API_KEY = "bench-key-0123456789"
GET_JOB = ("GET", "/v1/jobs/{job_id}")
Reply = tuple[int, bytes]


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time, opened again if the server closed it (idle timeout); a
    response is read by its Content-Length (the API answers every plain request with one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None

    async def open(self) -> Connection:
        await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", self.port)
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer.clear()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        reply = (int(head[9:12]), bytes(self.buffer[end + 4 : end + 4 + length]))
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    async def request(self, method: str, path: str, body: bytes = b"") -> Reply:
        if self.transport is None or self.transport.is_closing():
            await self.open()
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        return await self.waiter


class CpuMeter:
    """CPU seconds (user + system) of the API processes (a parent and any workers), Redis, and this process."""

    def __init__(self, api: int, redis: int) -> None:
        self.api = psutil.Process(api)
        self.redis = psutil.Process(redis)

    def sample(self) -> dict[str, float]:
        def cpu(process: psutil.Process) -> float:
            times = process.cpu_times()
            return times.user + times.system

        api = cpu(self.api) + sum(cpu(child) for child in self.api.children(recursive=True))
        return {"api": api, "redis": cpu(self.redis), "client": time.process_time()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _histogram(metrics: str, method: str, route: str) -> list[tuple[float, float]]:
    """The API's time-to-first-byte histogram of one route: (bucket bound, cumulative count)."""
    labels = f'method="{method}",route="{route}"'
    buckets = []
    for line in metrics.splitlines():
        if line.startswith("rsa_http_request_duration_seconds_bucket{") and labels in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    return buckets


def _bucket_percentiles(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> dict[str, float]:
    """p50 and p99 of the requests counted between two scrapes, as bucket bounds ("at most")."""
    counts = dict(before)
    grown = [(bound, count - counts.get(bound, 0.0)) for bound, count in after]
    total = grown[-1][1]
    return {
        f"server_p{share}_ms_at_most": next(bound for bound, count in grown if count >= share / 100 * total) * 1000
        for share in (50, 99)
    }


class Bench:
    """The load generator's side: connections, the CPU meter, and each phase's report."""

    def __init__(self, pool: list[Connection], meter: CpuMeter, *, server_side: bool) -> None:
        self.pool = pool
        self.meter = meter
        self.server_side = server_side  # one API process: its histogram is every request's

    async def _scrape(self) -> str:
        return (await self.pool[0].request("GET", "/metrics"))[1].decode()

    async def phase(self, name: str, route: tuple[str, str], work: Callable[[Recorder], Awaitable[list[Reply]]]):
        """Run `work`, then report its latencies, the CPU per request, and the server's own histogram of `route`."""
        recorder = Recorder()
        scraped = await self._scrape() if self.server_side else ""
        before, started = self.meter.sample(), time.perf_counter()
        replies = await work(recorder)
        wall, after = time.perf_counter() - started, self.meter.sample()
        count = len(recorder.latencies)
        report = {
            "phase": name,
            "requests": count,
            "requests_per_s": round(count / wall, 1),
            "p50_ms": round(_percentile(recorder.latencies, 0.50) * 1000, 1),
            "p99_ms": round(_percentile(recorder.latencies, 0.99) * 1000, 1),
            "max_ms": round(max(recorder.latencies) * 1000, 1),
            "statuses": recorder.statuses,
            "cpu_ms_per_request": {side: round((after[side] - before[side]) * 1000 / count, 3) for side in after},
        }
        if self.server_side:
            report |= _bucket_percentiles(_histogram(scraped, *route), _histogram(await self._scrape(), *route))
        return report, replies

    async def burst(self, name: str, route: tuple[str, str], calls: list[tuple[str, str, bytes]]):
        """Every call at once, each on its own connection."""

        async def work(recorder: Recorder) -> list[Reply]:
            return await asyncio.gather(
                *(recorder.timed(conn.request(*call)) for conn, call in zip(self.pool, calls, strict=False))
            )

        return await self.phase(name, route, work)

    async def paced(self, ids: list[str], period_s: float, duration_s: float) -> dict:
        """Every job polled once per `period_s` (as its Retry-After asks), starts spread over one period."""

        async def poller(recorder: Recorder, index: int, conn: Connection, job_id: str) -> Reply:
            await asyncio.sleep(period_s * index / len(ids))
            end = time.monotonic() + duration_s
            reply: Reply = (0, b"")
            while time.monotonic() < end:
                started = time.perf_counter()
                reply = await recorder.timed(conn.request("GET", f"/v1/jobs/{job_id}"))
                await asyncio.sleep(max(0.0, period_s - (time.perf_counter() - started)))
            return reply

        async def work(recorder: Recorder) -> list[Reply]:
            pairs = enumerate(zip(self.pool, ids, strict=False))
            return await asyncio.gather(*(poller(recorder, i, conn, job_id) for i, (conn, job_id) in pairs))

        name = f"GET /v1/jobs/{{id}} paced: {len(ids)} pollers, one poll per {period_s:g}s each"
        report, _ = await self.phase(name, GET_JOB, work)
        return report


class Recorder:
    """Latencies and statuses of one phase."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}

    async def timed(self, call: Awaitable[Reply]) -> Reply:
        started = time.perf_counter()
        status, body = await call
        self.latencies.append(time.perf_counter() - started)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, body


async def _drive(port: int, jobs: int, polls: int, processes: int, meter: CpuMeter) -> list[dict]:
    pool = [await Connection(port).open() for _ in range(jobs)]
    bench = Bench(pool, meter, server_side=processes == 1)
    body = json.dumps({"problem": "Benchmark problem. ANSWER=1", "backend": "toy", "population": 16, "rounds": 2})
    creations = [("POST", "/v1/jobs", body.encode())] * jobs
    created, replies = await bench.burst("POST /v1/jobs burst", ("POST", "/v1/jobs"), creations)
    ids = [json.loads(reply)["id"] for status, reply in replies if status == 202]
    reports = [created]
    for round_index in range(polls):
        calls = [("GET", f"/v1/jobs/{job_id}", b"") for job_id in ids]
        reports.append((await bench.burst(f"GET /v1/jobs/{{id}} #{round_index + 1}", GET_JOB, calls))[0])
    reports.append(await bench.paced(ids, period_s=1.0, duration_s=10.0))
    pages = [("GET", "/v1/jobs?limit=20", b"")] * 100
    reports.append((await bench.burst("GET /v1/jobs?limit=20", ("GET", "/v1/jobs"), pages))[0])
    for conn in pool:
        conn.close()
    return reports


@contextmanager
def _servers(jobs: int, processes: int) -> Iterator[tuple[int, CpuMeter]]:
    """A redis-server and `rsa serve` on free loopback ports, stopped and cleaned up afterwards."""
    data = Path(tempfile.mkdtemp(prefix="rsa-bench-api-"))
    redis_port, api_port = _free_port(), _free_port()
    redis_argv = ["--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
    redis_argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", *redis_argv], stdout=subprocess.DEVNULL)
    env = dict(
        os.environ,
        RSA_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        RSA_BACKENDS=json.dumps({"toy": "openai:http://127.0.0.1:9/v1"}),
        RSA_MAX_ACTIVE_JOBS=str(jobs * 2),
        RSA_NAMESPACE="bench",
        RSA_API_KEYS=API_KEY,
    )
    serve = ["serve", "--port", str(api_port), "--workers", "0", "--processes", str(processes)]
    api = subprocess.Popen([sys.executable, "-m", "rsa_service.cli", *serve, "--log-level", "warning"], env=env)
    try:
        _wait_for(f"http://127.0.0.1:{api_port}/healthz")
        yield api_port, CpuMeter(api.pid, redis.pid)
    finally:
        api.terminate()
        api.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def _run(coroutine: Awaitable[list[dict]]) -> list[dict]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--polls", type=int, default=3, help="rounds of one GET per job")
    parser.add_argument("--processes", type=int, default=1, help="API processes (`rsa serve --processes`)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with _servers(args.jobs, args.processes) as (port, meter):
        reports = _run(_drive(port, args.jobs, args.polls, args.processes, meter))
    load = {"load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    for report in reports:
        print(json.dumps(report | load))


if __name__ == "__main__":
    main()
