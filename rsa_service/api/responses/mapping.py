"""Between OpenAI's response resource and the job behind it: a create body becomes a job body and the request kept
beside it; a job record (with its committed steps, once it ended) becomes the response object.

A response's id is its job's id with `resp_` for `job_`, so one job is visible under both resources and no mapping
is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from rsa_service.api.chat import answer_text
from rsa_service.api.errors import ApiError, field_error, validation_errors
from rsa_service.api.responses.models import (
    Effort,
    IncompleteDetails,
    InputMessage,
    MessageItem,
    OutputItem,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ResponseCreate,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
    RSAInfo,
    StoredRequest,
    SummaryText,
)
from rsa_service.core.conversation import ChatMessage, Conversation, conversation_from
from rsa_service.core.params import RSAParams
from rsa_service.core.steps import RoundStats, StepResult
from rsa_service.jobs.errors import JobNotFound
from rsa_service.jobs.models import JobRecord
from rsa_service.wire import JobCreate

JOB_PREFIX = "job_"
RESPONSE_PREFIX = "resp_"
# `reasoning.effort` → N (population), K (subset), T (aggregation rounds); the rest keeps the backend's defaults.
# `medium` is the ZAYA1 report's deployment setting, `max` its extra-high one.
EFFORT_PRESETS: dict[Effort, dict[str, int]] = {
    "none": {"population": 1, "subset": 1, "rounds": 0},
    "minimal": {"population": 4, "subset": 2, "rounds": 1},
    "low": {"population": 8, "subset": 4, "rounds": 1},
    "medium": {"population": 16, "subset": 4, "rounds": 2},
    "high": {"population": 16, "subset": 4, "rounds": 4},
    "xhigh": {"population": 32, "subset": 4, "rounds": 6},
    "max": {"population": 32, "subset": 4, "rounds": 8},
}
# The runner's stop reasons that are budgets (tokens or wall time) contain this word; an agreement stop does not.
BUDGET_MARK = "budget"
# What the top-level fields of a create body set in the job.
DIRECT_FIELDS = ("temperature", "top_p", "max_output_tokens")


def response_id(job_id: str) -> str:
    return RESPONSE_PREFIX + job_id.removeprefix(JOB_PREFIX)


def job_id_of(resource_id: str) -> str:
    """The job behind a response id; JobNotFound (404) for anything else."""
    if not resource_id.startswith(RESPONSE_PREFIX) or len(resource_id) == len(RESPONSE_PREFIX):
        raise JobNotFound(resource_id)
    return JOB_PREFIX + resource_id.removeprefix(RESPONSE_PREFIX)


def backend_of(model: str, backends: Mapping[str, str], aliases: Mapping[str, str]) -> str:
    """The configured backend `model` names, directly or through an operator alias; 422 naming `model` otherwise."""
    name = aliases.get(model, model)
    if name not in backends:
        known = sorted({*backends, *aliases})
        raise field_error("model", f"unknown model {model!r}; this server offers {known}")
    return name


def messages_of(create: ResponseCreate) -> list[InputMessage]:
    """The input as message items (a string is one user turn); 422 unless the last user turn has text."""
    messages = [InputMessage(role="user", content=create.input)] if isinstance(create.input, str) else create.input
    users = [message for message in messages if message.role == "user"]
    if not users or not users[-1].text.strip():
        raise field_error("input", "needs a user message with text: it is the problem RSA works on")
    return messages


def conversation_of(create: ResponseCreate, messages: list[InputMessage]) -> Conversation:
    """The chat the job keeps: `instructions` as a system message ahead of the input turns."""
    system = [("system", create.instructions)] if create.instructions else []
    return conversation_from([*system, *((message.role, message.text) for message in messages)])


def job_body(create: ResponseCreate, backend: str, problem: str) -> JobCreate:
    """The job a create body asks for: effort preset, then the top-level sampling fields, then `rsa` overrides."""
    overrides = create.rsa or {}
    unknown = sorted(set(overrides) - set(RSAParams.model_fields))
    if unknown:
        raise field_error(f"rsa.{unknown[0]}", f"not an RSA setting; known: {sorted(RSAParams.model_fields)}")
    effort = create.reasoning.effort if create.reasoning else None
    preset: dict[str, Any] = dict(EFFORT_PRESETS[effort]) if effort else {}
    direct = {name: value for name in DIRECT_FIELDS if (value := getattr(create, name)) is not None}
    fields = {**preset, **direct, **overrides, "problem": problem, "backend": backend}
    try:
        return JobCreate.model_validate(fields)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        for error in errors:
            error.field = _origin(error.field, overrides, preset)
        raise ApiError(422, "; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors) from None


def _origin(field: str, overrides: Mapping[str, Any], preset: Mapping[str, Any]) -> str:
    """The body field a job field came from, so an error names what the caller wrote."""
    if field in overrides:
        return f"rsa.{field}"
    if field in preset:
        return "reasoning.effort"
    return field


def stored_request(create: ResponseCreate, messages: list[InputMessage]) -> StoredRequest:
    return StoredRequest(
        model=create.model,
        input=messages,
        instructions=create.instructions,
        metadata=create.metadata or {},
        background=bool(create.background),
        max_output_tokens=create.max_output_tokens,
        temperature=create.temperature,
        top_p=create.top_p,
        reasoning=create.reasoning,
    )


def default_request(record: JobRecord) -> StoredRequest:
    """How a job created through /v1/jobs or chat looks as a response: its conversation, else its problem."""
    params = record.spec.params
    turns = record.spec.conversation or (ChatMessage(role="user", content=record.spec.problem),)
    return StoredRequest(
        model=record.spec.backend,
        input=[InputMessage(role=turn.role, content=turn.content) for turn in turns],
        background=True,
        temperature=params.temperature,
        top_p=params.top_p,
        max_output_tokens=params.max_output_tokens,
    )


def status_of(record: JobRecord) -> ResponseStatus:
    """The response status of a job; a job being cancelled already shows `cancelled`, as the cancel it answers."""
    if record.status == "cancelling":
        return "cancelled"
    if record.status == "completed" and budget_stopped(record):
        return "incomplete"
    return record.status


def budget_stopped(record: JobRecord) -> bool:
    reason = record.result.stopped_reason if record.result else None
    return reason is not None and BUDGET_MARK in reason


def round_summary(stats: RoundStats, population: int, stages: int) -> str:
    """One line a chat UI shows while it waits, with every answer held:
    `round 1 of 3: 12/16 agree on 204; also 210 ×3, no answer ×1 (3,210 tokens)`."""
    held = f"{stats.answers[0].count}/{population} agree on {stats.answer}" if stats.answers else "no answer yet"
    others = [f"{group.answer} ×{group.count}" for group in stats.answers[1:]]
    others += [f"no answer ×{stats.no_answer}"] if stats.no_answer else []
    also = f"; also {', '.join(others)}" if others else ""
    return f"round {stats.round + 1} of {stages}: {held}{also} ({stats.tokens.completion_tokens:,} tokens)"


def reasoning_item(record: JobRecord, rounds: list[RoundStats], status: str) -> ReasoningItem:
    params = record.spec.params
    summary = [SummaryText(text=round_summary(stats, params.population, params.stages)) for stats in rounds]
    return ReasoningItem(id=item_id("rs", record.id), summary=summary, status=status)


def message_item(record: JobRecord, text: str, status: str) -> MessageItem:
    return MessageItem(id=item_id("msg", record.id), status=status, content=[OutputText(text=text)])


def item_id(kind: str, job_id: str) -> str:
    return f"{kind}_{job_id.removeprefix(JOB_PREFIX)}"


def final_text(record: JobRecord, steps: dict[str, StepResult]) -> str:
    result = record.result
    return answer_text(result, steps, record.spec.params.population) if result and result.answer is not None else ""


def usage_of(record: JobRecord, steps: dict[str, StepResult], text: str) -> ResponseUsage | None:
    if record.result is None:
        return None
    usage = record.result.usage
    # The generation whose text the message shows; copies of it (a consensus short-cut) record no tokens.
    visible = max((step.usage.completion_tokens for step in steps.values() if text and step.text == text), default=0)
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=max(usage.completion_tokens - visible, 0)),
        total_tokens=usage.total,
    )


def output_of(record: JobRecord, text: str) -> list[OutputItem]:
    """Terminal jobs only: the rounds' summary, then the answer as an assistant message when there is one."""
    if not record.terminal or record.result is None:
        return []
    done = "incomplete" if budget_stopped(record) or record.status != "completed" else "completed"
    items: list[OutputItem] = [reasoning_item(record, record.result.rounds, done)]
    if text:
        items.append(message_item(record, text, done))
    return items


def to_response(
    record: JobRecord, request: StoredRequest, steps: dict[str, StepResult], status: ResponseStatus | None = None
) -> ResponseObject:
    """The response object of a job (`status` overrides the job's, for the snapshots a stream carries)."""
    status = status or status_of(record)
    settled = status not in ("queued", "in_progress") and record.terminal
    text = final_text(record, steps) if settled else ""
    problem = record.error or (record.result.error if record.result else None)
    result = record.result if settled else None
    return ResponseObject(
        id=response_id(record.id),
        created_at=record.created_ms // 1000,
        completed_at=record.finished_ms // 1000 if status == "completed" and record.finished_ms else None,
        status=status,
        model=request.model,
        output=output_of(record, text) if settled else [],
        usage=usage_of(record, steps, text) if settled else None,
        error=ResponseError(code="server_error", message=problem.detail or problem.title)
        if status == "failed" and problem
        else None,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
        instructions=request.instructions,
        metadata=request.metadata,
        background=request.background,
        max_output_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        reasoning=request.reasoning,
        rsa=RSAInfo(
            job_id=record.id,
            answer=result.answer if result else None,
            stopped_reason=result.stopped_reason if result else None,
        ),
    )
