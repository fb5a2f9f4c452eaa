"""`AsyncRSAClient`: the asyncio twin of `RSAClient`. Only the send loop lives here; decisions come from `_base`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Self, Unpack

import httpx2

from rsa_service.client._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_POLL_S,
    DEFAULT_TIMEOUT,
    NOT_GIVEN,
    BaseClient,
    NotGiven,
    RequestOptions,
    SSEDecoder,
    Timeout,
)
from rsa_service.client._errors import status_error
from rsa_service.wire import TERMINAL_STATUSES, Event, Job, JobPage, JobParams, JobStatus, StepList


class AsyncRSAClient(BaseClient):
    """Client of the rsa-service REST API. `transport` injects an httpx2 transport (tests, ASGI apps)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_max_wait_s: float = 30.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            retry_max_wait_s=retry_max_wait_s,
        )
        self._http = httpx2.AsyncClient(transport=transport, timeout=DEFAULT_TIMEOUT)
        self.jobs = AsyncJobs(self)

    async def request(self, options: RequestOptions) -> httpx2.Response:
        """Send with retries; the response of the first success (a stream stays open: close it)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.send(self._build(self._http, options), stream=options.stream)
            except httpx2.HTTPError as exc:
                wait = self._retry_after_error(attempt, exc)
                if wait is None:
                    raise self._connection_error(exc) from exc
            else:
                if response.is_success:
                    return response
                await response.aread()
                wait = self._retry_after_response(attempt, response)
                if wait is None:
                    raise status_error(response)
            await asyncio.sleep(wait)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncJobs:
    """`client.jobs`: create, read, list, cancel, delete, wait for and follow jobs."""

    def __init__(self, client: AsyncRSAClient) -> None:
        self._client = client

    async def create(
        self,
        problem: str,
        *,
        backend: str | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109 (an httpx2 timeout, as in the sync twin)
        **params: Unpack[JobParams],
    ) -> Job:
        """Submit a job; `params` are RSA parameters (population, subset, rounds, trace_tokens, ...): `JobParams`."""
        options = self._client._create_options(problem, backend, model, params, idempotency_key, timeout)
        response = await self._client.request(options)
        return Job.model_validate_json(response.content)

    async def get(self, job_id: str, *, timeout: Timeout | NotGiven = NOT_GIVEN) -> Job:  # noqa: ASYNC109
        response = await self._client.request(RequestOptions("GET", f"/v1/jobs/{job_id}", timeout=timeout))
        return Job.model_validate_json(response.content)

    async def page(
        self, *, limit: int = 20, after: str | None = None, status: Iterable[JobStatus] | None = None
    ) -> JobPage:
        """One page of jobs, newest first."""
        response = await self._client.request(self._client._list_options(limit, after, status))
        return JobPage.model_validate_json(response.content)

    async def list(self, *, limit: int = 20, status: Iterable[JobStatus] | None = None) -> AsyncIterator[Job]:
        """Every job, newest first, fetching pages of `limit` as the iteration goes."""
        after: str | None = None
        while True:
            page = await self.page(limit=limit, after=after, status=status)
            for job in page.data:
                yield job
            if not page.has_more:
                return
            after = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        response = await self._client.request(RequestOptions("POST", f"/v1/jobs/{job_id}/cancel"))
        return Job.model_validate_json(response.content)

    async def delete(self, job_id: str) -> None:
        await self._client.request(RequestOptions("DELETE", f"/v1/jobs/{job_id}"))

    async def steps(self, job_id: str) -> StepList:
        response = await self._client.request(RequestOptions("GET", f"/v1/jobs/{job_id}/steps"))
        return StepList.model_validate_json(response.content)

    async def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = DEFAULT_POLL_S) -> Job:  # noqa: ASYNC109
        """Poll until the job is terminal, sleeping as the server's Retry-After says; WaitTimeout after `timeout`."""
        started = time.monotonic()
        while True:
            response = await self._client.request(RequestOptions("GET", f"/v1/jobs/{job_id}"))
            job = Job.model_validate_json(response.content)
            if job.terminal:
                return job
            await asyncio.sleep(self._client._poll_delay(job, response.headers, poll_s, timeout, started))

    async def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        """The job's events until its terminal one; a dropped connection resumes after the last event seen."""
        drops = 0
        while True:
            response = await self._client.request(self._client._events_options(job_id, last_event_id))
            decoder = SSEDecoder()
            try:
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    if event is None:
                        continue
                    last_event_id, drops = event.id, 0
                    yield event
                    if event.type in TERMINAL_STATUSES:
                        return
                error: httpx2.HTTPError = httpx2.RemoteProtocolError("the event stream ended before the job did")
            except httpx2.HTTPError as exc:
                error = exc
            finally:
                await response.aclose()
            drops += 1
            wait = self._client._retry_after_error(drops, error)
            if wait is None:
                raise self._client._connection_error(error) from error
            await asyncio.sleep(wait)
