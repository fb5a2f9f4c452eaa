"""`rsa serve`: the REST API under uvicorn, with in-process workers unless `--workers 0`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from rsa_service.config import Settings


def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind; loopback unless you mean otherwise.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=0, help="In-process workers (0: run `rsa worker`s).")] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error.")] = "info",
) -> None:
    """Serve the REST API (jobs, events, OpenAI-compatible chat completions, health, metrics)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here: FastAPI and uvicorn cost a second of start-up that the other commands should not pay.
    import uvicorn

    from rsa_service.api.app import create_app
    from rsa_service.api.settings import ApiSettings, named_backends
    from rsa_service.api.workers import in_process_workers

    shared = named_backends(Settings())
    background = in_process_workers(workers, shared) if workers else None
    app = create_app(ApiSettings(), shared, background=background)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    app.command()(serve)
