"""Throughput of the worker fleet: committed generations per second, and Redis round trips per generation.

A zero-latency model server (`tests/modelserver.py`, its own process), the embedded Redis (AOF on, everysec),
and W `rsa worker` processes. J jobs of N=16, K=4, T=2 are queued at once; the clock runs from the first claim
to the last finish, both as Redis recorded them. Round trips are counted from `INFO commandstats` deltas: every
EVALSHA plus every plain command a client sent (commands run inside scripts excluded; pipelined commands counted
one each, so the figure is an upper bound on network round trips).

    .venv/bin/python benchmarks/throughput.py [--workers 4] [--jobs 48] [--concurrency 64] [--tails local|server|approx]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
from harness import services
from redis.asyncio import Redis

from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import WorkerProcess, wait_until, worker_env
from tests.modelserver import ModelServerConfig, ModelServerHandle, write_tokenizer_json

NAMESPACE = "bench"
# Commands the Lua transitions run; the clients never send these themselves on the hot path.
SCRIPT_INTERNAL = {
    "hget",
    "hset",
    "hsetnx",
    "hincrby",
    "hexists",
    "hlen",
    "xadd",
    "expire",
    "time",
    "get",
    "set",
    "zrangebyscore",
}
# What this benchmark's own status polls send (`JobStore.fields`: HMGET and HLEN per job).
POLL_COMMANDS = {"hmget", "hlen"}
NOT_CLIENT_ROUND_TRIPS = SCRIPT_INTERNAL | POLL_COMMANDS
# Traces are longer than τ, so every tail that feeds a round is cut.
TAILS = {
    "local": "the server tokenizer's tokenizer.json (RSA_TOKENIZER), offsets in-process",
    "server": "the server's count-only /tokenize (an interpolating search, 2-3 calls a tail)",
    "approx": "the documented approximation (the server hides /tokenize)",
}
PARAMS = RSAParams(population=16, subset=4, rounds=2, trace_tokens=256, tail_tokens=64, final_tokens=256)


async def commandstats(client: Redis) -> Counter[str]:
    stats = await client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()})


def round_trips(delta: Counter[str]) -> int:
    return sum(
        calls for name, calls in delta.items() if name not in NOT_CLIENT_ROUND_TRIPS and not name.startswith("info")
    )


async def wait_all_done(store: JobStore, job_ids: list[str]) -> None:
    pending = list(job_ids)
    while pending:
        statuses = [fields.get("status") for fields, _ in await store.fields(pending, ["status"])]
        if failed := [status for status in statuses if status in ("failed", "cancelled")]:
            raise RuntimeError(f"{len(failed)} jobs ended {failed[0]}: see the worker logs")
        pending = [job_id for job_id, status in zip(pending, statuses, strict=True) if status != "completed"]
        await asyncio.sleep(0.2)


async def first_claim_ms(store: JobStore, job_ids: list[str]) -> int:
    firsts = []
    for job_id in job_ids:
        claimed = [e.id for e in await store.events(job_id) if e.type == "claimed"]
        firsts.append(int(claimed[0].split("-")[0]))
    return min(firsts)


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def redis_cpu_s(client: Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(args: argparse.Namespace, url: str, server: ModelServerHandle, logs: Path) -> None:
    base_url = server.base_url
    client = Redis.from_url(url, decode_responses=True)
    store = JobStore(client, namespace=NAMESPACE)
    tokenizer = {"tokenizer": write_tokenizer_json(logs / "tokenizer.json")} if args.tails == "local" else {}
    env = worker_env(
        dict(os.environ), redis_url=url, namespace=NAMESPACE, worker_concurrency=args.concurrency, **tokenizer
    )
    workers = [WorkerProcess(env, logs / f"worker{i}.log") for i in range(args.workers)]
    await wait_until(lambda: asyncio.sleep(0, all("started" in w.log() for w in workers)), 60, "workers to start")
    assert server.process is not None
    spec = JobSpec(problem="Throughput. ANSWER=7", params=PARAMS, backend=base_url, templates=PromptTemplates.load())

    async def submit(seeds: range) -> list[str]:
        return [
            await store.create(spec.model_copy(update={"params": PARAMS.model_copy(update={"seed": seed})}))
            for seed in seeds
        ]

    # A warm-up job per worker (connections, first-use caches), then counters from here on: start-up is not a
    # per-generation cost.
    await wait_all_done(store, await submit(range(args.jobs, args.jobs + args.workers)))
    tokenize_before = server.log()["tokenize_calls"]
    worker_cpu_before, server_cpu_before = sum(cpu_s(w.pid) for w in workers), cpu_s(server.process.pid)
    redis_cpu_before = await redis_cpu_s(client)
    before = await commandstats(client)
    job_ids = await submit(range(args.jobs))
    await wait_all_done(store, job_ids)
    delta = await commandstats(client) - before
    finished = await store.fields(job_ids, ["finished_ms"])
    finished_ms = max(int(fields["finished_ms"]) for fields, _ in finished)  # as recorded, not the poll's time
    started_ms = await first_claim_ms(store, job_ids)
    worker_cpu = sum(cpu_s(w.pid) for w in workers) - worker_cpu_before
    server_cpu = cpu_s(server.process.pid) - server_cpu_before
    redis_cpu = await redis_cpu_s(client) - redis_cpu_before
    for worker in workers:
        worker.stop()
    generations = sum(steps for _, steps in finished)
    elapsed_s = (finished_ms - started_ms) / 1000
    print(
        f"{args.workers} workers × concurrency {args.concurrency}; {args.jobs} jobs of N=16 K=4 T=2; "
        f"tails cut by {TAILS[args.tails]}"
    )
    print(f"committed generations: {generations} in {elapsed_s:.2f} s → {generations / elapsed_s:.0f} per second")
    print(
        f"Redis round trips per generation: {round_trips(delta) / generations:.2f} (upper bound); "
        f"commands incl. script-internal: {sum(delta.values()) / generations:.2f}"
    )
    print(
        f"CPU seconds: workers {worker_cpu:.1f} ({worker_cpu / generations * 1000:.2f} ms per generation), "
        f"model server {server_cpu:.1f}, Redis {redis_cpu:.1f}; "
        f"tokenize calls per generation {(server.log()['tokenize_calls'] - tokenize_before) / generations:.1f}"
    )
    sent = [f"{name}={calls}" for name, calls in delta.most_common(8) if name not in NOT_CLIENT_ROUND_TRIPS]
    print("top client commands:", ", ".join(sent))
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tails", choices=list(TAILS), default="local", help="What cuts the tails (see TAILS).")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    started = time.monotonic()
    faults = [{"status": 404, "always": True, "path": "/tokenize"}] if args.tails == "approx" else []
    config = ModelServerConfig(reasoning_words=40, faults=faults)
    with services(config) as (url, server, data):
        asyncio.run(run(args, url, server, data))
    print(f"benchmark wall: {time.monotonic() - started:.1f} s; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
