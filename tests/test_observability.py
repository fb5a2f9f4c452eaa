"""Structured logs carry the job context they were logged in; spans cost nothing unless turned on."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from rsa_service import observability
from rsa_service.observability import (
    CONTEXT_FIELDS,
    ObservabilitySettings,
    configure_logging,
    configure_tracing,
    current_context,
    log_context,
    span,
)

log = logging.getLogger("rsa_service.test")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger; put it back, and turn tracing off again."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    configure_tracing(ObservabilitySettings(otel=False))


class Stderr:
    """What the configured handler wrote (it writes to sys.stderr, which pytest captures during the test)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.seen = ""

    def getvalue(self) -> str:
        self.seen += self.capsys.readouterr().err
        return self.seen


@pytest.fixture
def stream(capsys: pytest.CaptureFixture[str]) -> Stderr:
    return Stderr(capsys)


def records(stream: Stderr) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def json_logging(level: str = "DEBUG") -> None:
    configure_logging(ObservabilitySettings(log_format="json", log_level=level))


def test_json_record_has_the_basics_and_every_context_field(stream: Stderr) -> None:
    json_logging()
    with log_context(job_id="job_1", round=2, slot=5, worker="host/1234/ab", fence=7):
        log.info("committed %s", "r2:s5")
    (record,) = records(stream)
    assert record["level"] == "INFO" and record["logger"] == "rsa_service.test"
    assert record["message"] == "committed r2:s5"
    assert datetime.fromisoformat(record["timestamp"]).utcoffset() is not None
    assert {key: record[key] for key in CONTEXT_FIELDS} == {
        "job_id": "job_1",
        "round": 2,
        "slot": 5,
        "worker": "host/1234/ab",
        "fence": 7,
    }


def test_contexts_nest_and_unwind(stream: Stderr) -> None:
    json_logging()
    with log_context(job_id="job_1", worker="w1"):
        with log_context(round=0, slot=None):
            log.info("inner")
            assert current_context() == {"job_id": "job_1", "worker": "w1", "round": 0}
        log.info("outer")
    log.info("none")
    inner, outer, none = records(stream)
    assert inner["round"] == 0 and "slot" not in inner, "None values are not bound"
    assert "round" not in outer and outer["job_id"] == "job_1"
    assert not set(CONTEXT_FIELDS) & none.keys()
    assert current_context() == {}


def test_extra_overrides_context_and_exceptions_are_kept(stream: Stderr) -> None:
    json_logging()
    with log_context(job_id="job_1", slot=1):
        log.warning("retrying", extra={"slot": 2, "attempt": 3})
        try:
            raise RuntimeError("backend went away")
        except RuntimeError:
            log.exception("generation failed")
    retry, failure = records(stream)
    assert retry["slot"] == 2 and retry["attempt"] == 3 and retry["job_id"] == "job_1"
    assert "RuntimeError: backend went away" in failure["exception"] and failure["level"] == "ERROR"


def test_non_json_values_are_stringified(stream: Stderr) -> None:
    json_logging()
    with log_context(job_id=object.__new__(type("JobId", (), {"__str__": lambda self: "job_x"}))):
        log.info("odd value")
    (record,) = records(stream)
    assert record["job_id"] == "job_x"


async def test_tasks_keep_their_own_context(stream: Stderr) -> None:
    """Concurrent jobs in one event loop: each task's lines carry its own job, never a neighbour's."""
    json_logging()

    async def run(job_id: str, rounds: int) -> None:
        with log_context(job_id=job_id):
            for round_ in range(rounds):
                with log_context(round=round_):
                    await asyncio.sleep(0)
                    log.info("round done")

    await asyncio.gather(run("job_a", 3), run("job_b", 3))
    lines = records(stream)
    assert len(lines) == 6
    assert sorted((line["job_id"], line["round"]) for line in lines) == [
        (job, round_) for job in ("job_a", "job_b") for round_ in range(3)
    ]


async def test_tasks_started_inside_a_context_inherit_it(stream: Stderr) -> None:
    json_logging()
    with log_context(job_id="job_1", round=1):
        await asyncio.gather(*(asyncio.create_task(_generate(slot)) for slot in range(2)))
    assert sorted((line["job_id"], line["round"], line["slot"]) for line in records(stream)) == [
        ("job_1", 1, 0),
        ("job_1", 1, 1),
    ]


