"""The one way a running engine is built from a checkpoint directory and `BackendOptions`: the service's backend
(`EngineBackend.from_spec`) and `rsa engine generate` and `bench` all come through here, so each honours the same
device, dtype, thread and compile settings."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rsa_service.backends.base import BackendOptions
from rsa_service.backends.engine.batcher import DEFAULT_STEP_TOKENS, Batcher
from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.loader import load_model
from rsa_service.backends.engine.runner import ModelRunner
from rsa_service.backends.engine.tokenizer import ChatTokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def checkpoint_dtype(directory: Path) -> str:
    """The dtype config.json records (`dtype`, or `torch_dtype` in older files); bf16, as published, if none."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "bfloat16"  # the loader reports the missing or broken file properly
    recorded = config.get("dtype") or config.get("torch_dtype")
    return recorded if recorded in _DTYPES else "bfloat16"


def default_threads() -> int:
    """Every core but one: the event loop, the Redis client and tokenization keep the last. On a busy machine a
    torch thread pool wider than the idle cores is far slower than a narrow one (threads spin waiting for each
    other), so erring narrow is the safe side."""
    return max(1, (os.cpu_count() or 1) - 1)


def resolve_device(device: str) -> torch.device:
    """`auto`: the first CUDA device where one is present, else the CPU; any other name as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, directory: Path) -> torch.dtype:
    """`auto`: the checkpoint's own dtype (`checkpoint_dtype`); else the one named."""
    return _DTYPES[checkpoint_dtype(directory) if dtype == "auto" else dtype]


def load_runner(
    directory: Path, options: BackendOptions, *, skip_returns_input: bool = False, compile_decode: bool | None = None
) -> tuple[ZayaConfig, ModelRunner]:
    """The model of `directory` on `options.device` in `options.dtype` (quantized as `options.quantize` asks), with
    `options.threads` torch threads, and its runner. `compile_decode` None follows `options.compile`, then
    RSA_ENGINE_COMPILE, then compiles where it pays (`compiler`)."""
    torch.set_num_threads(options.threads or default_threads())
    device = resolve_device(options.device)
    config, model = load_model(
        directory,
        dtype=resolve_dtype(options.dtype, directory),
        device=device,
        skip_returns_input=skip_returns_input,
        quantize=options.quantize,
    )
    compile_step = options.compile if compile_decode is None else compile_decode
    logger.info("engine: %s on %s, %d threads", directory, device, torch.get_num_threads())
    return config, ModelRunner(model, config, compile_decode=compile_step)


@dataclass(frozen=True)
class Engine:
    """A loaded, warmed-up engine: its config, its tokenizer, and the batcher that runs its sequences."""

    config: ZayaConfig
    tokenizer: ChatTokenizer
    batcher: Batcher


def open_engine(
    directory: Path,
    options: BackendOptions,
    *,
    skip_returns_input: bool = False,
    prefill_chunk_tokens: int = DEFAULT_STEP_TOKENS,
    compile_decode: bool | None = None,
) -> Engine:
    """`load_runner`, with the decode step compiled for every batch size up to `options.max_concurrency` (where it
    is compiled at all) before this returns, so no request waits for it. `prefill_chunk_tokens` is the token budget
    of one engine step (decode tokens plus prompt chunks)."""
    config, runner = load_runner(
        directory, options, skip_returns_input=skip_returns_input, compile_decode=compile_decode
    )
    runner.warm_up(range(1, options.max_concurrency + 1))
    batcher = Batcher(
        runner, eos_token_ids=config.eos_token_ids, max_batch=options.max_concurrency, step_tokens=prefill_chunk_tokens
    )
    return Engine(config, ChatTokenizer.from_checkpoint(directory, config), batcher)
