"""The corner modes of Markovian RSA through the REST API, against a real Redis and the HTTP model server:
K=1 continuation, the aggregate final stage, the survivors rule, and full-chain candidates."""

from __future__ import annotations

import httpx2
import pytest

from tests.api.conftest import KEY_A, SMALL, LiveAPI

PROBLEM = "Continue it. ANSWER=12"


def test_k1_refines_each_slots_own_lineage(api: LiveAPI) -> None:
    with api.client() as client:
        job = client.jobs.create(PROBLEM, backend="toy", **(SMALL | {"population": 8, "subset": 1, "rounds": 2}))
        assert client.jobs.wait(job.id, timeout=60).status == "completed"
        steps = client.jobs.steps(job.id).data
    aggregations = [step for step in steps if step.round > 0]
    assert len(aggregations) == 16
    assert all(step.candidates == [step.slot] for step in aggregations)


def test_aggregate_final_stage_is_final_n_low_temperature_aggregations(api: LiveAPI) -> None:
    api.model.reset()
    params = SMALL | {"rounds": 2, "select": "aggregate", "final_n": 3}
    with api.client() as client:
        job = client.jobs.create(PROBLEM, backend="toy", **params)
        done = client.jobs.wait(job.id, timeout=60)
        steps = client.jobs.steps(job.id).data
    assert done.status == "completed" and done.progress.steps_total == 4 + 4 + 3
    assert [step.position for step in steps if step.round == 2] == ["r2:s0", "r2:s1", "r2:s2"]
    requests = api.model.requests()
    assert len(requests) == 11  # no N-trace final stage and no extra call on top of it
    final = [r["body"] for r in requests if r["body"]["max_tokens"] == SMALL["final_tokens"]]
    assert len(final) == 3 and all(body["temperature"] == 0.6 and body["top_p"] == 0.95 for body in final)
    assert all("Candidate 2" in body["messages"][-1]["content"] for body in final)
    assert done.result is not None and done.result.rounds[-1].round == 2
    votes = [step.answer for step in steps if step.round == 2]
    assert done.result.answer in votes


def test_quorum_below_k_is_refused_when_the_job_is_created(api: LiveAPI) -> None:
    body = {"problem": PROBLEM, "backend": "toy", **SMALL, "population": 8, "subset": 4}
    body |= {"round_deadline_s": 1, "straggler_policy": "quorum", "quorum": 0.25}
    response = httpx2.post(f"{api.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 422
    assert "quorum (0.25 of N=8 = 2 traces) must leave at least K=4 survivors" in response.json()["detail"]


@pytest.mark.parametrize("tail_source", ["full"])
def test_full_tail_source_with_tau_equal_beta_carries_whole_chains(api: LiveAPI, tail_source: str) -> None:
    params = SMALL | {"rounds": 1, "tail_tokens": 200, "trace_tokens": 200, "tail_source": tail_source}
    with api.client() as client:
        job = client.jobs.create(PROBLEM, backend="toy", **params)
        assert client.jobs.wait(job.id, timeout=60).status == "completed"
        steps = client.jobs.steps(job.id).data
    first = [step for step in steps if step.round == 0]
    assert all(step.tail == f"{step.reasoning}\n\n{step.text}" for step in first)
    assert all(step.reasoning and step.text for step in first)
    aggregation = next(step for step in steps if step.round == 1)
    assert all(first[c].tail in (aggregation.prompt or "") for c in aggregation.candidates)