async def _generate(slot: int) -> None:
    with log_context(slot=slot):
        await asyncio.sleep(0)
        log.info("generated")


def test_text_format_appends_the_context(stream: Stderr) -> None:
    configure_logging(ObservabilitySettings(log_format="text"))
    with log_context(job_id="job_1", round=0):
        log.info("hello")
    log.info("plain")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("rsa_service.test: hello [job_id=job_1 round=0]")
    assert second.endswith("rsa_service.test: plain")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSA_LOG_FORMAT", "json")
    monkeypatch.setenv("RSA_LOG_LEVEL", "debug")
    monkeypatch.setenv("RSA_OTEL", "true")
    settings = ObservabilitySettings()
    assert (settings.log_format, settings.log_level, settings.otel) == ("json", "DEBUG", True)
    monkeypatch.setenv("RSA_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        ObservabilitySettings()
    with pytest.raises(ValidationError, match="unknown log level"):
        ObservabilitySettings(log_format="json", log_level="loud")


def test_level_and_a_single_handler(stream: Stderr) -> None:
    configure_logging(ObservabilitySettings(log_format="json", log_level="WARNING"))
    configure_logging(ObservabilitySettings(log_format="json", log_level="WARNING"))
    log.info("dropped")
    log.warning("kept")
    assert [line["message"] for line in records(stream)] == ["kept"], "one handler, at the configured level"
    configure_logging(ObservabilitySettings(log_format="json"), level="debug")
    assert logging.getLogger().level == logging.DEBUG, "an explicit --log-level wins over the setting"


def test_per_request_http_logs_only_at_debug(stream: Stderr) -> None:
    http = logging.getLogger("httpx2")
    try:
        json_logging("INFO")
        http.info("HTTP Request: POST http://llm/v1/chat/completions")
        http.warning("kept")
        json_logging("DEBUG")
        http.info("HTTP Request: shown when debugging")
        assert [line["message"] for line in records(stream)] == ["kept", "HTTP Request: shown when debugging"]
    finally:
        http.setLevel(logging.NOTSET)


# ---- spans --------------------------------------------------------------------------------------------------


def test_span_is_a_no_op_when_not_enabled() -> None:
    assert configure_tracing(ObservabilitySettings(otel=False)) is False
    with span("job", job_id="job_1") as current:
        assert current is None


def test_span_is_a_no_op_without_opentelemetry(monkeypatch: pytest.MonkeyPatch, stream: Stderr) -> None:
    for name in [name for name in sys.modules if name == "opentelemetry" or name.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry → ImportError
    json_logging()
    assert configure_tracing(ObservabilitySettings(otel=True)) is False
    with span("job", job_id="job_1") as job, span("round", round=0) as round_:
        assert job is None and round_ is None
        log.info("inside")
    (record,) = [line for line in records(stream) if line["message"] == "inside"]
    assert "trace_id" not in record


def test_span_with_the_opentelemetry_api() -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    assert configure_tracing(ObservabilitySettings(otel=True)) is True
    with span("generation", job_id="job_1", round=0, slot=3, tokens=None) as current:
        assert isinstance(current, trace.Span)


class RecordingTracer:
    """Stands in for an SDK tracer: records names, attributes and nesting."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, dict[str, Any], str | None]] = []
        self._stack: list[str] = []

    @contextmanager
    def start_as_current_span(self, name: str, attributes: dict[str, Any]) -> Iterator[str]:
        self.opened.append((name, attributes, self._stack[-1] if self._stack else None))
        self._stack.append(name)
        try:
            yield name
        finally:
            self._stack.pop()


def test_spans_nest_and_attributes_are_otel_types(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = RecordingTracer()
    monkeypatch.setattr(observability._tracing, "tracer", tracer)
    monkeypatch.setattr(observability, "_trace_ids", dict)
    with span("job", job_id="job_1", backend=None), span("round", round=1), span("generation", slot=2, temp=0.6):
        pass
    with span("job", params={"n": 16}):
        pass
    assert tracer.opened == [
        ("job", {"job_id": "job_1"}, None),
        ("round", {"round": 1}, "job"),
        ("generation", {"slot": 2, "temp": 0.6}, "round"),
        ("job", {"params": "{'n': 16}"}, None),
    ]
