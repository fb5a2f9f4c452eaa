"""Batch mode: a file of problems through the service, results written as they finish, resumable.

Input: JSONL with `prompt`/`problem`/`question` (+ optional `answer` and id), CSV with those columns, or OpenAI
Batch JSONL (`custom_id`, `body.messages`). The whole file is validated before anything is submitted. Each
problem's create carries an Idempotency-Key derived from its id, text and parameters, so a rerun after a crash
gets the jobs already submitted back instead of submitting them again; ids already in the output are skipped.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rsa_service.client import AsyncRSAClient, Job, RSAError
from rsa_service.core.answers import equivalent
from rsa_service.core.params import Limits, check_problem
from rsa_service.core.steps import AnswerCount, Usage

TEXT_FIELDS = ("prompt", "problem", "question")
ID_FIELDS = ("id", "custom_id", "problem_id", "problem_idx", "idx")
MAX_REPORTED_ERRORS = 50


class BatchFileError(ValueError):
    """The input file has problems; `errors` lists each as `line N: ...`."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__(f"{path}: {len(errors)} problem(s); nothing was submitted\n" + "\n".join(shown) + more)
        self.errors = errors


class BatchProblem(BaseModel):
    id: str
    problem: str
    answer: str | None = None
    line: int
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Per-problem RSA overrides (OpenAI `rsa`).")


class RoundAnswers(BaseModel):
    round: int
    answer: str | None
    agreement: float
    answers: list[AnswerCount]
    tokens: Usage = Field(default_factory=Usage)
    shortcuts: int = 0


class ResultLine(BaseModel):
    """One output line per problem."""

    id: str
    job_id: str | None = None
    status: str
    answer: str | None = None
    expected: str | None = None
    population: int = 0
    rounds: list[RoundAnswers] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None


class Accuracy(BaseModel):
    graded: int
    final: float
    majority_round0: float
    mean_round0_trace: float


class BatchSummary(BaseModel):
    problems: int
    completed: int
    failed: int
    resumed: int = Field(description="Problems already in the output when this run started.")
    accuracy: Accuracy | None
    usage: Usage
    wall_s: float


# ---- reading and validating ------------------------------------------------------------------------------


def _first(record: dict[str, Any], names: Iterable[str]) -> Any:
    return next((record[name] for name in names if record.get(name) not in (None, "")), None)


