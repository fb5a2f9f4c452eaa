"""Terminal rendering of a job: live per-round progress from its event stream, then the result.

Progress is drawn from the same Redis event stream that SSE clients read, so `rsa reason`, `rsa jobs events`
and the REST API all show one truth.
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rsa_service.core.params import RSAParams
from rsa_service.core.steps import RoundStats
from rsa_service.wire import Event, JobResult


def _tally(answers: Counter[str]) -> str:
    return ", ".join(f"{answer}×{count}" for answer, count in answers.most_common(4)) or "—"


def format_round(stats: RoundStats) -> str:
    answers = ", ".join(f"{a.answer}×{a.count}" for a in stats.answers[:5]) or "no answers"
    extra = [f"{stats.truncated} truncated"] if stats.truncated else []
    extra += [f"{stats.failed} failed"] if stats.failed else []
    extra += [f"{stats.stragglers} stragglers"] if stats.stragglers else []
    suffix = (" · " + ", ".join(extra)) if extra else ""
    return (
        f"round {stats.round}: {answers} · agreement {stats.agreement:.0%} · "
        f"{stats.tokens.completion_tokens:,} tokens out{suffix}"
    )


class LiveProgress:
    """One bar per stage, advanced by `step` events; a line per finished round."""

    def __init__(self, console: Console, params: RSAParams) -> None:
        self.console = console
        self.params = params
        self._progress = Progress(
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[answers]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[int, TaskID] = {}
        self._answers: dict[int, Counter[str]] = {}

    def __enter__(self) -> LiveProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _task(self, round_index: int) -> TaskID:
        if round_index not in self._tasks:
            label = f"round {round_index}{' (final)' if round_index == self.params.rounds else ''}"
            total = self.params.population_of(round_index)
            self._answers[round_index] = Counter()
            self._tasks[round_index] = self._progress.add_task("", total=total, label=label, answers="")
        return self._tasks[round_index]

    def handle(self, event: Event) -> None:
        if event.type == "step":
            round_index = int(event.data.get("round", 0))
            task = self._task(round_index)
            if event.data.get("answer"):
                self._answers[round_index][str(event.data["answer"])] += 1
            self._progress.update(task, advance=1, answers=_tally(self._answers[round_index]))
        elif event.type == "round":
            self._progress.console.print(format_round(RoundStats.model_validate(event.data)))


def render_result(console: Console, result: JobResult) -> None:
    """The answer, the per-round table and the totals."""
    table = Table(title=f"job {result.job_id} · {result.status}", show_lines=False)
    for column in ("round", "answers", "agreement", "truncated", "failed", "tokens in", "tokens out"):
        table.add_column(column, justify="left" if column == "answers" else "right")
    for stats in result.rounds:
        answers = ", ".join(f"{a.answer}×{a.count}" for a in stats.answers[:6])
        if stats.no_answer:
            answers += f"{', ' if answers else ''}none×{stats.no_answer}"
        table.add_row(
            str(stats.round),
            answers or "—",
            f"{stats.agreement:.0%}",
            str(stats.truncated),
            str(stats.failed),
            f"{stats.tokens.prompt_tokens:,}",
            f"{stats.tokens.completion_tokens:,}",
        )
    console.print(table)
    if result.stopped_reason:
        console.print(f"stopped early: {result.stopped_reason}")
    shortcuts = sum(stats.shortcuts for stats in result.rounds)
    if shortcuts:
        console.print(f"consensus short-cuts: {shortcuts} slots without a model call")
    if len(result.usage_by_backend) > 1:
        split = ", ".join(
            f"{name}: {u.prompt_tokens:,} in, {u.completion_tokens:,} out"
            for name, u in result.usage_by_backend.items()
        )
        console.print(f"by backend: {split}", highlight=False)
    if result.usage.estimated_tokens:
        estimated = result.usage.estimated_tokens
        console.print(f"estimated: {estimated:,} of the tokens bound requests aborted without reported usage")
    if result.error:
        console.print(f"[red]error:[/red] {result.error.detail or result.error.title}")
    wall = f" in {result.wall_s:.1f}s" if result.wall_s is not None else ""
    console.print(
        f"answer ({result.select}): [bold]{result.answer if result.answer is not None else 'none'}[/bold] · "
        f"{result.usage.prompt_tokens:,} tokens in, {result.usage.completion_tokens:,} out{wall}"
    )
