"""The API's side of the metrics (defined in `rsa_service.metrics`): HTTP requests by route template and status,
their latency, jobs created, and the `/metrics` endpoint.

The middleware is plain ASGI so it neither buffers streaming responses nor costs a task per request. The registry
is the process's: with in-process workers (`rsa serve --workers K`) the job metrics appear here too.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rsa_service.jobs.store import JobStore
from rsa_service.metrics import HTTP_LATENCY, HTTP_REQUESTS, JOBS_CREATED, exposition


class Metrics:
    """The app's handle on the HTTP metrics (kept on `app.state` for the routes that record them)."""

    def __init__(self) -> None:
        self.requests = HTTP_REQUESTS
        self.latency = HTTP_LATENCY
        self.jobs_created = JOBS_CREATED

    async def render(self, store: JobStore) -> Response:
        return Response(await exposition(store), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP request under its route template (`/v1/jobs/{job_id}`), not its raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    metrics: Metrics = state.metrics
    return await metrics.render(state.store)
