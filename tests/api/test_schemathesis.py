"""Property-based run of schemathesis against the live OpenAPI document: no 5xx, no undocumented status or
content type, responses match their schemas. Bounded for CI (few examples per operation, well under 60 s).

The server has two backends and no default, so chat pass-through answers 422 instead of forwarding fuzz to the
toy model server (whose own 500s on malformed messages would rightly come back as 502 Bad Gateway).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.settings import Settings
from tests.api.conftest import KEY_A, serve_app
from tests.conftest import RedisServer
from tests.modelserver import ModelServerHandle

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def _st() -> str:
    found = Path(sys.executable).with_name("st")
    if found.exists():
        return str(found)
    return shutil.which("st") or pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")


@pytest.mark.timeout(90)
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(
    redis_server: RedisServer, namespace: str, model_server: ModelServerHandle
) -> None:
    backends = {"toy": f"openai:{model_server.base_url}", "toy2": f"openai:{model_server.base_url}"}
    shared = named_backends(Settings(redis_url=redis_server.url, namespace=namespace, backends=backends))
    app = create_app(ApiSettings(api_keys=[KEY_A], max_active_jobs=10_000), shared)
    with serve_app(app) as url:
        run = subprocess.run(
            [
                _st(),
                "run",
                f"{url}/openapi.json",
                "--header",
                f"Authorization: Bearer {KEY_A}",
                "--checks",
                CHECKS,
                "--max-examples",
                "6",
                "--seed",
                "7",
                "--phases",
                "coverage,fuzzing",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=80,
            stdin=subprocess.DEVNULL,
        )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    operations = sum(len(methods) for methods in app.openapi()["paths"].values())  # every one was run
    assert f"{operations} passed" in run.stdout or f"Tested: {operations}" in run.stdout
