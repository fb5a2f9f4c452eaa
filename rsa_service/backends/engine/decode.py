"""One decode step over the leading B cache rows, at fixed shapes, with the compiled pieces living on this object.

Per layer: the compiled `decode_qkv` (norm, projections, convs, mean paths, temperature, RoPE, state roll), the KV
write and an attention read through a view of the cache (no copy), the compiled `decode_router` (output projection,
residual merge, norm, router), the grouped expert dispatch (data-dependent, eager; each expert's SwiGLU compiled
with a dynamic token count), and the residual merge. B is rounded up to a power of two so a handful of shapes cover
every batch; rows that hold no decoding sequence ride along inactive: their state is left untouched and their
tokens take no expert matmul.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor

from rsa_service.backends.engine.cache import StateCache
from rsa_service.backends.engine.compiler import Compiled
from rsa_service.backends.engine.model import DecoderLayer, ZayaForCausalLM, expert_mlp

logger = logging.getLogger(__name__)


def batch_bucket(rows: int) -> int:
    """The decode batch for `rows` leading rows: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


class DecodeStep:
    """Fixed-shape decode for a model and its cache; compiled functions are created once here and reused."""

    def __init__(self, model: ZayaForCausalLM, cache: StateCache, *, compile_pieces: bool) -> None:
        self.model, self.cache = model, cache
        device = model.model.norm.weight.device

        def compiled(fn: object, dynamic: bool | None = False) -> Compiled:
            return Compiled(fn, enabled=compile_pieces, device=device, dynamic=dynamic)  # type: ignore[arg-type]

        # Unbound functions: every layer passes itself, so all layers share one compiled graph per shape.
        self._embed = compiled(ZayaForCausalLM.decode_embed)
        self._qkv = compiled(DecoderLayer.decode_qkv)
        self._router = compiled(DecoderLayer.decode_router)
        self._head = compiled(ZayaForCausalLM.decode_head)
        self.expert_mlp = compiled(expert_mlp, dynamic=None)  # recompiles once with a dynamic token count

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, positions: Tensor, active: Tensor, width: int) -> tuple[Tensor, list[int]]:
        """tokens, positions, active [B] for the leading B rows → fp32 logits [B, V], skip routes per layer.

        `width` (> every position) is how many cache columns the attention reads.
        """
        model, layers = self.model, self.cache.layers
        mask = (torch.arange(width, device=tokens.device) <= positions[:, None])[:, None, None]  # [B, 1, 1, K]
        cols = torch.where(active, positions, self.cache.max_len)  # inactive rows write to the scratch column
        residual, rope = self._embed(model, tokens, positions)
        carried: Tensor | None = None
        skips = []
        for layer, state in zip(model.model.layers, layers, strict=True):
            q, k, v = self._qkv(layer, residual, active, rope, state)
            attended = layer.self_attn.decode_attend(q, k, v, cols, mask, state)
            residual, x, route, weight, carried = self._router(layer, residual, attended, carried, active)
            out, taken = layer.mlp.experts(x, route, weight, model.skip_returns_input, self.expert_mlp)
            residual = layer.post_mlp_residual_scale(out, residual)
            skips.append(taken)
        return self._head(model, residual), skips

    def warm_up(self, batches: Iterable[int]) -> None:
        """Compile every piece for the buckets of `batches` (on inactive rows), and the expert MLP."""
        buckets = sorted({batch_bucket(n) for n in batches})
        self.cache.reserve(buckets[-1], 1)
        device = self.model.model.norm.weight.device
        for b in buckets:
            tokens, positions = (torch.zeros(b, dtype=torch.long, device=device) for _ in range(2))
            self(tokens, positions, torch.zeros(b, dtype=torch.bool, device=device), 1)
        # Dispatches whose slices cover the sizes, offsets and strides the expert MLP meets (dynamo re-specialises
        # on 0/1 values of each, then generalises).
        experts = self.model.model.layers[0].mlp.experts
        hidden, count = experts.gate_up_proj.shape[-1], experts.gate_up_proj.shape[0]
        with torch.inference_mode():
            for route in ([0], [count - 1], [0, count - 1, count - 1], [count - 1, 0, 0, 0, count]):
                routes = torch.tensor(route, device=device)
                x = torch.zeros(len(route), hidden, dtype=self.model.dtype, device=device)
                experts(x, routes, torch.ones(len(route), device=device), False, self.expert_mlp)
        logger.info("engine: decode warmed up for batches %s", buckets)
