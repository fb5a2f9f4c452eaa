"""`rsa eval`: the stage figures from recorded answer distributions, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

from rsa_service.batch import ResultLine, RoundAnswers
from rsa_service.core.steps import AnswerCount, Usage
from rsa_service.evaluation import evaluate
from tests.jobs.helpers import rsa
from tests.modelserver import ModelServerConfig, serve_in_thread


def line(expected: str, answer: str | None, *stages: dict[str, int], status: str = "completed") -> ResultLine:
    rounds = [
        RoundAnswers(
            round=i,
            answer=max(c, key=c.get) if c else None,
            agreement=0.0,
            answers=[AnswerCount(answer=a, count=n) for a, n in c.items()],
        )
        for i, c in enumerate(stages)
    ]
    return ResultLine(
        id=expected,
        status=status,
        answer=answer,
        expected=expected,
        population=4,
        rounds=rounds,
        usage=Usage(completion_tokens=10),
    )


def test_stage_figures() -> None:
    lines = [
        line("1", "1", {"1": 1, "2": 3}, {"1": 4}),  # RSA fixes a problem majority vote gets wrong
        line("5", "5", {"5": 3, "6": 1}, {"5": 2, "6": 2}),
        line("7", None, {"8": 4}, {"8": 4}),
        line("9", None, status="failed"),  # never ran: wrong everywhere
    ]
    baseline = [line("1", "2"), line("5", "5"), line("7", "8"), line("9", "9")]
    report = evaluate(lines, baseline, stages=2, subset=2, seed=3, baseline_temperature=0.0, wall_s=1.5)
    assert report.problems == 4 and report.failed == 1
    assert report.stage_accuracy == [(0.25 + 0.75) / 4, (1.0 + 0.5) / 4]
    assert report.pass_at_n == [0.5, 0.5]
    assert report.majority_round0 == 0.25  # only problem "5"
    assert report.final_accuracy == 0.5
    assert report.baseline_accuracy == 0.5
    assert report.usage.completion_tokens == 40


def test_eval_command_end_to_end(tmp_path: Path, cli_env: dict[str, str]) -> None:
    problems = tmp_path / "set.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "problem": f"Problem {i}. ANSWER={10 + i}", "answer": str(10 + i)}) + "\n"
            for i in range(5)
        )
    )
    with serve_in_thread(ModelServerConfig(p_correct=0.5)) as server:
        done = rsa(
            [
                "eval",
                str(problems),
                "--limit",
                "4",
                "--backend",
                f"openai:{server.base_url}",
                "-n",
                "4",
                "-k",
                "2",
                "-t",
                "1",
                "--trace-tokens",
                "200",
                "--tail-tokens",
                "40",
                "--final-tokens",
                "300",
                "--json",
            ],
            cli_env,
            timeout=120,
        )
        requests = server.requests()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["problems"] == 4 and report["rounds"] == 1 and report["population"] == 4
    assert len(report["stage_accuracy"]) == len(report["pass_at_n"]) == 2
    assert all(0.0 <= x <= 1.0 for x in report["stage_accuracy"])
    assert len(requests) == 4 * 4 * 2 + 4  # RSA traces plus one baseline sample per problem
    assert sum(r["body"]["temperature"] == 0.0 for r in requests) == 4
