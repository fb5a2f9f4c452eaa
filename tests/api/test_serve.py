"""`rsa serve --processes N`: several API processes on one port, any of them answering for any job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx2
import psutil

from tests.api.conftest import KEY_A
from tests.redis_topologies import RedisServer, _free_port


def test_several_processes_serve_one_port(redis_server: RedisServer, namespace: str) -> None:
    port = _free_port()
    env = {
        "RSA_REDIS_URL": redis_server.url,
        "RSA_NAMESPACE": namespace,
        "RSA_BACKENDS": json.dumps({"toy": "openai:http://127.0.0.1:9/v1"}),
        "RSA_API_KEYS": KEY_A,
    }
    argv = [sys.executable, "-m", "rsa_service.cli", "serve", "--port", str(port), "--workers", "0", "--processes", "2"]
    server = subprocess.Popen([*argv, "--log-level", "warning"], env={**_inherited(), **env})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        api_processes = [p for p in psutil.Process(server.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(api_processes) == 2
        auth = {"Authorization": f"Bearer {KEY_A}"}
        created = httpx2.post(f"{url}/v1/jobs", json={"problem": "P. ANSWER=1", "backend": "toy"}, headers=auth)
        assert created.status_code == 202
        job_id = created.json()["id"]
        for _ in range(6):  # a fresh connection each time: either process may answer
            read = httpx2.get(f"{url}/v1/jobs/{job_id}", headers=auth)
            assert read.status_code == 200 and read.json()["status"] == "queued"
    finally:
        server.terminate()
        assert server.wait(15) == 0


def _inherited() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("RSA_")}


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("rsa serve --processes 2 did not come up")
