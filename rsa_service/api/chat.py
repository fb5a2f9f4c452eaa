"""POST /v1/chat/completions, OpenAI-compatible.

With an `rsa` object in the body the request runs as a durable job (N, K, T, ... from that object) and answers
with an ordinary chat completion whose `usage` sums every generation, plus an `rsa` object (job id, per-round
answers). The job keeps the whole conversation: round 0 sends it, aggregation prompts carry its system messages,
and the problem the templates show is the last user message (`core.conversation`). `stream: true` sends
progress as SSE comments, which OpenAI clients ignore, then the answer as chunks. Without `rsa` the request goes
to the default backend untouched.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from rsa_service.api.auth import tenant
from rsa_service.api.errors import ApiError, field_error, problem_responses, validation_errors
from rsa_service.api.pass_through import limited_body, proxy
from rsa_service.api.routes_jobs import build_spec, check_context, create_job, resolve_backend
from rsa_service.api.views import steps_total
from rsa_service.backends import BackendError, ChatMessage, GenerationRequest, split_spec
from rsa_service.core.answers import equivalent
from rsa_service.core.conversation import Conversation, conversation_from, problem_of
from rsa_service.core.steps import RoundStats, StepResult
from rsa_service.core.summary import round_steps
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.hub import Subscription
from rsa_service.jobs.idempotency import fingerprint
from rsa_service.jobs.models import JobRecord
from rsa_service.jobs.store import JobStore, new_job_id
from rsa_service.wire import JobCreate, JobResult

router = APIRouter(tags=["chat"])
SAMPLING_FIELDS = ("temperature", "top_p", "seed")


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields this route reads; everything else is kept and passed through."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=256)
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    rsa: dict[str, Any] | None = Field(default=None, description="RSA settings: population, subset, rounds, ...")


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def conversation_of(chat: ChatRequest) -> Conversation:
    """The chat's messages as the job keeps them (422 naming `messages` when there is no problem in them)."""
    try:
        return conversation_from([(m.role, _text(m.content)) for m in chat.messages])
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise field_error(field, message) from None


def _job_body(chat: ChatRequest, problem: str) -> JobCreate:
    extra = chat.model_extra or {}
    sampling = {name: extra[name] for name in SAMPLING_FIELDS if extra.get(name) is not None}
    fields = {**sampling, **(chat.rsa or {}), "problem": problem, "model": chat.model}
    try:
        return JobCreate.model_validate(fields)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        for error in errors:
            if error.field not in ("problem", "model", *SAMPLING_FIELDS) or error.field in (chat.rsa or {}):
                error.field = f"rsa.{error.field}"
        raise ApiError(422, "; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors) from None


def answer_text(result: JobResult, steps: dict[str, StepResult], population: int) -> str:
    """The full text behind the selected answer: a trace of the last round (the final aggregations of
    `aggregate`) that agrees with it."""
    if result.answer is None or not result.rounds:
        return ""
    for step in round_steps(steps, result.rounds[-1].round, population):
        if step.answer is not None and equivalent(step.answer, result.answer):
            return step.text or f"\\boxed{{{result.answer}}}"
    return f"\\boxed{{{result.answer}}}"


def completion(record: JobRecord, text: str, created: int) -> dict[str, Any]:
    result = record.result
    assert result is not None
    usage = result.usage
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": created,
        "model": record.spec.model or "rsa",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if result.stopped_reason else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total,
        },
        "rsa": {
            "job_id": record.id,
            "answer": result.answer,
            "select": result.select,
            "rounds": [r.model_dump(mode="json") for r in result.rounds],
            "stopped_reason": result.stopped_reason,
        },
    }


