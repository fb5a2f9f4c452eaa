"""The context check runs before the first generation on every path that creates a job: a configuration whose
largest prompt plus budget cannot fit the model's context is refused with the sizes named, and the model never
sees a request for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from rsa_service.client import UnprocessableEntityError
from tests.api.conftest import KEY_A, ApiFactory
from tests.jobs.helpers import rsa
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread

CONTEXT = 1000
# Round 0 fits (a short problem + 300 tokens); an aggregation prompt of K=2 tails of τ=300 plus a final budget of
# 300 does not.
TOO_WIDE = {"population": 2, "subset": 2, "rounds": 1, "trace_tokens": 300, "tail_tokens": 300, "final_tokens": 300}
TOO_WIDE_FLAGS = ["-n", "2", "-k", "2", "-t", "1", "--trace-tokens", "300", "--tail-tokens", "300"]
TOO_WIDE_FLAGS += ["--final-tokens", "300"]
PROBLEM = "Add them. ANSWER=5"


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServerHandle]:
    with serve_in_thread(ModelServerConfig(max_model_len=CONTEXT, reasoning_words=20)) as server:
        yield server


def assert_names_the_sizes(detail: str) -> None:
    assert "tail_tokens" in detail and f"context of {CONTEXT} tokens" in detail
    assert "aggregation prompt can reach" in detail and "budget of 300 new tokens" in detail


def generations(server: ModelServerHandle) -> list[dict[str, object]]:
    return server.requests()


def test_post_jobs_refuses_with_problem_json(make_api: ApiFactory) -> None:
    api = make_api(workers=0)
    api.model.reset()
    headers = {"authorization": f"Bearer {KEY_A}"}
    answer = httpx2.post(f"{api.url}/v1/jobs", json={"problem": PROBLEM, **TOO_WIDE}, headers=headers, timeout=30)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert_names_the_sizes(body["detail"])
    assert body["errors"][0]["field"] == "tail_tokens" and body["type"].endswith("context-length-exceeded")
    long_first = {"problem": PROBLEM, "trace_tokens": CONTEXT, "tail_tokens": 10, "final_tokens": 10}
    first = httpx2.post(f"{api.url}/v1/jobs", json=long_first, headers=headers, timeout=30).json()
    assert first["errors"][0]["field"] == "problem"
    assert f"plus its budget ({CONTEXT} new tokens)" in first["detail"] and f"context of {CONTEXT}" in first["detail"]
    with api.client() as client:
        assert list(client.jobs.list()) == []
    assert generations(api.model) == []


def test_sdk_and_chat_are_refused_before_any_generation(make_api: ApiFactory) -> None:
    api = make_api(workers=1)
    api.model.reset()
    with api.client() as client, pytest.raises(UnprocessableEntityError) as refused:
        client.jobs.create(PROBLEM, **TOO_WIDE)
    assert refused.value.problem.detail is not None
    assert_names_the_sizes(refused.value.problem.detail)
    oai = openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as chat:
        oai.chat.completions.create(
            model="toy", messages=[{"role": "user", "content": PROBLEM}], extra_body={"rsa": TOO_WIDE}
        )
    assert_names_the_sizes(str(chat.value.body))
    # what fits still runs
    fits = {**TOO_WIDE, "tail_tokens": 100}
    answer = oai.chat.completions.create(
        model="toy", messages=[{"role": "user", "content": PROBLEM}], extra_body={"rsa": fits}
    )
    assert answer.model_extra is not None and answer.model_extra["rsa"]["answer"] is not None
    assert len(generations(api.model)) == 4


def test_cli_paths_refuse_before_any_generation(
    model_server: ModelServerHandle, cli_env: dict[str, str], tmp_path: Path
) -> None:
    model_server.reset()
    backend = ["--backend", f"openai:{model_server.base_url}"]
    for command in ("reason", "submit"):
        done = rsa([command, PROBLEM, *backend, *TOO_WIDE_FLAGS], cli_env)
        assert done.returncode != 0, done.stdout
        assert_names_the_sizes(" ".join(done.stderr.split()))
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "a", "problem": PROBLEM}) + "\n")
    out = tmp_path / "out.jsonl"
    rsa(["batch", str(problems), "-o", str(out), *backend, *TOO_WIDE_FLAGS, "--workers", "1"], cli_env, timeout=120)
    [line] = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["status"] == "failed"
    assert_names_the_sizes(line["error"])
    assert generations(model_server) == []


def test_responses_refuse_before_any_generation(make_api: ApiFactory) -> None:
    api = make_api(workers=0)
    api.model.reset()
    oai = openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0)
    with oai, pytest.raises(openai.UnprocessableEntityError) as refused:
        oai.responses.create(model="toy", input=PROBLEM, background=True, extra_body={"rsa": TOO_WIDE})
    assert_names_the_sizes(str(refused.value.body))
    assert generations(api.model) == []
