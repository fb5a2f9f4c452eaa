"""Sampling filters and per-sequence seeds on synthetic logits."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

import rsa_service.backends.engine as engine_package
from rsa_service.backends.engine.sampling import SamplingParams, sample

pytestmark = pytest.mark.engine


def _logits() -> torch.Tensor:
    return torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3  # [B, V]


@pytest.mark.parametrize("narrow", [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}])
def test_filters_that_leave_one_token_give_the_argmax(narrow: dict) -> None:
    logits = _logits()
    params = [SamplingParams(max_tokens=1, temperature=1.5, seed=i, **narrow) for i in range(3)]
    for _ in range(5):
        picked = sample(logits, params, [p.generator() for p in params])
        assert picked.tolist() == logits.argmax(-1).tolist()


def test_top_k_keeps_draws_inside_the_k_best_and_rows_are_independent() -> None:
    logits = _logits()
    params = SamplingParams(max_tokens=1, temperature=5.0, top_k=3, seed=7)
    allowed = set(logits[1].topk(3).indices.tolist())
    alone, gen_alone = [], params.generator()
    batched, gens = [], [SamplingParams(max_tokens=1, seed=s).generator() for s in (1, 2)]
    gen_batched = params.generator()
    for _ in range(40):
        alone.append(sample(logits[1:2], [params], [gen_alone]).item())
        other = SamplingParams(max_tokens=1, temperature=0.7)
        row = sample(logits, [other, params, other], [gens[0], gen_batched, gens[1]])
        batched.append(row[1].item())
    assert set(alone) <= allowed and len(set(alone)) > 1
    assert batched == alone


def test_every_exported_name_resolves_and_nothing_else_is_lazy() -> None:
    for name in engine_package.__all__:
        assert getattr(engine_package, name).__name__ == name
    with pytest.raises(AttributeError):
        _ = engine_package.NotExported  # type: ignore[attr-defined]
