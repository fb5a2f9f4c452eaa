"""Committed generations per second on each Redis topology: the job store's transitions alone, no model.

Every simulated job is created, claimed, gets `--steps` generations committed one at a time (the commit script a
worker runs per generation, plus a lease renewal every fourth commit, as a worker's heartbeat costs), and is
finished. `--processes` client processes each keep `--concurrency` jobs going for `--seconds`. Figures: commits
per second over all of them (bound by the clients' CPU where they share the machine with Redis), and the CPU the
busiest Redis process spent per commit, whose inverse is what the topology sustains once that process saturates.

Topologies, all on loopback and started here (`tests/redis_topologies.py`): one server; a cluster of 1 and of 3
primaries (one replica each); the 3-primary cluster and a Sentinel pair (primary, replica) without and with
RSA_REDIS_MIN_REPLICAS=1 (WAIT for one replica after each commit). Last, the cost of that wait: one commit's
latency, one at a time, on the Sentinel pair with and without it.

    .venv/bin/python benchmarks/redis_topologies.py [--processes 2] [--concurrency 32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsa_service.core.steps import StepResult
from rsa_service.jobs.redis_urls import redis_client
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import job_spec
from tests.redis_topologies import ClusterProcesses, RedisServer, SentinelProcesses

BACKEND = "openai:http://127.0.0.1:9/v1"
Topology = tuple[str, list[RedisServer]]  # the URL, and every redis-server process behind it
RENEW_EVERY = 4
LEASE_MS = 30_000


async def _one_job(store: JobStore, steps: int, text: str) -> int:
    job_id = await store.create(job_spec(BACKEND), queue=False)
    claim = await store.claim(job_id, "bench/1/1", lease_ms=LEASE_MS)
    for slot in range(steps):
        await store.commit(job_id, claim.fence, StepResult(round=0, slot=slot, text=text), {"round": 0, "slot": slot})
        if slot % RENEW_EVERY == RENEW_EVERY - 1:
            await store.renew(job_id, claim.fence, lease_ms=LEASE_MS)
    await store.finish(job_id, claim.fence)
    return steps


async def _load(url: str, min_replicas: int, concurrency: int, seconds: float, steps: int) -> int:
    client = redis_client(url)
    await client.ping()  # as `open_store` does: a cluster client maps its slots once, before concurrent use
    store = JobStore(client, namespace="bench", retention_s=60, min_replicas=min_replicas)
    text = "x" * 2000  # a generation's stored text, tail and metadata: a few kB
    deadline = time.monotonic() + seconds
    done = 0

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            committed = await _one_job(store, steps, text)
            done += committed  # after the await: `done += await ...` would add to a stale value

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await client.aclose()
    return done


def _load_process(url: str, min_replicas: int, concurrency: int, seconds: float, steps: int) -> int:
    return asyncio.run(_load(url, min_replicas, concurrency, seconds, steps))


def _cpu_s(servers: Sequence[RedisServer]) -> list[float]:
    """Each server's CPU seconds so far (user + system, main thread and children)."""
    seconds = []
    for server in servers:
        with redis.Redis(port=server.port) as client:
            info = client.info("cpu")
        seconds.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return seconds


@dataclass(frozen=True)
class Throughput:
    per_s: float  # committed generations per second, as measured here
    busiest_cpu_ms: float  # CPU of the busiest Redis process per committed generation

    @property
    def capacity_per_s(self) -> float:
        """What the topology sustains once its busiest process is saturated (clients on other machines)."""
        return 1000 / self.busiest_cpu_ms


def throughput(url: str, servers: Sequence[RedisServer], min_replicas: int, args: argparse.Namespace) -> Throughput:
    with ProcessPoolExecutor(args.processes) as pool:
        before = _cpu_s(servers)
        started = time.monotonic()
        futures = [
            pool.submit(_load_process, url, min_replicas, args.concurrency, args.seconds, args.steps)
            for _ in range(args.processes)
        ]
        commits = sum(future.result() for future in futures)
        elapsed = time.monotonic() - started
        used = [after - first for after, first in zip(_cpu_s(servers), before, strict=True)]
    return Throughput(per_s=commits / elapsed, busiest_cpu_ms=1000 * max(used) / commits)


