"""`rsa reason`: one job run to completion in this process, with live progress; `--resume` continues one."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated

import typer

from rsa_service.backends import open_backend
from rsa_service.backends.base import Backend
from rsa_service.cli.common import (
    EXIT_FAILED,
    CLIError,
    build_spec,
    fail,
    read_problem,
    run_async,
    stderr,
    stdout,
)
from rsa_service.cli.options import JobOptions, with_job_options
from rsa_service.cli.progress import LiveProgress, render_result
from rsa_service.core.answers import equivalent
from rsa_service.jobs.attempt import AttemptOutcome, dead_local_owner, process_owner_id, run_attempt
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.connect import open_store
from rsa_service.jobs.events import follow
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.requests import check_fits
from rsa_service.jobs.store import JobStore
from rsa_service.runtime import settle_heap
from rsa_service.settings import Settings, backend_options
from rsa_service.tinymodel import HELDOUT_PATH
from rsa_service.wire import JobResult

CLAIM_RETRY_S = 1.0
# The demo problem: one on which the bundled model's round-0 majority is wrong and aggregation recovers (with the
# default seed). Chosen to show the mechanism, so it flatters; `rsa eval` gives the unselected figures.
EXAMPLE_INDEX = 1


async def _claim_and_run(
    store: JobStore,
    backend: Backend,
    job_id: str,
    settings: Settings,
    concurrency: int | None,
    routed: dict[str, Backend],
) -> AttemptOutcome:
    """Run the job here; wait out a live foreign lease, take a dead local process's lease at once."""
    owner = process_owner_id()
    announced = False
    settle_heap()
    while True:
        record = await store.get(job_id)
        outcome = await run_attempt(
            store,
            backend,
            job_id,
            owner,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            concurrency=concurrency,
            steal_from=dead_local_owner(record.owner),
            routed=routed,
        )
        if outcome.end != "busy":
            return outcome
        if not announced:
            stderr.print(f"job {job_id} is held by {outcome.detail}; waiting for its lease to expire")
            announced = True
        await asyncio.sleep(CLAIM_RETRY_S)


async def _show_progress(store: JobStore, job_id: str, spec: JobSpec) -> None:
    params = spec.params
    with LiveProgress(stderr, params) as view:
        async for event in follow(store, job_id):
            view.handle(event)


async def _reason(
    settings: Settings,
    problem: str | None,
    job: JobOptions,
    resume: str | None,
    quiet: bool,
    concurrency: int | None,
) -> JobResult:
    async with open_store(settings) as store:
        if resume:
            record = await store.get(resume)
            spec, job_id = record.spec, resume
            if record.terminal and record.result is not None:
                return record.result
        else:
            spec = build_spec(settings, read_problem(problem), job)
            job_id = ""
        backend = open_backend(job.backend or spec.backend, backend_options(settings, spec.model))
        pool = BackendPool(settings)  # the stages' routed backends, by configured name
        try:
            routed = {name: await pool.get(name) for name in spec.params.routed_backends}
            await check_fits(backend, spec)
            if not job_id:
                job_id = await store.create(spec, queue=False)
            stderr.print(
                f"job {job_id} (continue it with: rsa reason --resume {job_id})", highlight=False, soft_wrap=True
            )
            viewer = None if quiet else asyncio.create_task(_show_progress(store, job_id, spec))
            try:
                outcome = await _claim_and_run(store, backend, job_id, settings, concurrency, routed)
            finally:
                if viewer is not None:
                    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(viewer, timeout=2)
        finally:
            await asyncio.gather(backend.aclose(), pool.aclose())
        return await _result_of(store, job_id, outcome)


async def _result_of(store: JobStore, job_id: str, outcome: AttemptOutcome) -> JobResult:
    if outcome.result is not None:
        return outcome.result
    record = await store.get(job_id)
    if record.result is not None:
        return record.result
    raise CLIError(f"job {job_id} ended {outcome.end}: {outcome.detail or record.status}", EXIT_FAILED)


def print_result(result: JobResult, as_json: bool) -> None:
    if as_json:
        stdout.out(json.dumps(result.model_dump(mode="json")), highlight=False)
    else:
        render_result(stdout, result)
    if result.status != "completed":
        raise typer.Exit(EXIT_FAILED)


@with_job_options
def reason(
    problem: Annotated[str | None, typer.Argument(help="The problem text, or - for stdin.")] = None,
    *,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue an interrupted job by id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the result.")] = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Generations in flight.")] = None,
    example: Annotated[
        bool, typer.Option("--example", help="Solve a problem of the bundled model's held-out set.")
    ] = False,
    job: JobOptions,
) -> None:
    """Run one Markovian RSA job to completion in this process, with live per-round progress."""
    settings = Settings()
    expected = None
    if example:
        if problem is not None:
            fail("--example: give either a problem or --example, not both")
        chosen = json.loads(HELDOUT_PATH.read_text(encoding="utf-8").splitlines()[EXAMPLE_INDEX])
        problem, expected = chosen["prompt"], chosen["answer"]
        stderr.print(f"example problem: {problem}", highlight=False, soft_wrap=True)
    result = run_async(lambda: _reason(settings, problem, job, resume, as_json, concurrency))
    if expected is not None and not as_json:
        verdict = "correct" if result.answer is not None and equivalent(result.answer, expected) else "not correct"
        stderr.print(f"reference answer: {expected} (the job's answer is {verdict})", highlight=False)
    print_result(result, as_json)


def register(app: typer.Typer) -> None:
    app.command()(reason)
