"""Idempotency-Key handling for job creation (IETF draft `Idempotency-Key` header).

One Redis string per (tenant, key) holds `{"job_id", "fingerprint", "state"}`. The first request reserves it
with SET NX in state `pending` and a short TTL, writes the job, then marks it `created` with the long TTL. So:

- a retry with the same body after creation gets the same job back (a replay);
- the same key with a different body is refused (the caller misuses the key);
- a duplicate arriving while the first is still between reserve and create is told to retry (409);
- a creator that dies between the two steps frees the key after `PENDING_TTL_S`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from rsa_service.jobs.errors import JobNotFound, translate_redis_errors
from rsa_service.jobs.store import JobStore, new_job_id

PENDING_TTL_S = 30
KEY_TTL_S = 24 * 3600
MAX_KEY_CHARS = 255

Outcome = Literal["created", "replayed"]


class IdempotencyError(Exception):
    """Base of the key-misuse errors."""


class KeyReused(IdempotencyError):
    """The key was first used with a different request body."""


class KeyInFlight(IdempotencyError):
    """A request with this key is still being processed."""


@dataclass(frozen=True)
class Created:
    job_id: str
    outcome: Outcome


def fingerprint(body: object) -> str:
    """sha256 of the canonical JSON of a request body: equal bodies, equal fingerprints."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@translate_redis_errors
async def create_once(
    store: JobStore,
    tenant: str,
    key: str,
    body_fingerprint: str,
    create: Callable[[str], Awaitable[None]],
) -> Created:
    """Run `create(job_id)` at most once per (tenant, key); later calls with the same body replay its job id."""
    redis_key = store.keys.idempotency(tenant, key)
    job_id = new_job_id()
    record = {"job_id": job_id, "fingerprint": body_fingerprint, "state": "pending"}
    if await store.redis.set(redis_key, json.dumps(record), nx=True, ex=PENDING_TTL_S):
        try:
            await create(job_id)
        except BaseException:
            await store.redis.delete(redis_key)
            raise
        await store.redis.set(redis_key, json.dumps(record | {"state": "created"}), xx=True, ex=KEY_TTL_S)
        return Created(job_id, "created")
    return await _replay(store, redis_key, body_fingerprint)


async def _replay(store: JobStore, redis_key: str, body_fingerprint: str) -> Created:
    raw = await store.redis.get(redis_key)
    if raw is None:
        raise KeyInFlight("the earlier request with this key just ended without creating a job; retry")
    earlier = json.loads(raw)
    if earlier["fingerprint"] != body_fingerprint:
        raise KeyReused("this Idempotency-Key was used with a different request body")
    if earlier["state"] != "created":
        raise KeyInFlight("a request with this Idempotency-Key is still being processed")
    try:
        await store.get(earlier["job_id"])
    except JobNotFound:
        raise KeyReused("this Idempotency-Key belongs to a job that no longer exists") from None
    return Created(earlier["job_id"], "replayed")
