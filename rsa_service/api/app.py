"""The FastAPI application factory: state, routes, error mapping, limits, metrics, and the lifespan.

`create_app` opens the job store (the configured Redis, else the embedded one) unless given one, and runs
`background(store)` (e.g. in-process workers) for the app's lifetime.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import httpx2
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rsa_service.api import chat, errors, health, lineage, responses, routes_backends, routes_jobs, sse, web
from rsa_service.api.auth import LOCAL_TENANT, KeyRing
from rsa_service.api.errors import ApiError
from rsa_service.api.http_metrics import Metrics, MetricsMiddleware
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.connect import open_store
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings

log = logging.getLogger(__name__)

Background = Callable[[JobStore, BackendPool], AbstractAsyncContextManager[object]]
PROXY_TIMEOUT = httpx2.Timeout(connect=10.0, read=1800.0, write=10.0, pool=10.0)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length up front or while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = errors.problem(413, self._detail(), kind="body-too-large", instance=scope["path"])
            await response(scope, receive, send)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, self._detail(), kind="body-too-large")
            return message

        await self.app(scope, counting, send)

    def _detail(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"


class RequestGate:
    """At most `limit` plain requests in flight; the rest wait their turn. Keeps a burst from exhausting the
    Redis connection pool (which fails instead of waiting). Streams (events, chat) hold Redis only while reading
    and run outside the gate, or a few long streams would starve every poll."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self._slots = asyncio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.endswith("/events") or path == "/v1/chat/completions" or _follows(scope):
            await self.app(scope, receive, send)
            return
        async with self._slots:
            await self.app(scope, receive, send)


def _follows(scope: Scope) -> bool:
    """A responses call that may hold its connection for a whole job: a create (it may wait or stream) or a read
    with `stream=true`."""
    path = scope.get("path", "")
    return path == "/v1/responses" or (path.startswith("/v1/responses/") and b"stream=true" in scope["query_string"])


def create_app(
    settings: ApiSettings | None = None,
    shared: Settings | None = None,
    *,
    store: JobStore | None = None,
    background: Background | None = None,
) -> FastAPI:
    settings = settings or ApiSettings()
    shared = named_backends(shared or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            state = app.state
            state.store = store or await stack.enter_async_context(open_store(shared))
            state.http = await stack.enter_async_context(httpx2.AsyncClient(timeout=PROXY_TIMEOUT))
            stack.push_async_callback(state.backends.aclose)
            if background is not None:
                await stack.enter_async_context(background(state.store, state.backends))
            if state.keyring.enabled:
                log.info("auth on: %d API keys, each its own tenant", len(settings.api_keys))
            else:
                log.warning("auth off: RSA_API_KEYS is empty, every request is tenant %r", LOCAL_TENANT)
            yield

    app = FastAPI(
        title="rsa-service",
        version="0.1.0",
        summary="Markovian Recursive Self-Aggregation as durable jobs",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.shared = shared
    app.state.backends = BackendPool(shared, allow_specs=False)
    app.state.keyring = KeyRing(settings.api_keys)
    app.state.metrics = Metrics()
    app.state.templates = PromptTemplates.load(settings.prompts_dir)
    errors.install(app)
    for module in (routes_jobs, lineage, routes_backends, sse, chat, responses, health):
        app.include_router(module.router)
    web.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestGate, limit=settings.max_concurrent_requests)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
