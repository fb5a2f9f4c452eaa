"""Structured logs and optional OpenTelemetry spans, with job context carried by contextvars.

A worker handles many jobs at once in one event loop, so a log line is only useful if it says which job, round
and slot it is about. `log_context(job_id=..., round=...)` binds those fields for the code inside it (and for the
asyncio tasks it starts: tasks copy the context when created); every record logged there carries them, as JSON
keys (`RSA_LOG_FORMAT=json`, for log shippers) or as a `[job_id=... round=...]` suffix (`text`, for terminals).

`span(name, **attributes)` opens an OpenTelemetry span (job → round → generation nest through the same context
mechanism) only when `RSA_OTEL` is on and the `opentelemetry` package is importable; otherwise it costs a function
call and does nothing, so call sites need no guards. With `opentelemetry-sdk` (and an OTLP exporter) installed,
`configure_tracing` installs a provider that exports to `OTEL_EXPORTER_OTLP_ENDPOINT`; with the API alone it uses
whatever provider the process has (e.g. one set up by `opentelemetry-instrument`).

Wire once per process: `configure_observability(ObservabilitySettings())` at the start of `rsa serve` and
`rsa worker` (instead of `logging.basicConfig`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONTEXT_FIELDS = ("job_id", "round", "slot", "worker", "fence")
TRACER_NAME = "rsa_service"
_HANDLER_NAME = "rsa-observability"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is worth emitting
# (uvicorn's `color_message` duplicates the message with ANSI codes).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}
log = logging.getLogger(__name__)

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "rsa_log_context", default=MappingProxyType({})
)


class ObservabilitySettings(BaseSettings):
    """`RSA_LOG_FORMAT`, `RSA_LOG_LEVEL`, `RSA_OTEL`: how a process logs and whether it traces."""

    model_config = SettingsConfigDict(env_prefix="RSA_", extra="ignore")

    log_format: Literal["json", "text"] = Field(default="text", description="json for log shippers, text for people.")
    log_level: str = Field(default="INFO", description="debug | info | warning | error (or a level number).")
    otel: bool = Field(default=False, description="Emit OpenTelemetry spans (needs the opentelemetry packages).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> str:
        name = str(value).strip().upper()
        if not name.isdigit() and not isinstance(logging.getLevelName(name), int):
            raise ValueError(f"unknown log level {value!r}: use debug, info, warning or error")
        return name


class _LoggingSettings(Protocol):
    @property
    def log_format(self) -> str: ...
    @property
    def log_level(self) -> str: ...


class _TracingSettings(Protocol):
    otel: bool


# ---- context ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Bind `fields` (None values ignored) to every record logged inside, on top of the enclosing context."""
    merged = MappingProxyType({**_context.get(), **{key: value for key, value in fields.items() if value is not None}})
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    """The fields bound by the enclosing `log_context` blocks."""
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (record attributes win: `extra=` overrides the context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# ---- formatters ---------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ms), level, logger, message, context fields, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = _jsonable(value)
        payload.update(_trace_ids())
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The CLI's usual line, plus the bound context as `[job_id=... round=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        bound = [f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if getattr(record, key, None) is not None]
        if not bound:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the first line
        return f"{head} [{' '.join(bound)}]{newline}{rest}"


def configure_logging(settings: _LoggingSettings | None = None, *, level: str | None = None) -> logging.Handler:
    """Send the root logger to stderr in the configured format; replaces an earlier call's handler.

    `level` (e.g. a `--log-level` flag) overrides `settings.log_level`. Returns the installed handler.
    """
    chosen: _LoggingSettings = settings or ObservabilitySettings()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if chosen.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    wanted = (level or chosen.log_level).upper()
    root.setLevel(int(wanted) if wanted.isdigit() else wanted)
    # httpx2 logs every request at INFO: one line per generation, said again by our metrics and spans. It is
    # still shown at DEBUG.
    logging.getLogger("httpx2").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    return handler


# ---- tracing ------------------------------------------------------------------------------------------------


class _Tracing:
    tracer: Any = None  # an opentelemetry Tracer while tracing is on


_tracing = _Tracing()


def _install_sdk_provider() -> None:
    """Export spans over OTLP when the SDK is installed and no provider was set; otherwise keep what exists."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.info("tracing: opentelemetry-sdk/exporter not installed; using the process's tracer provider")
        return
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # someone (e.g. opentelemetry-instrument) already configured one
    provider = TracerProvider()  # resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def configure_tracing(settings: _TracingSettings | None = None) -> bool:
    """Turn `span` on when `settings.otel` and opentelemetry imports; returns whether spans are now emitted."""
    settings = settings or ObservabilitySettings()
    _tracing.tracer = None
    if not settings.otel:
        return False
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("RSA_OTEL is on but the opentelemetry package is not installed; spans are off")
        return False
    _install_sdk_provider()
    _tracing.tracer = trace.get_tracer(TRACER_NAME)
    return True


def configure_observability(settings: ObservabilitySettings | None = None, *, level: str | None = None) -> None:
    """Logging and tracing for this process, from one settings object."""
    settings = settings or ObservabilitySettings()
    configure_logging(settings, level=level)
    configure_tracing(settings)


def _attribute(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """An OpenTelemetry span named `name` (None values dropped), current for the block; yields None when off."""
    tracer = _tracing.tracer
    if tracer is None:
        yield None
        return
    clean = {key: _attribute(value) for key, value in attributes.items() if value is not None}
    with tracer.start_as_current_span(name, attributes=clean) as current:
        yield current


def _trace_ids() -> dict[str, str]:
    """trace_id/span_id of the current span (when tracing is on and it records), to join logs to traces."""
    if _tracing.tracer is None:
        return {}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "ObservabilitySettings",
    "TextFormatter",
    "configure_logging",
    "configure_observability",
    "configure_tracing",
    "current_context",
    "log_context",
    "span",
]
