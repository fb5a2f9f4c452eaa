"""Durability soak: jobs keep completing, and nothing committed is lost or generated again, while workers die.

J jobs (N=4, K=2, T=1: 8 generations each) on W `rsa worker` processes sharing the embedded Redis (AOF on);
every `--kill-every-s` seconds one worker, chosen at random, gets SIGKILL and a fresh one replaces it, for the
whole run. Before each kill, every job's committed steps are snapshotted. At the end it reports:

- jobs completed (of J), and the wall time;
- steps lost: a step seen committed in any snapshot that is missing or different at the end (must be 0);
- steps generated twice: seeds the model server saw more than once (only generations in flight at a kill may
  repeat), and how many of those were requested again *after* their step was committed (must be 0);
- orchestration overhead: the median job's wall time over its ideal, (T+1) × the model server's latency.

    .venv/bin/python benchmarks/durability.py [--jobs 200] [--workers 4] [--kill-every-s 2] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import services
from redis.asyncio import Redis

from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import WorkerProcess, worker_env
from tests.modelserver import ModelServerConfig, ModelServerHandle

NAMESPACE = "soak"
LATENCY_MS = 250
CHAOS_MAX_ATTEMPTS = 100
PARAMS = RSAParams(population=4, subset=2, rounds=1, trace_tokens=200, tail_tokens=40, final_tokens=200)
_JOB = re.compile(r"Soak job (\d+)\.")


class Fleet:
    """W worker processes; `kill_one` SIGKILLs a random one and starts its replacement."""

    def __init__(self, env: dict[str, str], logs: Path, size: int) -> None:
        self.env, self.logs, self.started = env, logs, 0
        self.workers = [self._spawn() for _ in range(size)]

    def _spawn(self) -> WorkerProcess:
        self.started += 1
        return WorkerProcess(self.env, self.logs / f"worker{self.started}.log")

    def kill_one(self) -> None:
        victim = random.choice(self.workers)
        victim.kill()
        self.workers[self.workers.index(victim)] = self._spawn()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


async def snapshot(store: JobStore, job_ids: list[str], seen: dict[tuple[str, str], str]) -> None:
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(store.keys.job(job_id).steps)
        for job_id, steps in zip(job_ids, await pipe.execute(), strict=True):
            seen.update({(job_id, key): value for key, value in steps.items()})


async def all_ended(store: JobStore, job_ids: list[str]) -> bool:
    counts = Counter(fields.get("status") for fields, _ in await store.fields(job_ids, ["status"]))
    return counts["completed"] + counts["failed"] == len(job_ids)


async def soak(args: argparse.Namespace, store: JobStore, fleet: Fleet, job_ids: list[str]) -> dict:
    seen: dict[tuple[str, str], str] = {}
    kills, next_kill = 0, time.monotonic() + args.kill_every_s
    while not await all_ended(store, job_ids):
        if time.monotonic() >= next_kill:
            await snapshot(store, job_ids, seen)
            fleet.kill_one()
            kills, next_kill = kills + 1, time.monotonic() + args.kill_every_s
        await asyncio.sleep(0.2)
    return {"seen": seen, "kills": kills}


async def duplicates(store: JobStore, job_ids: list[str], server: ModelServerHandle) -> tuple[int, int]:
    """(seeds requested more than once, requests that came after their step was committed)."""
    committed_ms: dict[tuple[int, int], int] = {}
    for index, job_id in enumerate(job_ids):
        steps = await store.steps(job_id)
        events = {f"r{e.data['round']}:s{e.data['slot']}": e.id for e in await store.events(job_id) if e.type == "step"}
        for key, step in steps.items():
            committed_ms[(index, step.seed or 0)] = int(events[key].split("-")[0])
    asked: Counter[tuple[int, int]] = Counter()
    late = 0
    for request in server.requests():
        found = _JOB.search(str(request["body"].get("messages")))
        position = (int(found.group(1)), int(request["body"]["seed"])) if found else None
        asked[position] += 1  # type: ignore[index]
        if position in committed_ms and request["time"] * 1000 > committed_ms[position] + 1:
            late += 1
    return sum(1 for count in asked.values() if count > 1), late


async def run(args: argparse.Namespace, url: str, server: ModelServerHandle, logs: Path) -> None:
    client = Redis.from_url(url, decode_responses=True)
    store = JobStore(client, namespace=NAMESPACE)
    env = worker_env(
        dict(os.environ),
        redis_url=url,
        namespace=NAMESPACE,
        lease_s=args.lease_s,
        # The kills here are random, not caused by a job: keep the poison-job cap out of the way.
        max_attempts=CHAOS_MAX_ATTEMPTS,
        # A few jobs per worker at a time, so the run lasts long enough for a kill every few seconds.
        worker_concurrency=args.concurrency,
    )
    fleet = Fleet(env, logs, args.workers)
    templates = PromptTemplates.load()
    started = time.monotonic()
    job_ids = [
        await store.create(
            JobSpec(problem=f"Soak job {i}. ANSWER=7", params=PARAMS, backend=server.base_url, templates=templates)
        )
        for i in range(args.jobs)
    ]
    try:
        outcome = await soak(args, store, fleet, job_ids)
    finally:
        fleet.stop()
    wall_s = time.monotonic() - started
    await snapshot(store, job_ids, final := {})
    lost = sum(1 for key, value in outcome["seen"].items() if final.get(key) != value)
    twice, late = await duplicates(store, job_ids, server)
    records = [await store.get(job_id) for job_id in job_ids]
    ideal_s = PARAMS.stages * LATENCY_MS / 1000
    uninterrupted = [r for r in records if r.attempts == 1]
    ratios = [r.result.wall_s / ideal_s for r in uninterrupted or records if r.result and r.result.wall_s]
    print(
        f"{args.workers} workers, {args.jobs} jobs × {PARAMS.stages * PARAMS.population} generations, "
        f"SIGKILL every {args.kill_every_s:g} s ({outcome['kills']} kills), lease {args.lease_s:g} s"
    )
    print(
        f"jobs completed: {sum(r.status == 'completed' for r in records)}/{args.jobs} in {wall_s:.1f} s; "
        f"jobs taken over after a kill: {sum(r.attempts > 1 for r in records)}"
    )
    print(f"steps lost: {lost} (of {len(outcome['seen'])} seen committed before a kill)")
    print(f"steps generated twice: {twice} (in flight at a kill); requested again after commit: {late}")
    if ratios:
        print(
            f"orchestration overhead: median job wall / ideal (T+1)×{LATENCY_MS} ms = {statistics.median(ratios):.2f} "
            f"(jobs never interrupted: {len(ratios)})"
        )
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kill-every-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8, help="Generations in flight per worker.")
    parser.add_argument("--lease-s", type=float, default=2.0)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    # The server hides /tokenize, so tails are cut by the backend's local approximate counter: the soak measures
    # durability, and ~4 tokenize round trips per generation would only slow it down (see throughput.py).
    no_tokenize = [{"status": 404, "always": True, "path": "/tokenize"}]
    config = ModelServerConfig(latency_ms=LATENCY_MS, reasoning_words=40, faults=no_tokenize)
    with services(config) as (url, server, data):
        asyncio.run(run(args, url, server, data))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
