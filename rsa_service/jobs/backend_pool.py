"""Which backend runs a job: `spec.backend` names one the operator configured (`RSA_BACKENDS`), or is itself a
backend spec (local CLI use). A configured name may list several specs: replicas of one model, served as one
`FleetBackend`. One open backend per (spec, model), shared by every job that uses it, so its connection pool and
token-counter probe are paid once; all are closed together on shutdown.

Requests may name the model, so the pool is bounded (`RSA_MAX_OPEN_BACKENDS`): past it, the backend used least
recently is closed. Its connections go; a job still holding it opens new ones on its next call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

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
        self._open: OrderedDict[tuple[str | tuple[str, ...], str | None], Backend] = OrderedDict()
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

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
                while len(self._open) > self.settings.max_open_backends:
                    self._retire(self._open.popitem(last=False)[1])
            self._open.move_to_end(key)
            return self._open[key]

    @property
    def open_count(self) -> int:
        return len(self._open)

    def _retire(self, backend: Backend) -> None:
        task = asyncio.create_task(_close(backend), name="close-backend")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        async with self._lock:
            backends, self._open = list(self._open.values()), OrderedDict()
        await asyncio.gather(*(_close(backend) for backend in backends), *self._closing)


async def _close(backend: Backend) -> None:
    try:
        await backend.aclose()
    except Exception as error:
        log.warning("closing a backend failed: %s", error)
