"""GET /v1/backends: the backends the operator configured, by name, with their parameter defaults and the limits a
job must keep to (what a client needs to offer a choice and check a form before sending it)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rsa_service.api.auth import tenant
from rsa_service.api.errors import problem_responses
from rsa_service.api.server_settings import ApiSettings, default_backend
from rsa_service.core.params import RSAParams
from rsa_service.settings import Settings, params_defaults
from rsa_service.wire import BackendInfo, BackendList

router = APIRouter(prefix="/v1", tags=["backends"])


@router.get("/backends", response_model=BackendList, responses=problem_responses(401), summary="Configured backends")
async def backends(request: Request) -> BackendList:
    await tenant(request)
    shared: Settings = request.app.state.shared
    settings: ApiSettings = request.app.state.settings
    chosen = default_backend(shared)
    return BackendList(
        data=[
            BackendInfo(
                name=name,
                default=name == chosen,
                params=RSAParams.model_validate(params_defaults(spec)).model_dump(mode="json"),
            )
            for name, spec in sorted(shared.backends.items())
        ],
        limits=settings.limits.model_dump(),
    )
