"""Server-sent events: resumable with Last-Event-ID, nothing lost or repeated, keep-alive pings."""

from __future__ import annotations

import httpx2
import redis

from rsa_service.client import RSAClient
from rsa_service.jobs.keys import Keys
from tests.api.conftest import KEY_A, SMALL, LiveAPI
from tests.conftest import RedisServer

AUTH = {"Authorization": f"Bearer {KEY_A}"}


def _stream_ids(redis_server: RedisServer, namespace: str, job_id: str) -> list[str]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        return [entry_id for entry_id, _ in client.xrange(Keys(namespace).job(job_id).events)]


class DropAfter(httpx2.BaseTransport):
    """Cuts the first `drops` event streams after `lines` lines, as a proxy or flaky network would."""

    def __init__(self, lines: int, drops: int) -> None:
        self.inner = httpx2.HTTPTransport()
        self.lines = lines
        self.drops = drops
        self.resumed_from: list[str | None] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.resumed_from.append(request.headers.get("last-event-id"))
        if self.drops <= 0:
            return response
        self.drops -= 1
        return httpx2.Response(response.status_code, headers=response.headers, stream=_Cut(response, self.lines))


class _Cut(httpx2.SyncByteStream):
    def __init__(self, response: httpx2.Response, lines: int) -> None:
        self.response = response
        self.lines = lines

    def __iter__(self):  # type: ignore[no-untyped-def]
        seen = 0
        for chunk in self.response.stream:  # type: ignore[union-attr]
            for line in chunk.splitlines(keepends=True):
                yield line
                seen += 1
                if seen >= self.lines:
                    raise httpx2.ReadError("connection dropped")

    def close(self) -> None:
        self.response.close()


def test_sdk_events_resume_after_dropped_connections(api: LiveAPI, redis_server: RedisServer, namespace: str) -> None:
    transport = DropAfter(lines=7, drops=3)
    with RSAClient(base_url=api.url, api_key=KEY_A, transport=transport) as client:
        job = client.jobs.create("Resume me. ANSWER=5", backend="toy", **SMALL)
        seen = [event.id for event in client.jobs.events(job.id)]
    expected = _stream_ids(redis_server, namespace, job.id)
    assert seen == expected  # every event exactly once, in order
    assert len(transport.resumed_from) == 4 and transport.resumed_from[0] is None
    assert all(resumed in expected for resumed in transport.resumed_from[1:])


def test_last_event_id_over_raw_http_and_keepalive(make_api, redis_server: RedisServer, namespace: str) -> None:  # type: ignore[no-untyped-def]
    api = make_api(workers=0, sse_ping_s=0.2)
    with httpx2.Client(base_url=api.url, headers=AUTH, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"problem": "q", "backend": "toy"}).json()["id"]
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
            events = Keys(namespace).job(job_id).events
            extra = [client.xadd(events, {"type": "note", "data": f'{{"n": {n}}}'}) for n in range(3)]
        first = _stream_ids(redis_server, namespace, job_id)[0]
        http.post(f"/v1/jobs/{job_id}/cancel")  # a queued job is cancelled at once: its terminal event ends the stream
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": extra[0]}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            ids = [line.removeprefix("id: ") for line in response.iter_lines() if line.startswith("id: ")]
        assert ids == _stream_ids(redis_server, namespace, job_id)[2:]  # strictly after extra[0]
        assert first not in ids
        # a live stream with nothing happening sends keep-alive comments
        other = http.post("/v1/jobs", json={"problem": "q2", "backend": "toy"}).json()["id"]
        newest = _stream_ids(redis_server, namespace, other)[-1]
        with http.stream("GET", f"/v1/jobs/{other}/events", headers={"Last-Event-ID": newest}) as live:
            lines = []
            for line in live.iter_lines():
                lines.append(line)
                if line.startswith(":"):
                    break
        assert any(line.startswith(": ping") for line in lines)
        for bad_id in ("nope", "99999999999999-0", f"0-{2**64}"):
            bad = http.get(f"/v1/jobs/{other}/events", headers={"Last-Event-ID": bad_id})
            assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "Last-Event-ID"
