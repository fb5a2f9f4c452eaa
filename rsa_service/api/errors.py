"""Every error leaves the API as RFC 9457 problem details (`application/problem+json`).

Errors raised inside the app (`ApiError`, store and validation errors, Starlette's HTTP errors) are mapped here,
at the boundary, and each route declares the statuses it can return through `problem_responses`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rsa_service.jobs.errors import JobNotFound, StoreUnavailable
from rsa_service.jobs.hub import EventIdOutOfRange, TooManyStreams
from rsa_service.jobs.models import NewerFormat
from rsa_service.wire import FieldError, ProblemDetails

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://rsa-service.dev/problems/"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


class ApiError(Exception):
    """An error with its HTTP status; `kind` becomes the problem `type` URI."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None


def field_error(field: str, message: str) -> ApiError:
    """A 422 naming one field."""
    return ApiError(
        422, f"{field}: {message}", kind="invalid-request", errors=[FieldError(field=field, message=message)]
    )


def validation_errors(items: Iterable[Any], *, drop_prefix: str = "") -> list[FieldError]:
    """pydantic errors as field problems; `drop_prefix` strips the location part FastAPI adds (e.g. `body`)."""
    found = []
    for item in items:
        loc = [str(part) for part in item.get("loc", ())]
        if loc and loc[0] == drop_prefix:
            loc = loc[1:]
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if item.get("type") == "json_invalid":  # its location is a character offset into the body, not a field
            loc, message = [], f"{message} (at character {loc[0] if loc else 0})"
        # A model-level check has no location; its message starts with the field it is about. Any other error
        # without one is about the body as a whole (not an object, say).
        named = message.split(" ", 1)[0]
        model_check = item.get("type") in ("value_error", "assertion_error")
        field = ".".join(loc) or (named if model_check and named.isidentifier() else "body")
        found.append(FieldError(field=field, message=message))
    return found


def problem(
    status: int,
    detail: str | None,
    *,
    kind: str | None = None,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    body = ProblemDetails(
        type=TYPE_BASE + kind if kind else "about:blank",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return ProblemResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _unprocessable(errors: list[FieldError], instance: str) -> ProblemResponse:
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return problem(422, detail, kind="invalid-request", instance=instance, errors=errors)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into problem details."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> ProblemResponse:
        path = request.url.path
        return problem(exc.status, exc.detail, kind=exc.kind, instance=path, errors=exc.errors, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> ProblemResponse:
        return _unprocessable(validation_errors(exc.errors(), drop_prefix="body"), request.url.path)

    @app.exception_handler(ValidationError)
    async def _model_invalid(request: Request, exc: ValidationError) -> ProblemResponse:
        return _unprocessable(validation_errors(exc.errors()), request.url.path)

    @app.exception_handler(JobNotFound)
    async def _not_found(request: Request, exc: JobNotFound) -> ProblemResponse:
        return problem(404, f"no job {exc.job_id}", kind="not-found", instance=request.url.path)

    @app.exception_handler(TooManyStreams)
    async def _too_many_streams(request: Request, exc: TooManyStreams) -> ProblemResponse:
        retry_after = {"Retry-After": str(request.app.state.settings.busy_retry_after_s)}
        return problem(429, str(exc), kind="too-many-streams", instance=request.url.path, headers=retry_after)

    @app.exception_handler(EventIdOutOfRange)
    async def _bad_event_id(request: Request, exc: EventIdOutOfRange) -> ProblemResponse:
        return problem(400, f"resume point: {exc}", kind="bad-event-id", instance=request.url.path)

    @app.exception_handler(NewerFormat)
    async def _newer(request: Request, exc: NewerFormat) -> ProblemResponse:
        # A rolling upgrade: a newer replica wrote this job; this one must not guess at its format.
        detail = f"{exc}; this server is older than the job, retry against an upgraded one"
        return problem(503, detail, kind="newer-format", instance=request.url.path, headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        return problem(exc.status_code, str(exc.detail), instance=request.url.path, headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def _redis(request: Request, exc: StoreUnavailable) -> ProblemResponse:
        log.error("redis error on %s: %s", request.url.path, exc)
        detail = "the job store is unavailable; retry shortly"
        return problem(503, detail, kind="store-unavailable", instance=request.url.path, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "internal error", instance=request.url.path)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: each status as problem+json, so the document lists what is returned."""
    schema = {"$ref": "#/components/schemas/ProblemDetails"}
    return {
        status: {
            "model": ProblemDetails,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }
