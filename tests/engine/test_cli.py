"""`engine generate` through typer's CliRunner on the sub-app itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner

from rsa_service.backends.engine.batcher import GenSequence
from rsa_service.backends.engine.cli import engine_app
from rsa_service.backends.engine.sampling import SamplingParams

pytestmark = pytest.mark.engine


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(engine_app, ["generate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_greedy_json_prints_only_generated_tokens(tiny_checkpoint: Path, open_engine) -> None:
    code, out, _ = _invoke(
        "--checkpoint", str(tiny_checkpoint), "--prompt-ids", "5,6,7,8", "--max-tokens", "9",
        "--greedy", "--dtype", "float32", "--json",
    )  # fmt: skip
    assert code == 0
    payload = json.loads(out)
    _, _, batcher = open_engine(tiny_checkpoint)
    (seq,) = batcher.generate([GenSequence([5, 6, 7, 8], SamplingParams(max_tokens=9, temperature=0))])
    assert payload["token_ids"] == seq.output_ids
    assert isinstance(payload["text"], str)


def test_seeded_text_prompt_is_reproducible(tiny_checkpoint: Path) -> None:
    args = ("--checkpoint", str(tiny_checkpoint), "--prompt", "What is 3 * 7?", "--max-tokens", "6", "--seed", "3")
    first, second = _invoke(*args, "--json"), _invoke(*args, "--json")
    assert first[0] == 0 and first == second
    assert 0 < len(json.loads(first[1])["token_ids"]) <= 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prompt-ids", "1,x"), "--prompt-ids: '1,x' is not a comma-separated list of integers"),
        (("--prompt-ids", "1,99999"), "--prompt-ids: 99999 is outside the vocabulary"),
        (("--prompt-ids", "1", "--prompt", "hi"), "give exactly one of --prompt or --prompt-ids"),
    ],
)
def test_bad_input_exits_with_one_clear_line(tiny_checkpoint: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = _invoke("--checkpoint", str(tiny_checkpoint), "--max-tokens", "3", *args)
    (line,) = err.strip().splitlines()
    assert code != 0 and out == ""
    assert line.startswith(f"error: {message}")


def test_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    code, _, err = _invoke("--checkpoint", str(tmp_path / "nope"), "--prompt", "hi", "--max-tokens", "3")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "is not a directory" in err