async def _commit_latency(url: str, min_replicas: int, count: int) -> float:
    """Median seconds of one commit, one at a time."""
    client = redis_client(url)
    store = JobStore(client, namespace="latency", retention_s=60, min_replicas=min_replicas)
    job_id = await store.create(job_spec(BACKEND), queue=False)
    claim = await store.claim(job_id, "bench/1/1", lease_ms=LEASE_MS)
    timings = []
    for slot in range(count):
        started = time.perf_counter()
        await store.commit(job_id, claim.fence, StepResult(round=0, slot=slot, text="x" * 2000), {"round": 0})
        timings.append(time.perf_counter() - started)
    await client.aclose()
    return statistics.median(timings)


def _fsync(servers: Sequence[RedisServer], appendfsync: str) -> None:
    for server in servers:
        server.args += ["--appendfsync", appendfsync]  # the last of a repeated option wins


@contextmanager
def _single(root: Path, appendfsync: str) -> Iterator[Topology]:
    server = RedisServer(root / "single")
    _fsync([server], appendfsync)
    server.start()
    try:
        yield server.url, [server]
    finally:
        server.stop()


@contextmanager
def _cluster(root: Path, appendfsync: str, primaries: int) -> Iterator[Topology]:
    cluster = ClusterProcesses(root / f"cluster{primaries}", primaries=primaries)
    _fsync(cluster.nodes, appendfsync)
    try:
        cluster.start()
        yield cluster.url, cluster.nodes
    finally:
        cluster.stop()


@contextmanager
def _sentinel(root: Path, appendfsync: str) -> Iterator[Topology]:
    sentinel = SentinelProcesses(root / "sentinel")
    _fsync(sentinel.servers, appendfsync)
    try:
        sentinel.start()
        yield sentinel.url, sentinel.servers
    finally:
        sentinel.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="jobs each client process keeps going")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=16, help="generations committed per job")
    parser.add_argument("--latency-commits", type=int, default=500)
    parser.add_argument("--appendfsync", choices=["always", "everysec"], default="everysec")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        runs: list[tuple[str, Callable[[Path, str], AbstractContextManager[Topology]], int]] = [
            ("one server", _single, 0),
            ("cluster, 1 primary", lambda r, f: _cluster(r, f, 1), 0),
            ("cluster, 3 primaries", lambda r, f: _cluster(r, f, 3), 0),
            ("cluster, 3 primaries, WAIT 1", lambda r, f: _cluster(r, f, 3), 1),
            ("sentinel pair", _sentinel, 0),
            ("sentinel pair, WAIT 1", _sentinel, 1),
        ]
        print(
            f"{args.processes} processes x {args.concurrency} jobs, {args.steps} commits a job, {args.seconds} s, "
            f"appendfsync {args.appendfsync}"
        )
        print(f"{'':32s} {'measured/s':>10s} {'busiest Redis CPU':>18s} {'sustains/s':>10s}")
        for name, topology, min_replicas in runs:
            with topology(root / name.replace(" ", "-").replace(",", ""), args.appendfsync) as (url, servers):
                found = throughput(url, servers, min_replicas, args)
            print(
                f"{name:32s} {found.per_s:10,.0f} {found.busiest_cpu_ms:15.3f} ms {found.capacity_per_s:10,.0f}",
                flush=True,
            )
        with _sentinel(root / "latency", args.appendfsync) as (latency_url, _):
            plain = asyncio.run(_commit_latency(latency_url, 0, args.latency_commits))
            waited = asyncio.run(_commit_latency(latency_url, 1, args.latency_commits))
        print(f"one commit, median: {plain * 1000:.3f} ms; with WAIT 1: {waited * 1000:.3f} ms")


if __name__ == "__main__":
    main()
