"""Adaptive compute on real jobs: the consensus short-cut and the early stops skip model calls, and a job whose
worker is killed mid-round is finished by another with exactly the choices an uninterrupted run takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsa_service.core.plan import generation_seed
from rsa_service.core.steps import Usage
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import LEASE_S, WorkerProcess, finished, job_spec, running, wait_until, worker_env
from tests.modelserver import AGGREGATION_MARKERS, ModelServerConfig, serve_in_thread

# With this seed, round 1 has short-cut slots and keeps round 0's answer at 5/6: the stability stop ends the job.
ADAPTIVE = {"population": 6, "subset": 2, "rounds": 2, "seed": 2, "consensus_shortcut": True, "stop_stability": 0.8}


def _aggregations(requests: list[dict[str, Any]]) -> int:
    return sum(any(marker in str(entry["body"]) for marker in AGGREGATION_MARKERS) for entry in requests)


def _trail(steps: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """What the audit trail says each step did: its candidates, its carried candidate, its seed and answer."""
    return {key: (s.candidates, s.shortcut_from, s.seed, s.answer, s.usage) for key, s in steps.items()}


async def test_shortcut_slots_send_no_request_and_record_zero_tokens(store: JobStore) -> None:
    with serve_in_thread(ModelServerConfig(p_correct=0.6)) as server:
        job_id = await store.create(job_spec(server.base_url, **(ADAPTIVE | {"seed": 3, "stop_stability": None})))
        async with running(store):
            assert await finished(store, job_id) == "completed"
        requests = server.requests()
    steps = await store.steps(job_id)
    carried = [step for step in steps.values() if step.shortcut_from is not None]
    assert carried, "the seed was chosen so that some round-1 pair agrees"
    # Every other step is a request (a retry after a lost lease may send one twice); a short-cut sends none.
    sent = {entry["body"]["seed"] for entry in requests}
    assert sent == {step.seed for step in steps.values() if step.shortcut_from is None}
    assert not sent & {generation_seed(3, step.round, step.slot) for step in carried}
    for step in carried:
        source = steps[f"r{step.round - 1}:s{step.shortcut_from}"]
        assert step.usage == Usage() and step.shortcut_from in step.candidates
        assert (step.answer, step.tail) == (source.answer, source.tail)
    result = (await store.get(job_id)).result
    assert result is not None
    assert sum(stats.shortcuts for stats in result.rounds) == len(carried)
    assert result.usage == sum((step.usage for step in steps.values()), Usage())


async def test_a_worker_killed_mid_round_leaves_the_same_choices_to_its_successor(
    store: JobStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = worker_env(cli_env, lease_s=LEASE_S, worker_concurrency=2)  # two at a time: round 1 is left half done
    with serve_in_thread(ModelServerConfig(p_correct=0.6, latency_ms=150)) as server:
        whole = await store.create(job_spec(server.base_url, **ADAPTIVE))
        async with running(store):
            assert await finished(store, whole) == "completed"

        resumed = await store.create(job_spec(server.base_url, **ADAPTIVE))
        first = WorkerProcess(env, tmp_path / "first.log")
        try:
            await wait_until(lambda: _round_one_started(store, resumed), 60, "round 1 to be under way")
        finally:
            first.kill()  # SIGKILL mid-round: its lease runs out and another worker takes the job over
        interrupted = await store.steps(resumed)
        assert 6 < len(interrupted) < 12
        second = WorkerProcess(env, tmp_path / "second.log")
        try:
            assert await finished(store, resumed, 60) == "completed"
        finally:
            second.stop()

    expected, got = (await store.get(whole)).result, (await store.get(resumed)).result
    assert expected is not None and got is not None
    assert _trail(await store.steps(resumed)) == _trail(await store.steps(whole))
    assert any(step.shortcut_from is not None for step in (await store.steps(whole)).values())
    assert expected.stopped_reason is not None and got.stopped_reason == expected.stopped_reason
    assert (got.answer, got.usage) == (expected.answer, expected.usage)


async def _round_one_started(store: JobStore, job_id: str) -> bool:
    return any(key.startswith("r1:") for key in await store.steps(job_id))
