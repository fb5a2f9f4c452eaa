"""Stage routing over REST and the SDK: round 0, the aggregation rounds and the final stage each reach the
configured backend they name, and the job's usage splits by backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings
from rsa_service.api.workers import in_process_workers
from rsa_service.core.steps import Usage
from rsa_service.settings import Settings
from tests.api.conftest import KEY_A, LiveAPI, serve_app
from tests.conftest import RedisServer
from tests.modelserver import AGGREGATION_MARKERS, ModelServerConfig, ModelServerHandle, serve_in_thread

PARAMS = {"population": 4, "subset": 2, "rounds": 2, "trace_tokens": 200, "tail_tokens": 40, "final_tokens": 300}


@pytest.fixture
def two_models() -> Iterator[tuple[ModelServerHandle, ModelServerHandle]]:
    with serve_in_thread(ModelServerConfig(p_correct=0.6)) as small, serve_in_thread(ModelServerConfig()) as big:
        yield small, big


@pytest.fixture
def routed_api(
    redis_server: RedisServer, namespace: str, two_models: tuple[ModelServerHandle, ModelServerHandle]
) -> Iterator[LiveAPI]:
    small, big = two_models
    shared = Settings(
        redis_url=redis_server.url,
        namespace=namespace,
        backends={"small": f"openai:{small.base_url}", "big": f"openai:{big.base_url}"},
        lease_s=3,
    )
    app = create_app(ApiSettings(api_keys=[KEY_A]), shared, background=in_process_workers(1, shared))
    with serve_app(app) as url:
        yield LiveAPI(url, small, app)


def _aggregating(entry: dict[str, object]) -> bool:
    return any(marker in str(entry["body"]) for marker in AGGREGATION_MARKERS)


def test_each_stage_reaches_its_backend_and_usage_splits(
    routed_api: LiveAPI, two_models: tuple[ModelServerHandle, ModelServerHandle]
) -> None:
    small, big = two_models
    with routed_api.client() as client:
        job = client.jobs.create(
            "Route me. ANSWER=12",
            backend="small",
            aggregation_backend="big",
            final_backend="small",
            seed=4,
            **PARAMS,
        )
        job = client.jobs.wait(job.id, timeout=60)
        steps = client.jobs.steps(job.id).data
    assert job.status == "completed" and job.result is not None
    assert (job.params.aggregation_backend, job.params.final_backend) == ("big", "small")

    on_small, on_big = small.requests(), big.requests()
    # Round 0 (the bare problem) and round 2 (the final stage, its own budget) on `small`; round 1 on `big`.
    assert (
        sorted((_aggregating(e), e["body"]["max_tokens"]) for e in on_small) == [(False, 200)] * 4 + [(True, 300)] * 4
    )
    assert [(_aggregating(e), e["body"]["max_tokens"]) for e in on_big] == [(True, 200)] * 4
    assert {(s.round, s.backend) for s in steps} == {(0, "small"), (1, "big"), (2, "small")}

    usage = job.result.usage_by_backend
    assert usage["big"] == sum((s.usage for s in steps if s.round == 1), Usage())
    assert usage["small"] == sum((s.usage for s in steps if s.round != 1), Usage())
    assert usage["big"] + usage["small"] == job.result.usage
