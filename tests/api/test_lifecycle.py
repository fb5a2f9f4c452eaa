"""The whole job lifecycle through the SDK over real HTTP: create → events → wait → steps → list → delete."""

from __future__ import annotations

from rsa_service.client import Job
from tests.api.conftest import SMALL, LiveAPI


def test_lifecycle_through_the_sdk(api: LiveAPI) -> None:
    with api.client() as client:
        job = client.jobs.create("Compute it. ANSWER=70", backend="toy", **SMALL)
        assert job.status in ("queued", "in_progress") and job.backend == "toy" and job.params.population == 4
        assert job.progress.steps_total == 8
        kinds = [event.type for event in client.jobs.events(job.id)]
        assert kinds[0] == "queued" and kinds[-1] == "completed"
        assert kinds.count("step") == 8 and kinds.count("round") == 2
        done: Job = client.jobs.wait(job.id, timeout=30)
        assert done.status == "completed" and done.result is not None
        assert done.result.answer is not None and done.result.job_id == job.id
        assert done.progress.steps_done == 8 and done.progress.completion_tokens == done.result.usage.completion_tokens
        steps = client.jobs.steps(job.id).data
        assert [s.position for s in steps][:4] == ["r0:s0", "r0:s1", "r0:s2", "r0:s3"]
        assert steps[0].prompt == "Compute it. ANSWER=70"
        aggregation = steps[4]
        assert len(aggregation.candidates) == 2 and "Candidate 2" in (aggregation.prompt or "")
        assert all(steps[c].tail in (aggregation.prompt or "") for c in aggregation.candidates)
        sent = {r["body"]["messages"][0]["content"] for r in api.model.requests()}
        assert all(step.prompt in sent for step in steps)  # the rebuilt prompts are exactly what the model saw
        assert [j.id for j in client.jobs.list()] == [job.id]
        assert client.jobs.cancel(job.id).status == "completed"  # cancelling a finished job changes nothing
        client.jobs.delete(job.id)
        assert list(client.jobs.list()) == []
