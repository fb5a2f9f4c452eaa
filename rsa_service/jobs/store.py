"""The job store: every state change is one Lua script over one job's keys (see `lua/`).

redis-py types every reply as `bytes | str`; the store's clients always decode (`redis_urls.redis_client`), so the
few `type: ignore[assignment]` below state the decoded reply's type.

Every public method raises only the store's own errors (`jobs.errors`): redis-py's are translated at this
boundary into `StoreUnavailable`, so nothing above the store catches `redis.*`. Transitions are counted in
`rsa_service.metrics` as they return: no extra round trip.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal, cast

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript

from rsa_service.core.steps import StepResult
from rsa_service.jobs.errors import (
    JobNotFound,
    LeaseLost,
    NotDeadLettered,
    NotReplicated,
    StoreError,
    TooManyActive,
    at_store_boundary,
)
from rsa_service.jobs.keys import STORE_FORMAT_VERSION, Keys
from rsa_service.jobs.models import JobRecord, JobSpec
from rsa_service.jobs.redis_urls import RedisClient
from rsa_service.metrics import CLAIMS, COMMITS_UNREPLICATED, JOBS_FINISHED, RECLAIMS
from rsa_service.wire import TERMINAL_STATUSES, Event, JobResult, Problem

EVENTS_MAXLEN = 10_000
DEFAULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_MAX_ATTEMPTS = 5
PRUNE_EVERY_MS = 1000  # a tenant at its limit has its active set checked against the job hashes at most this often
ADMITTED_GRACE_MS = 60_000  # an admitted id with no job hash yet is a create in flight for this long, then stale
BUILD_TIMEOUT_MS = 30_000  # a build of a tenant's active set not finished by then is taken over by the next create
STATUS_BATCH = 1000  # job statuses read per round trip while building or pruning an active set

Priority = Literal["interactive", "background"]
ClaimOutcome = Literal["claimed", "busy", "terminal", "poisoned", "newer", "missing"]


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    fence: int = 0
    attempts: int = 0
    lease_until_ms: int = 0
    owner: str = ""
    status: str = ""
    version: int = 0  # the job's stored format, when it is newer than this code's


def new_job_id() -> str:
    """Sortable by creation time (milliseconds in hex), then 48 random bits."""
    return f"job_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(6)}"


def _load_scripts() -> dict[str, str]:
    folder = files("rsa_service.jobs") / "lua"
    prelude = (folder / "_prelude.lua").read_text(encoding="utf-8")
    names = (
        "admit",
        "create",
        "claim",
        "renew",
        "commit",
        "emit",
        "finish",
        "cancel",
        "settle",
        "release",
        "requeue",
        "janitor",
        "rate",
    )
    return {name: prelude + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8") for name in names}


_SCRIPT_SOURCES = _load_scripts()


@at_store_boundary
class JobStore:
    """Async access to jobs in one Redis namespace. Safe to share across tasks."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        namespace: str = "rsa",
        retention_s: int = DEFAULT_RETENTION_S,
        events_maxlen: int = EVENTS_MAXLEN,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self.retention_s = retention_s
        self.events_maxlen = events_maxlen
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source) for name, source in _SCRIPT_SOURCES.items()
        }

    async def _run(self, name: str, job_id: str, *args: Any) -> Any:
        return await self._scripts[name](keys=list(self.keys.job(job_id).all), args=list(args))

    async def _run_on(self, name: str, keys: Sequence[str], *args: Any) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))

    # ---- creation and reads -------------------------------------------------------------------------------

    async def create(
        self,
        spec: JobSpec,
        *,
        tenant: str = "local",
        fingerprint: str = "",
        job_id: str | None = None,
        queue: bool = True,
        max_active: int = 0,
        priority: Priority = "interactive",
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """Count the job against its tenant (TooManyActive at `max_active` unfinished jobs; 0: no limit), write it
        durably, then the hints that let a worker find it (`queue=False`: the caller runs it). A `background` job
        is first claimed only when no interactive one waits. `extra` fields are kept in the job hash beside the
        spec, written with it (e.g. the API's view of the request), for readers only: workers never see them.

        The count is the sorted set `Keys.active(tenant)`, and admission is one script over it (`admit.lua`):
        concurrent creates cannot both take the last place, and it costs the same (ZCARD, ZADD) however many jobs
        the tenant has running. It cannot be one script with the job's own transitions: those keys hash to the
        job's cluster slot, the set to the tenant's, and Redis Cluster refuses a script over two slots. So the set
        is a hint like the queue: an id is added before the job is written and removed (`_forget`) after the
        script that made it terminal, and the job hash decides. A set of ids, not a counter, so that a removal
        repeated is harmless, and one lost (a crash between the two steps, an older worker) leaves a stale id that
        `_prune_active` drops when it would refuse a create; a job that was never counted (written by an earlier
        release) stops mattering when it ends, and a tenant whose set was never built has it built from its
        listing on its first limited create.
        """
        job_id = job_id or new_job_id()
        await self._admit(tenant, job_id, max_active)
        created = await self._run(
            "create",
            job_id,
            spec.model_dump_json(),
            tenant,
            fingerprint,
            self.events_maxlen,
            STORE_FORMAT_VERSION,
            *(part for pair in (extra or {}).items() for part in pair),
        )
        if not created:
            raise StoreError(f"job {job_id} already exists")
        await self.enqueue(
            job_id,
            created_ms=int(created),
            tenant=tenant,
            queue=queue,
            priority=priority,
            generations=spec.params.total_generations,
        )
        return job_id

    async def _admit(self, tenant: str, job_id: str, limit: int) -> None:
        keys = (self.keys.active(tenant), self.keys.active_state(tenant))
        for _ in range(3):  # at most: build the set, prune it, decide
            outcome = int(await self._run_on("admit", keys, job_id, limit, PRUNE_EVERY_MS, BUILD_TIMEOUT_MS))
            if outcome == 1:
                return
            if outcome == 0:
                break
            await (self._build_active(tenant) if outcome == -2 else self._prune_active(tenant))
        raise TooManyActive(tenant, limit)

    async def _statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        statuses: list[str | None] = []
        for start in range(0, len(job_ids), STATUS_BATCH):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids[start : start + STATUS_BATCH]:
                    pipe.hget(self.keys.job(job_id).meta, "status")
                statuses.extend(await pipe.execute())
        return statuses

    async def _build_active(self, tenant: str) -> None:
        """Count the tenant's unfinished jobs from its listing: once, for jobs written before the active set."""
        listed = await self.redis.zrange(self.keys.listing(tenant), 0, -1, withscores=True)
        entries = cast(list[tuple[str, float]], listed)
        statuses = await self._statuses([job_id for job_id, _ in entries])
        unfinished = {
            job_id: score
            for (job_id, score), status in zip(entries, statuses, strict=True)
            if status is not None and status not in TERMINAL_STATUSES
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            if unfinished:
                pipe.zadd(self.keys.active(tenant), unfinished)
            pipe.hset(self.keys.active_state(tenant), "built_ms", int(time.time() * 1000))
            pipe.hdel(self.keys.active_state(tenant), "building_ms")
            pipe.delete(self.keys.legacy_active(tenant))
            await pipe.execute()

    async def _prune_active(self, tenant: str) -> None:
        """Drop the ids of jobs that ended without being forgotten, and of creates that never wrote their job."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.active(tenant), 0, -1, withscores=True)
            pipe.time()
            entries, (seconds, micros) = await pipe.execute()
        stale_before = int(seconds) * 1000 + int(micros) // 1000 - ADMITTED_GRACE_MS
        statuses = await self._statuses([job_id for job_id, _ in entries])
        stale = [
            job_id
            for (job_id, score), status in zip(entries, statuses, strict=True)
            if status in TERMINAL_STATUSES or (status is None and score < stale_before)
        ]
        if stale:
            await self.redis.zrem(self.keys.active(tenant), *stale)

    async def enqueue(
        self,
        job_id: str,
        *,
        created_ms: int | None = None,
        tenant: str | None = None,
        queue: bool = True,
        priority: Priority = "interactive",
        generations: int | None = None,
    ) -> None:
        """Hint a worker to the job. Priority orders first claims only: a job queued again after it started
        (released, or its lease expired) resumes at interactive priority, being already under way. `generations`:
        the job's total, counted in the demand hint (`Keys.demand`) until it ends."""
        score = created_ms if created_ms is not None else time.time_ns() // 1_000_000
        async with self.redis.pipeline(transaction=False) as pipe:
            if queue:
                pipe.lpush(self.keys.background_queue if priority == "background" else self.keys.queue, job_id)
            pipe.zadd(self.keys.pending, {job_id: score})
            if tenant is not None:
                pipe.zadd(self.keys.listing(tenant), {job_id: score})
            if generations is not None:
                pipe.hset(self.keys.demand, job_id, generations)
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord:
        fields: dict[str, str] = await self.redis.hgetall(self.keys.job(job_id).meta)  # type: ignore[assignment]
        if not fields:
            raise JobNotFound(job_id)
        return JobRecord.from_hash(job_id, fields)

    async def steps(self, job_id: str) -> dict[str, StepResult]:
        raw: dict[str, str] = await self.redis.hgetall(self.keys.job(job_id).steps)  # type: ignore[assignment]
        return {key: StepResult.model_validate_json(value) for key, value in raw.items()}

    async def step(self, job_id: str, key: str) -> StepResult | None:
        raw = await self.redis.hget(self.keys.job(job_id).steps, key)
        return StepResult.model_validate_json(raw) if raw else None

    async def step_count(self, job_id: str) -> int:
        return int(await self.redis.hlen(self.keys.job(job_id).steps))

    async def fields(self, job_ids: Sequence[str], names: Sequence[str]) -> list[tuple[dict[str, str], int]]:
        """The named fields of several job hashes (those present; none for a missing job), each with its number of
        committed steps, in one round trip: what a status read needs, without the rest of the hash or the events."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                keys = self.keys.job(job_id)
                pipe.hmget(keys.meta, names)
                pipe.hlen(keys.steps)
            replies = await pipe.execute()
        return [
            ({name: value for name, value in zip(names, values, strict=True) if value is not None}, int(steps))
            for values, steps in zip(replies[::2], replies[1::2], strict=True)
        ]

    async def last_event_id(self, job_id: str) -> str | None:
        """The id of the job's newest event, None before the first."""
        latest = await self.redis.xrevrange(self.keys.job(job_id).events, count=1)
        return str(latest[0][0]) if latest else None

    async def event_entries(self, job_ids: Sequence[str]) -> list[list[tuple[str, dict[str, str]]]]:
        """Every event of each job as stored (stream id, fields), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xrange(self.keys.job(job_id).events)
            return list(await pipe.execute())

    async def events(
        self, job_id: str, *, after: str = "0-0", block_ms: int | None = None, count: int = 500
    ) -> list[Event]:
        """Events after the stream id `after`; with `block_ms`, wait that long for the first new one."""
        answer: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await self.redis.xread(  # type: ignore[assignment]
            {self.keys.job(job_id).events: after}, count=count, block=block_ms
        )
        if not answer:
            return []
        _, entries = answer[0]
        return [event_from_entry(entry_id, fields) for entry_id, fields in entries]

    # ---- ownership ----------------------------------------------------------------------------------------

    async def claim(
        self,
        job_id: str,
        owner: str,
        *,
        lease_ms: int,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        steal_from: str = "",
    ) -> Claim:
        reply = [
            str(part)
            for part in await self._run(
                "claim",
                job_id,
                owner,
                lease_ms,
                max_attempts,
                steal_from,
                self.events_maxlen,
                self.retention_s,
                STORE_FORMAT_VERSION,
            )
        ]
        outcome = reply[0]
        CLAIMS.labels(outcome).inc()
        if outcome == "claimed":
            claim = Claim("claimed", fence=int(reply[1]), attempts=int(reply[2]), lease_until_ms=int(reply[3]))
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(self.keys.leases, {job_id: claim.lease_until_ms})
                pipe.zrem(self.keys.pending, job_id)
                await pipe.execute()
            return claim
        if outcome == "busy":
            return Claim("busy", owner=reply[1], lease_until_ms=int(reply[2]))
        if outcome == "newer":  # hints stay: the janitor queues it again, for a newer worker to take
            return Claim("newer", version=int(reply[1]))
        if outcome == "poisoned":
            JOBS_FINISHED.labels("failed").inc()
            await self._forget(job_id, reply[2], dead=True)
            return Claim("poisoned", attempts=int(reply[1]))
        if outcome == "terminal":
            await self._forget(job_id, reply[2])
            return Claim("terminal", status=reply[1])
        await self._forget(job_id)
        return Claim("missing")

    async def renew(self, job_id: str, fence: int, *, lease_ms: int) -> int:
        """Extend the lease; raises LeaseLost when the fence moved."""
        lease_until = int(await self._run("renew", job_id, fence, lease_ms))
        if not lease_until:
            raise LeaseLost(job_id, fence)
        await self.redis.zadd(self.keys.leases, {job_id: lease_until})
        return lease_until

    async def release(self, job_id: str, fence: int) -> bool:
        """Hand a job back (graceful drain): it is queued again and the attempt is not counted."""
        if int(await self._run("release", job_id, fence, self.events_maxlen)) != 1:
            return False
        await self._forget(job_id)
        await self.enqueue(job_id)
        return True

    # ---- progress -----------------------------------------------------------------------------------------

    async def commit(self, job_id: str, fence: int, step: StepResult, event: dict[str, Any]) -> bool:
        """Record a step once. True if written now, False if it was already there; LeaseLost if fenced off;
        NotReplicated when `min_replicas` replicas did not confirm it in time."""
        args: tuple[str | int, ...] = (
            fence,
            step.key,
            step.model_dump_json(),
            "step",
            json.dumps(event),
            self.events_maxlen,
        )
        if self.min_replicas:
            outcome = await self._commit_replicated(job_id, args)
        else:
            outcome = int(await self._run("commit", job_id, *args))
        if outcome < 0:
            raise LeaseLost(job_id, fence)
        return outcome == 1

    async def _commit_replicated(self, job_id: str, args: Sequence[str | int]) -> int:
        """The commit script, then WAIT on the same connection (WAIT counts the replicas that have the writes of
        its own connection, so the two go in one pipeline; on a cluster, to the node that owns the job's slot)."""
        keys = self.keys.job(job_id).all
        on_node: dict[str, Any] = {}
        if isinstance(self.redis, RedisCluster):
            on_node["target_nodes"] = self.redis.get_node_from_key(keys[0])
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(_SCRIPT_SOURCES["commit"], len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms, **on_node)
            outcome, acknowledged = await pipe.execute()
        if int(outcome) >= 0 and int(acknowledged) < self.min_replicas:
            COMMITS_UNREPLICATED.inc()
            raise NotReplicated(job_id, int(acknowledged), self.min_replicas)
        return int(outcome)

    async def emit(self, job_id: str, fence: int, kind: str, data: dict[str, Any]) -> str:
        entry = await self._run("emit", job_id, fence, kind, json.dumps(data), self.events_maxlen)
        if not entry:
            raise LeaseLost(job_id, fence)
        return str(entry)

    async def finish(
        self, job_id: str, fence: int, result: JobResult | None = None, error: Problem | None = None
    ) -> None:
        """Terminal transition: `completed` with a result, or `failed` with an error (and any partial result)."""
        status = "failed" if error is not None else "completed"
        tenant = await self._run(
            "finish",
            job_id,
            fence,
            status,
            result.model_copy(update={"status": status}).model_dump_json() if result else "",
            error.model_dump_json() if error else "",
            self.events_maxlen,
            self.retention_s,
        )
        if tenant == -1:
            raise LeaseLost(job_id, fence)
        JOBS_FINISHED.labels(status).inc()
        await self._forget(job_id, str(tenant))

    async def cancel(self, job_id: str) -> str:
        """Request cancellation; returns the status now. Idempotent; a finished job is left as it is."""
        status, changed, tenant = await self._run("cancel", job_id, self.events_maxlen, self.retention_s)
        if status == "missing":
            raise JobNotFound(job_id)
        if status in TERMINAL_STATUSES:
            await self._forget(job_id, tenant)
            if status == "cancelled" and int(changed):
                JOBS_FINISHED.labels("cancelled").inc()
        return str(status)

    async def settle_cancelled(self, job_id: str, result: JobResult | None) -> str:
        """Move `cancelling` to `cancelled`, keeping the partial result. Anyone may; the first one wins."""
        payload = result.model_copy(update={"status": "cancelled"}).model_dump_json() if result else ""
        status, changed, tenant = await self._run("settle", job_id, payload, self.events_maxlen, self.retention_s)
        if int(changed):
            JOBS_FINISHED.labels("cancelled").inc()
        await self._forget(job_id, tenant if status in TERMINAL_STATUSES else None)
        return str(status)

    async def requeue(self, job_id: str) -> str:
        """Run a job that failed for a transient reason (dead-lettered as poison, or its backend down past the
        outage budget) again from its committed steps, counted again against its tenant (whatever its limit: an
        operator's or the owner's decision); returns the tenant. JobNotFound, or NotDeadLettered for any other job
        (other failures would fail the same way again)."""
        outcome, *rest = [str(part) for part in await self._run("requeue", job_id, self.events_maxlen)]
        if outcome == "missing":
            await self.redis.srem(self.keys.dead, job_id)  # a stale hint: the job expired after failing
            raise JobNotFound(job_id)
        if outcome == "refused":
            raise NotDeadLettered(job_id, status=rest[0], title=rest[1])
        await self.redis.srem(self.keys.dead, job_id)
        await self._admit(rest[0], job_id, 0)
        await self.enqueue(job_id, generations=(await self.get(job_id)).spec.params.total_generations)
        return rest[0]

    async def dead_lettered(self) -> list[str]:
        """The dead-letter hint: ids of jobs failed as poison (some may have expired since)."""
        dead: set[str] = await self.redis.smembers(self.keys.dead)  # type: ignore[assignment]
        return sorted(dead)

    async def delete(self, job_id: str) -> None:
        record = await self.get(job_id)
        await self.redis.delete(*self.keys.job(job_id).all)
        await self._forget(job_id, record.tenant)
        await self.redis.zrem(self.keys.listing(record.tenant), job_id)

    async def _forget(self, job_id: str, tenant: str | None = None, *, dead: bool = False) -> None:
        """Drop a job from the worker hints and, given its `tenant` (it ended), from the tenant's unfinished-job
        count and the demand hint."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.leases, job_id)
            pipe.zrem(self.keys.pending, job_id)
            if dead:
                pipe.sadd(self.keys.dead, job_id)
            if tenant is not None:
                pipe.zrem(self.keys.active(tenant), job_id)
            if tenant is not None or dead:  # it ended: nothing left to do
                pipe.hdel(self.keys.demand, job_id)
            await pipe.execute()

    # ---- hints for workers --------------------------------------------------------------------------------

    async def next_queued(self, timeout_s: float) -> str | None:
        """Pop a job id hint, interactive ones first; None after `timeout_s` without one."""
        popped = await self.redis.brpop([self.keys.queue, self.keys.background_queue], timeout=timeout_s)
        return str(popped[1]) if popped else None

    async def expired_leases(self, limit: int = 100) -> Sequence[str]:
        now_ms = await self.now_ms()
        expired: list[str] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            self.keys.leases, "-inf", now_ms, start=0, num=limit
        )
        return expired

    async def requeue_stale(self, *, lease_ms: int, stale_pending_ms: int, limit: int = 100) -> list[str]:
        """The janitor's sweep: queue again jobs whose lease expired or whose queue hint may be lost."""
        keys = (self.keys.queue, self.keys.leases, self.keys.pending)
        found = [str(job_id) for job_id in await self._run_on("janitor", keys, lease_ms, stale_pending_ms, limit)]
        RECLAIMS.inc(len(found))
        return found

    async def rate_wait_ms(self, requests_per_s: float, burst: int) -> int:
        """Take one request from the namespace's shared rate (GCRA): 0 when granted, else ms to wait first."""
        return int(await self._run_on("rate", (self.keys.rate,), 1000.0 / requests_per_s, burst))

    async def now_ms(self) -> int:
        """Redis server time: one clock for every worker, whatever their hosts' clocks say."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def outstanding_generations(self) -> int:
        """Generations not yet committed of the jobs queued or running: what the workers have left to do (the
        autoscaling signal). Jobs that ended without being forgotten, or expired, are skipped."""
        totals = await self.redis.hgetall(self.keys.demand)
        if not totals:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in map(str, totals):
                pipe.hget(self.keys.job(job_id).meta, "status")
                pipe.hlen(self.keys.job(job_id).steps)
            replies = await pipe.execute()
        return sum(
            max(int(total) - int(committed), 0)
            for total, status, committed in zip(totals.values(), replies[::2], replies[1::2], strict=True)
            if status is not None and status not in TERMINAL_STATUSES
        )


def event_from_entry(entry_id: str, fields: dict[str, str]) -> Event:
    """One entry of a job's Redis event stream as its wire model."""
    return Event(id=entry_id, type=fields.get("type", "message"), data=json.loads(fields.get("data") or "{}"))
