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
from fastapi import Depends, FastAPI

from rsa_service.api import chat, errors, health, lineage, responses, routes_backends, routes_jobs, sse, web
from rsa_service.api.admission import BodyReader, HeadAsGet, admitted
from rsa_service.api.auth import LOCAL_TENANT, KeyRing
from rsa_service.api.http_metrics import Metrics, MetricsMiddleware
from rsa_service.api.pass_through import PassThroughSlots, proxy_client
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.connect import open_store
from rsa_service.jobs.hub import StreamLimits, open_hub
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings

log = logging.getLogger(__name__)

Background = Callable[[JobStore, BackendPool], AbstractAsyncContextManager[object]]
PROXY_TIMEOUT = httpx2.Timeout(connect=10.0, read=1800.0, write=10.0, pool=10.0)


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
            limits = StreamLimits(per_tenant=settings.max_streams_per_tenant, total=settings.max_streams)
            state.hub = await stack.enter_async_context(open_hub(state.store, limits, settings.sse_block_ms))
            state.http = await stack.enter_async_context(proxy_client(PROXY_TIMEOUT))
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
    app.state.gate = asyncio.Semaphore(settings.max_concurrent_requests)
    app.state.pass_through = PassThroughSlots(settings.max_pass_through_requests, settings.busy_retry_after_s)
    app.state.readiness = health.Readiness(settings.readiness_cache_s, settings.readiness_timeout_s)
    for module in (routes_jobs, lineage, routes_backends):
        app.include_router(module.router, dependencies=[Depends(admitted)])
    for module in (sse, chat, responses, health):
        app.include_router(module.router)
    web.install(app)
    app.add_middleware(BodyReader, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(HeadAsGet)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
