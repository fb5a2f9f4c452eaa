"""`/metrics` on the API while its in-process workers run a real job against the model server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rsa_service.core.steps import Usage
from tests.api.conftest import SMALL, ApiFactory
from tests.jobs.helpers import assert_job_recorded, sample, scrape, scrape_when
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread

LATENCY_S = 0.3


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServerHandle]:
    """Slow enough that a scrape lands mid-job."""
    with serve_in_thread(ModelServerConfig(reasoning_words=40, latency_ms=LATENCY_S * 1000)) as server:
        yield server


def test_job_metrics_move_on_the_api_during_a_job(make_api: ApiFactory) -> None:
    api = make_api(workers=1)
    url = f"{api.url}/metrics"
    before = scrape(url)
    ok = {"backend": "toy", "status": "ok"}
    with api.client() as client:
        job = client.jobs.create("Compute it. ANSWER=70", backend="toy", **SMALL)
        round_zero = sample(before, "rsa_generations_total", **ok) + SMALL["population"]
        during = scrape_when(url, "rsa_generations_total", round_zero, **ok)
        assert client.jobs.get(job.id).status == "in_progress"  # so that scrape was taken mid-job
        assert sample(during, "rsa_leases", state="live") == 1
        assert sample(during, "rsa_generation_duration_seconds_sum", backend="toy") >= LATENCY_S * SMALL["population"]
        done = client.jobs.wait(job.id, timeout=30)
    assert done.status == "completed" and done.result is not None
    after = scrape(url)
    usage = Usage.model_validate(done.result.usage.model_dump())
    assert_job_recorded(before, after, "toy", stages=SMALL["rounds"] + 1, usage=usage)
    assert sample(after, "rsa_leases", state="live") == 0 and sample(after, "rsa_jobs_waiting") == 0
    assert sample(after, "rsa_http_requests_total", method="GET", route="/metrics", status="200") >= 2
