"""The event hub against a real Redis: one reader per job however many subscribe, a subscriber too slow for its
buffer catches up from Redis without losing or repeating an event, and readers go when their subscribers do."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from rsa_service.jobs.hub import SUBSCRIBER_BACKLOG, EventHub, StreamLimits
from rsa_service.jobs.keys import Keys
from rsa_service.jobs.store import JobStore


async def _append(redis: Redis, key: str, count: int, kind: str = "note") -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.xadd(key, {"type": kind, "data": json.dumps({"n": n})})
        return [str(entry_id) for entry_id in await pipe.execute()]


async def test_a_slow_subscriber_catches_up_and_readers_are_shared(store: JobStore, redis_client: Redis) -> None:
    keys: Keys = store.keys
    key = keys.job("j1").events
    first = await _append(redis_client, key, 3)
    hub = EventHub(redis_client, keys, limits=StreamLimits(per_tenant=10, total=10), block_ms=100)
    try:
        fast = await hub.subscribe("j1", tenant="a")
        slow = await hub.subscribe("j1", after=first[0], tenant="a")
        assert hub.readers == 1 and hub.open_streams == 2
        fast_seen: list[str] = []

        async def follow_fast() -> None:
            async for event in fast:
                fast_seen.append(event.id)

        follower = asyncio.create_task(follow_fast())
        await asyncio.sleep(0.3)
        later = await _append(redis_client, key, SUBSCRIBER_BACKLOG + 500)  # more than the slow one's buffer
        later += await _append(redis_client, key, 1, kind="completed")
        slow_seen = [event.id async for event in slow]  # only now does it read
        await asyncio.wait_for(follower, 10)
    finally:
        await hub.aclose()
    assert fast_seen == first + later
    assert slow_seen == first[1:] + later  # nothing lost, nothing repeated
    assert hub.readers == 0 and hub.open_streams == 0
