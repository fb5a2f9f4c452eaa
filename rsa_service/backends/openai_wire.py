"""The OpenAI-compatible protocol as the remote backend reads it: the answers it parses, and every way a request
fails translated, at this boundary, into the `backends.base` tree (with what a failed request still cost)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rsa_service.backends.aiohttp_retry import AIOHTTP_ERRORS
from rsa_service.backends.base import (
    BackendError,
    BackendUnavailableError,
    ContextLengthError,
    FinishReason,
    PermanentBackendError,
    TransientBackendError,
    Usage,
)
from rsa_service.retry import HTTPFailure, decide

# How much of a non-JSON body an error message quotes.
BODY_EXCERPT_CHARS = 200
FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "tool_calls": "stop",
    "length": "length",
    "max_tokens": "length",
    "abort": "cancelled",
    "cancelled": "cancelled",
    "error": "error",
}


class Unreachable(TransientBackendError):
    """Could not connect at all; once retries are spent this becomes BackendUnavailableError."""


class Aborted(TransientBackendError):
    """The request reached the server and no answer came back (a read timeout, a dropped connection): the server
    may have generated up to the whole budget and reports nothing, so an upper bound is counted."""


class NotOpenAI(BackendUnavailableError):
    """The server answered, but not with OpenAI-style JSON."""


class Message(BaseModel):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class Choice(BaseModel):
    message: Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class ReportedUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Completion(BaseModel):
    """A chat or plain completion response; unknown fields are ignored."""

    choices: list[Choice] = Field(min_length=1)
    usage: ReportedUsage | None = None


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    data: list[Model]


@dataclass(frozen=True)
class Answer:
    """A whole HTTP answer, read before its connection went back to the pool."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def is_json(self) -> bool:
        return "json" in self.headers.get("content-type", "")

    def excerpt(self) -> str:
        return self.body[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")[:BODY_EXCERPT_CHARS].strip()


def error_text(answer: Answer) -> str:
    """The server's error message: OpenAI `error.message`, vLLM `message`, FastAPI `detail`, or raw text."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        return answer.excerpt()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if key in body:
                return str(body[key])
    return str(body)[:BODY_EXCERPT_CHARS]


def http_error(method: str, url: str, answer: Answer) -> BackendError:
    """Translate an error status into the base.py tree; the message names the status and the server's text."""
    status = answer.status
    text = error_text(answer)
    message = f"{method} {url} → {status}: {text}"
    if status in (404, 405, 501) and not answer.is_json:
        return NotOpenAI(f"{url} is not an OpenAI-compatible endpoint ({status}: {text})")
    decision = decide(HTTPFailure(status=status, headers=answer.headers, message=text))
    if decision.verdict == "retry":
        return TransientBackendError(message, retry_after_s=decision.retry_after_s)
    if decision.verdict == "context_length":
        return ContextLengthError(message)
    return PermanentBackendError(message)


def transport_error(method: str, url: str, exc: aiohttp.ClientError | TimeoutError) -> BackendError:
    message = f"{method} {url}: {type(exc).__name__}: {exc or 'no detail'}"
    if not AIOHTTP_ERRORS.is_transient(exc):  # TLS failures included: a certificate does not heal on retry
        return BackendUnavailableError(message)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Unreachable(message)
    return Aborted(message)


def reported_usage(data: Any) -> Usage:
    """The `usage` an answer reports even when the rest of it is unusable; zero when it has none."""
    try:
        reported = ReportedUsage.model_validate(data.get("usage") if isinstance(data, dict) else None)
    except ValidationError:
        return Usage()
    return Usage(prompt_tokens=reported.prompt_tokens, completion_tokens=reported.completion_tokens)
