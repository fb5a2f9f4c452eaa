"""`rsa batch`: input formats and validation, in-process runs, and a kill -9 halfway then a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rsa_service.batch import BatchFileError, ResultLine, finished_lines, read_problems, summarise
from rsa_service.core.steps import AnswerCount
from tests.api.conftest import KEY_A, ApiFactory, make_api, model_server  # noqa: F401 (fixtures)
from tests.jobs.helpers import RSA_CLI, rsa
from tests.modelserver import ModelServerConfig, serve_in_thread

TINY = ["-n", "2", "-k", "2", "-t", "1", "--trace-tokens", "120", "--tail-tokens", "30", "--final-tokens", "160"]
AIME = Path(__file__).resolve().parents[1] / "data" / "aime25.jsonl"


def test_formats_jsonl_csv_and_openai_batch(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"problem_idx": 3, "prompt": "a", "answer": 70}\n\n{"question": "b"}\n')
    assert [(p.id, p.problem, p.answer, p.line) for p in read_problems(jsonl)] == [
        ("3", "a", "70", 1),
        ("line-3", "b", None, 3),
    ]
    table = tmp_path / "p.csv"
    table.write_text('id,problem,answer\nx,"multi\nline",5\ny,second,\n')
    assert [(p.id, p.problem, p.answer, p.line) for p in read_problems(table)] == [
        ("x", "multi\nline", "5", 3),
        ("y", "second", None, 4),
    ]
    batch = tmp_path / "b.jsonl"
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "toy", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}]},
    }
    batch.write_text(json.dumps(line) + "\n")
    [problem] = read_problems(batch)
    assert (problem.id, problem.problem, problem.model) == ("req-1", "q1", "toy")


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "fine"}\n{oops\n[1]\n{"answer": "1"}\n{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n'
    )
    with pytest.raises(BatchFileError) as error:
        read_problems(bad)
    assert [e.split(":")[0] for e in error.value.errors] == ["line 2", "line 3", "line 4", "line 6"]
    assert "duplicate id '1' (first on line 5)" in error.value.errors[-1]


def test_malformed_file_stops_before_anything_runs(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\nnot json\n')
    out = tmp_path / "out.jsonl"
    with serve_in_thread(ModelServerConfig()) as server:
        done = rsa(["batch", str(bad), "-o", str(out), "--backend", server.base_url], cli_env, timeout=120)
        assert server.requests() == []
    assert done.returncode == 2 and "line 2: not valid JSON" in done.stderr and not out.exists()


def test_summary_accuracies(tmp_path: Path) -> None:
    def line(identifier: str, answer: str, round0: list[tuple[str, int]]) -> ResultLine:
        counts = [AnswerCount(answer=a, count=c) for a, c in round0]
        rounds = [{"round": 0, "answer": round0[0][0], "agreement": 0.5, "answers": counts}]
        return ResultLine.model_validate(
            {
                "id": identifier,
                "status": "completed",
                "answer": answer,
                "expected": "1/2",
                "population": 4,
                "rounds": rounds,
            }
        )

    lines = [line("a", "0.5", [("\\frac12", 3), ("2", 1)]), line("b", "3", [("3", 2), ("1/2", 2)])]
    summary = summarise(lines, problems=2, resumed=0, wall_s=1.0)
    assert summary.accuracy is not None
    assert (summary.accuracy.final, summary.accuracy.majority_round0) == (0.5, 0.5)
    assert summary.accuracy.mean_round0_trace == pytest.approx((3 / 4 + 2 / 4) / 2)
    torn = tmp_path / "out.jsonl"
    torn.write_text(lines[0].model_dump_json() + "\n" + '{"id": "b", "sta')
    assert [x.id for x in finished_lines(torn)] == ["a"] and torn.read_text().endswith("\n")


def test_aime25_runs_as_is_in_process(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "aime.jsonl"
    with serve_in_thread(ModelServerConfig(reasoning_words=20, max_model_len=100_000)) as server:
        done = rsa(
            ["batch", str(AIME), "-o", str(out), "--backend", server.base_url, *TINY, "--json"], cli_env, timeout=120
        )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["problems"] == summary["completed"] == 30 and summary["failed"] == 0
    assert summary["accuracy"]["graded"] == 30 and summary["usage"]["completion_tokens"] > 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(int(x["id"]) for x in lines) == list(range(1, 31))
    assert all(len(x["rounds"]) == 2 and x["population"] == 2 for x in lines)


def test_kill_halfway_then_rerun_submits_nothing_twice(make_api: ApiFactory, tmp_path: Path) -> None:  # noqa: F811
    api = make_api(workers=2, poll_after_s=1)
    problems = tmp_path / "thirty.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": f"p{n}", "problem": f"Task {n}. ANSWER={n}", "answer": str(n)}) + "\n" for n in range(30)
        )
    )
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, RSA_API_KEY=KEY_A)
    argv = [
        *RSA_CLI,
        "batch",
        str(problems),
        "-o",
        str(out),
        "--server",
        api.url,
        "--backend",
        "toy",
        *TINY,
        "--concurrency",
        "3",
    ]
    first = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 8):
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = out.read_text().splitlines()
    assert 8 <= len(before) < 30
    second = subprocess.run(
        [*argv, "--json"], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    after = out.read_text().splitlines()
    assert after[: len(before)] == before  # earlier lines kept as they were
    assert sorted(json.loads(x)["id"] for x in after) == sorted(f"p{n}" for n in range(30))
    assert summary["resumed"] == len(before) and summary["completed"] == 30
    assert summary["accuracy"]["graded"] == 30 and 0 < summary["accuracy"]["final"] <= 1
    with api.client() as client:
        jobs = list(client.jobs.list(limit=100))
    assert len(jobs) == 30  # in-flight jobs were replayed by their idempotency keys, never submitted again
