"""Weight-only int8: each weight row (output channel) stored as int8 values times one fp32 scale.

A decode step at small batch is bound by the bytes of weight it reads, so int8 values halve a bf16 step's reads
(quarter an fp32 one's). Activations stay in the compute dtype. The one exception is the int8 `gemv` with bf16
compute: it rounds each input row to int16 at the row's own scale, which is finer than bf16's own rounding for values
within 2^7 of the row's largest, and multiplies with AVX-512 VNNI. Each row's sum is scaled once. Prefill and large
batches dequantize a weight into the compute dtype for the library GEMM (`ops.int8_linear`). The scales are
symmetric per row (max |w| ↦ 127). They are computed from the checkpoint's own values as each tensor is loaded, so
the full-precision weights never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from rsa_service.backends.engine.accel import kernels

if TYPE_CHECKING:
    from rsa_service.backends.engine.model import ZayaForCausalLM

QUANTIZE_MODES = ("none", "int8")
_LEVELS = 127
_CHUNK_ROWS = 8192  # rows quantized at once: bounds the fp32 scratch to 8192 × K floats


class Int8Weight(NamedTuple):
    """values [..., N, K] int8 and scale [..., N] fp32 (w ≈ values · scale), read in the compute `dtype`."""

    values: Tensor
    scale: Tensor
    dtype: torch.dtype

    def select(self, index: Tensor | int) -> Int8Weight:
        """The weights of the leading index (an expert, or one per row): as `w[index]` of a plain tensor."""
        return Int8Weight(self.values[index], self.scale[index], self.dtype)

    def dequantize(self) -> Tensor:
        return (self.values.float() * self.scale[..., None]).to(self.dtype)


Weight = Tensor | Int8Weight


def select(weight: Weight, index: Tensor | int) -> Weight:
    return weight.select(index) if isinstance(weight, Int8Weight) else weight[index]


def stored(weight: Weight) -> Tensor:
    """The tensor holding the weight's values, as stored (int8 or the compute dtype)."""
    return weight.values if isinstance(weight, Int8Weight) else weight


def int8_weights(model: ZayaForCausalLM) -> Iterator[tuple[nn.Module, str]]:
    """The weights `quantize="int8"` stores as int8: every matrix a decode step streams (the attention projections,
    the experts, the embedding and output head), not the router's (a few KB a layer, and the route is a hard choice
    that rounding would flip) nor the convs' and norms' vectors."""
    for layer in model.decoder_layers():
        qkv = layer.self_attn.qkv_proj
        for projection in (qkv.q_proj, qkv.k_proj, qkv.v_proj_current, qkv.v_proj_delayed, layer.self_attn.o_proj):
            yield projection, "weight"
        yield layer.mlp.experts, "gate_up_proj"
        yield layer.mlp.experts, "down_proj"
    yield model.model.embed_tokens, "weight"
    if model.lm_head is not None:
        yield model.lm_head, "weight"


def apply_quantization(model: ZayaForCausalLM, mode: str) -> None:
    """Give `model` (freshly built, before loading) the weight storage `mode` asks for."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize={mode!r}: expected one of {', '.join(QUANTIZE_MODES)}")
    if mode == "int8":
        for module, name in int8_weights(model):
            _store_int8(module, name, model.dtype)


def _store_int8(module: nn.Module, name: str, dtype: torch.dtype) -> None:
    """Replace `module`'s weight `name` by an int8 one of its shape and add its scales, `{name}_scale` (a buffer
    outside the state dict: the checkpoint has no such tensor; the loader fills both with `quantize_into`)."""
    weight = getattr(module, name)
    setattr(module, name, nn.Parameter(torch.empty_like(weight, dtype=torch.int8), requires_grad=False))
    module.register_buffer(f"{name}_scale", weight.new_empty(weight.shape[:-1], dtype=torch.float32), persistent=False)
    module.compute_dtype = dtype


@torch.no_grad()
def quantize_into(source: Tensor, values: Tensor, scale: Tensor) -> None:
    """Quantize source [..., N, K] (any float dtype) row by row into values (int8, same shape) and scale [..., N].

    A row of zeros gets scale 1 (all its values are 0). Where the CPU kernels run, `zaya_kernels::quantize_into`
    writes the same bytes an order of magnitude faster, which decides how long an int8 load takes."""
    if source.shape != values.shape or scale.shape != source.shape[:-1]:
        shapes = f"source {list(source.shape)}, values {list(values.shape)}, scale {list(scale.shape)}"
        raise ValueError(f"quantize_into: {shapes} do not match")
    on_cpu = source.device.type == values.device.type == scale.device.type == "cpu"  # a GPU model: torch ops
    if on_cpu and source.dtype in (torch.float32, torch.bfloat16) and kernels.available(source.dtype, source.device):
        torch.ops.zaya_kernels.quantize_into(source, values, scale)
    else:
        quantize_rows(source, values, scale)


def quantize_rows(source: Tensor, values: Tensor, scale: Tensor) -> None:
    """`quantize_into` in torch ops: max |w| / 127 per row, w / scale rounded half to even."""
    rows, flat_scale = source.reshape(-1, source.shape[-1]), scale.view(-1)
    flat_values = values.view(-1, values.shape[-1])
    for start in range(0, rows.shape[0], _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS].float()
        step = chunk.abs().amax(dim=-1) / _LEVELS
        step = torch.where(step > 0, step, 1.0)
        flat_scale[start : start + _CHUNK_ROWS] = step
        flat_values[start : start + _CHUNK_ROWS] = (chunk / step[:, None]).round_().clamp_(-_LEVELS, _LEVELS)
