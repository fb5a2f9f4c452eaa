"""The bundled tiny ZAYA1: the default backend, identical to the reference, and a model on which RSA works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rsa_service.config import BUNDLED_SETTINGS_FILE
from rsa_service.tinymodel import CHECKPOINT_DIR, HELDOUT_PATH

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "config.json").is_file(), reason="no bundled checkpoint")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Measured on 200 held-out problems (model card): the final stage's mean trace accuracy beats round 0's by about
# LIFT_MEASURED points. On 50 problems of 8 traces the standard error of that difference is under 4 points, so a
# margin of half the measured lift cannot be met by a model on which aggregation does nothing.
EVAL_PROBLEMS = 50


def _rsa(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsa_service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_the_bundled_model_is_the_default_backend(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k not in {"RSA_BACKEND", "RSA_BACKENDS"}}
    done = _rsa("reason", "--example", "--json", env=env)
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(done.stdout)
    settings = json.loads((CHECKPOINT_DIR / BUNDLED_SETTINGS_FILE).read_text())
    assert result["status"] == "completed"
    assert len(result["rounds"]) == settings["rounds"] + 1
    assert all(
        sum(a["count"] for a in r["answers"]) + r["no_answer"] == settings["population"] for r in result["rounds"]
    )


def test_our_engine_and_the_reference_agree_on_greedy_tokens(cli_env: dict[str, str]) -> None:
    from rsa_service.backends.base import BackendOptions, ChatMessage, GenerationRequest
    from rsa_service.backends.engine.backend import EngineBackend

    problem = json.loads(HELDOUT_PATH.read_text().splitlines()[1])["prompt"]
    backend = EngineBackend.from_spec(str(CHECKPOINT_DIR), BackendOptions(dtype="float32", max_concurrency=1))
    request = GenerationRequest(messages=(ChatMessage(role="user", content=problem),), max_tokens=64)
    ids, _ = backend.render(request)
    done = _rsa(
        "engine",
        "generate",
        "--checkpoint",
        str(CHECKPOINT_DIR),
        "--prompt-ids",
        ",".join(map(str, ids)),
        "--max-tokens",
        "64",
        "--greedy",
        "--dtype",
        "float32",
        "--json",
        env=cli_env,
    )
    assert done.returncode == 0, done.stderr
    ours = json.loads(done.stdout)["token_ids"]
    reference = transformers.ZayaForCausalLM.from_pretrained(CHECKPOINT_DIR, dtype=torch.float32).eval()
    with torch.no_grad():
        output = reference.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)
    expected = output[0, len(ids) :].tolist()
    assert len(ours) >= 16
    assert ours == expected[: len(ours)] and len(expected) - len(ours) <= 1  # the reference may keep its EOS
