"""A worker's lease on one job, as the worker itself sees it.

Redis holds the truth (the fence and `lease_until_ms`); this object holds what the worker may assume without
asking: the lease is surely still valid until `lease_s` after the start of the last renewal that succeeded.
A worker that was frozen (SIGSTOP, a long GC pause, a Redis outage) past that point may already have been
replaced, so it starts no new generation until a renewal succeeds again — and once the fence moved, none ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rsa_service.jobs.errors import LeaseLost


@dataclass
class Lease:
    job_id: str
    fence: int
    lease_s: float
    clock: Callable[[], float] = time.monotonic
    valid_until: float = field(init=False)
    # Set just before the terminal transition: a renewal refused after it is the job ending, not a lost lease.
    finishing: bool = False

    def __post_init__(self) -> None:
        # The claim's lease started in Redis after this object's creation began: the local view is conservative.
        self.valid_until = self.clock() + self.lease_s

    def renewed(self, asked_at: float) -> None:
        """Record a successful renewal that was sent at `asked_at` (this object's clock)."""
        self.valid_until = max(self.valid_until, asked_at + self.lease_s)

    def check(self) -> None:
        """Raise LeaseLost when the lease may have expired: the caller must not start new work under it."""
        if self.clock() >= self.valid_until:
            raise LeaseLost(self.job_id, self.fence)
