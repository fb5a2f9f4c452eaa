"""A tenant's jobs, newest first, in cursor-paginated pages.

The listing sorted set (`Keys.listing`, scored by creation time) is a hint: it may name jobs that have since
expired, and those are dropped from it as they are met. A cursor is (score, id) of the last job shown, so pages
stay stable while new jobs arrive and when the cursor's own job is deleted.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from rsa_service.jobs.errors import translate_redis_errors
from rsa_service.jobs.models import JobRecord
from rsa_service.jobs.store import JobStore
from rsa_service.wire import JobStatus

SCAN_BATCH = 200  # listing entries read per round trip while filtering by status


class BadCursor(ValueError):
    """The cursor was not produced by this API."""


@dataclass(frozen=True)
class Page:
    jobs: list[JobRecord]
    next_cursor: str | None


def encode_cursor(score: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, _, job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        return int(score), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor(f"after: {cursor!r} is not a cursor from this API") from exc


# A decoded sorted-set reply with scores (redis-py types replies as bytes | str; the store's clients decode).
Scored = list[tuple[str, float]]


async def _older(store: JobStore, tenant: str, before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
    """Up to `count` (id, score) entries strictly older than `before` in (score, id) order, newest first."""
    key = store.keys.listing(tenant)
    if before is None:
        entries: Scored = await store.redis.zrevrangebyscore(  # type: ignore[assignment]
            key, "+inf", "-inf", start=0, num=count, withscores=True
        )
        return [(member, int(score)) for member, score in entries]
    score, job_id = before
    same: Scored = await store.redis.zrevrangebyscore(key, score, score, withscores=True)  # type: ignore[assignment]
    ties = [(member, int(s)) for member, s in same if member < job_id]
    rest: Scored = await store.redis.zrevrangebyscore(  # type: ignore[assignment]
        key, f"({score}", "-inf", start=0, num=count, withscores=True
    )
    return (ties + [(member, int(s)) for member, s in rest])[:count]


async def _records(store: JobStore, tenant: str, ids: Sequence[str]) -> list[JobRecord | None]:
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(store.keys.job(job_id).meta)
        hashes = await pipe.execute()
    gone = [job_id for job_id, fields in zip(ids, hashes, strict=True) if not fields]
    if gone:
        await store.redis.zrem(store.keys.listing(tenant), *gone)
    return [JobRecord.from_hash(job_id, f) if f else None for job_id, f in zip(ids, hashes, strict=True)]


@translate_redis_errors
async def list_jobs(
    store: JobStore,
    tenant: str,
    *,
    limit: int = 20,
    after: str | None = None,
    status: frozenset[JobStatus] | None = None,
) -> Page:
    """One page of `tenant`'s jobs, newest first, optionally only those whose status is in `status`."""
    position = decode_cursor(after) if after else None
    found: list[tuple[JobRecord, int]] = []
    batch = SCAN_BATCH if status else limit + 1
    while len(found) <= limit:
        entries = await _older(store, tenant, position, batch)
        records = await _records(store, tenant, [job_id for job_id, _ in entries]) if entries else []
        for (_, score), record in zip(entries, records, strict=True):
            if record is not None and (status is None or record.status in status):
                found.append((record, score))
        if len(entries) < batch:
            break
        position = (entries[-1][1], entries[-1][0])
    page = found[:limit]
    more = len(found) > limit
    cursor = encode_cursor(page[-1][1], page[-1][0].id) if more and page else None
    return Page(jobs=[record for record, _ in page], next_cursor=cursor)
