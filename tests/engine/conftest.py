"""Shared fixtures for the engine tests: tiny checkpoints built once per session, torch on one thread, the CPU
kernels built before the first test, and the device under test (RSA_TEST_DEVICE, default cpu; scripts/gpu-check.sh
sets cuda)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from checkpoints import TinySpec, build_checkpoint

# Compiling the decode step takes tens of seconds per shape: tests run it eagerly, except those that compile the
# tiniest configs on purpose (marked with COMPILE_TIMEOUT_S). Set before any engine is built.
os.environ.setdefault("RSA_ENGINE_COMPILE", "0")
# The device the engine tests load models on; the service's setting follows it, so `rsa` subprocesses and backends
# built from settings use it too.
TEST_DEVICE = os.environ.get("RSA_TEST_DEVICE", "cpu")
os.environ.setdefault("RSA_ENGINE_DEVICE", TEST_DEVICE)
# A test that compiles (inductor's C++ build of every generated kernel) on a loaded two-core machine: minutes, not
# the suite's default of two. Compiled graphs land in inductor's on-disk cache, shared by every test and subprocess
# of the run (and the next run), so a graph two tests share is built once.
COMPILE_TIMEOUT_S = 900


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find in torch's cache) the CPU kernels before any engine test runs, outside every test's timeout:
    the first build compiles kernels.cpp, which takes a while on a busy machine."""
    if not any("tests/engine/" in item.nodeid for item in session.items):
        return
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    from rsa_service.backends.engine.accel import kernels

    kernels.available(torch.float32, torch.device("cpu"))


# Test modules guard themselves with pytest.importorskip("torch") / ("transformers"); nothing here imports torch
# at collection time, so the directory is skipped cleanly without the engine extra.

# Shapes that differ in every dimension the model reads: layers, heads, GQA ratio, head_dim (and so the rotary
# and delayed-value splits), experts, conv kernels, vocab, tied or separate output head.
SPECS = {
    "tied": TinySpec(),
    "untied-3layer": TinySpec(
        layers=3, heads=6, kv_heads=3, head_dim=8, hidden=48, experts=3, cca_time0=3, vocab=300,
        tie_embeddings=False, seed=1,
    ),
    "mqa-8expert": TinySpec(heads=2, kv_heads=1, head_dim=32, hidden=32, experts=8, cca_time0=1, cca_time1=3,
                            vocab=400, seed=2),
}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The test machines' cores are shared: one intra-op thread is several times faster than oversubscribed two."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every spec of SPECS built once, as {name: directory}."""
    root = tmp_path_factory.mktemp("zaya")
    return {name: build_checkpoint(root / name, spec) for name, spec in SPECS.items()}


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoints_dir: dict[str, Path]) -> Path:
    return checkpoints_dir["untied-3layer"]


@pytest.fixture
def open_engine() -> object:
    """Factory: (directory, max_batch=8, chunk=512, dtype=fp32) → (config, runner, batcher)."""
    import torch

    from rsa_service.backends.engine.batcher import Batcher
    from rsa_service.backends.engine.loader import load_model
    from rsa_service.backends.engine.runner import ModelRunner

    def make(directory: Path, *, max_batch: int = 8, chunk: int = 512, dtype: object = None) -> tuple:
        config, model = load_model(directory, dtype=dtype or torch.float32, device=TEST_DEVICE)
        runner = ModelRunner(model, config)
        batcher = Batcher(runner, eos_token_ids=config.eos_token_ids, max_batch=max_batch, step_tokens=chunk)
        return config, runner, batcher

    return make
