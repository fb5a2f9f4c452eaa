"""The in-process ZAYA1 engine (install the `engine` extra).

Importing this package does not import torch; `EngineBackend` is loaded on first use, so the CLI can mount the
engine commands without the extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rsa_service.backends.engine.errors import (
    CheckpointError,
    CheckpointFileError,
    EngineError,
    TensorLayoutError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from rsa_service.backends.engine.backend import EngineBackend

__all__ = [
    "CheckpointError",
    "CheckpointFileError",
    "EngineBackend",
    "EngineError",
    "TensorLayoutError",
    "UnsupportedConfigError",
]


def __getattr__(name: str) -> Any:
    if name == "EngineBackend":
        from rsa_service.backends.engine.backend import EngineBackend

        return EngineBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
