"""`rsa batch FILE -o OUT.jsonl`: a problem file through a running server (`--server URL`) or in-process
(the configured or embedded Redis, in-process workers, the API app over an in-memory transport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import httpx2
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rsa_service.batch import BatchSummary, ResultLine, read_problems, run_batch
from rsa_service.cli.common import NO_BACKEND, CLIError, run_async, stderr, stdout
from rsa_service.cli.options import JobOptions, with_job_options
from rsa_service.client import AsyncRSAClient
from rsa_service.settings import Settings, default_backend

IN_PROCESS_BACKEND = "cli"


@asynccontextmanager
async def batch_client(
    server: str | None, job: JobOptions, workers: int
) -> AsyncIterator[tuple[AsyncRSAClient, str | None]]:
    """A client of `server`, or of an in-process app with workers; and the backend name to send."""
    if server:
        if job.prompts:
            raise CLIError("--prompts: a server uses its own templates; drop --prompts or run without --server")
        async with AsyncRSAClient(base_url=server) as client:
            yield client, job.backend
        return
    settings = Settings()
    spec = job.backend or default_backend(settings)
    if not spec:
        raise CLIError(NO_BACKEND)
    # The operator's named backends stay: stage routing names them.
    shared = settings.model_copy(update={"backends": settings.backends | {IN_PROCESS_BACKEND: spec}})
    # Imported here: FastAPI costs a second of start-up that `rsa reason` and friends should not pay.
    from rsa_service.api.app import create_app
    from rsa_service.api.server_settings import ApiSettings
    from rsa_service.api.workers import in_process_workers

    options = ApiSettings(api_keys=[], prompts_dir=job.prompts, poll_after_s=1, max_active_jobs=1_000_000)
    app = create_app(options, shared, background=in_process_workers(workers, shared))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with AsyncRSAClient(base_url="http://rsa.local", transport=transport, api_key="") as client:
            yield client, IN_PROCESS_BACKEND


async def _batch(
    file: Path, out: Path, server: str | None, job: JobOptions, concurrency: int, workers: int
) -> BatchSummary:
    problems = read_problems(file)
    job.params()  # bad flags fail here, before anything is submitted
    progress = Progress(
        TextColumn("[bold]batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=stderr,
    )
    task = progress.add_task("batch", total=len(problems), failed=0)
    failures = 0

    def advance(line: ResultLine) -> None:
        nonlocal failures
        failures += line.status != "completed"
        progress.update(task, advance=1, failed=failures)

    async with batch_client(server, job, workers) as (client, backend):
        with progress:
            return await run_batch(
                client,
                problems,
                out,
                backend=backend,
                model=job.model,
                params=job.overrides,
                concurrency=concurrency,
                on_result=advance,
            )


def _print(summary: BatchSummary, as_json: bool) -> None:
    if as_json:
        stdout.out(json.dumps(summary.model_dump(mode="json")), highlight=False)
        return
    stdout.print(
        f"{summary.completed}/{summary.problems} completed, {summary.failed} failed, {summary.resumed} resumed · "
        f"{summary.usage.prompt_tokens:,} tokens in, {summary.usage.completion_tokens:,} out · {summary.wall_s:.1f}s"
    )
    if summary.accuracy is not None:
        a = summary.accuracy
        stdout.print(
            f"accuracy over {a.graded}: final {a.final:.1%} · majority of round 0 {a.majority_round0:.1%} · "
            f"mean round-0 trace {a.mean_round0_trace:.1%}"
        )


@with_job_options
def batch(
    file: Annotated[Path, typer.Argument(help="JSONL (prompt/problem/question), CSV, or OpenAI Batch JSONL.")],
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results JSONL; a rerun skips ids already in it.")],
    server: Annotated[
        str | None, typer.Option("--server", help="A running `rsa serve` URL; default: in-process.")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Jobs in flight at once.")] = 8,
    workers: Annotated[int, typer.Option("--workers", min=1, help="In-process workers (without --server).")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    job: JobOptions,
) -> None:
    """Run every problem of a file as an RSA job; results are written as they finish; resumable."""
    if not file.is_file():
        raise CLIError(f"FILE: {file} does not exist")
    summary = run_async(lambda: _batch(file, out, server, job, concurrency, workers))
    _print(summary, as_json)


def register(app: typer.Typer) -> None:
    app.command()(batch)
