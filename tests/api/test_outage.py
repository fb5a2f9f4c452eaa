"""A backend outage pauses a job, never ends it: the model server killed mid-job and started again later, against
`rsa serve` with its workers. The job waits (and says so), then completes; no committed step is generated twice.
Past the outage budget the job fails as a transient failure, which resumes from its committed steps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx2
import pytest

from tests.api.conftest import KEY_A
from tests.api.processes import REPO, RestartableModelServer, rsa_serve
from tests.modelserver import ModelServerConfig
from tests.redis_topologies import RedisServer

A = {"Authorization": f"Bearer {KEY_A}"}
JOB = {"population": 4, "subset": 2, "rounds": 2, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 300}
OUTAGE_S = 60
FAST_RETRIES = {
    "RSA_BACKEND_MAX_RETRIES": "1",
    "RSA_BACKEND_RETRY_MAX_WAIT_S": "0.5",
    "RSA_BACKEND_OUTAGE_RETRY_MAX_S": "3",
}


def _until(http: httpx2.Client, job_id: str, ready: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not ready(job := http.get(f"/v1/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def _committed_seeds(http: httpx2.Client, job_id: str) -> set[int]:
    return {step["seed"] for step in http.get(f"/v1/jobs/{job_id}/steps").json()["data"] if step["status"] == "ok"}


def _answered_seeds(requests: list[dict[str, Any]]) -> list[int]:
    return [request["body"]["seed"] for request in requests if request["status"] == 200]


def _events(http: httpx2.Client, job_id: str) -> list[str]:
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        return [line.removeprefix("event: ") for line in stream.iter_lines() if line.startswith("event: ")]


@pytest.mark.timeout(240)
def test_a_job_waits_out_a_60s_backend_outage(redis_server: RedisServer, namespace: str) -> None:
    model = RestartableModelServer(ModelServerConfig(reasoning_words=20, latency_ms=300))
    first = model.start()
    try:
        with (
            rsa_serve(redis_server, namespace, model.base_url, **FAST_RETRIES) as url,
            httpx2.Client(base_url=url, headers=A, timeout=30) as http,
        ):
            job_id = http.post("/v1/jobs", json={"problem": "Outage. ANSWER=9", "backend": "toy", **JOB}).json()["id"]
            _until(http, job_id, lambda job: job["progress"]["steps_done"] >= 2, 60)
            before = first.requests()
            model.kill()
            killed = time.monotonic()
            waiting = _until(http, job_id, lambda job: job["progress"].get("waiting_for") == "toy", 30)
            assert waiting["status"] == "in_progress"
            time.sleep(2)  # answers received before the kill are committed by now
            committed_before = _committed_seeds(http, job_id)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))
            assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "in_progress"
            again = model.start()
            done = _until(http, job_id, lambda job: job["status"] not in ("queued", "in_progress"), 90)
            after = again.requests()
            events = _events(http, job_id)
    finally:
        model.kill()
    assert done["status"] == "completed", done
    assert done["progress"].get("waiting_for") is None
    assert "waiting" in events and "backend_back" in events
    assert committed_before and not committed_before & set(_answered_seeds(after))  # none generated again
    assert len(set(_answered_seeds(after))) == len(_answered_seeds(after))
    assert committed_before <= set(_answered_seeds(before))


@pytest.mark.timeout(180)
def test_past_the_outage_budget_the_job_fails_and_resumes(
    redis_server: RedisServer, namespace: str, cli_env: dict[str, str]
) -> None:
    model = RestartableModelServer(ModelServerConfig(reasoning_words=20, latency_ms=300))
    first = model.start()
    budget = {"RSA_BACKEND_OUTAGE_BUDGET_H": str(4 / 3600)} | FAST_RETRIES
    try:
        with (
            rsa_serve(redis_server, namespace, model.base_url, **budget) as url,
            httpx2.Client(base_url=url, headers=A, timeout=30) as http,
        ):
            job_id = http.post("/v1/jobs", json={"problem": "Budget. ANSWER=4", "backend": "toy", **JOB}).json()["id"]
            _until(http, job_id, lambda job: job["progress"]["steps_done"] >= 2, 60)
            first.requests()
            model.kill()
            failed = _until(http, job_id, lambda job: job["status"] == "failed", 60)
            assert failed["error"]["title"] == "Backend unavailable"
            assert "outage budget" in failed["error"]["detail"] and "resume" in failed["error"]["detail"]
            committed_before = _committed_seeds(http, job_id)
            again = model.start()
            resumed = subprocess.run(
                [sys.executable, "-m", "rsa_service.cli", "jobs", "resume", job_id, "--json"],
                env=cli_env | {"PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert resumed.returncode == 0, resumed.stderr
            assert json.loads(resumed.stdout)[0]["requeued"] is True
            done = _until(http, job_id, lambda job: job["status"] not in ("queued", "in_progress"), 90)
            assert done["status"] == "completed", done
            assert not committed_before & set(_answered_seeds(again.requests()))
            refused = http.post(f"/v1/jobs/{job_id}/resume")
            assert refused.status_code == 409 and refused.json()["type"].endswith("/not-resumable")
    finally:
        model.kill()
