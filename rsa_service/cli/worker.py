"""`rsa submit`, `rsa worker` and `rsa jobs list|show|cancel|events|requeue|resume`: the queue side of the service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Annotated, Any

import typer

from rsa_service.cli.common import EXIT_FAILED, CLIError, build_spec, fail, read_problem, run_async, stderr, stdout
from rsa_service.cli.options import JobOptions, with_job_options
from rsa_service.cli.progress import format_round
from rsa_service.core import answers
from rsa_service.core.steps import RoundStats
from rsa_service.jobs import listing
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.connect import open_store
from rsa_service.jobs.errors import JobNotFound, NotDeadLettered
from rsa_service.jobs.events import follow
from rsa_service.jobs.models import JobRecord
from rsa_service.jobs.requests import check_fits
from rsa_service.jobs.store import JobStore
from rsa_service.jobs.worker import Worker
from rsa_service.metrics import serve_metrics
from rsa_service.observability import ObservabilitySettings, configure_observability
from rsa_service.runtime import settle_heap
from rsa_service.settings import Settings
from rsa_service.wire import Event, JobStatus

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
JobId = Annotated[str, typer.Argument(help="The job id (job_...).")]
jobs_app = typer.Typer(help="Inspect and act on jobs.", no_args_is_help=True)


def _print_json(payload: Any) -> None:
    stdout.out(json.dumps(payload), highlight=False)


# ---- submit and worker ------------------------------------------------------------------------------------


async def _submit(settings: Settings, problem: str | None, job: JobOptions) -> str:
    spec = build_spec(settings, read_problem(problem), job)
    pool = BackendPool(settings)
    try:
        await check_fits(await pool.get(spec.backend, spec.model), spec)
    finally:
        await pool.aclose()
    async with open_store(settings) as store:
        return await store.create(spec)


@with_job_options
def submit(
    problem: Annotated[str | None, typer.Argument(help="The problem text, or - for stdin.")] = None,
    *,
    as_json: JsonFlag = False,
    job: JobOptions,
) -> None:
    """Queue a job for the workers and print its id."""
    job_id = run_async(lambda: _submit(Settings(), problem, job))
    _print_json({"job_id": job_id}) if as_json else stdout.out(job_id, highlight=False)


async def _work(settings: Settings, concurrency: int | None, metrics_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_store(settings) as store, contextlib.AsyncExitStack() as stack:
        if metrics_port:
            try:
                await stack.enter_async_context(serve_metrics(store, metrics_port))
            except OSError as exc:
                raise CLIError(f"--metrics-port {metrics_port}: {exc.strerror or exc}", EXIT_FAILED) from exc
        backends = BackendPool(settings)
        overrides = {"concurrency": concurrency} if concurrency else {}
        answers.warm_up()  # before the heap is frozen, so math-verify's sympy is frozen with the rest
        settle_heap()
        try:
            await Worker.from_settings(store, backends, settings, **overrides).run(stop)
        finally:
            await backends.aclose()


def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Generations in flight (RSA_WORKER_CONCURRENCY).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (0: off; default RSA_METRICS_PORT).",
        ),
    ] = None,
) -> None:
    """Run queued jobs until SIGTERM or Ctrl-C, then drain: in-flight generations finish or leases go back."""
    configure_observability(ObservabilitySettings())
    settings = Settings()
    port = settings.metrics_port if metrics_port is None else metrics_port
    run_async(lambda: _work(settings, concurrency, port))


# ---- jobs ---------------------------------------------------------------------------------------------------


def _summary(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status,
        "tenant": record.tenant,
        "backend": record.spec.backend,
        "attempts": record.attempts,
        "owner": record.owner or None,
        "created_ms": record.created_ms,
        "started_ms": record.started_ms,
        "finished_ms": record.finished_ms,
    }


async def _list(tenant: str, limit: int, status: JobStatus | None) -> list[JobRecord]:
    async with open_store(Settings()) as store:
        page = await listing.list_jobs(store, tenant, limit=limit, status=frozenset({status}) if status else None)
    return page.jobs


@jobs_app.command("list")
def list_jobs(
    tenant: Annotated[str, typer.Option("--tenant", help="Whose jobs.")] = "local",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest this many.")] = 20,
    status: Annotated[JobStatus | None, typer.Option("--status", help="Only jobs with this status.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The newest jobs, newest first."""
    records = run_async(lambda: _list(tenant, limit, status))
    if as_json:
        _print_json([_summary(record) for record in records])
        return
    for record in records:
        stdout.out(f"{record.id}  {record.status:<11}  attempts {record.attempts}  {record.spec.backend}")


