"""`/v1/chat/completions` with `rsa` keeps the conversation: round 0 sends it whole, aggregation prompts carry
its system message, the templates show the last user message, and the stored job rebuilds the same prompts."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.requests import generation_request
from rsa_service.jobs.store import JobStore
from tests.api.conftest import KEY_A, SMALL, LiveAPI

SYSTEM = "You are a physics tutor. Answer in SI units."
EARLIER = "What is 2+2? ANSWER=4"
PROBLEM = "Now the real one. ANSWER=42"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": EARLIER},
    {"role": "assistant", "content": "It is \\boxed{4}."},
    {"role": "user", "content": PROBLEM},
]


def stored_spec(api: LiveAPI, job_id: str) -> JobSpec:
    async def read() -> JobSpec:
        shared = api.app.state.shared
        client = Redis.from_url(shared.redis_url, decode_responses=True)
        try:
            return (await JobStore(client, namespace=shared.namespace).get(job_id)).spec
        finally:
            await client.aclose()

    return asyncio.run(read())


def is_aggregation(request: dict[str, Any]) -> bool:
    return "Candidate" in request["body"]["messages"][-1]["content"]


def test_the_conversation_reaches_every_prompt(api: LiveAPI) -> None:
    api.model.reset()
    oai = openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0)
    answer = oai.chat.completions.create(
        model="toy",
        messages=CONVERSATION,
        extra_body={"rsa": {**SMALL, "backend": "toy"}},
        seed=5,  # type: ignore[arg-type]
    )
    assert answer.model_extra is not None
    job_id = answer.model_extra["rsa"]["job_id"]
    assert answer.model_extra["rsa"]["answer"] in {"42", "43", "44", "45"}  # the last user message's problem
    requests = api.model.requests()
    first = [r for r in requests if not is_aggregation(r)]
    later = [r for r in requests if is_aggregation(r)]
    assert len(first) == len(later) == SMALL["population"]
    assert all(r["body"]["messages"] == CONVERSATION for r in first)
    for request in later:
        system, user = request["body"]["messages"]
        assert system == {"role": "system", "content": SYSTEM} and user["role"] == "user"
        assert PROBLEM in user["content"] and EARLIER not in user["content"]

    spec = stored_spec(api, job_id)
    assert spec.problem == PROBLEM
    assert [m.model_dump() for m in spec.conversation] == CONVERSATION
    for request in first:  # a resumed job rebuilds round 0 exactly from what was stored
        body = request["body"]
        rebuilt = generation_request(spec, spec.problem, body["max_tokens"], body["seed"], round_index=0)
        assert [m.model_dump() for m in rebuilt.messages or ()] == body["messages"]


def test_developer_is_a_system_message_and_tools_are_refused(api: LiveAPI) -> None:
    api.model.reset()
    oai = openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0)
    rsa = {**SMALL, "rounds": 0, "backend": "toy"}
    oai.chat.completions.create(
        model="toy",
        messages=[{"role": "developer", "content": SYSTEM}, {"role": "user", "content": PROBLEM}],
        extra_body={"rsa": rsa},
    )
    assert all(r["body"]["messages"][0] == {"role": "system", "content": SYSTEM} for r in api.model.requests())
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oai.chat.completions.create(
            model="toy",
            messages=[
                {"role": "user", "content": PROBLEM},
                {"role": "tool", "content": "42", "tool_call_id": "t1"},
            ],
            extra_body={"rsa": rsa},
        )
    assert "messages[1].role" in str(refused.value.body)
