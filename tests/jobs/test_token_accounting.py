"""Every token the backend spent is counted: empty outputs that are retried, attempts that fail after the server
reported usage, requests aborted by a timeout or a straggler cut. A real redis-server, the counting model server
over HTTP, and a worker in this process (so its Prometheus counters can be read)."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from rich.console import Console

from rsa_service.backends.base import BackendOptions, ChatMessage, GenerationRequest
from rsa_service.backends.fleet import FleetBackend
from rsa_service.cli.progress import render_result
from rsa_service.core.steps import Usage
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings
from tests.jobs.helpers import finished, job_spec, running
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread

FAST_RETRIES = {"backend_retry_backoff_s": 0.01, "backend_retry_max_wait_s": 0.05}


def counted(backend: str) -> Usage:
    """What this process's Prometheus counters say the backend spent."""

    def value(name: str, **labels: str) -> int:
        return int(REGISTRY.get_sample_value(name, {"backend": backend, **labels}) or 0)

    return Usage(
        prompt_tokens=value("rsa_tokens_total", direction="prompt"),
        completion_tokens=value("rsa_tokens_total", direction="completion"),
        estimated_tokens=value("rsa_estimated_tokens_total"),
    )


def minus(after: Usage, before: Usage) -> Usage:
    return Usage(
        prompt_tokens=after.prompt_tokens - before.prompt_tokens,
        completion_tokens=after.completion_tokens - before.completion_tokens,
        estimated_tokens=after.estimated_tokens - before.estimated_tokens,
    )


def exact_part(usage: Usage) -> int:
    return usage.total - usage.estimated_tokens


async def run_job(store: JobStore, server: ModelServerHandle, pool: BackendPool | None = None, **params: Any) -> Any:
    backend = f"openai:{server.base_url}"
    before = counted(backend)
    job_id = await store.create(job_spec(backend, **params))
    async with running(store, pool):
        await finished(store, job_id, timeout_s=60)
    record = await store.get(job_id)
    assert record.result is not None
    return record, minus(counted(backend), before)


async def test_usage_is_what_the_server_spent_to_the_token(store: JobStore) -> None:
    faults = [{"empty_output": True, "times": 2}, {"no_choices": True}]
    with serve_in_thread(ModelServerConfig(reasoning_words=30, latency_ms=50, faults=faults)) as server:
        record, metrics = await run_job(store, server, rounds=1)
        spent = server.spent()
    usage = record.result.usage
    assert record.status == "completed"
    assert (usage.prompt_tokens, usage.completion_tokens) == (spent["prompt_tokens"], spent["completion_tokens"])
    assert usage.estimated_tokens == 0
    assert sum((r.tokens for r in record.result.rounds), Usage()) == usage  # the per-round table agrees
    assert metrics == usage  # and so do the Prometheus counters
    steps = (await store.steps(record.id)).values()
    assert sum(step.attempts for step in steps) == len(steps) + 2  # the two empty outputs were sampled again
    [failed] = [step for step in steps if step.status == "failed"]
    assert failed.usage.completion_tokens > 0  # no usable answer, yet the server reported what it spent


async def test_the_token_budget_stops_on_what_was_really_spent(store: JobStore) -> None:
    """Every first attempt of round 0 comes back empty after spending its whole budget (200 tokens): two slots'
    real cost is past the budget, which counting only the usable answers (about 90 tokens each) never reaches
    within round 0."""
    faults = [{"empty_output": True, "times": 4}]
    # The latency lets every slot's first request arrive before any answer does, so each meets one empty output.
    with serve_in_thread(ModelServerConfig(reasoning_words=30, latency_ms=200, faults=faults)) as server:
        record, _ = await run_job(store, server, rounds=1, max_total_tokens=500)
    result = record.result
    assert result.stopped_reason is not None and "token budget of 500" in result.stopped_reason
    assert [stats.round for stats in result.rounds] == [0] and result.usage.total >= 500


