"""Orchestration overhead: one Markovian RSA job against a model server with a fixed latency per request.

The ideal wall time is (T+1) × latency: every round's N requests in flight at once, and nothing else costing
time. The ratio wall / ideal is what the controller (prompt building, tails, Redis commits, events) adds.
Target: ≤ 1.10 for N=16, K=4, T=2 at 200 ms.

    .venv/bin/python benchmarks/orchestration.py [--latency-ms 200] [--repeats 5] [--tails server|local]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import services
from redis.asyncio import Redis

from rsa_service.backends import BackendOptions, open_backend
from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.attempt import run_attempt
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.requests import check_fits
from rsa_service.jobs.store import JobStore
from rsa_service.runtime import event_loop_factory, settle_heap
from tests.modelserver import ModelServerConfig, write_tokenizer_json


async def one_job(store: JobStore, base_url: str, params: RSAParams, tokenizer: str | None) -> float:
    spec = JobSpec(
        problem="Benchmark problem. ANSWER=42",
        params=params,
        backend=f"openai:{base_url}",
        templates=PromptTemplates.load(),
    )
    backend = open_backend(spec.backend, BackendOptions(max_concurrency=256, tokenizer_path=tokenizer))
    try:
        await check_fits(backend, spec)
        job_id = await store.create(spec, queue=False)
        started = time.perf_counter()
        outcome = await run_attempt(store, backend, job_id, "bench", lease_s=30)
        wall = time.perf_counter() - started
    finally:
        await backend.aclose()
    assert outcome.end == "completed", outcome
    return wall


async def main(args: argparse.Namespace) -> None:
    params = RSAParams(
        population=args.population,
        subset=args.subset,
        rounds=args.rounds,
        trace_tokens=512,
        tail_tokens=256,
        final_tokens=512,
    )
    ideal = (params.rounds + 1) * args.latency_ms / 1000
    config = ModelServerConfig(latency_ms=args.latency_ms, reasoning_words=args.reasoning_words)
    with services(config) as (url, server, data):
        client = Redis.from_url(url, decode_responses=True)
        store = JobStore(client, namespace="bench")
        tokenizer = str(write_tokenizer_json(data / "tokenizer.json")) if args.tails == "local" else None
        await one_job(store, server.base_url, params, tokenizer)  # warm-up: connections, imports, math-verify
        settle_heap()  # as `rsa reason` does once its job is running
        walls = [await one_job(store, server.base_url, params, tokenizer) for _ in range(args.repeats)]
        await client.aclose()
    median = statistics.median(walls)
    print(
        f"job: N={params.population} K={params.subset} T={params.rounds}, {args.latency_ms:.0f} ms per request, "
        f"{(params.rounds + 1) * params.population} generations; {args.reasoning_words} words of reasoning; "
        f"tails cut by {'a local tokenizer.json' if args.tails == 'local' else 'the server /tokenize'}"
    )
    print(f"wall times (s): {', '.join(f'{w:.3f}' for w in walls)}")
    print(
        f"ideal (T+1)×latency: {ideal:.3f} s; median wall: {median:.3f} s; ratio: {median / ideal:.3f} (target ≤ 1.10)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--subset", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reasoning-words", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tails", choices=["server", "local"], default="server", help="What cuts tails longer than τ.")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the CLI's event loop (uvloop)
        runner.run(main(parser.parse_args()))
