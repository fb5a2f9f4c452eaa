"""A whole Markovian RSA job through the in-process engine: `rsa reason --backend engine:DIR`, real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import COMPILE_TIMEOUT_S

from tests.jobs.helpers import rsa

pytestmark = pytest.mark.engine


@pytest.mark.timeout(COMPILE_TIMEOUT_S)  # a subprocess that loads the engine, given 300 s of its own below
def test_rsa_job_runs_fully_in_process(tiny_checkpoint: Path, cli_env: dict[str, str]) -> None:
    args = [
        "reason",
        "What is 3 * 7 + 21?",
        "--backend",
        f"engine:{tiny_checkpoint}",
        "-n",
        "4",
        "-k",
        "2",
        "-t",
        "1",
        "--trace-tokens",
        "24",
        "--tail-tokens",
        "12",
        "--final-tokens",
        "24",
        "--seed",
        "3",
        "--json",
    ]
    done = rsa(args, cli_env | {"OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    for stats in result["rounds"]:
        assert stats["failed"] == 0
        # a random model rarely finishes: every trace runs to its budget, all 4 slots produced tokens
        assert 0 < stats["tokens"]["completion_tokens"] <= 4 * 24
        assert stats["tokens"]["prompt_tokens"] > 0
    # aggregation prompts hold the problem plus K tails, so they are longer than round 0's
    first, second = (r["tokens"]["prompt_tokens"] for r in result["rounds"])
    assert second > first
