"""The engine honours its device, dtype, thread and compile settings, on RSA_TEST_DEVICE (cpu unless set; the GPU
check runs this file with cuda): the same logits there as on the CPU, eager and compiled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from conftest import COMPILE_TIMEOUT_S, TEST_DEVICE
from typer.testing import CliRunner

from rsa_service.backends.base import BackendOptions
from rsa_service.backends.engine import factory
from rsa_service.backends.engine.backend import EngineBackend
from rsa_service.backends.engine.cli import engine_app
from rsa_service.backends.engine.loader import load_model
from rsa_service.backends.engine.runner import ModelRunner

pytestmark = pytest.mark.engine


def _steps(runner: ModelRunner, vocab: int) -> torch.Tensor:
    """Prefill two rows, decode three steps (batch 2, then batch 1), score one sequence: fp32 logits on the CPU."""
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (9, 5)]
    runner.reserve(2, 32)
    steps = [runner.logits(runner.prefill([0, 1], prompts, [0, 0]))]
    for i, rows in enumerate([[0, 1], [0], [0, 1]]):
        positions = [len(prompts[row]) + i for row in rows]
        steps.append(runner.decode(rows, [5 + row for row in rows], positions))
    steps.append(runner.score(1, prompts[0]))
    return torch.cat(steps).cpu()


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def test_auto_is_cuda_where_present_else_the_cpu() -> None:
    assert factory.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert factory.resolve_device("cpu") == torch.device("cpu")
    assert factory.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_the_test_device_computes_what_the_cpu_does(checkpoints_dir: dict[str, Path]) -> None:
    directory = checkpoints_dir["tied"]
    outputs = []
    for device in (TEST_DEVICE, "cpu"):
        config, model = load_model(directory, dtype=torch.float32, device=device)
        runner = ModelRunner(model, config, compile_decode=False)
        assert runner.device.type == torch.device(device).type
        outputs.append(_steps(runner, config.vocab_size))
    assert _relative_error(*outputs) < 1e-4


@pytest.mark.timeout(COMPILE_TIMEOUT_S)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, raised while it compiles
def test_compiled_on_the_test_device_matches_eager(checkpoints_dir: dict[str, Path]) -> None:
    """On a GPU: the step compiled with inductor's CUDA graphs and no CPU-only hooks. The CPU's compiled paths have
    their own tests (test_batching, test_prefill), so this one runs only off the CPU."""
    if TEST_DEVICE == "cpu":
        pytest.skip("the CPU's compiled step is tested in test_batching and test_prefill")
    config, model = load_model(checkpoints_dir["tied"], dtype=torch.float32, device=TEST_DEVICE)
    eager, compiled = ModelRunner(model, config, compile_decode=False), ModelRunner(model, config, compile_decode=True)
    compiled.warm_up([1, 2])
    outputs = [_steps(runner, config.vocab_size) for runner in (eager, compiled)]
    assert compiled.decoder._step.compiled
    assert _relative_error(outputs[1], outputs[0]) < 1e-4


def test_the_backend_takes_device_dtype_and_threads_from_its_options(checkpoints_dir: dict[str, Path]) -> None:
    options = BackendOptions(device=TEST_DEVICE, dtype="bfloat16", threads=2, compile=False, max_concurrency=1)
    threads = torch.get_num_threads()
    try:
        backend = EngineBackend.from_spec(str(checkpoints_dir["tied"]), options)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    runner = backend.batcher.runner
    assert runner.device.type == torch.device(TEST_DEVICE).type
    assert runner.model.dtype == torch.bfloat16
    assert not runner.decoder._step.compiled


class _Stop(ValueError):
    """Raised by the spies below once they have seen what the command asked for."""


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def spy(directory: Path, options: BackendOptions, **kwargs: Any) -> Any:
        seen.append({"options": options, **kwargs})
        raise _Stop("stopped before loading")

    monkeypatch.setattr(factory, name, spy)
    return seen


@pytest.mark.parametrize(
    ("flags", "env", "compiled"),
    [((), None, True), (("--no-compile",), None, False), ((), "0", False), (("--compile",), "0", True)],
)
def test_bench_compiles_unless_told_not_to(
    checkpoints_dir: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    env: str | None,
    compiled: bool,
) -> None:
    """The benchmark measures speed, so it compiles whatever the model's size; the tiny test model would not."""
    if env is None:
        monkeypatch.delenv("RSA_ENGINE_COMPILE", raising=False)
    else:
        monkeypatch.setenv("RSA_ENGINE_COMPILE", env)
    seen = _spy(monkeypatch, "load_runner")
    result = CliRunner().invoke(engine_app, ["bench", "--checkpoint", str(checkpoints_dir["tied"]), *flags])
    assert result.exit_code == 2 and "stopped before loading" in result.stderr
    assert [call["compile_decode"] for call in seen] == [compiled]


def test_bench_help_says_when_it_compiles() -> None:
    text = " ".join(CliRunner().invoke(engine_app, ["bench", "--help"], terminal_width=200).stdout.split())
    assert "compiled (and warmed up, untimed) unless --no-compile or RSA_ENGINE_COMPILE=0" in text


def test_generate_takes_the_engine_settings_and_its_flags(
    checkpoints_dir: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RSA_ENGINE_DEVICE", "cuda:1")
    monkeypatch.setenv("RSA_ENGINE_THREADS", "3")
    seen = _spy(monkeypatch, "open_engine")
    args = ["generate", "--checkpoint", str(checkpoints_dir["tied"]), "--prompt-ids", "5,6", "--max-tokens", "2"]
    runner = CliRunner()
    assert runner.invoke(engine_app, args).exit_code == 2
    assert runner.invoke(engine_app, [*args, "--device", "cpu", "--threads", "1"]).exit_code == 2
    assert [(c["options"].device, c["options"].threads) for c in seen] == [("cuda:1", 3), ("cpu", 1)]
