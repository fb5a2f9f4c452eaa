"""`rsa eval --compare`: each configuration of `comparison.CONFIGURATIONS` over the same problems and seed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.table import Table

from rsa_service.batch import BatchProblem, ResultLine, finished_lines, run_batch
from rsa_service.cli.batch import batch_client
from rsa_service.cli.common import stderr
from rsa_service.cli.options import JobOptions
from rsa_service.comparison import CONFIGURATIONS, PLAIN, Comparison, Configuration, baselines, configuration
from rsa_service.core.params import RSAParams


async def run_comparison(
    problems: list[BatchProblem],
    params: RSAParams,
    flat: dict[str, Any],
    job: JobOptions,
    out: Path,
    baseline_temperature: float,
    concurrency: int,
    workers: int,
    names: list[str],
) -> Comparison:
    """The one-sample baseline first (it also warms the model up, so no configuration's wall time pays for that),
    then plain RSA, then the adaptive configurations; all through one in-process service."""
    shared = {"population": params.population, "subset": params.subset, "rounds": params.rounds, "seed": params.seed}
    single = flat | CONFIGURATIONS["plain"] | {"population": 1, "subset": 1, "rounds": 0}
    single["temperature"] = baseline_temperature
    configurations: list[Configuration] = []
    async with batch_client(None, job, workers) as (client, name):
        chosen = [(n, shared | flat | c) for n, c in CONFIGURATIONS.items() if n == PLAIN or n in names or not names]
        for label, settings in [("single", single), *chosen]:
            stderr.print(f"{label}: {len(problems)} problems", highlight=False)
            path = out / f"{label}.jsonl"
            started = time.monotonic()
            await run_batch(
                client, problems, path, backend=name, model=job.model, params=settings, concurrency=concurrency
            )
            wall_s = time.monotonic() - started
            if label != "single":
                lines = _of(problems, path)
                configurations.append(configuration(label, settings, lines, stages=params.stages, wall_s=wall_s))
    return Comparison(
        problems=len(problems),
        population=params.population,
        subset=params.subset,
        rounds=params.rounds,
        seed=params.seed,
        configurations=configurations,
        baselines=baselines(_of(problems, out / "plain.jsonl"), _of(problems, out / "single.jsonl"), params.population),
    )


def _of(problems: list[BatchProblem], path: Path) -> list[ResultLine]:
    """The results of these problems only: a reused `--out` folder may hold more."""
    wanted = {problem.id for problem in problems}
    return [line for line in finished_lines(path) if line.id in wanted]


def comparison_table(comparison: Comparison) -> Table:
    table = Table(
        title=f"{comparison.problems} problems · N={comparison.population} K={comparison.subset} "
        f"T={comparison.rounds} · seed {comparison.seed}"
    )
    for column in ("configuration", "final", "per stage", "generated", "prompt", "skipped calls", "wall s"):
        table.add_column(column, justify="left" if column in ("configuration", "per stage") else "right")
    plain = comparison.configurations[0].generated_tokens or 1
    for c in comparison.configurations:
        change = c.generated_tokens / plain - 1
        table.add_row(
            c.name,
            f"{c.final_accuracy:.1%}",
            " → ".join(f"{a:.1%}" for a in c.stage_accuracy),
            f"{c.generated_tokens:,}" + (f" ({change:+.0%})" if c is not comparison.configurations[0] else ""),
            f"{c.prompt_tokens:,}",
            f"{c.skipped_calls:,}",
            f"{c.wall_s:.0f}",
        )
    for b in comparison.baselines:
        table.add_row(f"[dim]{b.name}", f"[dim]{b.accuracy:.1%}", "", f"[dim]{b.generated_tokens:,}", "", "", "")
    return table
