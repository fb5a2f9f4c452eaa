"""Shared by the worker and CLI tests: small job specs, polling, an in-process worker, `rsa` commands run as
subprocesses, and `rsa worker` subprocesses whose logs are kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from rsa_service.core.params import RSAParams
from rsa_service.core.prompts import PromptTemplates
from rsa_service.core.steps import Usage
from rsa_service.jobs.backend_pool import BackendPool
from rsa_service.jobs.models import JobSpec
from rsa_service.jobs.store import JobStore
from rsa_service.jobs.worker import Worker
from rsa_service.settings import Settings

PROBLEM = "Compute the thing. ANSWER=70"
LEASE_S = 2.0
SMALL = {"population": 4, "subset": 2, "rounds": 2, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 300}
SMALL_FLAGS = ["-n", "4", "-k", "2", "-t", "2", "--trace-tokens", "200", "--tail-tokens", "40", "--final-tokens", "300"]
RSA_CLI = [sys.executable, "-m", "rsa_service.cli"]


def rsa(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`rsa ARGS` in a subprocess: its exit code and what it printed."""
    return subprocess.run(
        RSA_CLI + args, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


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


@asynccontextmanager
async def running(store: JobStore, pool: BackendPool | None = None, **options: object) -> AsyncIterator[Worker]:
    """A worker on `store` for the `with` block; leaving it drains the worker and closes the backends."""
    pool = pool or BackendPool(Settings())
    worker = Worker(store, pool, **({"concurrency": 8, "lease_s": LEASE_S} | options))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task
        await pool.aclose()


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


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """GET a Prometheus endpoint: every sample by (name, labels)."""
    response = httpx2.get(url, timeout=5)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled counter not yet touched)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_when(url: str, name: str, at_least: float, timeout_s: float = 20, **labels: str) -> Samples:
    """Scrape `url` (once it answers) until the sample `name` is present and reaches `at_least`; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx2.TransportError):
            samples = scrape(url)
            if (name, frozenset(labels.items())) in samples and sample(samples, name, **labels) >= at_least:
                return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {name}{labels} >= {at_least} at {url}")
        time.sleep(0.05)


def assert_job_recorded(before: Samples, after: Samples, backend: str, stages: int, usage: Usage) -> None:
    """The counters one completed job of `SMALL`-like width moved between two scrapes of the same process."""

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    generations = stages * SMALL["population"]
    assert delta("rsa_generations_total", backend=backend, status="ok") == generations
    assert delta("rsa_generation_duration_seconds_count", backend=backend) == generations
    assert delta("rsa_tokens_total", backend=backend, direction="prompt") == usage.prompt_tokens
    assert delta("rsa_tokens_total", backend=backend, direction="completion") == usage.completion_tokens
    assert delta("rsa_round_duration_seconds_count") == stages
    assert delta("rsa_round_straggler_wait_seconds_count") == stages
    assert delta("rsa_prompt_tokens_count", stage="initial") == SMALL["population"]
    assert delta("rsa_prompt_tokens_sum", stage="aggregation") > delta("rsa_prompt_tokens_sum", stage="initial")
    assert delta("rsa_tail_trimmed_tokens_total", backend=backend) > 0
    assert delta("rsa_jobs_finished_total", status="completed") == 1


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
