"""A worker's `--metrics-port` during a real job, and the remote backend's retries counted by cause."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import httpx2
import pytest
from prometheus_client import REGISTRY

from rsa_service.backends.base import BackendOptions, ChatMessage, GenerationRequest, TransientBackendError
from rsa_service.backends.remote import RemoteBackend
from rsa_service.backends.retry import RetryCause, retry_cause
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import (
    SMALL,
    WorkerProcess,
    assert_job_recorded,
    finished,
    job_spec,
    sample,
    scrape,
    scrape_when,
    status_of,
)
from tests.modelserver import ModelServerConfig, serve_in_thread

LATENCY_S = 0.3
CAUSES: tuple[RetryCause, ...] = ("status", "timeout", "connection")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_worker_metrics_port_during_a_job(store: JobStore, cli_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with serve_in_thread(ModelServerConfig(reasoning_words=40, latency_ms=LATENCY_S * 1000)) as model:
        worker = WorkerProcess(cli_env, tmp_path / "worker.log", "--metrics-port", str(port))
        try:
            before = await asyncio.to_thread(scrape_when, url, "rsa_queue_depth", 0)  # up, and nothing run yet
            job_id = await store.create(job_spec(model.base_url, rounds=1))
            ok = {"backend": model.base_url, "status": "ok"}
            during = await asyncio.to_thread(scrape_when, url, "rsa_generations_total", SMALL["population"], **ok)
            assert await status_of(store, job_id) == "in_progress", worker.log()
            assert sample(during, "rsa_leases", state="live") == 1
            assert 0 < sample(during, "rsa_generations_outstanding") <= 2 * SMALL["population"]
            assert sample(during, "rsa_job_claims_total", outcome="claimed") == 1
            assert await finished(store, job_id) == "completed"
            after = await asyncio.to_thread(scrape, url)
            assert sample(after, "rsa_generations_outstanding") == 0
            async with httpx2.AsyncClient(timeout=5) as http:
                assert (await http.get(f"http://127.0.0.1:{port}/")).status_code == 404
        finally:
            assert worker.stop() == 0, worker.log()
    result = (await store.get(job_id)).result
    assert result is not None
    assert_job_recorded(before, after, model.base_url, stages=2, usage=result.usage)


def test_retry_causes_from_what_the_attempt_ran_into() -> None:
    def raised_from(cause: BaseException) -> TransientBackendError:
        error = TransientBackendError("x")
        error.__cause__ = cause
        return error

    request = httpx2.Request("POST", "http://h/v1/chat/completions")
    assert retry_cause(TransientBackendError("503")) == "status"
    assert retry_cause(raised_from(httpx2.ReadTimeout("slow", request=request))) == "timeout"
    assert retry_cause(raised_from(httpx2.ConnectTimeout("no route", request=request))) == "connection"
    assert retry_cause(raised_from(httpx2.RemoteProtocolError("hung up", request=request))) == "connection"
    assert retry_cause(raised_from(aiohttp.SocketTimeoutError("slow"))) == "timeout"
    assert retry_cause(raised_from(aiohttp.ConnectionTimeoutError("no route"))) == "connection"
    assert retry_cause(raised_from(aiohttp.ServerDisconnectedError())) == "connection"


def retries(cause: str) -> float:
    return REGISTRY.get_sample_value("rsa_backend_retries_total", {"cause": cause}) or 0.0


async def test_remote_backend_counts_each_retry_by_cause() -> None:
    faults = [{"status": 503}, {"drop_connection": True}, {"delay_s": 5}]
    options = BackendOptions(max_retries=3, retry_backoff_s=0.01, read_timeout_s=0.5)
    request = GenerationRequest(messages=(ChatMessage(role="user", content="ANSWER=42"),), max_tokens=100)
    before = {cause: retries(cause) for cause in CAUSES}
    with serve_in_thread(ModelServerConfig()) as server:
        async with RemoteBackend(server.base_url, options) as backend:
            server.set_faults(faults)
            assert (await backend.generate(request)).usage.completion_tokens
            server.set_faults([{"status": 503, "always": True}])
            with pytest.raises(TransientBackendError):
                await backend.generate(request)
    moved = {cause: retries(cause) - value for cause, value in before.items()}
    assert moved == {"status": 1 + 3, "timeout": 1, "connection": 1}  # the last call: 3 retries, then it fails
