"""Engine throughput on random prompts: prefill and aggregate decode tokens/s, peak RSS, cache bytes per token."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rsa_service.backends.engine.batcher import Batcher, GenSequence
from rsa_service.backends.engine.runner import ModelRunner
from rsa_service.backends.engine.sampling import SamplingParams


@dataclass(frozen=True)
class BenchResult:
    """One run: `batch` sequences of `prompt_tokens` random tokens, each decoding `new_tokens` greedily."""

    batch: int
    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float  # aggregate over the batch
    decode_step_s: float
    peak_rss_bytes: int
    state_bytes_per_token: int  # KV, all layers
    state_bytes_per_sequence: int  # conv state + delayed value, all layers

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_bytes() -> int:
    """This process's peak resident set (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_bench(runner: ModelRunner, *, batch: int, prompt_tokens: int, new_tokens: int, seed: int = 0) -> BenchResult:
    """Prefill every prompt in one step (the step budget is the whole batch), then time the decode steps.

    Random prompts share no prefix worth forking. The decode step is compiled
    (warm-up) before anything is timed.
    """
    runner.decoder.warm_up([batch])
    vocab = runner.model.model.embed_tokens.weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, stop_token_ids=())
    prompts = [torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist() for _ in range(batch)]
    seqs = [GenSequence(prompt, params) for prompt in prompts]
    batcher = Batcher(runner, eos_token_ids=(), max_batch=batch, step_tokens=batch * prompt_tokens)
    begin = time.perf_counter()
    batcher.step(admit=seqs)
    prefilled = time.perf_counter()
    while not batcher.idle:
        batcher.step()
    decoded = time.perf_counter()
    steps = new_tokens - 1
    decode_s = max(decoded - prefilled, 1e-9)
    return BenchResult(
        batch=batch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        prefill_tokens_per_s=batch * prompt_tokens / (prefilled - begin),
        decode_tokens_per_s=batch * steps / decode_s if steps else 0.0,
        decode_step_s=decode_s / steps if steps else 0.0,
        peak_rss_bytes=peak_rss_bytes(),
        state_bytes_per_token=runner.cache.bytes_per_token(),
        state_bytes_per_sequence=runner.cache.bytes_per_sequence(),
    )
