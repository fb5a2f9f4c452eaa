"""The official `openai` package against `rsa serve`: RSA through extra_body, streaming, plain pass-through."""

from __future__ import annotations

import openai
import pytest

from tests.api.conftest import KEY_A, SMALL, LiveAPI


@pytest.fixture
def oai(api: LiveAPI) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0)


def test_rsa_chat_completion_through_extra_body(api: LiveAPI, oai: openai.OpenAI) -> None:
    api.model.reset()
    answer = oai.chat.completions.create(
        model="toy",
        messages=[{"role": "user", "content": "Sum it. ANSWER=42"}],
        extra_body={"rsa": {**SMALL, "backend": "toy"}},
        seed=3,
    )
    rsa = answer.model_extra["rsa"]  # type: ignore[index]
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "stop"
    assert rsa["answer"] in {"42", "43", "44", "45"} and rsa["job_id"].startswith("job_")
    assert f"\\boxed{{{rsa['answer']}}}" in (answer.choices[0].message.content or "")
    requests = api.model.requests()
    assert len(requests) == 8 and all(r["body"]["seed"] is not None for r in requests)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(r["tokens"]["completion_tokens"] for r in rsa["rounds"]) > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_rsa_chat_streams_progress_then_the_answer(api: LiveAPI, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="toy",
        messages=[{"role": "user", "content": "Stream it. ANSWER=9"}],
        extra_body={"rsa": {**SMALL, "backend": "toy"}},
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1].model_extra["rsa"]["answer"]  # type: ignore[index]
    assert f"\\boxed{{{final}}}" in text and chunks[-1].choices[0].finish_reason == "stop"


def test_plain_pass_through_reaches_the_backend_untouched(api: LiveAPI, oai: openai.OpenAI) -> None:
    api.model.reset()
    answer = oai.chat.completions.create(
        model="toy", messages=[{"role": "user", "content": "Plain. ANSWER=7"}], max_tokens=500, seed=11, top_p=0.9
    )
    [request] = api.model.requests()
    assert request["body"] == {
        "model": "toy",
        "messages": [{"role": "user", "content": "Plain. ANSWER=7"}],
        "max_tokens": 500,
        "seed": 11,
        "top_p": 0.9,
    }
    assert answer.id.startswith("cmpl-") and answer.usage is not None and answer.usage.completion_tokens > 0
    assert "\\boxed{" in (answer.choices[0].message.content or "")


def test_chat_errors_are_openai_shaped_statuses(api: LiveAPI, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        oai.chat.completions.create(
            model="toy", messages=[{"role": "user", "content": "q"}], extra_body={"rsa": {"population": 0}}
        )
    assert "rsa.population" in str(bad.value.body)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=oai.base_url, api_key="wrong", max_retries=0).chat.completions.create(
            model="toy", messages=[{"role": "user", "content": "q"}]
        )
