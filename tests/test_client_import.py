"""The SDK stays light: importing it loads neither the server's libraries nor the job layer or backends."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiohttp", "redis", "jinja2", "fastapi", "starlette", "torch", "tenacity", "rsa_service.backends")
OURS_ALLOWED = ("rsa_service.client", "rsa_service.core", "rsa_service.retry", "rsa_service.wire")


def test_importing_the_sdk_loads_nothing_heavy() -> None:
    probe = "import json, sys; import rsa_service.client; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    assert [name for name in loaded if name.split(".")[0] in HEAVY or name.startswith(HEAVY)] == []
    ours = [name for name in loaded if name.startswith("rsa_service.")]
    assert [name for name in ours if not name.startswith(OURS_ALLOWED)] == []
