"""Event streams for many subscribers: one Redis reader per followed job in this process, fanning out.

Every open stream of a job shares that job's one blocking reader, and the readers use the hub's own Redis
connections, never the store's command pool: a thousand browsers on one job cost one connection, and no number of
streams can starve the API's commands or the workers' commits. Streams are capped per tenant and in total
(`TooManyStreams`), which is what keeps the hub's own connections bounded too.

    hub = EventHub(reader_redis, keys, limits=StreamLimits(per_tenant=100, total=1000))
    async for event in await hub.subscribe(job_id, after="0-0", tenant=owner):
        ...  # every event after `after`, in order, once; the job's terminal event ends the iteration

A subscriber resuming at or after a finished job's terminal event gets that terminal event again at once, so
that a reconnecting client learns the job is over instead of waiting on a stream that will never move.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

from redis.exceptions import RedisError

from rsa_service.jobs.keys import Keys
from rsa_service.jobs.redis_urls import RedisClient, reader_client
from rsa_service.jobs.store import JobStore, event_from_entry
from rsa_service.wire import TERMINAL_STATUSES, Event

log = logging.getLogger(__name__)

READ_COUNT = 500  # events per Redis read, live or catching up
SUBSCRIBER_BACKLOG = 1000  # events buffered for one slow subscriber before it catches up from Redis instead
BACKLOG_READERS = 8  # catch-up reads at once, so a burst of new subscribers queues instead of opening connections
READ_RETRY_S = 0.5  # a reader's pause after a Redis error before it reads again
MAX_ID_PART = 2**64 - 1
Entry = tuple[str, dict[str, str]]  # a stream entry as redis-py returns it with decode_responses


class TooManyStreams(Exception):
    """A new stream would pass the tenant's cap or the process's total."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} already has {limit} open event streams (the limit); retry later")
        self.scope = scope
        self.limit = limit


class EventIdOutOfRange(ValueError):
    """The resume point is no event id, or lies after the job's last event."""


@dataclass(frozen=True)
class StreamLimits:
    per_tenant: int = 100
    total: int = 1000


def parse_event_id(value: str) -> tuple[int, int]:
    """A Redis stream id as (milliseconds, sequence); EventIdOutOfRange for anything else."""
    left, sep, right = value.partition("-")
    if not (sep and left.isdigit() and right.isdigit()) or max(int(left), int(right)) > MAX_ID_PART:
        raise EventIdOutOfRange(f"{value!r} is not an event id (MILLISECONDS-SEQUENCE, each under 2^64)")
    return int(left), int(right)


@dataclass(eq=False)
class _Subscriber:
    pending: deque[Event] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lagged: bool = False  # its buffer overflowed: it drops it and catches up from Redis


@dataclass(eq=False)
class _Feed:
    """One job's reader: its position in the stream and the subscribers it feeds."""

    job_id: str
    position: str
    terminal: Event | None = None
    subscribers: set[_Subscriber] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class Subscription:
    """An open stream slot. Iterate it once; the slot is freed when the iteration ends or `close()` is called."""

    def __init__(self, hub: EventHub, job_id: str, after: str, tenant: str, feed: _Feed) -> None:
        self._hub = hub
        self.job_id = job_id
        self.after = after
        self.tenant = tenant
        self._feed = feed
        self._subscriber = _Subscriber()
        feed.subscribers.add(self._subscriber)
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            async for event in self._hub._deliver(self._feed, self._subscriber, self.after):
                yield event
        finally:
            self.close()

    async def aclose(self) -> None:
        """`close()` for callers that take a coroutine (a response's background task), on the event loop."""
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._leave(self._feed, self._subscriber, self.tenant)


