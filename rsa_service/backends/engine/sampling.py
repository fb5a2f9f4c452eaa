"""Per-sequence sampling over a batch: temperature, top-k, top-p, min-p, and a seed per sequence.

Each sampled sequence draws exactly one uniform number per token from its own generator and picks the token by
inverse CDF over the filtered distribution. The random stream therefore depends only on the seed and the
sequence's own step count, never on which other sequences share the batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens and when it stops. temperature 0 means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None  # None: the checkpoint's EOS ids

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens={self.max_tokens} must be positive")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"top_k={self.top_k} must be positive")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p={self.min_p} must be in [0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        """The sequence's own random stream: seeded when a seed is given, else from OS entropy."""
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        return torch.Generator().manual_seed(seed)


def sample(logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]) -> Tensor:
    """logits [B, V] fp32 → token ids [B]."""
    greedy = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return greedy
    chosen = _sample_rows(logits[rows], [params[i] for i in rows], [generators[i] for i in rows])
    return greedy.index_copy(0, torch.tensor(rows, device=logits.device), chosen)


def _sample_rows(logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]) -> Tensor:
    """logits [N, V] of sampled rows → token ids [N]."""
    dev, vocab = logits.device, logits.shape[-1]

    def column(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=dev)[:, None]  # [N, 1]

    scaled = logits / column([p.temperature for p in params])
    ordered, order = scaled.sort(dim=-1, descending=True)  # [N, V]
    probs = torch.softmax(ordered, dim=-1)
    ranks = torch.arange(vocab, device=dev)
    keep = ranks < column([float(p.top_k or vocab) for p in params])
    # top-p keeps the smallest prefix whose mass reaches p (the token that crosses p stays).
    keep &= (probs.cumsum(dim=-1) - probs) < column([p.top_p for p in params])
    keep &= probs >= column([p.min_p or 0.0 for p in params]) * probs[:, :1]
    cdf = (probs * keep).cumsum(dim=-1)
    draws = torch.cat([torch.rand(1, generator=g) for g in generators]).to(dev)  # one uniform per row
    picks = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True).clamp_max(vocab - 1)
    return order.gather(1, picks)[:, 0]
