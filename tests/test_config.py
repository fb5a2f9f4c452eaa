"""Every backend option is an operator setting, and the README's table lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from rsa_service.backends.base import BackendOptions
from rsa_service.settings import Settings, backend_options

README = Path(__file__).resolve().parents[1] / "README.md"

# A value unlike each default, for every setting that feeds a backend option.
NON_DEFAULTS = {
    "RSA_MODEL": "m",
    "RSA_BACKEND_API_KEY": "k",
    "RSA_TOKENIZER": "/t/tokenizer.json",
    "RSA_BACKEND_MAX_CONCURRENCY": "3",
    "RSA_BACKEND_REQUESTS_PER_S": "7.5",
    "RSA_BACKEND_CONNECT_TIMEOUT_S": "2",
    "RSA_BACKEND_READ_TIMEOUT_S": "90",
    "RSA_BACKEND_MAX_RETRIES": "1",
    "RSA_BACKEND_RETRY_BACKOFF_S": "0.25",
    "RSA_BACKEND_RETRY_MAX_WAIT_S": "4",
    "RSA_BACKEND_SESSION_HEADER": "x-session-token",
    "RSA_ENGINE_DTYPE": "float32",
    "RSA_ENGINE_QUANTIZE": "int8",
    "RSA_ENGINE_DEVICE": "cuda:1",
    "RSA_ENGINE_THREADS": "2",
    "RSA_ENGINE_COMPILE": "0",
}


def test_backend_options_fills_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in NON_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    options = backend_options(Settings(), None)
    unset = [name for name, field in BackendOptions.model_fields.items() if getattr(options, name) == field.default]
    assert not unset, f"BackendOptions fields no setting reaches: {unset}"
    assert options.read_timeout_s == 90 and options.device == "cuda:1" and options.compile is False


def test_defaults_are_the_backend_options_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NON_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert backend_options(Settings(), None) == BackendOptions()


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSA_ENGINE_COMPILE", "")
    assert Settings().engine_compile is None


@pytest.mark.parametrize(("name", "value"), [("RSA_ENGINE_DEVICE", "gpu"), ("RSA_BACKEND_MAX_RETRIES", "-1")])
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("RSA_").lower()):
        Settings()


def test_readme_lists_every_setting() -> None:
    documented = set(re.findall(r"`(RSA_[A-Z0-9_]+)`", README.read_text(encoding="utf-8")))
    missing = {f"RSA_{name.upper()}" for name in Settings.model_fields} - documented
    assert not missing, f"settings missing from the README's configuration table: {sorted(missing)}"
