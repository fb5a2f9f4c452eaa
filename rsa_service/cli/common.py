"""What every `rsa` command shares: consoles, one-line errors with exit codes, and building backends and specs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import redis
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from rsa_service.backends import BackendError
from rsa_service.cli.options import JobOptions, describe_validation
from rsa_service.core.params import check_problem
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.store import JobNotFound
from rsa_service.runtime import event_loop_factory
from rsa_service.settings import Settings, default_backend, params_defaults

stdout = Console()
stderr = Console(stderr=True)
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2
NO_BACKEND = (
    "no backend configured: pass --backend openai:http://HOST:PORT/v1 (any OpenAI-compatible server: vLLM, "
    "SGLang, llama.cpp) or --backend engine:/path/to/checkpoint, or set RSA_BACKEND (the bundled model needs "
    "the engine extra: pip install 'rsa-service[engine]')"
)


class CLIError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning every expected failure into one clear line and an exit code."""
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(main())  # type: ignore[arg-type]
    except CLIError as exc:
        fail(str(exc), exc.code)
    except ValidationError as exc:
        fail(describe_validation(exc))
    except (ValueError, BackendError, JobNotFound) as exc:
        fail(str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        fail(f"cannot reach Redis: {exc}", EXIT_FAILED)
    except RuntimeError as exc:
        fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def read_problem(problem: str | None) -> str:
    if problem is None:
        raise CLIError("problem: give the problem text, or - to read it from stdin")
    text = sys.stdin.read() if problem == "-" else problem
    return check_problem(text)


def build_spec(settings: Settings, problem: str, job: JobOptions) -> JobSpec:
    backend = job.backend or default_backend(settings)
    if not backend:
        raise CLIError(NO_BACKEND)
    return JobSpec(
        problem=problem,
        params=job.params(params_defaults(backend)),
        backend=backend,
        model=job.model or settings.model,
        templates=PromptTemplates.load(job.prompts),
    )
