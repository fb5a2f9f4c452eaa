"""One decode step over the leading B cache rows, at fixed shapes, with the compiled function living on this object.

Compiled, the whole step (`ZayaForCausalLM.decode_step`: every layer, the KV write and attention read, experts
gathered per row, the logits) is one graph, so dynamo's guards are checked once per step rather than once per piece,
and inductor fuses the small ops between the weight reads. The cache buffers' row and column counts are dynamic in
that graph, so a growing cache does not recompile it. Up to E rows the experts are gathered (each row reads one
expert, never more than the E a grouped dispatch would read); above that, and when running eagerly, the step
dispatches tokens grouped by expert (data-dependent, so eager) with the expert MLP compiled on its own.

B is rounded up to a power of two so a handful of shapes cover every batch; rows that hold no decoding sequence ride
along inactive: their state is left untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor

from rsa_service.backends.engine.accel import kernels
from rsa_service.backends.engine.accel.inductor import input_guards_only
from rsa_service.backends.engine.cache import COLUMN_BLOCK, StateCache
from rsa_service.backends.engine.compiler import Compiled
from rsa_service.backends.engine.dispatch import Dispatch, grouped_experts
from rsa_service.backends.engine.model import ZayaForCausalLM
from rsa_service.backends.engine.ops import expert_mlp
from rsa_service.backends.engine.step import LayerState

logger = logging.getLogger(__name__)


def batch_bucket(rows: int) -> int:
    """The decode batch for `rows` leading rows: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


def _mark_dynamic(cache: StateCache) -> None:
    """Rows and columns of the cache buffers vary between calls (the cache grows); compile them as symbols."""
    for layer in cache.layers:
        for buffer in layer:
            torch._dynamo.maybe_mark_dynamic(buffer, 0)
        torch._dynamo.maybe_mark_dynamic(layer.keys, 2)
        torch._dynamo.maybe_mark_dynamic(layer.values, 2)


class DecodeStep:
    """Fixed-shape decode for a model and its cache; compiled functions are created once here and reused."""

    def __init__(self, model: ZayaForCausalLM, cache: StateCache, *, compile_step: bool) -> None:
        self.model, self.cache = model, cache
        device = model.model.norm.weight.device
        self._step = Compiled(
            ZayaForCausalLM.decode_step,
            enabled=compile_step,
            device=device,
            dynamic=False,
            guard_filter=input_guards_only,
        )
        # Prefill and large batches: recompiles once with a dynamic token count.
        self.expert_mlp = Compiled(expert_mlp, enabled=compile_step, device=device, dynamic=None)
        self._marked: list[LayerState] | None = None  # the cache buffers last marked dynamic
        self._experts = model.decoder_layers()[0].mlp.experts  # looked up once: each step would walk five modules
        self.kernels = kernels.available(model.dtype, device)

    @property
    def kernels(self) -> bool:
        """Whether attention and (from `ops.KERNEL_MIN_ROWS` rows) the GEMVs and experts go through `zaya_kernels`."""
        return self._kernels

    @kernels.setter
    def kernels(self, on: bool) -> None:
        self._kernels = on
        # One object each for the whole step, built here: the compiled step's graph is specialised to its fields.
        self._gathered = Dispatch(kernels=on, gather=True)
        self._grouped = Dispatch(kernels=on, mlp=self.expert_mlp)

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, positions: Tensor, active: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """tokens, positions, active [B] for the leading B rows → fp32 logits [B, V], skip routes per layer [L].

        `width` (> every position) is how many cache columns the attention reads.
        """
        mask = (torch.arange(width, device=tokens.device) <= positions[:, None])[:, None, None]  # [B, 1, 1, K]
        rows = tokens.shape[0]
        if self._step.compiled and (self.kernels or rows <= self._experts.gate_up_proj.shape[0]):
            layers = self.cache.layers
            key = (rows, width, layers[0].keys.shape)  # the model fixed, this fixes every shape
            if not self._step.planned(key):
                if self._marked is not layers:
                    _mark_dynamic(self.cache)
                    self._marked = layers
                torch._dynamo.maybe_mark_dynamic(mask, 3)
            return self._step.replay(key, self.model, tokens, positions, active, mask, layers, self._gathered)
        return ZayaForCausalLM.decode_step(
            self.model, tokens, positions, active, mask, self.cache.layers, self._grouped
        )

    def warm_up(self, batches: Iterable[int]) -> None:
        """Compile the step for the buckets of `batches` (on inactive rows), and the expert MLP."""
        buckets = sorted({batch_bucket(n) for n in batches})
        self.cache.reserve(buckets[-1], COLUMN_BLOCK)
        device = self.model.model.norm.weight.device
        for b in buckets:
            tokens, positions = (torch.zeros(b, dtype=torch.long, device=device) for _ in range(2))
            self(tokens, positions, torch.zeros(b, dtype=torch.bool, device=device), COLUMN_BLOCK)
        # Dispatches whose slices cover the sizes, offsets and strides the expert MLP meets (dynamo re-specialises
        # on 0/1 values of each, then generalises; a small model's MLP also branches at 2 and 16 rows).
        experts = self._experts
        hidden, count = experts.gate_up_proj.shape[-1], experts.gate_up_proj.shape[0]
        with torch.inference_mode():
            for route in ([0], [count - 1], [0, count - 1, count - 1], [count - 1, 0, 0, 0, count], [0] * 17):
                routes = torch.tensor(route, device=device)
                x = torch.zeros(len(route), hidden, dtype=self.model.dtype, device=device)
                grouped_experts(experts, x, routes, torch.ones(len(route), device=device), False, self.expert_mlp)
        logger.info("engine: decode warmed up for batches %s", buckets)
