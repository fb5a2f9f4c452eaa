"""`rsa serve`: the REST API under uvicorn, with in-process workers unless `--workers 0`."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer

from rsa_service.core import answers
from rsa_service.observability import ObservabilitySettings, configure_observability
from rsa_service.runtime import settle_heap
from rsa_service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

# How `--processes` tells each API process (started by uvicorn, which imports the app by name) its `--workers`.
WORKERS_ENV = "RSA_SERVE_WORKERS"


def build_app(workers: int) -> FastAPI:
    """The app with `workers` in-process workers (0: none)."""
    # Imported here: FastAPI costs a second of start-up that the other commands should not pay.
    from rsa_service.api.app import create_app
    from rsa_service.api.server_settings import ApiSettings, named_backends
    from rsa_service.api.workers import in_process_workers

    shared = named_backends(Settings())
    background = in_process_workers(workers, shared) if workers else None
    app = create_app(ApiSettings(), shared, background=background)
    if workers:
        answers.warm_up()  # the workers' answer checker, loaded before the heap is frozen
    settle_heap()  # full collections otherwise stall every request in flight
    return app


def app_from_env() -> FastAPI:
    """The app of one of `--processes N` API processes (uvicorn imports it by name in each): logging and workers
    as the parent's command line set them, through the environment it inherits."""
    configure_observability(ObservabilitySettings())
    return build_app(int(os.environ.get(WORKERS_ENV, "0")))


def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind; loopback unless you mean otherwise.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=0, help="In-process workers (0: run `rsa worker`s).")] = 1,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            min=1,
            help="API processes sharing the port, each with its own --workers (the API is stateless; metrics are "
            "per process, so prefer replicas where a scraper should see every request).",
        ),
    ] = 1,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug | info | warning | error (default: RSA_LOG_LEVEL).")
    ] = None,
) -> None:
    """Serve the REST API (jobs, events, OpenAI-compatible chat completions, health, metrics)."""
    configure_observability(ObservabilitySettings(), level=log_level)
    import uvicorn

    options = {
        "host": host,
        "port": port,
        "log_config": None,  # uvicorn's records go through our handler (JSON or text, with context)
        "log_level": logging.getLogger().level,  # as configured above
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "http": "rsa_service.api.header_deadline:HeaderDeadline",  # uvicorn's httptools with a header deadline
    }
    if processes == 1:
        uvicorn.run(build_app(workers), **options)  # type: ignore[arg-type]
        return
    os.environ[WORKERS_ENV] = str(workers)  # the API processes inherit this environment
    if log_level is not None:
        os.environ["RSA_LOG_LEVEL"] = log_level
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=processes, **options)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.command()(serve)