async def _show(job_id: str) -> dict[str, Any]:
    async with open_store(Settings()) as store:
        record = await store.get(job_id)
        steps = await store.step_count(job_id)
    shown = _summary(record) | {"steps": steps, "params": record.spec.params.model_dump(mode="json")}
    return shown | {
        "result": record.result.model_dump(mode="json") if record.result else None,
        "error": record.error.model_dump(mode="json") if record.error else None,
    }


@jobs_app.command("show")
def show(job_id: JobId, as_json: JsonFlag = False) -> None:
    """One job: status, ownership, progress and result."""
    shown = run_async(lambda: _show(job_id))
    if as_json:
        _print_json(shown)
        return
    for key, value in shown.items():
        if key == "result" and value:
            stopped = value["stopped_reason"]
            value = f"answer {value['answer']!r}" + (f" (stopped: {stopped})" if stopped else "")
        stdout.out(f"{key:>12}: {value}", highlight=False)


async def _cancel(job_id: str) -> str:
    async with open_store(Settings()) as store:
        return await store.cancel(job_id)


@jobs_app.command("cancel")
def cancel(job_id: JobId, as_json: JsonFlag = False) -> None:
    """Cancel a job; a running one stops within about a second and keeps its finished steps."""
    status = run_async(lambda: _cancel(job_id))
    _print_json({"job_id": job_id, "status": status}) if as_json else stdout.out(f"{job_id} {status}")


async def _requeue(job_ids: list[str], all_dead: bool) -> list[dict[str, Any]]:
    async with open_store(Settings()) as store:
        if all_dead:
            job_ids = [*job_ids, *(job_id for job_id in await store.dead_lettered() if job_id not in job_ids)]
        outcomes: list[dict[str, Any]] = []
        for job_id in job_ids:
            try:
                await store.requeue(job_id)
            except (JobNotFound, NotDeadLettered) as exc:
                outcomes.append({"job_id": job_id, "requeued": False, "error": str(exc)})
                continue
            outcomes.append({"job_id": job_id, "requeued": True, "status": "queued"})
    return outcomes


@jobs_app.command("resume")
@jobs_app.command("requeue")
def requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Ids of failed jobs.", show_default=False)] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every job in the dead-letter set.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Resume jobs that failed for a transient reason (poison after their attempts, or their backend down past the
    outage budget): queued with a fresh attempt budget, from their committed steps. Any other job is refused; the
    exit code is 1 if one was."""
    if not job_ids and not all_dead:
        fail("give the ids of the jobs to requeue, or --all-dead")
    outcomes = run_async(lambda: _requeue(job_ids or [], all_dead))
    if as_json:
        _print_json(outcomes)
    elif not outcomes:
        stdout.out("no dead-lettered jobs")
    for outcome in [] if as_json else outcomes:
        if outcome["requeued"]:
            stdout.out(f"{outcome['job_id']} queued", highlight=False)
        else:
            stderr.print(f"[red]refused:[/red] {outcome['error']}", highlight=False, soft_wrap=True)
    if not all(outcome["requeued"] for outcome in outcomes):
        raise typer.Exit(EXIT_FAILED)


def _describe(event: Event) -> str:
    if event.type == "round":
        return format_round(RoundStats.model_validate(event.data))
    return json.dumps(event.data)


async def _follow(store: JobStore, job_id: str, after: str, as_json: bool) -> None:
    record = await store.get(job_id)
    if record.terminal and not await store.events(job_id, after=after, count=1):
        return  # nothing after `after`, and nothing will come
    async for event in follow(store, job_id, after=after):
        if as_json:
            _print_json(event.model_dump())
        else:
            stdout.out(f"{event.id}  {event.type:<10}  {_describe(event)}", highlight=False)


async def _events(job_id: str, after: str, as_json: bool) -> None:
    async with open_store(Settings()) as store:
        await _follow(store, job_id, after, as_json)


@jobs_app.command("events")
def events(
    job_id: JobId,
    after: Annotated[str, typer.Option("--from", help="Resume after this event id.")] = "0-0",
    as_json: JsonFlag = False,
) -> None:
    """Print a job's events, following the stream until the job ends (one JSON object per line with --json)."""
    run_async(lambda: _events(job_id, after, as_json))


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(worker)
    app.add_typer(jobs_app, name="jobs")
