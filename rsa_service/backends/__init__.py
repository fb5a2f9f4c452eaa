"""Backends, chosen by a URL-like spec: `openai:http://host:port/v1`, `engine:/path/to/checkpoint`.

The scheme names an entry point in the `rsa_service.backends` group, so third parties can add backends by
packaging a factory `factory(location: str, options: BackendOptions) -> Backend`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import entry_points

from rsa_service.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    Capabilities,
    ContextLengthError,
    Generation,
    GenerationRequest,
    PermanentBackendError,
    TransientBackendError,
    Usage,
)
from rsa_service.core.conversation import ChatMessage

ENTRY_POINT_GROUP = "rsa_service.backends"

__all__ = [
    "Backend",
    "BackendError",
    "BackendOptions",
    "BackendUnavailableError",
    "Capabilities",
    "ChatMessage",
    "ContextLengthError",
    "Generation",
    "GenerationRequest",
    "PermanentBackendError",
    "TransientBackendError",
    "Usage",
    "open_backend",
    "split_spec",
]


def split_spec(spec: str) -> tuple[str, str]:
    """`openai:http://h/v1` → ("openai", "http://h/v1"). A bare http(s) URL means `openai:`."""
    if spec.startswith(("http://", "https://")):
        return "openai", spec
    scheme, sep, location = spec.partition(":")
    if not sep or not scheme or not location:
        raise ValueError(
            f"backend: {spec!r} is not a backend spec; use 'openai:http://HOST:PORT/v1' or 'engine:/path/to/checkpoint'"
        )
    return scheme, location


@functools.cache  # scanning the installed distributions' entry points takes milliseconds
def _factory(scheme: str) -> Callable[[str, BackendOptions], Backend]:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if scheme not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ValueError(f"backend: unknown scheme {scheme!r} (known: {known})")
    try:
        factory: Callable[[str, BackendOptions], Backend] = found[scheme].load()
        return factory
    except ImportError as exc:
        extra = " (install the engine extra: pip install 'rsa-service[engine]')" if scheme == "engine" else ""
        raise ValueError(f"backend: {scheme!r} cannot be loaded: {exc}{extra}") from exc


def open_backend(spec: str, options: BackendOptions | None = None) -> Backend:
    """Build the backend a spec names. Raises ValueError naming the `backend` field when the spec is unusable."""
    scheme, location = split_spec(spec)
    return _factory(scheme)(location, options or BackendOptions())
