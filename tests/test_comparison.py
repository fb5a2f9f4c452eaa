"""`rsa eval --compare` and `--plot`: the per-configuration figures, and the command end to end."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from rsa_service.batch import ResultLine, RoundAnswers
from rsa_service.comparison import Comparison, baselines, configuration
from rsa_service.core.steps import AnswerCount, Usage
from rsa_service.plot import accuracy_svg
from tests.jobs.helpers import rsa
from tests.modelserver import ModelServerConfig, serve_in_thread

SVG = "{http://www.w3.org/2000/svg}"


def line(expected: str, answer: str, *stages: tuple[dict[str, int], int], status: str = "completed") -> ResultLine:
    """A finished problem at N=4: each stage's answer counts and its short-cut slots."""
    rounds = [
        RoundAnswers(
            round=i,
            answer=max(counts, key=counts.get),  # type: ignore[arg-type]
            agreement=max(counts.values()) / 4,
            answers=[AnswerCount(answer=a, count=n) for a, n in counts.items()],
            tokens=Usage(completion_tokens=10 * (4 - shortcuts)),
            shortcuts=shortcuts,
        )
        for i, (counts, shortcuts) in enumerate(stages)
    ]
    generated = sum(r.tokens.completion_tokens for r in rounds)
    return ResultLine(
        id=expected,
        status=status,
        answer=answer,
        expected=expected,
        population=4,
        rounds=rounds,
        usage=Usage(prompt_tokens=5, completion_tokens=generated),
    )


def test_a_stopped_job_keeps_its_answers_for_the_stages_it_skipped() -> None:
    lines = [
        line("1", "1", ({"1": 4}, 0)),  # stopped after round 0: 2 stages of 4 calls skipped
        line("2", "2", ({"2": 2, "3": 2}, 0), ({"2": 4}, 3), ({"2": 4}, 4)),  # 7 short-cut slots
    ]
    figures = configuration("adaptive", {"consensus_shortcut": True}, lines, stages=3, wall_s=2.0)
    assert figures.stage_accuracy == [0.75, 1.0, 1.0]
    assert (figures.final_accuracy, figures.skipped_calls, figures.stopped_early) == (1.0, 15, 1)
    assert (figures.generated_tokens, figures.prompt_tokens, figures.model_calls) == (90, 10, 9)
    majority, single = baselines(lines, [line("1", "7"), line("2", "2")], 4)
    assert (majority.accuracy, majority.generated_tokens) == (1.0, 80)  # round 0 alone
    assert (single.name, single.accuracy) == ("single sample", 0.5)


def test_the_command_prints_plain_first_and_writes_the_plot(tmp_path: Path, cli_env: dict[str, str]) -> None:
    problems = tmp_path / "set.jsonl"
    problems.write_text(
        "".join(json.dumps({"id": f"p{i}", "problem": f"P{i}. ANSWER={i}", "answer": str(i)}) + "\n" for i in range(4))
    )
    plot = tmp_path / "plot.svg"
    flags = ["-n", "4", "-k", "2", "-t", "2", "--trace-tokens", "200", "--tail-tokens", "40", "--final-tokens", "300"]
    with serve_in_thread(ModelServerConfig(p_correct=0.7)) as server:
        backend = ["--backend", f"openai:{server.base_url}"]
        done = rsa(["eval", str(problems), "--compare", "--plot", str(plot), "--json", *backend, *flags], cli_env, 180)
    assert done.returncode == 0, done.stderr
    report = Comparison.model_validate_json(done.stdout)
    names = [c.name for c in report.configurations]
    assert names[0] == "plain" and "adaptive" in names and report.problems == 4
    plain, adaptive = report.configurations[0], report.configurations[names.index("adaptive")]
    assert plain.skipped_calls == 0 and plain.model_calls == 4 * 4 * 3
    assert adaptive.settings["consensus_shortcut"] is True and adaptive.skipped_calls > 0
    assert adaptive.generated_tokens < plain.generated_tokens
    assert all(len(c.stage_accuracy) == 3 and c.wall_s > 0 for c in report.configurations)

    svg = ET.parse(plot).getroot()
    assert len(svg.findall(f"{SVG}circle")) == len(names)  # one point per configuration
    assert len(svg.findall(f"{SVG}polygon")) == 1  # majority@N (the single sample is a square)
    assert len(svg.findall(f"{SVG}g")) == len(names) + 2  # the legend: each configuration, then both baselines
    labels = " ".join(text.text or "" for text in svg.iter(f"{SVG}text"))
    assert all(name in labels for name in [*names, "majority@4", "single sample"])


def test_plot_spans_the_points() -> None:
    report = Comparison(
        problems=1, population=8, subset=4, rounds=2, seed=0, configurations=[], baselines=[]
    ).model_copy(update={"baselines": baselines([line("1", "1", ({"1": 4}, 0))], [line("1", "1")], 4)})
    svg = ET.fromstring(accuracy_svg(report))
    assert svg.get("width") and len(svg.findall(f"{SVG}polygon")) == 1
