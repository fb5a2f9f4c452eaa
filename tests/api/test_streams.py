"""Event streams through the per-process hub: many streams cost no command connections, streams are capped per
tenant and in total, and a resumed stream of a finished job ends at once."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import redis

from rsa_service.jobs.keys import Keys
from tests.api.conftest import KEY_A, KEY_B, ApiFactory
from tests.api.processes import rsa_serve
from tests.modelserver import ModelServerConfig, serve_in_subprocess
from tests.redis_topologies import RedisServer

A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
STREAMS = 200
LONGER = {"population": 4, "subset": 2, "rounds": 2, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 300}


def _stream_ids(redis_server: RedisServer, namespace: str, job_id: str) -> list[str]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        return [entry_id for entry_id, _ in client.xrange(Keys(namespace).job(job_id).events)]


async def _follow(http: httpx2.AsyncClient, job_id: str, connected: list[int], opened: threading.Event) -> list[str]:
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        connected.append(1)
        if len(connected) == STREAMS:
            opened.set()
        return [line.removeprefix("id: ") async for line in response.aiter_lines() if line.startswith("id: ")]


def _read_latencies(
    url: str, job_id: str, stop: threading.Event, reads: int = 0, start: threading.Event | None = None
) -> list[float]:
    """GET the job every 50 ms (from a thread of its own, beside the streams' event loop) from `start` until `stop`
    is set or `reads` reads are done; each read's latency."""
    latencies: list[float] = []
    if start is not None:
        while not start.wait(0.05):
            if stop.is_set():
                return latencies
    with httpx2.Client(base_url=url, headers=A, timeout=30) as http:
        while not stop.is_set() and (reads == 0 or len(latencies) < reads):
            started = time.monotonic()
            read = http.get(f"/v1/jobs/{job_id}")
            latencies.append(time.monotonic() - started)
            assert read.status_code == 200, read.text
            time.sleep(0.05)
    return latencies


async def _open_streams(url: str, job_id: str, opened: threading.Event) -> list[list[str]]:
    """STREAMS streams on the job, opened in quick batches as browsers arriving would; `opened` is set once every
    one has its response."""
    connected: list[int] = []
    limits = httpx2.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    async with httpx2.AsyncClient(base_url=url, headers=A, limits=limits, timeout=60) as http:
        followers = []
        for _ in range(0, STREAMS, 20):
            followers += [asyncio.create_task(_follow(http, job_id, connected, opened)) for _ in range(20)]
            await asyncio.sleep(0.05)
        return list(await asyncio.gather(*followers))


def test_200_streams_on_a_running_job_leave_reads_fast(redis_server: RedisServer, namespace: str) -> None:
    model = ModelServerConfig(reasoning_words=20, latency_ms=1500)
    with (
        serve_in_subprocess(model) as backend,
        rsa_serve(redis_server, namespace, backend.base_url, RSA_MAX_STREAMS_PER_TENANT=str(STREAMS)) as url,
        ThreadPoolExecutor(1) as reader,
    ):
        body = {"problem": "Many eyes. ANSWER=7", "backend": "toy", **LONGER}
        job_id = httpx2.post(f"{url}/v1/jobs", json=body, headers=A).json()["id"]
        # the same reads with no stream open, so that a loaded machine's own slowness is not counted against the server
        unloaded = _read_latencies(url, job_id, threading.Event(), reads=10)
        stop, opened = threading.Event(), threading.Event()
        polling = reader.submit(_read_latencies, url, job_id, stop, start=opened)
        try:
            seen = asyncio.run(_open_streams(url, job_id, opened))
        finally:
            stop.set()
        loaded = polling.result()
        status = httpx2.get(f"{url}/v1/jobs/{job_id}", headers=A).json()["status"]
    expected = _stream_ids(redis_server, namespace, job_id)
    assert status == "completed"
    assert all(ids == expected for ids in seen)  # every stream got every event, in order, once
    assert len(loaded) >= 10
    bound = max(0.5, 10 * max(unloaded))
    assert statistics.quantiles(loaded, n=100)[98] < bound, (sorted(loaded)[-5:], sorted(unloaded)[-3:])


def _open(http: httpx2.Client, job_id: str, headers: dict[str, str]) -> httpx2.Response:
    return http.send(http.build_request("GET", f"/v1/jobs/{job_id}/events", headers=headers), stream=True)


def test_streams_are_capped_per_tenant_and_in_total(make_api: ApiFactory) -> None:
    api = make_api(workers=0, max_streams_per_tenant=2, max_streams=3, busy_retry_after_s=7)
    with httpx2.Client(base_url=api.url, timeout=10) as http:
        job_a = http.post("/v1/jobs", json={"problem": "a", "backend": "toy"}, headers=A).json()["id"]
        job_b = http.post("/v1/jobs", json={"problem": "b", "backend": "toy"}, headers=B).json()["id"]
        first = _open(http, job_a, A)
        second = _open(http, job_a, A)
        assert first.status_code == second.status_code == 200
        over_tenant = http.get(f"/v1/jobs/{job_a}/events", headers=A)
        assert over_tenant.status_code == 429 and over_tenant.headers["retry-after"] == "7"
        assert over_tenant.headers["content-type"] == "application/problem+json"
        third = _open(http, job_b, B)
        assert third.status_code == 200
        over_total = http.get(f"/v1/jobs/{job_b}/events", headers=B)
        assert over_total.status_code == 429 and "this server" in over_total.json()["detail"]
        first.close()
        deadline = time.monotonic() + 10  # the server notices the closed stream on its next write (a ping)
        while True:
            with http.stream("GET", f"/v1/jobs/{job_a}/events", headers=A) as again:
                if again.status_code == 200:
                    break
            assert again.status_code == 429 and time.monotonic() < deadline
            time.sleep(0.2)
        second.close()
        third.close()


def test_resumed_stream_of_a_finished_job_ends_at_once(
    make_api: ApiFactory, redis_server: RedisServer, namespace: str
) -> None:
    api = make_api(workers=0)
    with httpx2.Client(base_url=api.url, headers=A, timeout=httpx2.Timeout(5.0)) as http:
        job_id = http.post("/v1/jobs", json={"problem": "q", "backend": "toy"}).json()["id"]
        assert http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        final = _stream_ids(redis_server, namespace, job_id)[-1]
        started = time.monotonic()
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": final}) as response:
            lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
        assert time.monotonic() - started < 3
        fields = dict(line.split(": ", 1) for line in lines)
        assert len(lines) == 4 and fields["event"] == "cancelled" and fields["id"] == final
        assert fields["retry"] == "86400000" and fields["data"].startswith("{")
