"""Which backend runs a job: `spec.backend` names one the operator configured (`RSA_BACKENDS`), or is itself a
backend spec (local CLI use). A configured name may list several specs: replicas of one model, served as one
`FleetBackend`. One open backend per (spec, model), shared by every job that uses it, so its connection pool and
token-counter probe are paid once; all are closed together on shutdown.
"""

from __future__ import annotations

import asyncio
import logging

from rsa_service.backends import Backend, open_backend, split_spec
from rsa_service.backends.fleet import FleetBackend
from rsa_service.settings import Settings, backend_options

log = logging.getLogger(__name__)


class BackendPool:
    """Resolve and cache backends. `allow_specs=False` accepts configured names only (a multi-tenant server,
    where a job must never point the workers at a URL of its own choosing)."""

    def __init__(self, settings: Settings, *, allow_specs: bool = True) -> None:
        self.settings = settings
        self.allow_specs = allow_specs
        self._open: dict[tuple[str | tuple[str, ...], str | None], Backend] = {}
        self._lock = asyncio.Lock()

    def resolve(self, name_or_spec: str) -> str | list[str]:
        """The backend spec (or replicas' specs) a job's `backend` field stands for; ValueError naming the field
        when none."""
        configured = self.settings.backends
        if name_or_spec in configured:
            return configured[name_or_spec]
        if not self.allow_specs:
            known = ", ".join(sorted(configured)) or "none configured (set RSA_BACKENDS)"
            raise ValueError(f"backend: {name_or_spec!r} is not a configured backend name (known: {known})")
        split_spec(name_or_spec)  # raises ValueError naming the field
        return name_or_spec

    async def get(self, name_or_spec: str, model: str | None = None) -> Backend:
        spec = self.resolve(name_or_spec)
        key = (spec if isinstance(spec, str) else tuple(spec), model or self.settings.model)
        async with self._lock:
            if key not in self._open:
                options = backend_options(self.settings, model)
                self._open[key] = (
                    open_backend(spec, options) if isinstance(spec, str) else FleetBackend(name_or_spec, spec, options)
                )
            return self._open[key]

    async def aclose(self) -> None:
        async with self._lock:
            backends, self._open = list(self._open.values()), {}
        results = await asyncio.gather(*(backend.aclose() for backend in backends), return_exceptions=True)
        for error in (r for r in results if isinstance(r, BaseException)):
            log.warning("closing a backend failed: %s", error)
