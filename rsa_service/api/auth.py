"""Bearer API keys, each a tenant. Keys are kept only as sha256 digests and compared in constant time.

With no keys configured auth is off and every request is the tenant `local`.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from rsa_service.api.errors import ApiError
from rsa_service.api.settings import tenant_of

LOCAL_TENANT = "local"


class KeyRing:
    """The configured keys as (digest, tenant) pairs."""

    def __init__(self, keys: list[str]) -> None:
        self._entries = [(hashlib.sha256(key.encode()).digest(), tenant_of(key)) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def tenant(self, authorization: str | None) -> str:
        """The tenant of an `Authorization` header; ApiError 401 when auth is on and the key is unknown."""
        if not self.enabled:
            return LOCAL_TENANT
        scheme, _, token = (authorization or "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = ""
        # Compare against every entry, whatever matches, so timing does not tell how many keys matched or where.
        for entry_digest, tenant in self._entries:
            if hmac.compare_digest(entry_digest, digest) and scheme.lower() == "bearer":
                found = tenant
        if not found:
            raise ApiError(
                401,
                "a valid API key is required: Authorization: Bearer KEY",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="rsa-service"'},
            )
        return found


def tenant(request: Request) -> str:
    """FastAPI dependency: the caller's tenant."""
    keyring: KeyRing = request.app.state.keyring
    return keyring.tenant(request.headers.get("authorization"))
