"""Durable execution of RSA jobs on Redis: the store (every transition one Lua script), the runner of one job's
rounds, the worker loop that claims and leases jobs, and the embedded Redis for zero-setup use.

The store is the only module that talks to Redis; the runner sees backends only through the Backend protocol.
"""

from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.connect import open_store
from rsa_service.jobs.embedded import EmbeddedRedis
from rsa_service.jobs.errors import JobNotFound, LeaseLost, StoreError, StoreUnavailable, TooManyActive
from rsa_service.jobs.execution import JobFailed, JobRunner
from rsa_service.jobs.models import JobRecord, JobSpec, NewerFormat
from rsa_service.jobs.redis_urls import redis_client
from rsa_service.jobs.requests import check_fits, generation_request
from rsa_service.jobs.store import JobStore, new_job_id
from rsa_service.jobs.worker import Worker

__all__ = [
    "BackendPool",
    "EmbeddedRedis",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "JobRunner",
    "JobSpec",
    "JobStore",
    "LeaseLost",
    "NewerFormat",
    "StoreError",
    "StoreUnavailable",
    "TooManyActive",
    "Worker",
    "check_fits",
    "generation_request",
    "new_job_id",
    "open_store",
    "redis_client",
]
