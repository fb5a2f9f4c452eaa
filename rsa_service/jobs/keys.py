"""Every Redis key the service uses, in one place.

A job's keys share the hash tag `{job:ID}`, so every transition touches one cluster slot and runs as one Lua
script. The global hints (queue, lease index, pending set) share the hash tag `{NAMESPACE}`, so the janitor moves
ids between them in one script on Redis Cluster too. Hints may hold duplicates or stale ids: the job's own hash
always decides. A tenant's unfinished-job count is such a hint too (see `JobStore.create`), under the hash tag
`{tenant:NAME}`.
"""

from __future__ import annotations

from dataclasses import dataclass

# The layout of a job's keys, written into its hash as `v`. Readers accept every version up to their own; claim
# refuses a newer one (an old worker must not run a job whose fields it does not know) and stamps an older one
# with this version, since the steps it commits from then on are in this layout.
#   0: before versioning: no `v` and no `started_ms` in the hash; steps hold only round, slot, text, reasoning,
#      tail, answer, finish_reason and usage (no status, candidates, seed, tail/source token counts, error,
#      attempts or duration_s). Read with those fields at their defaults.
#   1: `v` and `started_ms` in the hash; steps with every field of `core.steps.StepResult`.
#   2: the spec may carry a `conversation` (system prompt, earlier turns) that round 0 and every prompt use;
#      step usage counts every attempt, with `estimated_tokens` for aborted ones.
STORE_FORMAT_VERSION = 2
UNVERSIONED_FORMAT = 0


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

    @property
    def _hints(self) -> str:
        return f"{{{self.namespace}}}"

    def job(self, job_id: str) -> JobKeys:
        tag = f"{self.namespace}:{{job:{job_id}}}"
        return JobKeys(meta=f"{tag}:meta", steps=f"{tag}:steps", events=f"{tag}:events")

    @property
    def queue(self) -> str:
        return f"{self._hints}:queue"

    @property
    def background_queue(self) -> str:
        """Job id hints of background priority: a worker pops them only when `queue` is empty."""
        return f"{self._hints}:queue:background"

    @property
    def leases(self) -> str:
        return f"{self._hints}:leases"

    @property
    def pending(self) -> str:
        return f"{self._hints}:pending"

    @property
    def dead(self) -> str:
        return f"{self._hints}:dead"

    @property
    def demand(self) -> str:
        """Hash: job id → its total generations, for jobs not yet ended (the autoscaling signal's source)."""
        return f"{self._hints}:demand"

    @property
    def rate(self) -> str:
        return f"{self._hints}:rate"

    def listing(self, tenant: str) -> str:
        return f"{self.namespace}:jobs:{tenant}"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.namespace}:idem:{tenant}:{key}"

    def active(self, tenant: str) -> str:
        """Sorted set: the ids of the tenant's unfinished jobs, scored by when each was admitted."""
        return f"{self.namespace}:{{tenant:{tenant}}}:active"

    def active_state(self, tenant: str) -> str:
        """Hash beside `active`: when it was built from the tenant's listing (`built_ms`, absent for a tenant whose
        jobs predate it), and when a build or a prune of stale members last began (`building_ms`, `pruned_ms`)."""
        return f"{self.namespace}:{{tenant:{tenant}}}:active-state"

    def legacy_active(self, tenant: str) -> str:
        """The plain set of unfinished job ids that earlier releases kept; deleted once `active` is built."""
        return f"{self.namespace}:active:{tenant}"
