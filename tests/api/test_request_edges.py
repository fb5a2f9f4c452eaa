"""Edges of request handling an adversarial client probes: body shapes and types, truth values and infinities as
numbers, an empty idempotency key, HEAD on GET routes."""

from __future__ import annotations

import httpx2

from tests.api.conftest import KEY_A, ApiFactory

A = {"Authorization": f"Bearer {KEY_A}"}
JSON = {"content-type": "application/json"}


def test_bad_bodies_name_what_is_wrong(make_api: ApiFactory) -> None:
    api = make_api(workers=0)
    with httpx2.Client(base_url=api.url, headers=A, timeout=10) as http:
        for raw in ("[1, 2]", '"text"', '{"problem": '):
            answer = http.post("/v1/jobs", content=raw, headers=JSON)
            assert answer.status_code == 422, raw
            assert [error["field"] for error in answer.json()["errors"]] == ["body"], answer.text
        plain = http.post("/v1/jobs", content="What is 2+2?", headers={"content-type": "text/plain"})
        assert plain.status_code == 415 and plain.headers["content-type"] == "application/problem+json"
        for field, raw in (("population", "true"), ("max_wall_s", "Infinity"), ("max_wall_s", "NaN")):
            answer = http.post(
                "/v1/jobs", content=f'{{"problem": "q", "backend": "toy", "{field}": {raw}}}', headers=JSON
            )
            assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == field, answer.text
        empty_key = http.post("/v1/jobs", json={"problem": "q", "backend": "toy"}, headers={"Idempotency-Key": ""})
        assert empty_key.status_code == 422 and "idempotency-key" in empty_key.json()["errors"][0]["field"]
        assert http.get("/v1/jobs").json()["data"] == []  # nothing was created


def test_head_answers_like_get_without_a_body(make_api: ApiFactory) -> None:
    api = make_api(workers=0)
    with httpx2.Client(base_url=api.url, headers=A, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"problem": "q", "backend": "toy"}).json()["id"]
        for path in ("/healthz", "/v1/jobs", f"/v1/jobs/{job_id}"):
            got, head = http.get(path), http.head(path)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"]
        assert http.head("/v1/jobs/job_nope").status_code == 404