def _from_openai(record: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Batch request line as a plain problem record: the last user message is the problem."""
    body = record.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError("an OpenAI Batch line needs body.messages")
    users = [m.get("content") for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError("body.messages has no user message with text")
    rsa = body.get("rsa") or {}
    if not isinstance(rsa, dict):
        raise ValueError("body.rsa must be an object")
    return {"id": record.get("custom_id"), "problem": users[-1], "model": body.get("model"), "params": rsa}


def _problem(record: dict[str, Any], line: int, limits: Limits) -> BatchProblem:
    if "custom_id" in record and "body" in record:
        record = _from_openai(record)
        text = record["problem"]
    else:
        text = _first(record, TEXT_FIELDS)
    if not isinstance(text, str):
        raise ValueError(f"needs a text field: one of {', '.join(TEXT_FIELDS)}")
    identifier = _first(record, ID_FIELDS)
    answer = record.get("answer")
    return BatchProblem(
        id=str(identifier) if identifier is not None else f"line-{line}",
        problem=check_problem(text, limits),
        answer=None if answer in (None, "") else str(answer),
        line=line,
        model=record.get("model"),
        params=record.get("params") or {},
    )


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) or (line number, error text), blank lines skipped."""
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            for row in reader:
                yield reader.line_num, {k.strip(): v for k, v in row.items() if k}
            return
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield number, record if isinstance(record, dict) else "a JSON object is required"


def read_problems(path: Path, limits: Limits | None = None) -> list[BatchProblem]:
    """Every problem of the file, or BatchFileError listing every bad line (with its number)."""
    limits = limits or Limits()
    problems: list[BatchProblem] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for number, record in _records(path):
        if isinstance(record, str):
            errors.append(f"line {number}: {record}")
            continue
        try:
            problem = _problem(record, number, limits)
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        if problem.id in first_line:
            errors.append(f"line {number}: duplicate id {problem.id!r} (first on line {first_line[problem.id]})")
            continue
        first_line[problem.id] = number
        problems.append(problem)
    if not problems and not errors:
        errors.append("line 1: the file has no problems")
    if errors:
        raise BatchFileError(path, errors)
    return problems


# ---- output and resume -------------------------------------------------------------------------------------


def finished_lines(out: Path) -> list[ResultLine]:
    """The complete lines of an earlier run's output; a torn last line (a kill mid-write) is cut off."""
    if not out.exists():
        return []
    lines: list[ResultLine] = []
    keep = 0
    with out.open("rb") as handle:
        for raw in handle:
            try:
                lines.append(ResultLine.model_validate_json(raw))
            except ValueError:
                break
            keep += len(raw)
    if keep < out.stat().st_size:
        with out.open("r+b") as handle:
            handle.truncate(keep)
    return lines


def idempotency_key(problem: BatchProblem, request: dict[str, Any]) -> str:
    """The same problem with the same settings maps to the same key, on every run."""
    canonical = json.dumps([problem.id, problem.problem, request], sort_keys=True)
    return "batch-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def result_line(problem: BatchProblem, job: Job | None, error: str | None = None) -> ResultLine:
    if job is None:
        return ResultLine(id=problem.id, status="failed", expected=problem.answer, error=error)
    result = job.result
    rounds = [
        RoundAnswers(
            round=r.round,
            answer=r.answer,
            agreement=r.agreement,
            answers=r.answers,
            tokens=r.tokens,
            shortcuts=r.shortcuts,
        )
        for r in (result.rounds if result else [])
    ]
    problem_error = job.error or (result.error if result else None)
    return ResultLine(
        id=problem.id,
        job_id=job.id,
        status=job.status,
        answer=result.answer if result else None,
        expected=problem.answer,
        population=job.params.population,
        rounds=rounds,
        usage=result.usage if result else Usage(),
        error=(problem_error.detail or problem_error.title) if problem_error else error,
    )


def same_answer(answer: str | None, expected: str) -> bool:
    return answer is not None and equivalent(answer, expected)


def stage_answers(line: ResultLine, stage: int) -> RoundAnswers | None:
    """The answers of `stage`. A job that completed before it (an early stop) keeps its last round's answers for
    the stages it skipped, since its answer stands; a job that failed scores nothing for a stage it never reached."""
    reached = [r for r in line.rounds if r.round <= stage]
    if not reached or (reached[-1].round < stage and line.status != "completed"):
        return None
    return reached[-1]


def trace_accuracy(stage: RoundAnswers | None, expected: str, population: int) -> float:
    """Share of a stage's traces whose answer is equivalent to `expected` (a missing stage scores 0)."""
    if stage is None or not population:
        return 0.0
    return sum(a.count for a in stage.answers if same_answer(a.answer, expected)) / population


def summarise(lines: list[ResultLine], problems: int, resumed: int, wall_s: float) -> BatchSummary:
    """Totals over every line of the output (this run and earlier ones); accuracy over lines with answers."""
    graded = [line for line in lines if line.expected is not None]
    accuracy = None
    if graded:
        final = sum(same_answer(line.answer, line.expected) for line in graded)  # type: ignore[arg-type]
        first = [line.rounds[0] if line.rounds else None for line in graded]
        majority = sum(r is not None and same_answer(r.answer, g.expected) for r, g in zip(first, graded, strict=True))  # type: ignore[arg-type]
        traces = [trace_accuracy(r, g.expected, g.population) for r, g in zip(first, graded, strict=True)]  # type: ignore[arg-type]
        accuracy = Accuracy(
            graded=len(graded),
            final=final / len(graded),
            majority_round0=majority / len(graded),
            mean_round0_trace=sum(traces) / len(graded),
        )
    return BatchSummary(
        problems=problems,
        completed=sum(line.status == "completed" for line in lines),
        failed=sum(line.status != "completed" for line in lines),
        resumed=resumed,
        accuracy=accuracy,
        usage=sum((line.usage for line in lines), Usage()),
        wall_s=wall_s,
    )


# ---- running -------------------------------------------------------------------------------------------------


async def _run_one(
    client: AsyncRSAClient, problem: BatchProblem, backend: str | None, model: str | None, params: dict[str, Any]
) -> ResultLine:
    request = {"backend": backend, "model": problem.model or model, **params, **problem.params}
    try:
        job = await client.jobs.create(problem.problem, idempotency_key=idempotency_key(problem, request), **request)
        return result_line(problem, await client.jobs.wait(job.id))
    except (RSAError, ValueError) as exc:
        return result_line(problem, None, error=str(exc))


async def run_batch(
    client: AsyncRSAClient,
    problems: list[BatchProblem],
    out: Path,
    *,
    backend: str | None,
    model: str | None,
    params: dict[str, Any],
    concurrency: int,
    on_result: Callable[[ResultLine], None] | None = None,
) -> BatchSummary:
    """Run the problems not yet in `out`, appending one line per problem as each finishes."""
    started = time.monotonic()
    earlier = finished_lines(out)
    done = {line.id for line in earlier}
    todo = [problem for problem in problems if problem.id not in done]
    slots = asyncio.Semaphore(concurrency)
    written: list[ResultLine] = []

    async def one(problem: BatchProblem) -> None:
        async with slots:
            line = await _run_one(client, problem, backend, model, params)
        await asyncio.to_thread(_append, out, line)
        written.append(line)
        if on_result is not None:
            on_result(line)

    await _gather(one(problem) for problem in todo)
    mine = {p.id for p in problems}
    lines = [line for line in earlier + written if line.id in mine]
    return await asyncio.to_thread(
        summarise, lines, len(problems), len(problems) - len(todo), time.monotonic() - started
    )


def _append(out: Path, line: ResultLine) -> None:
    with out.open("a", encoding="utf-8") as handle:
        handle.write(line.model_dump_json() + "\n")


async def _gather(coroutines: Iterable[Awaitable[None]]) -> None:
    async with asyncio.TaskGroup() as group:
        for coroutine in coroutines:
            group.create_task(coroutine)  # type: ignore[arg-type]
