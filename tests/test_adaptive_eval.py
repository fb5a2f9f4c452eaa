"""Adaptive compute on the bundled tiny ZAYA1: the same final accuracy as plain Markovian RSA for far fewer tokens."""

from __future__ import annotations

import json

import pytest

from rsa_service.tinymodel import CHECKPOINT_DIR
from tests.jobs.helpers import rsa

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "config.json").is_file(), reason="no bundled checkpoint")
pytest.importorskip("torch")

# On the first 200 held-out problems (N=8, K=4, T=2, seed 0; benchmarks/README.md) the adaptive settings matched
# plain RSA's final accuracy and generated about a third fewer tokens: aggregated rounds that agree end the run
# before its last stage. On 50 problems, requiring 20% fewer tokens fails a setting that skips nothing (token
# totals vary by a few percent), and allowing 2 problems of accuracy fails one that stops without regard to
# agreement (stopping after round 0 costs about 13 points: majority@8 against RSA's final answer).
EVAL_PROBLEMS = 50
MIN_SAVING = 0.20
MAX_LOSS = 2 / EVAL_PROBLEMS


@pytest.mark.timeout(900)
def test_adaptive_keeps_plain_accuracy_for_fewer_tokens(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k not in {"RSA_BACKEND", "RSA_BACKENDS"}}
    args = ["eval", "--compare", "--configuration", "adaptive", "--limit", str(EVAL_PROBLEMS), "--seed", "0", "--json"]
    done = rsa(args, env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    plain, adaptive = report["configurations"]
    assert (plain["name"], adaptive["name"]) == ("plain", "adaptive")
    assert plain["failed"] == adaptive["failed"] == 0 and plain["skipped_calls"] == 0
    assert adaptive["final_accuracy"] >= plain["final_accuracy"] - MAX_LOSS, report
    assert adaptive["generated_tokens"] <= (1 - MIN_SAVING) * plain["generated_tokens"], report
    assert adaptive["skipped_calls"] > 0 and adaptive["stage_accuracy"][0] == plain["stage_accuracy"][0]
