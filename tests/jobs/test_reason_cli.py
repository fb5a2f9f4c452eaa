"""`rsa reason` end to end: a real `rsa` process, a real OpenAI-compatible server on loopback, a real Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter

import pytest
import redis

from rsa_service import settings as shared_settings
from rsa_service.cli.common import CLIError, build_spec
from rsa_service.cli.options import JobOptions
from rsa_service.jobs.keys import Keys
from rsa_service.settings import Settings
from tests.conftest import RedisServer
from tests.jobs.helpers import RSA_CLI, SMALL_FLAGS, rsa
from tests.modelserver import ModelServerConfig, serve_in_subprocess, serve_in_thread

PROBLEM = "Compute the thing. ANSWER=70"
TINY_BUDGETS = ["--trace-tokens", "100", "--tail-tokens", "20", "--final-tokens", "150"]


def test_whole_job_json_contract(cli_env: dict[str, str]) -> None:
    with serve_in_thread(ModelServerConfig(reasoning_words=80)) as server:
        done = rsa(["reason", PROBLEM, "--backend", f"openai:{server.base_url}", *SMALL_FLAGS, "--json"], cli_env)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        requests = server.requests()
    assert result["status"] == "completed" and result["job_id"].startswith("job_")
    assert result["job_id"] in done.stderr.splitlines()[0]
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert all(sum(a["count"] for a in r["answers"]) + r["no_answer"] == 4 for r in result["rounds"])
    assert result["answer"] in {a["answer"] for a in result["rounds"][-1]["answers"]}
    assert len(requests) == 12
    assert "n" not in requests[0]["body"]
    completion = sum(r["tokens"]["completion_tokens"] for r in result["rounds"])
    assert result["usage"]["completion_tokens"] == completion > 0
    # round 1+ prompts carry K=2 numbered tails of the previous round
    aggregation = [r for r in requests if "Candidate 2" in json.dumps(r["body"])]
    assert len(aggregation) == 8


def test_t0_is_parallel_sampling_and_k1_refines(cli_env: dict[str, str]) -> None:
    with serve_in_thread(ModelServerConfig()) as server:
        t0 = rsa(
            [
                "reason",
                PROBLEM,
                "--backend",
                server.base_url,
                "-n",
                "3",
                "-k",
                "1",
                "-t",
                "0",
                *TINY_BUDGETS,
                "--json",
            ],
            cli_env,
        )
        assert t0.returncode == 0, t0.stderr
        assert len(json.loads(t0.stdout)["rounds"]) == 1 and len(server.requests()) == 3
        bodies = [r["body"] for r in server.requests()]
        assert all(body["max_tokens"] == 150 for body in bodies)  # the final budget
        server.reset()
        k1 = rsa(
            [
                "reason",
                PROBLEM,
                "--backend",
                server.base_url,
                "-n",
                "2",
                "-k",
                "1",
                "-t",
                "1",
                *TINY_BUDGETS,
                "--json",
            ],
            cli_env,
        )
        assert k1.returncode == 0, k1.stderr
        refine = [r for r in server.requests() if "Earlier attempt" in json.dumps(r["body"])]
        assert len(refine) == 2


def _steps_by_seed(redis_url: str, namespace: str, job_id: str) -> dict[int, str]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        raw = client.hgetall(Keys(namespace).job(job_id).steps)
    return {json.loads(value)["seed"]: key for key, value in raw.items()}


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_repeats_no_committed_step(
    cli_env: dict[str, str], redis_server: RedisServer, namespace: str
) -> None:
    config = ModelServerConfig(latency_ms=400, latency_per_token_ms=2, reasoning_words=60)
    with serve_in_subprocess(config) as server:
        args = ["reason", PROBLEM, "--backend", server.base_url, *SMALL_FLAGS, "--json"]
        with subprocess.Popen(
            RSA_CLI + args,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        ) as process:
            assert process.stderr is not None
            job_id = process.stderr.readline().split()[1]
            deadline = time.monotonic() + 30
            committed: dict[int, str] = {}
            while time.monotonic() < deadline:  # wait until round 0 is in and round 1 is in flight
                committed = _steps_by_seed(redis_server.url, namespace, job_id)
                if len(committed) >= 5:
                    break
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        committed = _steps_by_seed(redis_server.url, namespace, job_id)
        assert 4 <= len(committed) < 12, committed

        resumed = rsa(["reason", "--resume", job_id, "--json"], cli_env)
        assert resumed.returncode == 0, resumed.stderr
        result = json.loads(resumed.stdout)
        requests = server.requests()

    assert result["status"] == "completed" and len(result["rounds"]) == 3
    seen = Counter(r["body"].get("seed") for r in requests)  # a body cut by SIGKILL has none
    for seed, key in committed.items():
        assert seen[seed] == 1, f"step {key} was committed yet requested {seen[seed]} times"
    final = _steps_by_seed(redis_server.url, namespace, job_id)
    assert len(final) == 12 and set(committed) <= set(final)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "2", "-k", "3"], "subset (K=3) must be at most population (N=2)"),
        (["--trace-tokens", "10", "--tail-tokens", "20"], "tail_tokens (τ=20) must be at most trace_tokens"),
        (["--select", "best"], "select:"),
    ],
)
def test_bad_parameters_exit_with_one_line(cli_env: dict[str, str], args: list[str], message: str) -> None:
    done = rsa(["reason", PROBLEM, "--backend", "openai:http://127.0.0.1:9/v1", *args], cli_env)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_empty_problem(cli_env: dict[str, str]) -> None:
    empty = rsa(["reason", "   ", "--backend", "openai:http://127.0.0.1:9/v1"], cli_env)
    assert empty.returncode == 2 and "problem: must not be empty" in empty.stderr
    assert "Traceback" not in empty.stderr and len(empty.stderr.strip().splitlines()) == 1


def test_no_backend_and_no_bundled_model_names_the_ways_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the engine extra (or the bundled checkpoint) there is no default; the error says what to do.
    monkeypatch.setattr(shared_settings, "bundled_backend", lambda: None)
    monkeypatch.delenv("RSA_BACKEND", raising=False)
    with pytest.raises(CLIError, match="no backend configured: pass --backend openai:http"):
        build_spec(Settings(), PROBLEM, JobOptions())


def test_unreachable_and_non_openai_backends(cli_env: dict[str, str]) -> None:
    unreachable = rsa(["reason", PROBLEM, "--backend", "openai:http://127.0.0.1:9/v1", *SMALL_FLAGS], cli_env)
    assert unreachable.returncode != 0 and "127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr and len(unreachable.stderr.strip().splitlines()) == 1
    html = ModelServerConfig(
        faults=[
            {
                "status": 200,
                "body": "<html>hi</html>",
                "content_type": "text/html",
                "always": True,
                "path": "/v1/models",
            }
        ]
    )
    with serve_in_thread(html) as server:
        wrong = rsa(["reason", PROBLEM, "--backend", server.base_url, *SMALL_FLAGS], cli_env)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


def test_permanently_failing_step_fails_the_job_and_keeps_finished_steps(
    cli_env: dict[str, str], redis_server: RedisServer, namespace: str
) -> None:
    # round 0 succeeds; every aggregation request is rejected with 400
    config = ModelServerConfig(faults=[{"status": 400, "always": True, "match": "Candidate 1"}])
    with serve_in_thread(config) as server:
        done = rsa(["reason", PROBLEM, "--backend", server.base_url, *SMALL_FLAGS, "--json"], cli_env)
        attempts = Counter(r["status"] for r in server.requests())
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "failed"
    assert "round 1" in result["error"]["detail"] and "400" in result["error"]["detail"]
    assert attempts[400] == 4  # a 400 is never retried
    steps = _steps_by_seed(redis_server.url, namespace, result["job_id"])
    assert sum(key.startswith("r0:") for key in steps.values()) == 4


def test_resume_of_a_finished_job_prints_its_result(cli_env: dict[str, str]) -> None:
    with serve_in_thread(ModelServerConfig()) as server:
        first = rsa(["reason", PROBLEM, "--backend", server.base_url, *SMALL_FLAGS, "--json"], cli_env)
        job_id = json.loads(first.stdout)["job_id"]
        again = rsa(["reason", "--resume", job_id, "--json"], cli_env)
        assert len(server.requests()) == 12
    assert json.loads(again.stdout) == json.loads(first.stdout)