class EventHub:
    """Follows jobs' event streams for this process's subscribers. `redis` must not be the command client's pool
    (see `redis_urls.reader_client`)."""

    def __init__(
        self, redis: RedisClient, keys: Keys, *, limits: StreamLimits | None = None, block_ms: int = 1000
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits or StreamLimits()
        self.block_ms = block_ms
        self._feeds: dict[str, _Feed] = {}
        self._opening: dict[str, asyncio.Event] = {}
        self._open: Counter[str] = Counter()
        self._backlog_slots = asyncio.Semaphore(BACKLOG_READERS)

    @property
    def open_streams(self) -> int:
        return self._open.total()

    @property
    def readers(self) -> int:
        return len(self._feeds)

    async def subscribe(self, job_id: str, after: str = "0-0", *, tenant: str = "local") -> Subscription:
        """A subscription to the job's events after the stream id `after` (the SSE `Last-Event-ID`).

        Raises TooManyStreams at a cap, EventIdOutOfRange when `after` is malformed or after the stream's end.
        """
        position = parse_event_id(after)
        if self._open[tenant] >= self.limits.per_tenant:
            raise TooManyStreams(f"tenant {tenant}", self.limits.per_tenant)
        if self.open_streams >= self.limits.total:
            raise TooManyStreams("this server", self.limits.total)
        self._open[tenant] += 1
        try:
            feed = await self._feed(job_id)
        except BaseException:
            self._release(tenant)
            raise
        subscription = Subscription(self, job_id, after, tenant, feed)
        try:
            if position > parse_event_id(feed.position) and (
                feed.terminal is not None or position > await self._last_position(job_id)
            ):
                raise EventIdOutOfRange(f"{after!r} is after the job's last event")
        except BaseException:
            subscription.close()
            raise
        return subscription

    async def aclose(self) -> None:
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feeds.clear()

    # ---- feeds ----------------------------------------------------------------------------------------------

    async def _feed(self, job_id: str) -> _Feed:
        """The job's feed, started at the stream's current end; concurrent first subscribers share one start.

        The caller attaches to it before its next await, so the feed cannot be dropped as idle in between."""
        while (feed := self._feeds.get(job_id)) is None:
            if (opening := self._opening.get(job_id)) is not None:
                await opening.wait()  # then look again: it may have failed, or been dropped meanwhile
                continue
            self._opening[job_id] = opened = asyncio.Event()
            try:
                self._feeds[job_id] = feed = await self._start(job_id)
            finally:
                del self._opening[job_id]
                opened.set()
        return feed

    async def _start(self, job_id: str) -> _Feed:
        newest = await self._newest(job_id)
        if not newest:
            return self._run(_Feed(job_id, "0-0"))
        last = event_from_entry(*newest[0])
        terminal = last if last.type in TERMINAL_STATUSES else None
        feed = _Feed(job_id, last.id, terminal=terminal)
        return feed if terminal is not None else self._run(feed)

    def _run(self, feed: _Feed) -> _Feed:
        feed.task = asyncio.create_task(self._read(feed), name=f"events-{feed.job_id}")
        return feed

    async def _last_position(self, job_id: str) -> tuple[int, int]:
        newest = await self._newest(job_id)
        return parse_event_id(newest[0][0]) if newest else (0, 0)

    async def _newest(self, job_id: str) -> list[Entry]:
        return cast(list[Entry], await self.redis.xrevrange(self.keys.job(job_id).events, count=1))

    async def _read(self, feed: _Feed) -> None:
        """Read the job's new events as they come and hand each to every subscriber, until the terminal one."""
        key = self.keys.job(feed.job_id).events
        while feed.terminal is None:
            try:
                read = await self.redis.xread({key: feed.position}, count=READ_COUNT, block=self.block_ms)
                answer = cast(list[tuple[str, list[Entry]]], read)
            except RedisError as exc:
                log.warning("event reader for %s: %s; retrying", feed.job_id, exc)
                await asyncio.sleep(READ_RETRY_S)
                continue
            for entry_id, fields in answer[0][1] if answer else ():
                self._publish(feed, event_from_entry(entry_id, fields))

    @staticmethod
    def _publish(feed: _Feed, event: Event) -> None:
        feed.position = event.id
        if event.type in TERMINAL_STATUSES:
            feed.terminal = event
        for subscriber in feed.subscribers:
            if len(subscriber.pending) >= SUBSCRIBER_BACKLOG:
                subscriber.pending.clear()
                subscriber.lagged = True
            elif not subscriber.lagged:
                subscriber.pending.append(event)
            subscriber.wake.set()

    # ---- delivery -------------------------------------------------------------------------------------------

    async def _deliver(self, feed: _Feed, subscriber: _Subscriber, after: str) -> AsyncIterator[Event]:
        """Catch up from Redis, then take the feed's events; a lagging subscriber catches up again."""
        last = parse_event_id(after)
        while True:
            subscriber.lagged = False
            async for event in self._backlog(feed.job_id, last):
                last = parse_event_id(event.id)
                yield event
                if event.type in TERMINAL_STATUSES:
                    return
            if feed.terminal is not None and last >= parse_event_id(feed.terminal.id):
                yield feed.terminal  # resumed at or after the end: say again how the job ended
                return
            while not subscriber.lagged:
                while subscriber.pending:
                    event = subscriber.pending.popleft()
                    if parse_event_id(event.id) > last:
                        last = parse_event_id(event.id)
                        yield event
                        if event.type in TERMINAL_STATUSES:
                            return
                if subscriber.lagged:
                    break
                subscriber.wake.clear()
                await subscriber.wake.wait()

    async def _backlog(self, job_id: str, last: tuple[int, int]) -> AsyncIterator[Event]:
        key = self.keys.job(job_id).events
        while True:
            async with self._backlog_slots:
                read = await self.redis.xrange(key, min=f"({last[0]}-{last[1]}", count=READ_COUNT)
                entries = cast(list[Entry], read)
            for entry_id, fields in entries:
                last = parse_event_id(entry_id)
                yield event_from_entry(entry_id, fields)
            if len(entries) < READ_COUNT:
                return

    # ---- bookkeeping ----------------------------------------------------------------------------------------

    def _leave(self, feed: _Feed, subscriber: _Subscriber, tenant: str) -> None:
        feed.subscribers.discard(subscriber)
        self._release(tenant)
        self._drop_if_idle(feed.job_id)

    def _release(self, tenant: str) -> None:
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]

    def _drop_if_idle(self, job_id: str) -> None:
        feed = self._feeds.get(job_id)
        if feed is None or feed.subscribers:
            return
        del self._feeds[job_id]
        if feed.task is not None:
            feed.task.cancel()


@asynccontextmanager
async def open_hub(store: JobStore, limits: StreamLimits, block_ms: int = 1000) -> AsyncIterator[EventHub]:
    """A hub over `store`'s Redis with connections of its own: one per followed job, at most, plus catch-up reads."""
    redis = reader_client(store.redis, limits.total + BACKLOG_READERS)
    hub = EventHub(redis, store.keys, limits=limits, block_ms=block_ms)
    try:
        yield hub
    finally:
        await hub.aclose()
        if redis is not store.redis:
            await redis.aclose()