async def test_aborted_requests_count_an_upper_bound_marked_estimated(store: JobStore) -> None:
    """One request outlives the read timeout and is retried; in a second job one slot is cut at the round
    deadline. Neither server answer reports usage: each counts its prompt plus its whole budget, estimated."""
    pool = BackendPool(Settings(backend_read_timeout_s=1.5, **FAST_RETRIES))
    with serve_in_thread(ModelServerConfig(reasoning_words=20, faults=[{"delay_s": 6}])) as server:
        record, metrics = await run_job(store, server, pool, rounds=0)
        spent = server.spent()
    usage = record.result.usage
    assert record.status == "completed" and metrics == usage
    assert exact_part(usage) == spent["prompt_tokens"] + spent["completion_tokens"]
    steps = (await store.steps(record.id)).values()
    prompt = next(step.usage.prompt_tokens for step in steps if not step.usage.estimated_tokens)  # one request's
    budget = record.spec.params.max_tokens_for(0)
    assert usage.estimated_tokens == prompt + budget  # one aborted request: its prompt and its whole budget

    cut = {"round_deadline_s": 2.0, "straggler_policy": "quorum", "quorum": 0.5, "rounds": 0}
    with serve_in_thread(ModelServerConfig(reasoning_words=20, faults=[{"delay_s": 20}])) as server:
        record, metrics = await run_job(store, server, **cut)
        spent = server.spent()
    usage = record.result.usage
    [straggler] = [s for s in (await store.steps(record.id)).values() if s.status == "straggler"]
    assert straggler.usage.estimated_tokens == straggler.usage.total == prompt + budget
    assert exact_part(usage) == spent["prompt_tokens"] + spent["completion_tokens"] and metrics == usage
    console = Console(record=True, width=200)
    render_result(console, record.result)  # what `rsa reason` prints marks the estimate
    assert f"estimated: {usage.estimated_tokens:,} of the tokens" in console.export_text()


async def test_a_trace_lost_after_generating_still_counts(store: JobStore) -> None:
    """Tails cannot be cut (the tokenizer endpoint fails): every trace of round 0 is lost after the server
    reported its usage, and the failed job still reports what was spent."""
    pool = BackendPool(Settings(backend_max_retries=1, **FAST_RETRIES))
    faults = [{"status": 500, "path": "/tokenize", "always": True}]
    with serve_in_thread(ModelServerConfig(reasoning_words=200, faults=faults)) as server:
        record, metrics = await run_job(store, server, pool, rounds=1)
        spent = server.spent()
    usage = record.result.usage
    assert record.status == "failed" and "tokenize" in (record.error.detail or "")
    assert (
        (usage.prompt_tokens, usage.completion_tokens) == (spent["prompt_tokens"], spent["completion_tokens"]) != (0, 0)
    )
    assert metrics == usage


async def test_a_fleet_counts_what_a_failed_replica_spent() -> None:
    """The first replica never answers in time (aborted: an upper bound); the second answers. The generation
    reports both, the answer as its usage and the aborted attempt as its retry usage."""
    options = BackendOptions(model="toy", read_timeout_s=1.0, retry_backoff_s=0.01, retry_max_wait_s=0.05)
    request = GenerationRequest(messages=(ChatMessage(role="user", content="Sum. ANSWER=3"),), max_tokens=40)
    slow = ModelServerConfig(faults=[{"delay_s": 10, "always": True}])
    with serve_in_thread(slow) as first, serve_in_thread() as second:
        fleet = FleetBackend("pair", [first.base_url, second.base_url], options)
        try:
            generation = await fleet.generate(request)
            prompt = await fleet.count_tokens(request)
        finally:
            await fleet.aclose()
        answered = second.spent()
    assert generation.usage.total == answered["prompt_tokens"] + answered["completion_tokens"]
    assert generation.retry_usage == Usage.upper_bound(prompt, 40)
    assert generation.spent.estimated_tokens == prompt + 40
