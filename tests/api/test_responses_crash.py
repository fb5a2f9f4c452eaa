"""A background response survives its worker: `rsa worker` processes run it, one is SIGKILLed mid-round, and the
response still completes, its usage counting every committed generation once."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from rsa_service.api import ApiSettings, create_app, named_backends
from rsa_service.jobs.store import JobStore
from rsa_service.settings import Settings
from tests.api.conftest import KEY_A, SMALL, serve_app
from tests.conftest import RedisServer
from tests.jobs.helpers import WorkerProcess, claims, step_events, wait_until, worker_env
from tests.modelserver import ModelServerConfig, serve_in_thread

pytestmark = pytest.mark.slow


async def test_a_worker_killed_mid_response_the_response_still_completes(
    store: JobStore, redis_server: RedisServer, namespace: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with serve_in_thread(ModelServerConfig(latency_ms=300, reasoning_words=40)) as model:
        backends: dict[str, str | list[str]] = {"toy": f"openai:{model.base_url}"}
        shared = named_backends(Settings(redis_url=redis_server.url, namespace=namespace, backends=backends))
        env = worker_env(cli_env, lease_s=2.0, worker_concurrency=8, backends=json.dumps(backends))
        workers = [WorkerProcess(env, tmp_path / f"worker{i}.log") for i in range(2)]
        try:
            with serve_app(create_app(ApiSettings(api_keys=[KEY_A]), shared)) as url:
                oai = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY_A, max_retries=0)
                created = await oai.responses.create(
                    model="toy", input="Survive. ANSWER=31", background=True, extra_body={"rsa": SMALL | {"rounds": 2}}
                )
                job_id = created.model_extra["rsa"]["job_id"]  # type: ignore[index]
                await wait_until(lambda: _committed(store, job_id, 5), 30, "round 1 under way")
                owner = (await claims(store, job_id))[0]["owner"]
                next(w for w in workers if w.pid == int(owner.split("/")[1])).kill()

                async def finished() -> openai.types.responses.Response | None:
                    response = await oai.responses.retrieve(created.id)
                    return None if response.status in ("queued", "in_progress") else response

                done = await wait_until(finished, 60, "the response to finish", poll_s=0.2)
                await oai.close()
        finally:
            for worker in workers:
                worker.stop()
    assert done.status == "completed" and done.output_text and len(await claims(store, job_id)) >= 2
    assert set((await step_events(store, job_id)).values()) == {1}  # each step committed once
    steps = (await store.steps(job_id)).values()
    assert done.usage is not None and len(steps) == 3 * SMALL["population"]
    assert done.usage.output_tokens == sum(step.usage.completion_tokens for step in steps)
    assert done.usage.input_tokens == sum(step.usage.prompt_tokens for step in steps)


async def _committed(store: JobStore, job_id: str, count: int) -> bool:
    return await store.step_count(job_id) >= count
