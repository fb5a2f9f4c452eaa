"""Bearer API keys, each a tenant. Keys are kept only as sha256 digests, and a presented key is looked up by its
digest: one hash and one dict lookup per request. Lookup timing can only tell about digests, which no caller can
choose (that would take a preimage), so it tells nothing about the keys.

With no keys configured auth is off and every request is the tenant `local`.
"""

from __future__ import annotations

import hashlib

from fastapi import Request

from rsa_service.api.errors import ApiError
from rsa_service.api.server_settings import tenant_of

LOCAL_TENANT = "local"


class KeyRing:
    """The configured keys as digest → tenant."""

    def __init__(self, keys: list[str]) -> None:
        self._tenants = {hashlib.sha256(key.encode()).digest(): tenant_of(key) for key in keys}

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant(self, authorization: str | None) -> str:
        """The tenant of an `Authorization` header; ApiError 401 when auth is on and the key is unknown."""
        if not self.enabled:
            return LOCAL_TENANT
        scheme, _, token = (authorization or "").partition(" ")
        found = self._tenants.get(hashlib.sha256(token.strip().encode()).digest())
        if found is None or scheme.lower() != "bearer":
            raise ApiError(
                401,
                "a valid API key is required: Authorization: Bearer KEY",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="rsa-service"'},
            )
        return found


async def tenant(request: Request) -> str:
    """FastAPI dependency: the caller's tenant (a coroutine, so it runs inline rather than on a worker thread)."""
    keyring: KeyRing = request.app.state.keyring
    return keyring.tenant(request.headers.get("authorization"))
