"""The retry rules (`rsa_service.retry`) applied to the remote backend's client: what aiohttp's exceptions mean,
and the wait tenacity takes between attempts."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from tenacity import RetryCallState

from rsa_service.retry import RetryPolicy, TransportErrors

AIOHTTP_ERRORS = TransportErrors(
    transient=(aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError),
    never_heal=(aiohttp.ClientSSLError,),
    connect_timeouts=(aiohttp.ConnectionTimeoutError,),
    connection=(aiohttp.ClientError,),
)


def tenacity_wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    """A tenacity `wait=` for `policy`: honours the `retry_after_s` a failed attempt's exception carries, if any."""

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        return policy.wait_s(state.attempt_number, getattr(exc, "retry_after_s", None))

    return wait
