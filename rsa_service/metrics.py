"""Every Prometheus metric of the service, in one module, on prometheus_client's process-wide registry.

Recorded where the thing happens, at no extra Redis cost: the runner (generations, latency, tokens, rounds,
stragglers, tails, prompt sizes), the remote backend (retries by cause), the store (claims, terminal transitions,
janitor re-queues) and the API middleware (HTTP requests). The fleet-wide gauges (queue depth, leases, waiting and
dead-lettered jobs) are read from Redis only when scraped (`observe_store`, one pipelined round trip), so every
pod reports the same values for them: aggregate those with `max`, the per-process counters with `sum`.

Served by the API's `GET /metrics` and by `rsa worker --metrics-port PORT` (`serve_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:  # the store records its transitions here: a runtime import would be circular
    from rsa_service.jobs.store import JobStore

log = logging.getLogger(__name__)

HTTP_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A generation takes from tens of milliseconds (a short answer on a fast server) to many minutes (32K tokens).
GENERATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
ROUND_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
PROMPT_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536, 131_072)
SCRAPE_TIMEOUT_S = 2.0  # a scrape while Redis is down still answers, with the per-process metrics

# ---- HTTP (the API) ---------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter("rsa_http_requests_total", "HTTP requests.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "rsa_http_request_duration_seconds",
    "Time to the response's first byte.",
    ["method", "route"],
    buckets=HTTP_LATENCY_BUCKETS_S,
)
JOBS_CREATED = Counter("rsa_jobs_created_total", "Jobs created (replays excluded).", ["source"])

# ---- job transitions (the store) --------------------------------------------------------------------------

CLAIMS = Counter("rsa_job_claims_total", "Claim attempts by outcome.", ["outcome"])
JOBS_FINISHED = Counter("rsa_jobs_finished_total", "Terminal transitions made by this process.", ["status"])
RECLAIMS = Counter("rsa_janitor_requeued_total", "Jobs the janitor queued again (expired lease or lost queue hint).")
COMMITS_UNREPLICATED = Counter(
    "rsa_commits_unreplicated_total",
    "Step commits that RSA_REDIS_MIN_REPLICAS replicas did not confirm in time (the attempt stops; the job resumes).",
)

# ---- generations and rounds (the runner) ------------------------------------------------------------------

GENERATIONS = Counter("rsa_generations_total", "Generations by outcome.", ["backend", "status"])
GENERATION_LATENCY = Histogram(
    "rsa_generation_duration_seconds",
    "One generation, backend retries included.",
    ["backend"],
    buckets=GENERATION_BUCKETS_S,
)
TOKENS = Counter(
    "rsa_tokens_total",
    "Tokens every generation spent, retried or failed, as the backend counted them.",
    ["backend", "direction"],
)
ESTIMATED_TOKENS = Counter(
    "rsa_estimated_tokens_total",
    "Of rsa_tokens_total, an upper bound for requests aborted before the backend reported usage.",
    ["backend"],
)
PROMPT_TOKENS = Histogram("rsa_prompt_tokens", "Prompt size of a generation.", ["stage"], buckets=PROMPT_TOKEN_BUCKETS)
TAIL_TRIMMED_TOKENS = Counter(
    "rsa_tail_trimmed_tokens_total", "Tokens cut from traces when their tails were taken.", ["backend"]
)
ROUND_DURATION = Histogram(
    "rsa_round_duration_seconds", "Wall time of a round's missing generations.", buckets=ROUND_BUCKETS_S
)
STRAGGLER_WAIT = Histogram(
    "rsa_round_straggler_wait_seconds",
    "How long a round waited after its quorum of slots had finished.",
    buckets=ROUND_BUCKETS_S,
)
STRAGGLERS = Counter("rsa_stragglers_total", "Slots cut at a round deadline.")

# ---- retries (the remote backend) -------------------------------------------------------------------------

RETRIES = Counter("rsa_backend_retries_total", "Backend requests retried, by cause.", ["cause"])

# ---- replicas of a fleet backend (a backend name listing several base URLs) -------------------------------

REPLICA_UP = Gauge(
    "rsa_replica_up", "1 while a replica takes requests, 0 while it is out after failing.", ["backend", "replica"]
)
REPLICA_IN_FLIGHT = Gauge("rsa_replica_in_flight", "Generations in flight at a replica.", ["backend", "replica"])
REPLICA_REQUESTS = Counter(
    "rsa_replica_requests_total", "Generation requests by replica and outcome.", ["backend", "replica", "outcome"]
)
REPLICA_LATENCY = Histogram(
    "rsa_replica_request_duration_seconds",
    "One generation request at one replica (answered ones).",
    ["backend", "replica"],
    buckets=GENERATION_BUCKETS_S,
)
REPLICA_EJECTIONS = Counter("rsa_replica_ejections_total", "Times a replica was taken out.", ["backend", "replica"])

# ---- the fleet, read from Redis at scrape time ------------------------------------------------------------

QUEUE_DEPTH = Gauge("rsa_queue_depth", "Job ids in the queue (hints: may hold duplicates).")
JOBS_WAITING = Gauge("rsa_jobs_waiting", "Jobs created or queued again and not claimed yet.")
LEASES = Gauge("rsa_leases", "Job leases by state (expired: the janitor re-queues those).", ["state"])
JOBS_DEAD = Gauge("rsa_jobs_dead_lettered", "Poison jobs failed after too many attempts.")
GENERATIONS_OUTSTANDING = Gauge(
    "rsa_generations_outstanding",
    "Generations not yet committed of the jobs queued or running: the workers' backlog (scale workers on it).",
)


async def observe_store(store: JobStore) -> None:
    """Set the fleet gauges from Redis in one round trip; on failure keep the last values and log why."""
    keys = store.keys
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            now_ms = await store.now_ms()
            async with store.redis.pipeline(transaction=False) as pipe:
                pipe.llen(keys.queue)
                pipe.llen(keys.background_queue)
                pipe.zcard(keys.pending)
                pipe.zcount(keys.leases, f"({now_ms}", "+inf")
                pipe.zcount(keys.leases, "-inf", now_ms)
                pipe.scard(keys.dead)
                queued, queued_background, waiting, live, expired, dead = await pipe.execute()
            outstanding = await store.outstanding_generations()
    except Exception as exc:  # a scrape reports what it can; Redis errors show in the worker's own logs
        log.debug("metrics: cannot read the store (%s)", exc)
        return
    QUEUE_DEPTH.set(queued + queued_background)
    JOBS_WAITING.set(waiting)
    LEASES.labels("live").set(live)
    LEASES.labels("expired").set(expired)
    JOBS_DEAD.set(dead)
    GENERATIONS_OUTSTANDING.set(outstanding)


async def exposition(store: JobStore) -> bytes:
    """The registry in Prometheus text format, fleet gauges refreshed first."""
    await observe_store(store)
    return generate_latest(REGISTRY)


async def _answer_scrape(store: JobStore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP/1.0 answer: the exposition for GET /metrics, 404 otherwise. Prometheus needs no more."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            request_line = await reader.readline()
            while (await reader.readline()).strip():  # read the headers: closing with unread input resets
                pass
        parts = request_line.decode("latin-1").split()
        if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
            status, body, kind = "200 OK", await exposition(store), CONTENT_TYPE_LATEST
        else:
            status, body, kind = "404 Not Found", b"GET /metrics\n", "text/plain"
        head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def serve_metrics(store: JobStore, port: int, host: str = "0.0.0.0") -> AsyncIterator[asyncio.Server]:
    """Serve `/metrics` on `port` in this event loop for the block (a worker's scrape endpoint)."""
    server = await asyncio.start_server(lambda r, w: _answer_scrape(store, r, w), host, port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
