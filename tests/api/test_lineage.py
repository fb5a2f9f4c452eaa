"""The lineage API the web UI draws from: the graph with math-equivalent answer clusters, one step with where its
tail begins, the configured backends; each behind the same tenant wall as every job route."""

from __future__ import annotations

import httpx2

from rsa_service.api.lineage import answer_clusters
from rsa_service.core.steps import StepResult
from tests.api.conftest import KEY_A, KEY_B, SMALL, ApiFactory


def test_equivalent_spellings_share_a_cluster_in_first_seen_order() -> None:
    answers = ["1/2", "7", None, "0.5", "\\frac{1}{2}", "7.0"]
    steps = [StepResult(round=0, slot=i, answer=a) for i, a in enumerate(answers)]
    clusters, of_step = answer_clusters(steps)
    assert of_step == [0, 1, None, 0, 0, 1]
    assert [(c.label, c.answers, c.count) for c in clusters] == [
        ("1/2", ["1/2", "0.5", "\\frac{1}{2}"], 3),
        ("7", ["7", "7.0"], 2),
    ]


def test_graph_and_step_of_a_finished_job(make_api: ApiFactory) -> None:
    api = make_api()
    with api.client() as client:
        job = client.jobs.create(problem="Add. ANSWER=42", backend="toy", **SMALL)
        client.jobs.wait(job.id, timeout=60)
    auth = {"Authorization": f"Bearer {KEY_A}"}
    with httpx2.Client(base_url=api.url, headers=auth) as http:
        graph = http.get(f"/v1/jobs/{job.id}/graph").json()
        events = http.get(f"/v1/jobs/{job.id}/events").text
        step = http.get(f"/v1/jobs/{job.id}/steps/r0:s1").json()
        missing = http.get(f"/v1/jobs/{job.id}/steps/r9:s0")
        backends = http.get("/v1/backends").json()
    assert [(n["round"], n["slot"]) for n in graph["nodes"]] == [(r, s) for r in range(2) for s in range(4)]
    assert all(len(n["candidates"]) == SMALL["subset"] for n in graph["nodes"] if n["round"] == 1)
    assert f"id: {graph['last_event_id']}" in events  # the stream's last event, read with the steps
    assert sum(c["count"] for c in graph["clusters"]) == sum(1 for n in graph["nodes"] if n["answer"] is not None)
    source = step[step["tail_field"]]
    assert source[step["tail_start"] :] == step["tail"] != ""
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert [b["name"] for b in backends["data"]] == ["toy"] and backends["data"][0]["default"]
    assert backends["limits"]["max_population"] >= 1
    with httpx2.Client(base_url=api.url, headers={"Authorization": f"Bearer {KEY_B}"}) as other:
        assert other.get(f"/v1/jobs/{job.id}/graph").status_code == 404
        assert other.get(f"/v1/jobs/{job.id}/steps/r0:s0").status_code == 404
