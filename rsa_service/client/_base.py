"""The I/O-free core of the SDK: configuration, request building, timeouts, the retry decision, SSE parsing.

`RSAClient` and `AsyncRSAClient` hold only their send loops; everything they decide, they ask this module.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx2

from rsa_service.backends.retry import HTTPFailure, RetryPolicy, decide, is_transient_transport_error, retry_after
from rsa_service.client._errors import APIConnectionError, APITimeoutError, RSAError, WaitTimeout
from rsa_service.core.params import RSAParams
from rsa_service.wire import Event, Job, JobCreate, JobStatus

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx2.Timeout(connect=5.0, read=60.0, write=30.0, pool=10.0)
DEFAULT_MAX_RETRIES = 3
DEFAULT_POLL_S = 1.0
# An event stream is idle between events; the server pings every 15 s, so a read waits for a few pings.
EVENTS_READ_TIMEOUT_S = 60.0


class NotGiven:
    """The "inherit the client's setting" sentinel; distinct from None, which disables a timeout."""

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()
Timeout = float | httpx2.Timeout | None


@dataclass
class RequestOptions:
    """One logical call. Its headers (the idempotency key included) are sent unchanged on every retry."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: Timeout | NotGiven = NOT_GIVEN
    stream: bool = False


class BaseClient:
    """Settings and decisions shared by the sync and async clients."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_max_wait_s: float = 30.0,
    ) -> None:
        self.base_url = (base_url or os.environ.get("RSA_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("RSA_API_KEY")
        self.timeout = timeout
        self.policy = RetryPolicy(max_retries=max_retries, max_wait_s=retry_max_wait_s)

    # ---- requests ----------------------------------------------------------------------------------------

    def _default_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "rsa-service-python"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _timeout(self, override: Timeout | NotGiven) -> httpx2.Timeout:
        chosen = self.timeout if isinstance(override, NotGiven) else override
        return chosen if isinstance(chosen, httpx2.Timeout) else httpx2.Timeout(chosen)

    def _build(self, client: httpx2.Client | httpx2.AsyncClient, options: RequestOptions) -> httpx2.Request:
        return client.build_request(
            options.method,
            self.base_url + options.path,
            params=options.params,
            json=options.json,
            headers=self._default_headers() | options.headers,
            timeout=self._timeout(options.timeout),
        )

    # ---- retry decisions ---------------------------------------------------------------------------------

    def _retry_after_response(self, attempt: int, response: httpx2.Response) -> float | None:
        """Seconds to wait before retrying after an error status, or None: do not retry."""
        if attempt > self.policy.max_retries:
            return None
        failure = HTTPFailure(response.status_code, response.headers, response.text[:500])
        decision = decide(failure)
        return self.policy.wait_s(attempt, decision.retry_after_s) if decision.verdict == "retry" else None

    def _retry_after_error(self, attempt: int, exc: httpx2.HTTPError) -> float | None:
        if attempt > self.policy.max_retries or not is_transient_transport_error(exc):
            return None
        return self.policy.wait_s(attempt)

    @staticmethod
    def _connection_error(exc: httpx2.HTTPError) -> RSAError:
        kind = APITimeoutError if isinstance(exc, httpx2.TimeoutException) else APIConnectionError
        return kind(f"{type(exc).__name__}: {exc or 'no detail'}", request=getattr(exc, "_request", None))

    # ---- the job calls -----------------------------------------------------------------------------------

    @staticmethod
    def _create_options(
        problem: str,
        backend: str | None,
        model: str | None,
        params: Mapping[str, Any],
        idempotency_key: str | None,
        timeout: Timeout | NotGiven,
    ) -> RequestOptions:
        """Validated here first (a bad field fails before any request); one key for the call and its retries."""
        body = JobCreate.model_validate({"problem": problem, "backend": backend, "model": model, **params})
        RSAParams.model_validate(body.model_dump(exclude_none=True, exclude={"problem", "backend", "model"}))
        key = idempotency_key or f"rsa-{uuid.uuid4()}"
        return RequestOptions(
            "POST",
            "/v1/jobs",
            json=body.model_dump(mode="json", exclude_none=True),
            headers={"Idempotency-Key": key},
            timeout=timeout,
        )

    @staticmethod
    def _list_options(limit: int, after: str | None, status: Iterable[JobStatus] | None) -> RequestOptions:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        if status:
            params["status"] = list(status)
        return RequestOptions("GET", "/v1/jobs", params=params)

    @staticmethod
    def _events_options(job_id: str, last_event_id: str | None) -> RequestOptions:
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_event_id} if last_event_id else {})
        timeout = httpx2.Timeout(DEFAULT_TIMEOUT.connect, read=EVENTS_READ_TIMEOUT_S)
        return RequestOptions("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout, stream=True)

    @staticmethod
    def _poll_delay(
        job: Job, headers: Mapping[str, str], poll_s: float, timeout: float | None, started: float
    ) -> float:
        """How long `wait` sleeps: the server's Retry-After hint (else `poll_s`), never past the deadline."""
        hint = retry_after(headers)
        delay = poll_s if hint is None else hint
        if timeout is None:
            return delay
        remaining = started + timeout - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(job.id, timeout)
        return min(delay, remaining)


class SSEDecoder:
    """Server-sent events from lines (the WHATWG rules this API needs: id, event, data, comments).

    Unlike a browser it skips events that carry no id of their own: this API ids every event, and an event
    without one could not be resumed after."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """One line without its newline; an Event when a blank line completes one that has an id."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> Event | None:
        event_id, kind, data = self._id, self._event, "\n".join(self._data)
        self._id, self._event, self._data = None, "message", []
        if not data or event_id is None:
            return None
        return Event.model_validate({"id": event_id, "type": kind, "data": _json(data)})


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}
