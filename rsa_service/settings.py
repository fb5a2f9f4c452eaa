"""Settings from the environment (`RSA_*`), one object for the CLI, API and workers."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rsa_service.backends.base import DEVICE_PATTERN, BackendOptions
from rsa_service.tinymodel import CHECKPOINT_DIR

# The bundled model's recommended RSA settings, next to its weights: the service defaults (16K-token traces) are
# for ZAYA1-8B and would not fit a tiny model's context.
BUNDLED_SETTINGS_FILE = "rsa.json"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rsa-service"


def _option_default(name: str) -> Any:
    """A `BackendOptions` default, so each default is written once."""
    return BackendOptions.model_fields[name].default


class Settings(BaseSettings):
    # An empty variable (`RSA_ENGINE_COMPILE=`) means unset, as it does for the shell.
    model_config = SettingsConfigDict(env_prefix="RSA_", extra="ignore", env_ignore_empty=True)

    redis_url: str | None = Field(default=None, description="Redis to keep jobs in; unset: an embedded server.")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Embedded Redis data and local files.")
    backend: str | None = Field(default=None, description="Default backend spec, e.g. openai:http://h:8000/v1.")
    model: str | None = None
    backend_api_key: str | None = Field(default=None, repr=False, description="Bearer key for remote backends.")
    tokenizer: str | None = Field(default=None, description="The model's tokenizer.json: remote tails cut locally.")
    namespace: str = Field(default="rsa", description="Prefix of every Redis key.")
    redis_min_replicas: int = Field(
        default=0, ge=0, description="Acknowledge a step commit only once this many replicas have it (WAIT)."
    )
    redis_replica_timeout_ms: int = Field(
        default=1000, gt=0, description="How long a commit waits for RSA_REDIS_MIN_REPLICAS replicas."
    )
    backends: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description='Operator-configured backends by name, JSON: {"default": "openai:http://h:8000/v1"}; a list of '
        "specs is a fleet of replicas of one model.",
    )
    lease_s: float = Field(default=30.0, gt=0, description="A job's lease; a dead worker's job resumes after it.")
    max_attempts: int = Field(default=5, gt=0, description="Claims before a job that kills workers is failed.")
    max_open_backends: int = Field(
        default=32, gt=0, description="Open backends per process, one per (backend, model); the least used is closed."
    )
    backend_outage_budget_h: float = Field(
        default=6.0, ge=0, description="A job waits this long for a backend that is down, then fails (resumable)."
    )
    backend_outage_retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between tries of a backend that is down (backoff cap)."
    )
    retention_s: int = Field(default=7 * 24 * 3600, ge=0, description="Keep finished jobs this long (0: forever).")
    appendfsync: Literal["always", "everysec"] = "everysec"
    worker_concurrency: int = Field(default=32, gt=0, description="Generations one worker runs at once.")
    rate_limit_per_s: float | None = Field(
        default=None, gt=0, description="Generation requests per second, shared by every worker of the namespace."
    )
    rate_burst: int = Field(default=1, gt=0, description="Requests the shared rate lets through at once.")
    drain_grace_s: float = Field(default=30.0, ge=0, description="On SIGTERM, wait this long for in-flight work.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="`rsa worker`: serve /metrics here (0: off).")
    engine_quantize: Literal["none", "int8"] = Field(
        default="none", description="In-process engine: int8 halves the weight bytes a bf16 decode step reads."
    )
    engine_device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="In-process engine: `auto` (CUDA where present, else CPU), `cpu`, `cuda`, `cuda:N`, `mps`.",
    )
    engine_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto", description="In-process engine weights; auto: the checkpoint's own dtype."
    )
    engine_threads: int | None = Field(
        default=None, gt=0, description="In-process engine: torch threads (unset: every core but one)."
    )
    engine_compile: bool | None = Field(
        default=None, description="In-process engine: compile the decode step (unset: where it pays)."
    )
    backend_max_concurrency: int = Field(
        default=_option_default("max_concurrency"), gt=0, description="Requests (or engine sequences) in flight."
    )
    backend_requests_per_s: float | None = Field(
        default=None, gt=0, description="Per-process request rate to a remote backend (unset: no limit)."
    )
    backend_connect_timeout_s: float = Field(default=_option_default("connect_timeout_s"), gt=0)
    backend_read_timeout_s: float = Field(
        default=_option_default("read_timeout_s"), gt=0, description="Long: a long rollout takes minutes."
    )
    backend_max_retries: int = Field(default=_option_default("max_retries"), ge=0)
    backend_retry_backoff_s: float = Field(
        default=_option_default("retry_backoff_s"), gt=0, description="First backoff; doubles per retry, jittered."
    )
    backend_retry_max_wait_s: float = Field(
        default=_option_default("retry_max_wait_s"), gt=0, description="Cap on one wait, Retry-After included."
    )
    backend_session_header: str = Field(
        default=_option_default("session_header"),
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header carrying a lineage's session id, for routers that keep a session on one replica.",
    )
    requeue_pending_after_s: float = Field(
        default=60.0, gt=0, description="Queue a never-claimed job again after this long (its hint may be lost)."
    )


def backend_api_key(settings: Settings) -> str | None:
    return settings.backend_api_key or os.environ.get("OPENAI_API_KEY")


def backend_options(settings: Settings, model: str | None) -> BackendOptions:
    """What every backend opened by the CLI, the API or a worker gets from the settings."""
    return BackendOptions(
        model=model or settings.model,
        api_key=backend_api_key(settings),
        tokenizer_path=settings.tokenizer,
        max_concurrency=settings.backend_max_concurrency,
        requests_per_s=settings.backend_requests_per_s,
        connect_timeout_s=settings.backend_connect_timeout_s,
        read_timeout_s=settings.backend_read_timeout_s,
        max_retries=settings.backend_max_retries,
        retry_backoff_s=settings.backend_retry_backoff_s,
        retry_max_wait_s=settings.backend_retry_max_wait_s,
        session_header=settings.backend_session_header,
        dtype=settings.engine_dtype,
        quantize=settings.engine_quantize,
        device=settings.engine_device,
        threads=settings.engine_threads,
        compile=settings.engine_compile,
    )


def bundled_backend() -> str | None:
    """The tiny ZAYA1 shipped in the package, through the in-process engine, if it and the engine extra exist."""
    if not (CHECKPOINT_DIR / "config.json").is_file() or importlib.util.find_spec("torch") is None:
        return None
    return f"engine:{CHECKPOINT_DIR}"


def default_backend(settings: Settings) -> str | None:
    """`RSA_BACKEND`, else the bundled model: what runs when nobody chose a backend."""
    return settings.backend or bundled_backend()


def params_defaults(backend: str | list[str] | None) -> dict[str, Any]:
    """Parameter defaults for `backend`: the bundled model's recommended settings, else the library's."""
    if backend is None or backend != bundled_backend():
        return {}
    path = CHECKPOINT_DIR / BUNDLED_SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
