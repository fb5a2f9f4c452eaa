"""Settings from the environment (`RSA_*`), one object for the CLI, API and workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rsa-service"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RSA_", extra="ignore")

    redis_url: str | None = Field(default=None, description="Redis to keep jobs in; unset: an embedded server.")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Embedded Redis data and local files.")
    backend: str | None = Field(default=None, description="Default backend spec, e.g. openai:http://h:8000/v1.")
    model: str | None = None
    backend_api_key: str | None = Field(default=None, repr=False, description="Bearer key for remote backends.")
    tokenizer: str | None = Field(default=None, description="A tokenizer.json for exact counts on remote backends.")
    namespace: str = Field(default="rsa", description="Prefix of every Redis key.")
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, gt=0)
    retention_s: int = Field(default=7 * 24 * 3600, ge=0, description="Keep finished jobs this long (0: forever).")
    appendfsync: Literal["always", "everysec"] = "everysec"


def backend_api_key(settings: Settings) -> str | None:
    return settings.backend_api_key or os.environ.get("OPENAI_API_KEY")
