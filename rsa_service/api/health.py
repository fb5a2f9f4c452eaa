"""Liveness, readiness and metrics. Readiness means Redis answers and every configured backend is reachable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from rsa_service.api.errors import problem, problem_responses
from rsa_service.api.http_metrics import metrics_endpoint

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, probe: Awaitable[object], timeout_s: float) -> str | None:
    """None when `probe` succeeds in time, else one line saying what failed. Never raises: it reports."""
    try:
        async with asyncio.timeout(timeout_s):
            await probe
    except Exception as exc:
        return f"{name}: {type(exc).__name__}: {exc}"
    return None


@router.get(
    "/readyz",
    responses={200: {"description": "Ready"}, **problem_responses(503)},
    summary="Readiness: Redis and every configured backend answer",
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    timeout_s = state.settings.readiness_timeout_s
    checks = {"redis": _check("redis", state.store.redis.ping(), timeout_s)}
    for name in state.backends.settings.backends:
        backend = await state.backends.get(name)
        checks[f"backend {name}"] = _check(f"backend {name}", backend.capabilities(), timeout_s)
    failures = [failure for failure in await asyncio.gather(*checks.values()) if failure]
    if failures:
        return problem(503, "; ".join(failures), kind="not-ready", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "checks": sorted(checks)})


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
