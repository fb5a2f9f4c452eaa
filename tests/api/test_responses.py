"""The official `openai` package's `responses` calls against `rsa serve`, unchanged: background, synchronous and
streamed creates, a dropped stream resumed by sequence number, cancel, delete, input items and errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from rsa_service.api.responses.mapping import round_summary
from rsa_service.core.steps import AnswerCount, RoundStats, Usage
from rsa_service.jobs.store import JobStore
from tests.api.conftest import KEY_A, KEY_B, SMALL, ApiFactory, LiveAPI

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
RSA: dict[str, object] = {"rsa": SMALL}


@pytest.fixture
def oai(api: LiveAPI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0) as client:
        yield client


def strict(response: Response) -> Response:
    """The response validated field by field (the client itself builds its models without validating)."""
    return Response.model_validate(response.model_dump(mode="json", exclude_unset=True))


def until_done(oai: openai.OpenAI, response_id: str, timeout_s: float = 30) -> Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = oai.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return strict(response)
        assert time.monotonic() < deadline, f"{response_id} still {response.status}"
        time.sleep(0.1)


def job_of(response: Response) -> str:
    """The id of the job behind a response (the `rsa` extension of the response object)."""
    assert response.model_extra is not None
    return str(response.model_extra["rsa"]["job_id"])


def text_of(item: Any) -> str:
    return str(item.content[0].text)


def events_of(stream: Any) -> list[Any]:
    return [EVENTS.validate_python(event.model_dump(mode="json", exclude_unset=True)) for event in stream]


def test_background_create_then_retrieve_until_completed(api: LiveAPI, oai: openai.OpenAI) -> None:
    created = strict(
        oai.responses.create(
            model="toy",
            input="Sum it. ANSWER=42",
            background=True,
            metadata={"ticket": "7"},
            reasoning={"effort": "low"},
            extra_body=RSA,
        )
    )
    assert created.status == "queued" and created.id.startswith("resp_") and created.output == []
    done = until_done(oai, created.id)
    assert done.status == "completed" and done.metadata == {"ticket": "7"} and done.background is True
    reasoning, message = done.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [part.text.split(":")[0] for part in reasoning.summary] == ["round 1 of 2", "round 2 of 2"]
    assert "\\boxed{" in done.output_text
    job = httpx2.get(f"{api.url}/v1/jobs/{job_of(done)}", headers=_auth(KEY_A)).json()
    usage, counted = done.usage, job["result"]["usage"]
    assert usage is not None and job["status"] == "completed" and job["params"]["population"] == SMALL["population"]
    assert (usage.input_tokens, usage.output_tokens) == (counted["prompt_tokens"], counted["completion_tokens"])
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens


def test_synchronous_create_answers_the_completed_response(oai: openai.OpenAI) -> None:
    done = strict(oai.responses.create(model="toy", input="Sync. ANSWER=12", extra_body=RSA))
    assert done.status == "completed" and done.completed_at is not None and done.output_text


def test_a_budget_stop_is_incomplete(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(
        model="toy", input="Short. ANSWER=2", max_output_tokens=50, stream=True, extra_body=RSA
    )
    events = events_of(stream)
    stopped = strict(events[-1].response)
    assert events[-1].type == "response.incomplete" and stopped.status == "incomplete"
    assert stopped.incomplete_details is not None and stopped.incomplete_details.reason == "max_output_tokens"
    assert stopped.usage is not None and stopped.usage.output_tokens >= 50
    assert strict(oai.responses.retrieve(stopped.id)).model_dump() == stopped.model_dump()


def test_effort_presets_and_top_level_settings_reach_the_job(api: LiveAPI, oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="toy", input="q ANSWER=1", background=True, reasoning={"effort": "minimal"}, temperature=0.5
    )
    job = httpx2.get(f"{api.url}/v1/jobs/{job_of(response)}", headers=_auth(KEY_A)).json()
    params = job["params"]
    assert (params["population"], params["subset"], params["rounds"], params["temperature"]) == (4, 2, 1, 0.5)
    oai.responses.cancel(response.id)


def test_stream_sends_every_event_type_in_order(oai: openai.OpenAI) -> None:
    events = events_of(oai.responses.create(model="toy", input="Stream. ANSWER=9", stream=True, extra_body=RSA))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    kinds = [event.type for event in events]
    summary = [
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
        *summary,
        *summary,
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1].response
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert final.status == "completed" and text == final.output_text and "\\boxed{" in text
    assert events[5].delta.startswith("round 1 of 2: ")


def test_a_dropped_stream_resumes_on_another_replica_after_its_last_sequence_number(
    make_api: ApiFactory, oai: openai.OpenAI
) -> None:
    rsa = {**SMALL, "rounds": 2}
    first: list[Any] = []
    with oai.responses.create(
        model="toy", input="Resume. ANSWER=5", stream=True, background=True, extra_body={"rsa": rsa}
    ) as stream:
        for event in stream:
            first.append(event)
            if event.type == "response.reasoning_summary_part.done":
                break  # the connection drops after round 1: the job runs on
    response_id = first[0].response.id
    assert first[-1].sequence_number == len(first) - 1
    replica = make_api(workers=0)  # a second API process on the same Redis
    with openai.OpenAI(base_url=replica.url + "/v1", api_key=KEY_A, max_retries=0) as other:
        rest = events_of(other.responses.retrieve(response_id, stream=True, starting_after=first[-1].sequence_number))
    assert rest[0].sequence_number == len(first) and rest[-1].type == "response.completed"
    whole = events_of(oai.responses.retrieve(response_id, stream=True))
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    assert [(e.type, e.sequence_number) for e in first + rest] == [(e.type, e.sequence_number) for e in whole]
    assert [e.model_dump() for e in rest] == [e.model_dump() for e in whole[len(first) :]]


def test_cancel_stops_the_job_and_keeps_its_steps(api: LiveAPI, oai: openai.OpenAI) -> None:
    slow = {**SMALL, "rounds": 8}
    response = oai.responses.create(model="toy", input="Cancel. ANSWER=3", background=True, extra_body={"rsa": slow})
    job_url = f"{api.url}/v1/jobs/{job_of(response)}"
    deadline = time.monotonic() + 20
    while httpx2.get(job_url, headers=_auth(KEY_A)).json()["progress"]["steps_done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = strict(oai.responses.cancel(response.id))
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 5
    while (job := httpx2.get(job_url, headers=_auth(KEY_A)).json())["status"] != "cancelled":
        assert time.monotonic() < deadline, job["status"]
        time.sleep(0.05)
    steps = httpx2.get(job_url + "/steps", headers=_auth(KEY_A)).json()["data"]
    assert 2 <= len(steps) == job["progress"]["steps_done"] < 4 * 9  # the committed steps are kept
    assert strict(oai.responses.retrieve(response.id)).status == "cancelled"
    last = events_of(oai.responses.retrieve(response.id, stream=True))[-1]
    assert last.type == "response.failed" and last.response.status == "cancelled"


def test_delete_removes_the_response_and_its_job(api: LiveAPI, oai: openai.OpenAI) -> None:
    done = until_done(
        oai, oai.responses.create(model="toy", input="Gone. ANSWER=8", background=True, extra_body=RSA).id
    )
    oai.responses.delete(done.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(done.id)
    job_id = job_of(done)
    assert httpx2.get(f"{api.url}/v1/jobs/{job_id}", headers=_auth(KEY_A)).status_code == 404


def test_instructions_and_earlier_turns_reach_the_model_and_input_items(api: LiveAPI, oai: openai.OpenAI) -> None:
    turns: list[Any] = [
        {"role": "developer", "content": "Answer in a box."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "input_text", "text": "And doubled? ANSWER=8"}]},
    ]
    api.model.reset()
    response = oai.responses.create(model="toy", input=turns, instructions="Be brief.", extra_body=RSA)
    assert strict(response).instructions == "Be brief." and response.status == "completed"
    sent = [request["body"]["messages"] for request in api.model.requests()]
    first = [(m["role"], m["content"]) for m in sent[0]]
    assert first == [
        ("system", "Be brief."),
        ("system", "Answer in a box."),
        ("user", "What is 2+2?"),
        ("assistant", "4"),
        ("user", "And doubled? ANSWER=8"),
    ]
    assert sum(messages == sent[0] for messages in sent) == SMALL["population"]
    items = list(oai.responses.input_items.list(response.id, order="asc", limit=2))
    assert [(item.role, text_of(item)) for item in items if item.type == "message"] == [
        ("developer", "Answer in a box."),
        ("user", "What is 2+2?"),
        ("assistant", "4"),
        ("user", "And doubled? ANSWER=8"),
    ]
    newest = oai.responses.input_items.list(response.id, limit=1)
    assert text_of(newest.data[0]) == "And doubled? ANSWER=8" and newest.has_more


def test_errors_are_the_clients_own_exception_types(api: LiveAPI, oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="toy", input="Mine. ANSWER=1", background=True, extra_body=RSA)
    with openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_B, max_retries=0) as other:
        for call in (other.responses.retrieve, other.responses.cancel, other.responses.delete):
            with pytest.raises(openai.NotFoundError):
                call(response.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve("resp_nothing")
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        oai.responses.create(model="toy", input="q", extra_body={"rsa": {"population": 0}})
    assert "rsa.population" in str(bad.value.body)
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        oai.responses.create(model="gpt-4o", input="q")
    assert "model" in str(bad.value.body)
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        oai.responses.create(model="toy", input="q", background_options={"completion_window": "8h"})
    assert "background_options.completion_window" in str(bad.value.body)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.responses.create(model="toy", input="q", reasoning={"effort": "huge"})  # type: ignore[call-overload]
    oai.responses.cancel(response.id)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_job_created_under_jobs_is_a_response_too(api: LiveAPI, oai: openai.OpenAI) -> None:
    body = {"problem": "From jobs. ANSWER=6", "backend": "toy", **SMALL}
    job = httpx2.post(f"{api.url}/v1/jobs", json=body, headers=_auth(KEY_A)).json()
    seen = strict(oai.responses.retrieve("resp_" + job["id"].removeprefix("job_")))
    assert job_of(seen) == job["id"] and seen.model == "toy"
    assert [text_of(item) for item in oai.responses.input_items.list(seen.id)] == ["From jobs. ANSWER=6"]
    oai.responses.cancel(seen.id)


async def test_a_long_completion_window_queues_behind_interactive_work(make_api: ApiFactory, store: JobStore) -> None:
    api = make_api(workers=0)
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0) as oai:
        later = await oai.responses.create(
            model="toy", input="Later. ANSWER=1", background=True, background_options={"completion_window": "8h"}
        )
        sooner = await oai.responses.create(model="toy", input="Sooner. ANSWER=2", background=True)
    assert [await store.next_queued(0.1) for _ in range(3)] == [job_of(sooner), job_of(later), None]


def test_a_round_reads_as_the_answers_it_holds() -> None:
    stats = RoundStats(
        round=0,
        answers=[AnswerCount(answer="204", count=12), AnswerCount(answer="210", count=3)],
        no_answer=1,
        agreement=0.75,
        answer="204",
        truncated=0,
        failed=0,
        tokens=Usage(prompt_tokens=900, completion_tokens=3210),
    )
    assert round_summary(stats, 16, 3) == "round 1 of 3: 12/16 agree on 204; also 210 ×3, no answer ×1 (3,210 tokens)"


def test_idempotency_and_the_tenant_limit_hold_as_for_jobs(make_api: ApiFactory) -> None:
    api = make_api(workers=0, max_active_jobs=1)
    with openai.OpenAI(base_url=api.url + "/v1", api_key=KEY_A, max_retries=0) as oai:
        key = {"Idempotency-Key": "order-66"}
        first = oai.responses.with_raw_response.create(
            model="toy", input="Once. ANSWER=4", background=True, extra_headers=key
        )
        again = oai.responses.with_raw_response.create(
            model="toy", input="Once. ANSWER=4", background=True, extra_headers=key
        )
        assert again.parse().id == first.parse().id and again.headers["Idempotent-Replayed"] == "true"
        with pytest.raises(openai.UnprocessableEntityError):
            oai.responses.create(model="toy", input="Other. ANSWER=4", background=True, extra_headers=key)
        with pytest.raises(openai.RateLimitError) as limited:
            oai.responses.create(model="toy", input="Twice. ANSWER=4", background=True)
        assert limited.value.response.headers["Retry-After"]
