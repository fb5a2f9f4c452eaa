"""Liveness, readiness and metrics. Readiness means Redis answers and every configured backend is reachable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import State

from rsa_service.api.errors import problem, problem_responses
from rsa_service.api.http_metrics import metrics_endpoint
from rsa_service.backends.base import probe_backend
from rsa_service.jobs.backend_pool import BackendPool

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, probe: Callable[[], Awaitable[object]], timeout_s: float) -> str | None:
    """None when `probe` succeeds in time, else one line saying what failed. Never raises: it reports."""
    try:
        async with asyncio.timeout(timeout_s):
            await probe()
    except Exception as exc:
        return f"{name}: {type(exc).__name__}: {exc}" if str(exc) else f"{name}: {type(exc).__name__}"
    return None


class Readiness:
    """Redis and every configured backend, probed for real at most once per `cache_s`: probes answer as the
    dependencies are now (never a listing remembered from start-up), and a burst of probe requests costs one
    round of checks, which concurrent callers share."""

    def __init__(self, cache_s: float, timeout_s: float) -> None:
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._checked_at = -float("inf")
        self._failures: list[str] = []
        self._names: list[str] = []
        self._lock = asyncio.Lock()

    async def failures(self, state: State) -> tuple[list[str], list[str]]:
        """(what was checked, what failed)."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.cache_s:
                await self._check_all(state)
                self._checked_at = time.monotonic()
            return self._names, self._failures

    async def _check_all(self, state: State) -> None:
        checks = {"redis": _check("redis", state.store.redis.ping, self.timeout_s)}
        pool: BackendPool = state.backends
        for name in pool.settings.backends:

            async def probe(name: str = name) -> None:
                await probe_backend(await pool.get(name))

            checks[f"backend {name}"] = _check(f"backend {name}", probe, self.timeout_s)
        self._names = sorted(checks)
        self._failures = [failure for failure in await asyncio.gather(*checks.values()) if failure]


@router.get(
    "/readyz",
    responses={200: {"description": "Ready"}, **problem_responses(503)},
    summary="Readiness: Redis and every configured backend answer (checked at most every RSA_READINESS_CACHE_S)",
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checked, failures = await state.readiness.failures(state)
    if failures:
        detail = "not ready: " + "; ".join(failures)
        return problem(503, detail, kind="not-ready", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "checks": checked})


router.add_api_route(
    "/metrics",
    metrics_endpoint,
    methods=["GET"],
    response_class=PlainTextResponse,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
    summary="Prometheus metrics",
)
