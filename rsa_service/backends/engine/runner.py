"""Forward passes of the model against cache slots: chunked prefill, one-token decode, whole-sequence scoring.

Token-level only: which sequence sits in which slot and when it stops is the batcher's business.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rsa_service.backends.engine.cache import StateCache
from rsa_service.backends.engine.model import ZayaDims, ZayaForCausalLM

DEFAULT_PREFILL_CHUNK_TOKENS = 512


class ModelRunner:
    """Owns the model and its state cache; counts skip routes taken by real tokens per layer."""

    def __init__(
        self,
        model: ZayaForCausalLM,
        dims: ZayaDims,
        *,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
    ) -> None:
        self.model = model
        self.device = model.model.norm.weight.device
        self.cache = StateCache(dims, model.dtype, self.device)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        # Accumulated on the device; read only when someone asks.
        self.skip_counts = torch.zeros(dims.num_hidden_layers, dtype=torch.long, device=self.device)

    def _forward(self, tokens: Tensor, slots: Sequence[int], starts: Sequence[int], lengths: Sequence[int]) -> Tensor:
        """tokens [B, T] (right-padded) → final hidden [B, T, H]."""
        ctx = self.cache.context(slots, starts, lengths)
        hidden, skips = self.model(tokens, ctx, self.cache.layers)
        self.skip_counts += skips
        return hidden

    @torch.inference_mode()
    def prefill(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> Tensor:
        """Run fresh prompts into `slots` in chunks; return each prompt's last-token logits [B, V] fp32."""
        self.cache.reset(slots)
        last: list[Tensor | None] = [None] * len(prompts)
        chunk = self.prefill_chunk_tokens
        for start in range(0, max(len(p) for p in prompts), chunk):
            active = [i for i, p in enumerate(prompts) if len(p) > start]
            pieces = [list(prompts[i][start : start + chunk]) for i in active]
            hidden = self._forward(
                self._pad(pieces), [slots[i] for i in active], [start] * len(active), [len(p) for p in pieces]
            )
            for row, i in enumerate(active):
                if len(prompts[i]) <= start + chunk:
                    last[i] = hidden[row, len(pieces[row]) - 1]
        return self.model.logits(torch.stack([h for h in last if h is not None]))

    @torch.inference_mode()
    def decode(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> Tensor:
        """Feed one token per sequence at `positions`; return next-token logits [B, V] fp32."""
        ids = torch.tensor(list(tokens), dtype=torch.long, device=self.device)[:, None]  # [B, 1]
        hidden = self._forward(ids, slots, positions, [1] * len(slots))
        return self.model.logits(hidden[:, 0])

    @torch.inference_mode()
    def score(self, slot: int, tokens: Sequence[int]) -> Tensor:
        """Logits after every token of one fresh sequence, in one pass: [T, V] fp32."""
        self.cache.reserve(slot + 1, len(tokens))
        self.cache.reset([slot])
        hidden = self._forward(self._pad([list(tokens)]), [slot], [0], [len(tokens)])
        return self.model.logits(hidden[0])

    def _pad(self, pieces: list[list[int]]) -> Tensor:
        width = max(len(p) for p in pieces)
        rows = [p + [0] * (width - len(p)) for p in pieces]
        return torch.tensor(rows, dtype=torch.long, device=self.device)  # [B, T]
