"""`rsa serve`: the REST API under uvicorn, with in-process workers unless `--workers 0`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from rsa_service.config import Settings
from rsa_service.observability import ObservabilitySettings, configure_observability


def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind; loopback unless you mean otherwise.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=0, help="In-process workers (0: run `rsa worker`s).")] = 1,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug | info | warning | error (default: RSA_LOG_LEVEL).")
    ] = None,
) -> None:
    """Serve the REST API (jobs, events, OpenAI-compatible chat completions, health, metrics)."""
    configure_observability(ObservabilitySettings(), level=log_level)
    # Imported here: FastAPI and uvicorn cost a second of start-up that the other commands should not pay.
    import uvicorn

    from rsa_service.api.app import create_app
    from rsa_service.api.settings import ApiSettings, named_backends
    from rsa_service.api.workers import in_process_workers

    shared = named_backends(Settings())
    background = in_process_workers(workers, shared) if workers else None
    app = create_app(ApiSettings(), shared, background=background)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,  # uvicorn's records go through our handler (JSON or text, with context)
        log_level=logging.getLogger().level,  # as configured above
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
