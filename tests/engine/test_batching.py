"""Scheduling: shared-prefix forks, the per-step token budget, and the compiled decode step, all against eager
single-sequence runs on tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from conftest import COMPILE_TIMEOUT_S

from rsa_service.backends.engine.batcher import GenSequence
from rsa_service.backends.engine.sampling import SamplingParams

pytestmark = pytest.mark.engine


def _prompt(vocab: int, length: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def _seqs(prompts: list[list[int]], max_tokens: int = 12) -> list[GenSequence]:
    return [
        GenSequence(p, SamplingParams(max_tokens=max_tokens, temperature=0.9, seed=i, stop_token_ids=()))
        for i, p in enumerate(prompts)
    ]


def test_shared_prefixes_are_prefilled_once_and_forked(tiny_checkpoint: Path, open_engine) -> None:
    config, runner, batcher = open_engine(tiny_checkpoint, chunk=16)
    base = _prompt(config.vocab_size, 40, seed=1)
    prompts = [base, base, base[:30] + _prompt(config.vocab_size, 7, seed=2), _prompt(config.vocab_size, 25, seed=3)]
    fed: list[int] = []
    prefill = runner.prefill

    def counting_prefill(rows: list[int], pieces: list[list[int]], starts: list[int]) -> torch.Tensor:
        fed.extend(len(p) for p in pieces)
        return prefill(rows, pieces, starts)

    runner.prefill = counting_prefill  # type: ignore[method-assign]
    together = batcher.generate(_seqs(prompts))
    runner.prefill = prefill  # type: ignore[method-assign]
    # The 30-token common prefix of the first three goes through the model once; each keeps its own remainder.
    assert sum(fed) == 30 + (10 + 10 + 7) + 25
    alone = [batcher.generate([seq])[0] for seq in _seqs(prompts)]
    assert [s.output_ids for s in together] == [s.output_ids for s in alone]
    assert together[0].output_ids != together[1].output_ids, "same prompt, different seeds"


def test_a_cancelled_leader_leaves_its_followers_to_prefill_alone(tiny_checkpoint: Path, open_engine) -> None:
    config, _, batcher = open_engine(tiny_checkpoint, chunk=8)
    base = _prompt(config.vocab_size, 40, seed=4)
    seqs = _seqs([base, [*base, 7]])
    batcher.step(admit=seqs)  # 8 tokens of the 40-token shared prefix: no fork yet
    leader = next(s for s in seqs if s.followers)
    batcher.step(cancel=[leader])
    follower = next(s for s in seqs if s is not leader)
    while follower.finish_reason is None:
        batcher.step()
    assert follower.output_ids == batcher.generate(_seqs([base, [*base, 7]])[1:])[0].output_ids


def test_a_long_prompt_is_chunked_while_others_keep_decoding(tiny_checkpoint: Path, open_engine) -> None:
    config, _, batcher = open_engine(tiny_checkpoint, chunk=16)
    short = _seqs([_prompt(config.vocab_size, 5, seed=5)], max_tokens=30)[0]
    batcher.step(admit=[short])
    long = _seqs([_prompt(config.vocab_size, 200, seed=6)], max_tokens=4)[0]
    batcher.step(admit=[long])
    steps = 1
    while not long.output_ids:
        before = len(short.output_ids)
        batcher.step()
        steps += 1
        assert len(short.output_ids) == before + 1, "decoding must advance on every step of the long prefill"
    assert steps == -(-200 // (16 - 1))  # 15 prompt tokens per step beside the one decoding sequence
    while not batcher.idle:
        batcher.step()
    assert long.output_ids == batcher.generate(_seqs([long.prompt_ids], max_tokens=4))[0].output_ids


@pytest.mark.timeout(COMPILE_TIMEOUT_S)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, raised while it compiles
@pytest.mark.parametrize(
    ("dtype", "skip_returns_input", "tolerance", "kernels"),
    [
        (torch.float32, False, 1e-5, True),
        (torch.float32, True, 1e-5, True),
        (torch.bfloat16, False, 5e-2, True),
        (torch.float32, False, 1e-5, False),
    ],
)
def test_compiled_decode_matches_eager(
    checkpoints_dir: dict[str, Path], dtype: torch.dtype, skip_returns_input: bool, tolerance: float, kernels: bool
) -> None:
    """The compiled runs of the suite: the smallest config, batches 1 and 2, against the eager step, with either skip
    route; bf16 to its rounding (as in test_model). With `kernels` (where the CPU has them) attention and, at 2 rows,
    the GEMVs and experts go through `zaya_kernels`; without, the fallback: experts gathered per row, fused
    multiply-reduce GEMVs."""
    from rsa_service.backends.engine.loader import load_model
    from rsa_service.backends.engine.runner import ModelRunner

    directory = checkpoints_dir["tied"]
    config, model = load_model(directory, dtype=dtype, skip_returns_input=skip_returns_input)
    eager, compiled = ModelRunner(model, config, compile_decode=False), ModelRunner(model, config, compile_decode=True)
    eager.decoder.kernels = compiled.decoder.kernels = compiled.decoder.kernels and kernels
    compiled.warm_up([1, 2])
    assert compiled.decoder._step.compiled
    prompts = [_prompt(config.vocab_size, 9, seed=7), _prompt(config.vocab_size, 4, seed=8)]
    fed = [_prompt(config.vocab_size, 6, seed=9), _prompt(config.vocab_size, 6, seed=10)]  # same tokens for both
    outputs, skips = [], []
    for runner in (eager, compiled):
        runner.reserve(2, 64)
        steps = [runner.logits(runner.prefill([0, 1], prompts, [0, 0]))]
        for i in range(6):
            rows = [0, 1] if i % 3 else [0]  # batch 2, and batch-1 steps that leave row 1 out
            positions = [len(prompts[r]) + i for r in rows]
            steps.append(runner.decode(rows, [fed[r][i] for r in rows], positions))
        outputs.append(torch.cat(steps))
        skips.append(runner.skip_counts)
    assert skips[0] == skips[1]
    # Relative to the largest logit; bf16 differs by its rounding (inductor keeps fp32 between fused ops).
    error = ((outputs[1] - outputs[0]).abs().max() / outputs[0].abs().max()).item()
    assert error < tolerance, error
