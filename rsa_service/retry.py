"""When to retry an HTTP call: one short ordered rule list, shared by the remote backend and the SDK.

The decision is I/O-free. It looks at what came back (a status, the headers, the server's error text, or a
transport exception) and answers "retry, maybe after this long" or "fail, and how". The first rule that has an
opinion wins:

1. the server's explicit hint (`x-should-retry: true|false`, as OpenAI-style servers send);
2. a context-length complaint never succeeds on retry, whatever its status;
3. 408/409/429 and 5xx (except 501/505, which describe the server, not its load) are transient; a
   `Retry-After` (seconds or HTTP date, or `retry-after-ms`) says how long to wait, capped;
4. everything else (400/401/403/404/422, ...) is permanent.

Transport failures (timeouts, refused or reset connections, a peer that hangs up mid-response) are transient.
Which exceptions those are is the caller's to say (`TransportErrors`), so this module imports no HTTP client and
the SDK can use it without loading the remote backend's. Waits without a server hint back off exponentially with
jitter, capped.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

Verdict = Literal["retry", "fail", "context_length"]
RetryCause = Literal["status", "timeout", "connection"]

RETRYABLE_STATUSES = frozenset({408, 409, 429})
# 5xx statuses that say "this server cannot do that", which load or time will not change.
PERMANENT_5XX = frozenset({501, 505})
_CONTEXT_LENGTH = re.compile(
    r"context[ _](?:length|size|window)|maximum context|exceeds? the (?:available )?context|too many tokens",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HTTPFailure:
    """What a failed response told us: the status, its headers and the server's own error text."""

    status: int
    headers: Mapping[str, str]
    message: str


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str
    retry_after_s: float | None = None


def _server_hint(failure: HTTPFailure) -> Decision | None:
    hint = failure.headers.get("x-should-retry", "").strip().lower()
    if hint == "true":
        return Decision("retry", "server hint", retry_after(failure.headers))
    if hint == "false":
        return Decision("fail", "server hint")
    return None


def _context_length(failure: HTTPFailure) -> Decision | None:
    if 400 <= failure.status < 500 and _CONTEXT_LENGTH.search(failure.message):
        return Decision("context_length", "context length exceeded")
    return None


def _retryable_status(failure: HTTPFailure) -> Decision | None:
    status = failure.status
    if status in RETRYABLE_STATUSES or (status >= 500 and status not in PERMANENT_5XX):
        return Decision("retry", f"status {status} is transient", retry_after(failure.headers))
    return None


def _permanent(failure: HTTPFailure) -> Decision:
    return Decision("fail", f"status {failure.status} is permanent")


Rule = Callable[[HTTPFailure], Decision | None]
RULES: tuple[Rule, ...] = (_server_hint, _context_length, _retryable_status)


def decide(failure: HTTPFailure) -> Decision:
    """Apply `RULES` in order; the first that has an opinion wins, else the failure is permanent."""
    for rule in RULES:
        decision = rule(failure)
        if decision is not None:
            return decision
    return _permanent(failure)


ErrorTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class TransportErrors:
    """What one HTTP client's exceptions mean; each user of these rules describes its own client.

    `transient`: the request may well succeed next time (timeouts, refused or reset connections, truncated
    responses), except for `never_heal` among them (a TLS failure is a connection error, but a certificate does
    not heal). The other three classify a retry for the metrics; the first that matches wins.
    """

    transient: ErrorTypes
    never_heal: ErrorTypes = ()
    connect_timeouts: ErrorTypes = ()
    timeouts: ErrorTypes = ()
    connection: ErrorTypes = ()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, self.transient) and not isinstance(exc, self.never_heal)

    def cause(self, exc: BaseException) -> RetryCause:
        """A retried failure's cause: a connect timeout or a broken connection, another timeout, else a status.

        Looks at `exc` or the transport error it was raised from (the backends translate those with `from`).
        """
        transport = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(transport, self.connect_timeouts):
            return "connection"
        if isinstance(transport, (*self.timeouts, TimeoutError)):
            return "timeout"
        if isinstance(transport, self.connection):
            return "connection"
        return "status"


def retry_after(headers: Mapping[str, str], *, now_s: float | None = None) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, else `Retry-After` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait. `max_wait_s` caps both backoff and a server's `Retry-After`."""

    max_retries: int = 6
    backoff_base_s: float = 0.5
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to sleep before retry number `attempt` (1-based)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_wait_s)
        ceiling = min(self.max_wait_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        # Equal jitter: never zero (a burst of 429s must spread out), never above the ceiling.
        return ceiling * (0.5 + random.random() / 2)
