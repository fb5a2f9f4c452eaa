"""Engine throughput on random prompts: prefill and aggregate decode tokens/s, peak RSS, cache bytes per token; and
how closely one model's choices follow another's (int8 weights against the full-precision ones)."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rsa_service.backends.engine.batcher import Batcher, GenSequence
from rsa_service.backends.engine.config import ZayaDims
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

    Random prompts share no prefix worth forking. The decode step for `batch` and the prefill pieces are compiled
    (warm-up) before anything is timed.
    """
    runner.warm_up([batch])
    vocab = runner.model.model.embed_tokens.weight.shape[0]
    params = SamplingParams(max_tokens=new_tokens, temperature=0, stop_token_ids=())
    seqs = [GenSequence(prompt, params) for prompt in random_prompts(vocab, batch, prompt_tokens, seed)]
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


def random_prompts(vocab: int, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` prompts of `length` random token ids (ids below 3 are kept for special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=gen).tolist() for _ in range(count)]


def greedy_continuations(runner: ModelRunner, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Each prompt's `new_tokens` greedy tokens, all decoded in one batch (no EOS)."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0, stop_token_ids=())
    seqs = [GenSequence(prompt, params) for prompt in prompts]
    step_tokens = sum(len(p) for p in prompts)
    Batcher(runner, eos_token_ids=(), max_batch=len(prompts), step_tokens=step_tokens).generate(seqs)
    return [seq.output_ids for seq in seqs]


def top1_tokens(runner: ModelRunner, sequences: list[list[int]]) -> list[list[int]]:
    """The most likely next token after every position of each sequence (one scoring pass each)."""
    return [runner.score(0, sequence).argmax(-1).tolist() for sequence in sequences]


@dataclass(frozen=True)
class Agreement:
    """How closely a model's choices follow a reference model's on the same held-out prompts.

    `top1` is measured on the prompts themselves, random tokens that neither model chose, so it does not depend on
    where generation leads: a random model's greedy continuation soon repeats one token, which two models then agree
    on trivially. `identical_prefix` and `identical` compare free-running greedy continuations."""

    top1: float  # share of prompt positions where both models' most likely next token is the same
    identical_prefix: float  # mean share of a greedy continuation equal to the reference's before they part
    identical: int  # continuations equal to the reference's throughout
    prompts: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def agreement(
    runner: ModelRunner, prompts: list[list[int]], reference_top1: list[list[int]], reference_greedy: list[list[int]]
) -> Agreement:
    """Compare `runner`'s model with a reference's `top1_tokens` and `greedy_continuations` of `prompts`."""
    ours = top1_tokens(runner, prompts)
    hits = sum(
        a == b for mine, theirs in zip(ours, reference_top1, strict=True) for a, b in zip(mine, theirs, strict=True)
    )
    positions = sum(len(p) for p in prompts)
    shares = []
    for mine, reference in zip(
        greedy_continuations(runner, prompts, len(reference_greedy[0])), reference_greedy, strict=True
    ):
        parted = next((i for i, (a, b) in enumerate(zip(mine, reference, strict=True)) if a != b), len(reference))
        shares.append(parted / len(reference))
    return Agreement(hits / positions, sum(shares) / len(shares), sum(s == 1 for s in shares), len(prompts))


def read_bandwidth_bytes_per_s(size_bytes: int = 512 * 2**20, repeats: int = 7) -> float:
    """Best-of-N read bandwidth: summing a tensor far larger than the caches reads every byte once."""
    data = torch.ones(size_bytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return size_bytes / best


def expected_experts(experts: int, batch: int) -> float:
    """Distinct experts `batch` rows hit per layer when each routes uniformly at random: E·(1 − (1 − 1/E)^B) (1 at
    batch 1, ~10.3 of 16 at batch 16, ~6.4 at batch 8). A step that reads each expert hit once reads this many."""
    return experts * (1 - (1 - 1 / experts) ** batch)


def decode_step_bytes(
    dims: ZayaDims, batch: int, context: int, dtype: torch.dtype, *, distinct_experts: bool = False, int8: bool = False
) -> int:
    """Bytes one decode step must read: every layer's attention, conv and router weights, min(batch, E) experts per
    layer (one at batch 1, nearly all at batch 16: a loose bound), or with `distinct_experts` the number
    uniformly random routes hit (`expected_experts`, a tighter bound for a step that reads each expert hit once), the
    output embedding for the logits, and the KV cache. `int8`: the matrices `quantize="int8"` stores as int8 count one
    byte an element plus a 4-byte scale a row."""
    h, r, e = dims.hidden_size, dims.router_hidden_size, dims.num_experts
    q, kv = dims.num_attention_heads * dims.head_dim, dims.num_key_value_heads * dims.head_dim

    def matrix(rows: int, cols: int) -> int:
        return rows * (cols + 4) if int8 else rows * cols * dtype.itemsize

    conv = (q + kv) * (dims.cca_time0 + dims.cca_time1 * dims.head_dim) * dtype.itemsize
    attention = matrix(q, h) + matrix(2 * kv, h) + matrix(h, q) + conv  # q, k and both v halves, o
    router = (h * r + 2 * r * r + r * (e + 1)) * dtype.itemsize
    expert = matrix(2 * dims.moe_intermediate_size, h) + matrix(h, dims.moe_intermediate_size)
    experts = expected_experts(e, batch) if distinct_experts else min(batch, e)
    weights = dims.num_hidden_layers * (attention + router + experts * expert) + matrix(dims.vocab_size, h)
    kv_cache = batch * context * 2 * dims.num_hidden_layers * kv * dtype.itemsize
    return round(weights + kv_cache)
