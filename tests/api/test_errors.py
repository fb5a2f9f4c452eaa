"""Auth, tenant isolation, idempotency and every documented error status, as problem+json over real HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import redis

from rsa_service.client import ConflictError, NotFoundError, UnprocessableEntityError
from rsa_service.jobs.keys import STORE_FORMAT_VERSION, Keys
from tests.api.conftest import KEY_A, KEY_B, SMALL, ApiFactory, LiveAPI
from tests.conftest import RedisServer

A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
PROBLEM_FIELDS = {"type", "title", "status", "detail"}


def _problem(response: httpx2.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_FIELDS and body["status"] == status
    return body


@pytest.fixture
def idle(make_api: ApiFactory) -> LiveAPI:
    """An API with no workers: jobs stay queued."""
    return make_api(workers=0, max_active_jobs=3, max_body_bytes=20_000)


def test_auth_and_tenant_isolation(idle: LiveAPI) -> None:
    with httpx2.Client(base_url=idle.url, timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY_A}"}):
            body = _problem(http.get("/v1/jobs", headers=headers), 401)
            assert "API key" in str(body["detail"])
        created = http.post("/v1/jobs", json={"problem": "mine", "backend": "toy"}, headers=A)
        assert created.status_code == 202 and created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
        job_id = created.json()["id"]
        for method, path in (
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/steps"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("DELETE", f"/v1/jobs/{job_id}"),
        ):
            _problem(http.request(method, path, headers=B), 404)
        assert http.get("/v1/jobs", headers=B).json()["data"] == []
        assert [j["id"] for j in http.get("/v1/jobs", headers=A).json()["data"]] == [job_id]
        assert http.get(f"/v1/jobs/{job_id}", headers=A).headers["retry-after"] == "1"
        assert http.get("/healthz").status_code == 200  # health needs no key


def test_validation_errors_name_the_field(idle: LiveAPI) -> None:
    cases = [
        ({"problem": "p", "backend": "openai:http://evil/v1"}, "backend"),
        ({"problem": "p", "backend": "/etc/passwd"}, "backend"),
        ({"problem": "p", "backend": "nope"}, "backend"),
        ({"problem": "p", "backend": "toy", "final_backend": "nope"}, "final_backend"),
        ({"problem": "p", "backend": "toy", "initial_backend": "openai:http://evil/v1"}, "initial_backend"),
        ({"problem": "p", "backend": "toy", "population": 2, "subset": 3}, "subset"),
        ({"problem": "p", "backend": "toy", "population": 65}, "population"),
        ({"problem": "p", "backend": "toy", "rounds": -1}, "rounds"),
        ({"problem": "p", "backend": "toy", "base_url": "http://x"}, "base_url"),
        ({"problem": "   ", "backend": "toy"}, "problem"),
        ({"backend": "toy"}, "problem"),
    ]
    with httpx2.Client(base_url=idle.url, headers=A, timeout=10) as http:
        for body, field in cases:
            problem = _problem(http.post("/v1/jobs", json=body), 422)
            assert field in [e["field"] for e in problem["errors"]], (body, problem)  # type: ignore[union-attr]
        _problem(http.get("/v1/jobs", params={"after": "!!"}), 422)
        _problem(http.get("/v1/jobs", params={"status": "bogus"}), 422)
        _problem(http.get("/v1/jobs/job_missing"), 404)
        big = _problem(http.post("/v1/jobs", json={"problem": "x" * 30_000, "backend": "toy"}), 413)
        assert "20000 bytes" in str(big["detail"])


def test_running_job_limit_429_and_delete_conflict(idle: LiveAPI) -> None:
    with httpx2.Client(base_url=idle.url, headers=A, timeout=10) as http:
        ids = [http.post("/v1/jobs", json={"problem": f"p{n}", "backend": "toy"}).json()["id"] for n in range(3)]
        limited = http.post("/v1/jobs", json={"problem": "one more", "backend": "toy"})
        _problem(limited, 429)
        assert limited.headers["retry-after"] == "5"
        assert http.post("/v1/jobs", json={"problem": "other tenant", "backend": "toy"}, headers=B).status_code == 202
        conflict = _problem(http.delete(f"/v1/jobs/{ids[0]}"), 409)
        assert "cancel" in str(conflict["detail"])
        assert http.post(f"/v1/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"
        assert http.post(f"/v1/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"  # idempotent
        assert http.post("/v1/jobs", json={"problem": "room again", "backend": "toy"}).status_code == 202
        assert http.delete(f"/v1/jobs/{ids[0]}").json() == {"id": ids[0], "object": "job.deleted", "deleted": True}
        _problem(http.get(f"/v1/jobs/{ids[0]}"), 404)
        page = http.get("/v1/jobs", params={"status": "queued", "limit": 2}).json()
        assert len(page["data"]) == 2 and page["has_more"]
        rest = http.get("/v1/jobs", params={"status": "queued", "after": page["next_cursor"]}).json()
        assert len(rest["data"]) == 1 and not rest["has_more"]
        listed = [j["id"] for j in page["data"] + rest["data"]]
        assert ids[0] not in listed and set(ids[1:]) <= set(listed)


def test_idempotent_create_under_concurrent_retries(idle: LiveAPI) -> None:
    body = {"problem": "once only", "backend": "toy", **SMALL}
    headers = A | {"Idempotency-Key": "batch-7"}

    def post(_: int) -> httpx2.Response:
        with httpx2.Client(base_url=idle.url, timeout=10) as http:
            return http.post("/v1/jobs", json=body, headers=headers)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    statuses = sorted({r.status_code for r in answers})
    assert set(statuses) <= {202, 409}, statuses
    ids = {r.json()["id"] for r in answers if r.status_code == 202}
    assert len(ids) == 1
    for r in answers:
        if r.status_code == 409:
            assert r.headers["retry-after"] == "1"
    # the SDK retries a 409 and gets the same job back
    with idle.client() as client:
        again = client.jobs.create("once only", backend="toy", idempotency_key="batch-7", **SMALL)
        assert again.id in ids
        assert [job.id for job in client.jobs.list()] == [again.id]
        with pytest.raises(UnprocessableEntityError) as reused:
            client.jobs.create("a different body", backend="toy", idempotency_key="batch-7")
        assert "different request body" in str(reused.value)
        with pytest.raises(NotFoundError):
            client.jobs.get("job_nope")
        with pytest.raises(ConflictError):
            client.jobs.delete(again.id)  # not finished; the server says not to retry
    with httpx2.Client(base_url=idle.url, timeout=10) as http:
        replay = http.post("/v1/jobs", json=body, headers=headers)
        assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
        other = http.post("/v1/jobs", json=body, headers=B | {"Idempotency-Key": "batch-7"})
        assert other.status_code == 202 and other.json()["id"] not in ids  # keys are per tenant


def test_readiness_reports_an_unreachable_backend(make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    api = make_api(workers=0, readiness_timeout_s=1, readiness_cache_s=0)
    with httpx2.Client(base_url=api.url, timeout=10) as http:
        assert http.get("/readyz").json()["status"] == "ready"
        api.app.state.backends.settings.backends["dead"] = "openai:http://127.0.0.1:9/v1"
        body = _problem(http.get("/readyz"), 503)
        assert "backend dead" in str(body["detail"])
        metrics = http.get("/metrics").text
        assert 'rsa_http_requests_total{method="GET",route="/readyz",status="503"}' in metrics
        assert "rsa_jobs_created_total" in metrics


def test_a_job_of_a_newer_stored_format_is_503_not_500(
    idle: LiveAPI, redis_server: RedisServer, namespace: str
) -> None:
    created = httpx2.post(f"{idle.url}/v1/jobs", json={"problem": "2+2?", **SMALL}, headers=A)
    job_id = created.json()["id"]
    with redis.Redis.from_url(redis_server.url) as client:  # as a newer release would have written it
        client.hset(Keys(namespace).job(job_id).meta, "v", STORE_FORMAT_VERSION + 1)
    body = _problem(httpx2.get(f"{idle.url}/v1/jobs/{job_id}", headers=A), 503)
    assert "stored format" in str(body["detail"])
