"""The job flags shared by `rsa reason`, `rsa submit` and `rsa batch`, declared once.

`with_job_options` appends the flags below to a command's signature and hands the command one `JobOptions`
instead, so the commands cannot drift apart.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from rsa_service.core.params import RSAParams

F = TypeVar("F", bound=Callable[..., Any])

_PARAM_FLAGS: dict[str, tuple[type, typer.models.OptionInfo]] = {
    "population": (int, typer.Option("--population", "-n", help="N: traces per round.")),
    "subset": (int, typer.Option("--subset", "-k", help="K: tails per aggregation prompt (≤ N).")),
    "rounds": (int, typer.Option("--rounds", "-t", help="T: aggregation rounds (T+1 stages).")),
    "trace_tokens": (int, typer.Option("--trace-tokens", help="β: max new tokens of a non-final trace.")),
    "tail_tokens": (int, typer.Option("--tail-tokens", help="τ: reasoning tokens carried forward (≤ β).")),
    "final_tokens": (int, typer.Option("--final-tokens", help="Max new tokens in the final stage.")),
    "select": (str, typer.Option("--select", help="vote | aggregate | sample.")),
    "final_n": (int, typer.Option("--final-n", help="With --select aggregate: final-stage aggregations voted on.")),
    "tail_source": (str, typer.Option("--tail-source", help="reasoning | answer | hybrid | full.")),
    "seed": (int, typer.Option("--seed", help="Seed of every random choice of the job.")),
    "temperature": (float, typer.Option("--temperature", help="Sampling temperature of traces.")),
    "top_p": (float, typer.Option("--top-p", help="Nucleus sampling of traces.")),
    "top_k": (int, typer.Option("--top-k", help="Top-k sampling of traces.")),
    "max_total_tokens": (
        int,
        typer.Option("--max-total-tokens", help="Stop once this many tokens are spent."),
    ),
    "max_output_tokens": (
        int,
        typer.Option("--max-output-tokens", help="Stop once the generations have produced this many tokens."),
    ),
    "max_wall_s": (float, typer.Option("--max-wall-s", help="Stop after this many seconds.")),
    "round_deadline_s": (float, typer.Option("--round-deadline-s", help="Per-round deadline (seconds).")),
    "straggler_policy": (str, typer.Option("--stragglers", help="At the deadline: wait | quorum.")),
    "quorum": (float, typer.Option("--quorum", help="With --stragglers quorum: share of slots that must succeed.")),
    "stop_agreement": (float, typer.Option("--stop-agreement", help="Stop once this share agrees (0: off).")),
    "stop_stability": (
        float,
        typer.Option("--stop-stability", help="Stop once a round keeps the previous answer at this share (0: off)."),
    ),
    "consensus_shortcut": (
        bool,
        typer.Option(
            "--consensus-shortcut/--no-consensus-shortcut",
            help="Carry agreeing candidates forward without a model call.",
        ),
    ),
    "consensus_from_round": (
        int,
        typer.Option("--consensus-from-round", help="First round whose agreement may stop or short-cut."),
    ),
    "initial_backend": (str, typer.Option("--initial-backend", help="Configured backend of round 0.")),
    "aggregation_backend": (
        str,
        typer.Option("--aggregation-backend", help="Configured backend of the aggregation rounds."),
    ),
    "final_backend": (str, typer.Option("--final-backend", help="Configured backend of the last round.")),
}


class JobOptions(BaseModel):
    """What the shared flags say: the backend to use and the parameter overrides given."""

    backend: str | None = None
    model: str | None = None
    prompts: Path | None = None
    overrides: dict[str, Any] = {}

    def params(self, defaults: dict[str, Any] | None = None) -> RSAParams:
        """RSAParams from `defaults` (e.g. a bundled model's card) overridden by the flags given."""
        return RSAParams.model_validate({**(defaults or {}), **self.overrides})


def describe_validation(error: ValidationError) -> str:
    """One line per problem, naming the field and the limit, without pydantic's boilerplate."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{field}: {message}" if field else message)
    return "; ".join(lines)


def with_job_options(command: F) -> F:
    """Add the shared flags to `command`, which must take a keyword `job: JobOptions`."""
    extra = [
        inspect.Parameter(
            "backend",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option("--backend", help="openai:http://HOST:PORT/v1 or engine:/path/to/ckpt."),
            ],
        ),
        inspect.Parameter(
            "model",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str | None, typer.Option("--model", help="Model name sent to the backend.")],
        ),
        inspect.Parameter(
            "prompts",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option("--prompts", help="A directory with your own aggregate/refine templates."),
            ],
        ),
    ]
    extra += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option])
        for name, (kind, option) in _PARAM_FLAGS.items()
    ]
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "job"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        job = JobOptions(
            backend=kwargs.pop("backend"),
            model=kwargs.pop("model"),
            prompts=kwargs.pop("prompts"),
            overrides={name: value for name in _PARAM_FLAGS if (value := kwargs.pop(name)) is not None},
        )
        return command(*args, job=job, **kwargs)

    # Typer reads resolved annotations: string annotations (PEP 563) of `command` are resolved here.
    hints = typing.get_type_hints(command, include_extras=True)
    parameters = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own] + extra
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
