"""Shared by the worker tests: small job specs, polling, and `rsa worker` subprocesses whose logs are kept."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.store import JobStore

PROBLEM = "Compute the thing. ANSWER=70"
SMALL = {"population": 4, "subset": 2, "rounds": 2, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 300}


def job_spec(backend: str, **params: Any) -> JobSpec:
    return JobSpec(
        problem=PROBLEM,
        params=RSAParams(**(SMALL | params)),
        backend=backend,
        templates=PromptTemplates.load(),
    )


async def wait_until(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(poll_s)


async def step_events(store: JobStore, job_id: str) -> Counter[str]:
    """How many times each step was committed, from the job's event stream (one `step` event per write)."""
    events = await store.events(job_id, count=100_000)
    return Counter(f"r{e.data['round']}:s{e.data['slot']}" for e in events if e.type == "step")


async def claims(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    return [e.data for e in await store.events(job_id, count=100_000) if e.type == "claimed"]


async def finished(store: JobStore, job_id: str, timeout_s: float = 30) -> str:
    """The job's terminal status, once it has one."""

    async def terminal() -> str | None:
        record = await store.get(job_id)
        return record.status if record.terminal else None

    return await wait_until(terminal, timeout_s, f"job {job_id} to end")


async def status_of(store: JobStore, job_id: str) -> str:
    return (await store.get(job_id)).status


class WorkerProcess:
    """`rsa worker` in a subprocess, its log in a file the test can read back."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rsa_service.cli", "worker", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM (a graceful drain), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def worker_env(cli_env: dict[str, str], **settings: object) -> dict[str, str]:
    """`cli_env` plus RSA_* settings, e.g. lease_s=2 → RSA_LEASE_S=2."""
    return cli_env | {f"RSA_{name.upper()}": str(value) for name, value in settings.items()}
