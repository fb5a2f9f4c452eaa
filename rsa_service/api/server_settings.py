"""The API server's settings (`RSA_*` environment variables), beside the shared `settings.Settings`.

Backends are the operator's (`settings.Settings`): `RSA_BACKENDS` is a JSON object of name → spec, and
`RSA_BACKEND` (if set) is also available under the name `default`. Requests pick a backend by name only, and
a job records that name, which the workers resolve.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rsa_service.core.params import Limits
from rsa_service.settings import Settings, bundled_backend

DEFAULT_BACKEND_NAME = "default"


def tenant_of(api_key: str) -> str:
    """A stable tenant id for a key that does not reveal the key."""
    return "t_" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RSA_", extra="ignore")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="Comma-separated API keys, each a tenant; empty: no auth."
    )
    prompts_dir: Path | None = Field(default=None, description="Aggregation templates; default: the bundled ones.")
    limits: Limits = Field(default_factory=Limits)
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_concurrent_requests: int = Field(
        default=64, gt=0, description="Authenticated job requests using Redis at once; the rest wait for a slot."
    )
    max_pass_through_tokens: int = Field(
        default=32768, gt=0, description="max_tokens a plain chat completion may ask the backend for."
    )
    max_pass_through_n: int = Field(default=8, gt=0, description="`n` a plain chat completion may ask for.")
    max_pass_through_requests: int = Field(
        default=32, gt=0, description="Plain chat completions in flight per process; 429 beyond."
    )
    header_timeout_s: float = Field(default=10.0, gt=0, description="A request's headers must arrive within this.")
    body_timeout_s: float = Field(default=30.0, gt=0, description="A request's body must arrive within this (408).")
    max_active_jobs: int = Field(default=100, gt=0, description="Unfinished jobs per tenant.")
    busy_retry_after_s: int = Field(default=5, gt=0, description="Retry-After when a tenant is at its limit.")
    poll_after_s: int = Field(default=2, gt=0, description="Retry-After hint on a running job.")
    sse_ping_s: float = Field(default=15.0, gt=0, description="Keep-alive comment interval on event streams.")
    sse_block_ms: int = Field(default=1000, gt=0, description="How long one Redis read waits for new events.")
    max_streams_per_tenant: int = Field(default=100, gt=0, description="Open event streams per tenant, per process.")
    max_streams: int = Field(default=1000, gt=0, description="Open event streams per process, all tenants.")
    readiness_timeout_s: float = Field(default=3.0, gt=0, description="How long /readyz waits for each check.")
    readiness_cache_s: float = Field(default=2.0, ge=0, description="/readyz reuses its checks for this long.")
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description='Responses API model names for configured backends, JSON: {"zaya1-rsa": "default"}.',
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value


def named_backends(shared: Settings) -> Settings:
    """`shared` with `RSA_BACKEND` as the backend named `default`, unless RSA_BACKENDS names one; with no backend
    configured at all, the bundled model."""
    named = dict(shared.backends)
    fallback = shared.backend or (None if named else bundled_backend())
    if fallback and DEFAULT_BACKEND_NAME not in named:
        named[DEFAULT_BACKEND_NAME] = fallback
    return shared.model_copy(update={"backends": named})


def default_backend(shared: Settings) -> str | None:
    """The backend a request gets when it names none: `default`, else the only one configured."""
    if DEFAULT_BACKEND_NAME in shared.backends:
        return DEFAULT_BACKEND_NAME
    return next(iter(shared.backends)) if len(shared.backends) == 1 else None
