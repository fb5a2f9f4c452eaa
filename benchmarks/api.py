"""REST API load: 500 concurrent job creations, then 500 concurrent status polls, against `rsa serve`.

Starts a redis-server (AOF on, appendfsync everysec) and `rsa serve --workers 0` (jobs stay queued, so only the
API and Redis are measured) as subprocesses on loopback, then drives them from one asyncio client with 500
connections: all creations at once (a burst), all polls at once (bursts), then 500 pollers each polling once a
second for 10 s (what clients honouring Retry-After do), then list pages. Prints requests/s and latency
percentiles per phase; the target is p99 < 50 ms for GET /v1/jobs/{id}.

    .venv/bin/python benchmarks/api.py [--jobs 500] [--polls 3]
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
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _phase(name: str, calls: list[tuple[str, str, dict[str, object] | None]], http: httpx.AsyncClient) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(method: str, path: str, body: dict[str, object] | None) -> httpx.Response:
        started = time.perf_counter()
        response = await http.request(method, path, json=body)
        latencies.append(time.perf_counter() - started)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        return response

    started = time.perf_counter()
    responses = await asyncio.gather(*(one(*call) for call in calls))
    wall = time.perf_counter() - started
    report = {
        "phase": name,
        "requests": len(calls),
        "requests_per_s": round(len(calls) / wall, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "statuses": statuses,
    }
    report["ids"] = [r.json().get("id") for r in responses if r.status_code == 202]
    return report


async def _paced(ids: list[str], http: httpx.AsyncClient, period_s: float, duration_s: float) -> dict:
    """Every job polled once per `period_s` (as its Retry-After asks), starts spread over one period."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def poller(index: int, job_id: str) -> None:
        await asyncio.sleep(period_s * index / len(ids))
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            started = time.perf_counter()
            response = await http.get(f"/v1/jobs/{job_id}")
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            await asyncio.sleep(max(0.0, period_s - (time.perf_counter() - started)))

    started = time.perf_counter()
    await asyncio.gather(*(poller(i, job_id) for i, job_id in enumerate(ids)))
    wall = time.perf_counter() - started
    return {
        "phase": f"GET /v1/jobs/{{id}} paced: {len(ids)} pollers, one poll per {period_s:g}s each",
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "statuses": statuses,
    }


async def _drive(url: str, jobs: int, polls: int) -> list[dict]:
    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await http.get("/healthz")
        body = {"problem": "Benchmark problem. ANSWER=1", "backend": "toy", "population": 16, "rounds": 2}
        created = await _phase("POST /v1/jobs burst", [("POST", "/v1/jobs", body)] * jobs, http)
        ids = created.pop("ids")
        reports = [created]
        for round_index in range(polls):
            poll = await _phase(
                f"GET /v1/jobs/{{id}} #{round_index + 1}", [("GET", f"/v1/jobs/{i}", None) for i in ids], http
            )
            poll.pop("ids")
            reports.append(poll)
        reports.append(await _paced(ids, http, period_s=1.0, duration_s=10.0))
        page = await _phase("GET /v1/jobs?limit=20", [("GET", "/v1/jobs?limit=20", None)] * 100, http)
        page.pop("ids")
        reports.append(page)
        reports.append(_server_side(await http.get("/metrics")))
    return reports


def _server_side(metrics: httpx.Response) -> dict:
    """Server-side time to first byte of GET /v1/jobs/{job_id}, from the API's own histogram (no client cost)."""
    route = 'method="GET",route="/v1/jobs/{job_id}"'
    buckets = []
    for line in metrics.text.splitlines():
        if line.startswith("rsa_http_request_duration_seconds_bucket{") and route in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    p50 = next(bound for bound, count in buckets if count >= 0.50 * total)
    p99 = next(bound for bound, count in buckets if count >= 0.99 * total)
    return {
        "phase": "GET /v1/jobs/{id} server-side (histogram bucket bounds)",
        "requests": int(total),
        "p50_ms_at_most": p50 * 1000,
        "p99_ms_at_most": p99 * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--polls", type=int, default=3, help="rounds of one GET per job")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="rsa-bench-api-"))
    redis_port, api_port = _free_port(), _free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    env = dict(
        os.environ,
        RSA_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        RSA_BACKENDS=json.dumps({"toy": "openai:http://127.0.0.1:9/v1"}),
        RSA_MAX_ACTIVE_JOBS=str(args.jobs * 2),
        RSA_NAMESPACE="bench",
    )
    env.pop("RSA_API_KEYS", None)
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rsa_service.cli",
            "serve",
            "--port",
            str(api_port),
            "--workers",
            "0",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{api_port}"
        _wait_for(url + "/healthz")
        reports = asyncio.run(_drive(url, args.jobs, args.polls))
    finally:
        api.terminate()
        api.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(data, ignore_errors=True)
    load = os.getloadavg()[0]
    for report in reports:
        print(json.dumps(report | {"load_avg_1m": round(load, 2)}))


if __name__ == "__main__":
    main()
