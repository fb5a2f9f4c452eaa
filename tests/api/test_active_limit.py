"""The per-tenant limit of unfinished jobs over real HTTP: concurrent creates cannot pass it, and a tenant's count
is back to 0 once its jobs have ended."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx2
import redis

from rsa_service.api.server_settings import tenant_of
from rsa_service.jobs.keys import Keys
from tests.api.conftest import KEY_A, SMALL, ApiFactory
from tests.conftest import RedisServer

A = {"Authorization": f"Bearer {KEY_A}"}


def unfinished(redis_server: RedisServer, namespace: str) -> int:
    with redis.Redis.from_url(redis_server.url) as client:
        return int(client.zcard(Keys(namespace).active(tenant_of(KEY_A))))


def test_concurrent_creates_admit_exactly_the_limit(
    make_api: ApiFactory, redis_server: RedisServer, namespace: str
) -> None:
    api = make_api(workers=0, max_active_jobs=3)

    def post(n: int) -> httpx2.Response:
        with httpx2.Client(base_url=api.url, headers=A, timeout=10) as http:
            return http.post("/v1/jobs", json={"problem": f"p{n}", "backend": "toy"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    admitted = [r.json()["id"] for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code != 202]
    assert len(admitted) == 3
    assert {r.status_code for r in refused} == {429}
    assert all(r.headers["retry-after"] == "5" and "3 unfinished jobs" in r.json()["detail"] for r in refused)
    with httpx2.Client(base_url=api.url, headers=A, timeout=10) as http:
        assert len(http.get("/v1/jobs").json()["data"]) == 3  # a refused create left nothing behind
        for job_id in admitted:
            assert http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        assert unfinished(redis_server, namespace) == 0
        assert http.post("/v1/jobs", json={"problem": "room again", "backend": "toy"}).status_code == 202


def test_completed_jobs_leave_the_count(make_api: ApiFactory, redis_server: RedisServer, namespace: str) -> None:
    api = make_api(workers=2, max_active_jobs=2)
    with api.client() as client:
        jobs = [client.jobs.create(f"What is {n}+{n}?", backend="toy", **SMALL) for n in range(2)]
        assert unfinished(redis_server, namespace) == 2
        assert [client.jobs.wait(job.id, timeout=60).status for job in jobs] == ["completed", "completed"]
    assert unfinished(redis_server, namespace) == 0
