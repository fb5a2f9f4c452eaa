"""Every Redis key the service uses, in one place.

A job's keys share the hash tag `{job:ID}`, so every transition touches one cluster slot and runs as one Lua
script. The global keys are hints (queue, lease index, pending set, listings): they may hold duplicates or stale
ids, and the job's own hash always decides.
"""

from __future__ import annotations

from dataclasses import dataclass

STORE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class JobKeys:
    meta: str
    steps: str
    events: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.meta, self.steps, self.events)


@dataclass(frozen=True)
class Keys:
    """Key names under one namespace (tests and tenants of one Redis can use several)."""

    namespace: str = "rsa"

    def job(self, job_id: str) -> JobKeys:
        tag = f"{self.namespace}:{{job:{job_id}}}"
        return JobKeys(meta=f"{tag}:meta", steps=f"{tag}:steps", events=f"{tag}:events")

    @property
    def queue(self) -> str:
        return f"{self.namespace}:queue"

    @property
    def leases(self) -> str:
        return f"{self.namespace}:leases"

    @property
    def pending(self) -> str:
        return f"{self.namespace}:pending"

    @property
    def dead(self) -> str:
        return f"{self.namespace}:dead"

    @property
    def rate(self) -> str:
        return f"{self.namespace}:rate"

    def listing(self, tenant: str) -> str:
        return f"{self.namespace}:jobs:{tenant}"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.namespace}:idem:{tenant}:{key}"
