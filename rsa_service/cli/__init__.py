"""The `rsa` command. Every command takes `--json` for machine output; errors are one line on stderr.

Each command group lives in its own module and registers itself here.
"""

from __future__ import annotations

import typer

from rsa_service.backends.engine.cli import engine_app
from rsa_service.cli import batch, evaluate, reason, serve, worker

app = typer.Typer(
    name="rsa",
    help="Markovian Recursive Self-Aggregation: frontier answers from small reasoning models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
reason.register(app)
worker.register(app)
serve.register(app)
batch.register(app)
evaluate.register(app)
app.add_typer(engine_app, name="engine", help="Drive the in-process ZAYA1 engine directly.")


def main() -> None:
    app()


__all__ = ["app", "main"]
