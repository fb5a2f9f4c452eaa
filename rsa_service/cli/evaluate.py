"""`rsa eval`: a problem file through Markovian RSA in this process, with accuracy per stage and baselines."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rsa_service.batch import finished_lines, read_problems, run_batch
from rsa_service.cli.batch import batch_client
from rsa_service.cli.common import NO_BACKEND, CLIError, run_async, stderr, stdout
from rsa_service.cli.compare import comparison_table, run_comparison
from rsa_service.cli.options import JobOptions, with_job_options
from rsa_service.comparison import CONFIGURATIONS, Comparison
from rsa_service.evaluation import EvalReport, evaluate
from rsa_service.plot import accuracy_svg
from rsa_service.settings import Settings, default_backend, params_defaults
from rsa_service.tinymodel import HELDOUT_PATH


async def _evaluate(
    file: Path,
    limit: int | None,
    job: JobOptions,
    out: Path,
    baseline_temperature: float,
    concurrency: int,
    workers: int,
    compare: bool = False,
    configurations: list[str] | None = None,
) -> EvalReport | Comparison:
    backend = job.backend or default_backend(Settings())
    if backend is None:
        raise CLIError(NO_BACKEND)
    params = job.params(params_defaults(backend))
    problems = read_problems(file)[:limit]
    flat: dict[str, Any] = params.model_dump(exclude_defaults=True) | job.overrides
    if compare:
        return await run_comparison(
            problems, params, flat, job, out, baseline_temperature, concurrency, workers, configurations or []
        )
    baseline = flat | {"population": 1, "subset": 1, "rounds": 0, "temperature": baseline_temperature}
    started = time.monotonic()
    async with batch_client(None, job, workers) as (client, name):
        runs = []
        for label, settings in (("rsa", flat), ("baseline", baseline)):
            stderr.print(f"{label}: {len(problems)} problems", highlight=False)
            path = out / f"{label}.jsonl"
            await run_batch(
                client, problems, path, backend=name, model=job.model, params=settings, concurrency=concurrency
            )
            runs.append(path)
    lines, baseline_lines = (finished_lines(path) for path in runs)
    return evaluate(
        lines,
        baseline_lines,
        stages=params.stages,
        subset=params.subset,
        seed=params.seed,
        baseline_temperature=baseline_temperature,
        wall_s=time.monotonic() - started,
    )


def _table(report: EvalReport) -> Table:
    table = Table(
        title=f"{report.problems} problems · N={report.population} K={report.subset} T={report.rounds} "
        f"· seed {report.seed}"
    )
    table.add_column("figure")
    table.add_column("accuracy", justify="right")
    for stage, (mean, pass_n) in enumerate(zip(report.stage_accuracy, report.pass_at_n, strict=True)):
        table.add_row(f"stage {stage}: mean trace accuracy (pass@{report.population})", f"{mean:.1%} ({pass_n:.1%})")
    table.add_row(f"majority@{report.population} over round 0", f"{report.majority_round0:.1%}")
    if report.baseline_accuracy is not None:
        table.add_row(f"one sample at temperature {report.baseline_temperature:g}", f"{report.baseline_accuracy:.1%}")
    table.add_row("[bold]final answer (RSA)", f"[bold]{report.final_accuracy:.1%}")
    return table


@with_job_options
def eval_command(
    file: Annotated[Path | None, typer.Argument(help="A problem file with answers; default: the bundled set.")] = None,
    *,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate the first L problems.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Keep per-problem results here (resumable).")] = None,
    baseline_temperature: Annotated[
        float, typer.Option("--baseline-temperature", min=0.0, help="Temperature of the one-sample baseline.")
    ] = 0.0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Jobs in flight.")] = 32,
    workers: Annotated[int, typer.Option("--workers", min=1, help="In-process workers.")] = 2,
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Plain Markovian RSA beside the adaptive settings, same problems and seed."),
    ] = False,
    configuration: Annotated[
        list[str] | None,
        typer.Option(
            "--configuration",
            help=f"With --compare: run only these beside plain RSA ({', '.join(CONFIGURATIONS)}); repeatable.",
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="With --compare: write accuracy vs generated tokens as SVG here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    job: JobOptions,
) -> None:
    """Evaluate Markovian RSA on a problem file: accuracy per stage, pass@N, majority vote, a one-sample baseline."""
    if (plot is not None or configuration) and not compare:
        raise typer.BadParameter("needs --compare", param_hint="--plot/--configuration")
    unknown = sorted(set(configuration or []) - set(CONFIGURATIONS))
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; known: {list(CONFIGURATIONS)}", param_hint="--configuration")
    source = file or HELDOUT_PATH
    with tempfile.TemporaryDirectory(prefix="rsa-eval-") as scratch:
        folder = out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        report = run_async(
            lambda: _evaluate(
                source, limit, job, folder, baseline_temperature, concurrency, workers, compare, configuration
            )
        )
    if plot is not None and isinstance(report, Comparison):
        plot.write_text(accuracy_svg(report), encoding="utf-8")
    if as_json:
        stdout.out(json.dumps(report.model_dump(mode="json")), highlight=False)
        return
    if isinstance(report, Comparison):
        stdout.print(comparison_table(report))
        return
    stdout.print(_table(report))
    stdout.print(
        f"{report.usage.completion_tokens:,} tokens generated ({report.baseline_usage.completion_tokens:,} "
        f"by the baseline) in {report.wall_s:.1f}s; {report.failed} jobs failed"
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