def chunks(full: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished chat completion as OpenAI stream chunks: role, content, then finish reason with usage."""
    choice = full["choices"][0]
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"], "model": full["model"]}
    delta_role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    delta_text = {"index": 0, "delta": {"content": choice["message"]["content"]}, "finish_reason": None}
    last = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
    tail = {key: full[key] for key in ("usage", "rsa") if key in full}
    return [base | {"choices": [delta_role]}, base | {"choices": [delta_text]}, base | {"choices": [last]} | tail]


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _finished(store: JobStore, job_id: str) -> dict[str, Any]:
    """The completion of a terminal job, or ApiError carrying the job's problem."""
    record = await store.get(job_id)
    if record.status != "completed" or record.result is None:
        status = record.error.status if record.error else 409
        detail = record.error.detail if record.error else f"job {job_id} ended {record.status}"
        raise ApiError(status if status >= 400 else 502, f"job {job_id}: {detail}", kind=f"job-{record.status}")
    last_round = record.result.rounds[-1].round if record.result.rounds else 0
    text = answer_text(record.result, await store.steps(job_id), record.spec.params.population_of(last_round))
    return completion(record, text, record.created_ms // 1000)


async def _progress_comments(record: JobRecord, events: Subscription) -> AsyncIterator[str]:
    total = steps_total(record.spec)
    done = 0
    yield f": rsa job {record.id} queued ({total} generations)\n\n"
    async for event in events:
        if event.type == "step":
            done += 1
            yield f": step {event.data.get('round')}:{event.data.get('slot')} done ({done}/{total})\n\n"
        elif event.type == "round":
            stats = RoundStats.model_validate(event.data)
            yield f": round {stats.round} done: answer {stats.answer} (agreement {stats.agreement:.0%})\n\n"


async def _stream_job(store: JobStore, record: JobRecord, events: Subscription) -> AsyncIterator[str]:
    async for comment in _progress_comments(record, events):
        yield comment
    try:
        full = await _finished(store, record.id)
    except ApiError as exc:
        yield _sse({"error": {"message": exc.detail, "type": exc.kind, "code": exc.status}})
        return
    for chunk in chunks(full):
        yield _sse(chunk)
    yield _sse("[DONE]")


async def _run_rsa(request: Request, chat: ChatRequest, owner: str) -> Response:
    settings = request.app.state.settings
    store: JobStore = request.app.state.store
    conversation = conversation_of(chat)
    body = _job_body(chat, problem_of(conversation))
    spec = build_spec(settings, request, body, conversation)
    await check_context(request, spec)
    job_id = new_job_id()
    # A stream slot first: a server at its stream cap refuses (429) before any job exists to run unwatched.
    events = await request.app.state.hub.subscribe(job_id, tenant=owner)
    try:
        await create_job(request, store, owner, spec, job_id, fingerprint(body.model_dump(mode="json")))
        record = await store.get(job_id)
    except BaseException:
        events.close()
        raise
    if chat.stream:
        stream = _stream_job(store, record, events)
        return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(events.aclose))
    try:
        async for _ in events:
            pass
    finally:
        events.close()
    return JSONResponse(await _finished(store, job_id))


async def _generate(request: Request, chat: ChatRequest, name: str, body: dict[str, Any]) -> Response:
    """Pass-through for a backend that is not HTTP: one Backend.generate call, shaped as a chat completion."""
    try:
        messages = tuple(ChatMessage(role=m.role, content=_text(m.content)) for m in chat.messages)
        generation_request = GenerationRequest(
            messages=messages,
            max_tokens=body.get("max_completion_tokens") or body["max_tokens"],
            **{name: body[name] for name in SAMPLING_FIELDS if body.get(name) is not None},
        )
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        raise ApiError(422, "; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors) from None
    backend = await request.app.state.backends.get(name, chat.model)
    try:
        generation = await backend.generate(generation_request)
    except BackendError as exc:
        raise ApiError(502, f"the backend failed: {exc}", kind="backend-error") from None
    usage = generation.usage
    full = {
        "id": f"chatcmpl-{new_job_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "reasoning_content": generation.reasoning},
                "finish_reason": "length" if generation.finish_reason == "length" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total,
        },
    }
    if chat.stream:
        stream = "".join(_sse(chunk) for chunk in chunks(full)) + _sse("[DONE]")
        return Response(stream, media_type="text/event-stream")
    return JSONResponse(full)


@router.post(
    "/v1/chat/completions",
    responses={
        200: {"description": "A chat completion, or a stream of chunks with `stream: true`"},
        **problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 502, 503),
    },
    summary="OpenAI-compatible chat completions; RSA when the body has an `rsa` object",
)
async def chat_completions(request: Request, chat: ChatRequest, owner: str = Depends(tenant)) -> Response:
    if chat.rsa is not None:
        return await _run_rsa(request, chat, owner)
    pool: BackendPool = request.app.state.backends
    name = resolve_backend(pool.settings, None)
    spec = pool.resolve(name)
    body = limited_body(json.loads(await request.body()), request.app.state.settings)
    if isinstance(spec, str):  # one server: proxied as is; a fleet's replicas are chosen by its backend
        scheme, location = split_spec(spec)
        if scheme == "openai":
            return await proxy(request, location.rstrip("/"), body)
    return await _generate(request, chat, name, body)
