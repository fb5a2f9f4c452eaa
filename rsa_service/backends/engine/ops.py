"""The engine's own torch ops (`zaya::*`) and the weight products built on them, each choosing its path per call.

The ops are registered here, once per process, as CompositeExplicitAutograd kernels (so they run on any device,
fake tensors included) rather than through `torch.library.custom_op`, whose Python wrapper costs more than some of
these ops take. The hand-written CPU kernels (`zaya_kernels::*`) are reached through `accel` only where it reports
them available. Figures behind the thresholds below: benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsa_service.backends.engine.accel import kernels
from rsa_service.backends.engine.accel.inductor import lower_as_stored_copy
from rsa_service.backends.engine.quantize import Int8Weight, Weight, stored

SMALL_BATCH_ROWS = 2
# From this many rows a decode step with the kernels runs its GEMVs through `zaya_kernels::gemv`, which loads each
# weight row (or expert hit) once for all the rows that read it. At one row inductor's fused multiply-reduce is as
# fast and needs no extern call.
KERNEL_MIN_ROWS = 2
SMALL_WEIGHT_ELEMENTS, SMALL_WEIGHT_ROWS = 65_536, 16

_LIBRARY = torch.library.Library("zaya", "DEF")

# A copy that inductor cannot inline: the vector a run of multiply-reduces reads is computed once, instead of being
# recomputed (norm, conv) inside each reduction's inner loop, which makes those loops compute-bound. Compiled, it is
# a buffer stored inside inductor's own kernels (`lower_as_stored_copy`); eager, a clone.
_LIBRARY.define("materialize(Tensor x) -> Tensor")
_LIBRARY.impl("materialize", torch.clone, "CompositeExplicitAutograd")
lower_as_stored_copy(torch.ops.zaya.materialize.default)


def materialize(x: Tensor) -> Tensor:
    """x, copied by an op the compiler keeps as a call (see `_LIBRARY`)."""
    return torch.ops.zaya.materialize(x)


def gemv_input(x: Tensor) -> Tensor:
    """The vector a decode step's multiply-reduces read, `materialize`d; compiled at one row, in fp32: widened once
    here rather than in every weight row of every loop that reads it. The values are x's own, so every product and
    sum is as before."""
    if torch.compiler.is_compiling() and x.shape[0] == 1:
        x = x.float()
    return materialize(x)


# F.linear through oneDNN's GEMM on a CPU: for fp32, aten's own path calls MKL's sgemm, which is slower than oneDNN on
# some CPUs for both prefill and small-batch decode (bf16 goes through oneDNN either way). An op of our own because
# inductor lowers `mkldnn._linear_pointwise` only for frozen weights.
_LIBRARY.define("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIBRARY.impl("linear", F.linear, "CompositeExplicitAutograd")


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # oneDNN reads the weight as dense rows: a strided view would give wrong numbers, not an error.
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "none", [], "")


if torch.backends.mkldnn.is_available():
    _LIBRARY.impl("linear", _onednn_linear, "CPU")


# An int8 weight in a matrix product (prefill, scoring, eager decode): up to INT8_GEMV_MAX_ROWS rows through the
# int8 `gemv` where the kernels run, which reads the int8 values as they are; more rows through the library GEMM on a
# dequantized copy, whose cost they amortise. Decided per call, inside the op, so one compiled prefill piece serves
# every row count (dequantizing every expert hit of a short prompt would dominate its prefill).
INT8_GEMV_MAX_ROWS = 64
_LIBRARY.define("int8_linear(Tensor x, Tensor values, Tensor scale, Tensor? bias, ScalarType dtype) -> Tensor")


def _int8_linear(x: Tensor, values: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    if not kernels.available(dtype, x.device):
        return torch.ops.zaya.linear(x, Int8Weight(values, scale, dtype).dequantize(), bias)
    if x.numel() <= INT8_GEMV_MAX_ROWS * x.shape[-1]:
        out = torch.ops.zaya_kernels.gemv(x, values, None, scale)
        return out if bias is None else out + bias
    # The kernel's dequantization, not ATen's: ATen widens through fp32 temporaries, several times slower.
    return torch.ops.zaya.linear(x, torch.ops.zaya_kernels.dequantize(values, scale, dtype), bias)


@torch.library.register_fake("zaya::int8_linear", lib=_LIBRARY)
def _int8_linear_fake(x: Tensor, values: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    return x.new_empty(*x.shape[:-1], values.shape[0])


_LIBRARY.impl("int8_linear", _int8_linear, "CompositeExplicitAutograd")


# Conv1d over time-major x [B, L, C] (weight [C, C / groups, t]) → [B, L - t + 1, C], as a 2-D convolution over
# [B, C, 1, L] in channels-last layout, which is x as it lies: oneDNN's channels-last kernels beat Conv1d over the
# transposed history. An op of our own so that inductor calls it on the tensors as they are: lowered, the depthwise
# conv came out channels-first and was converted back.
_LIBRARY.define("time_conv(Tensor x, Tensor weight, Tensor bias, int groups) -> Tensor")


def _time_conv(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    out = F.conv2d(x.transpose(1, 2)[:, :, None], weight[:, :, None], bias, groups=groups)
    return out[:, :, 0].transpose(1, 2).contiguous()  # already so, unless the input was not time-major


@torch.library.register_fake("zaya::time_conv", lib=_LIBRARY)
def _time_conv_fake(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1] - weight.shape[-1] + 1, weight.shape[0])


_LIBRARY.impl("time_conv", _time_conv, "CompositeExplicitAutograd")


def time_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`conv` over time-major x [B, L, C] → [B, L - t + 1, C] (see `_time_conv`)."""
    assert conv.bias is not None  # CCA's convs have biases (the loader checks every tensor)
    return torch.ops.zaya.time_conv(x, conv.weight, conv.bias, conv.groups)


def dense_linear(x: Tensor, weight: Weight, bias: Tensor | None = None) -> Tensor:
    """F.linear by the best library GEMM for the device (see `_LIBRARY`); an int8 weight as `int8_linear` decides."""
    if isinstance(weight, Int8Weight):
        return torch.ops.zaya.int8_linear(x, weight.values, weight.scale, bias, weight.dtype)
    return torch.ops.zaya.linear(x, weight, bias)


LONE_INT8_MIN_ELEMENTS = 1 << 18


def lone_int8(weight: Weight) -> bool:
    """Whether a compiled step's one row times `weight` goes through the int8 `gemv` (where the kernels run): an int8
    weight of at least LONE_INT8_MIN_ELEMENTS values with bf16 compute, on one thread. The kernel (bf16 rows
    quantized to int16, AVX-512 VNNI) reads int8 at memory speed, where inductor's loop widening each value to fp32
    is compute-bound; but each call is an extern call that splits the step's fused kernels, which pays off only for
    large weights, and with more threads each call also pays for splitting its work. fp32 compute keeps the fused
    loop: its products are exact there. (Outside a compiled graph `int8_linear` decides.)"""
    return (
        torch.compiler.is_compiling()
        and isinstance(weight, Int8Weight)
        and weight.dtype == torch.bfloat16
        and weight.values.numel() >= LONE_INT8_MIN_ELEMENTS
        and _one_thread()
    )


@torch.compiler.assume_constant_result
def _one_thread() -> bool:
    """Asked while tracing, and baked into the graph (dynamo would otherwise trace the call itself)."""
    return torch.get_num_threads() == 1


def kernel_gemv(x: Tensor, weight: Weight, route: Tensor | None = None) -> Tensor:
    """`zaya_kernels::gemv` of a plain weight, or of an int8 one's values with their scales."""
    if isinstance(weight, Int8Weight):
        return torch.ops.zaya_kernels.gemv(x, weight.values, route, weight.scale)
    return torch.ops.zaya_kernels.gemv(x, weight, route)


def weight_of(module: nn.Module, name: str = "weight") -> Weight:
    """`module`'s weight `name` as the step reads it: the parameter, or its int8 values with their scales
    (`quantize.store_int8`)."""
    values = getattr(module, name)
    scale = getattr(module, f"{name}_scale", None)
    return values if scale is None else Int8Weight(values, scale, module.compute_dtype)


def multiply_reduce(x: Tensor, weight: Weight) -> Tensor:
    """x [..., K] · weight [..., N, K] (broadcast) → [..., N], accumulated in fp32. Compiled, inductor turns it into
    one vectorised loop that streams the weight once, faster than a library GEMV on one row; an indexed weight
    (`w[route]`) is read in place, never copied; int8 values are widened in the loop and each sum scaled once. In the
    weight's compute dtype (x may be a widened copy: `gemv_input`)."""
    out = (x[..., None, :].float() * stored(weight).float()).sum(-1)
    return (out * weight.scale if isinstance(weight, Int8Weight) else out).to(weight.dtype)


def small_batch_linear(x: Tensor, weight: Weight, bias: Tensor | None = None, kernel: bool = False) -> Tensor:
    """`dense_linear`, except while compiling for at most SMALL_BATCH_ROWS rows, or for a weight of at most
    SMALL_WEIGHT_ELEMENTS read by at most SMALL_WEIGHT_ROWS rows: there a `multiply_reduce`. Each further row re-reads
    the weight, so larger batches keep the library GEMM, unless the weight stays in the L2 cache (the router's, a
    small model's k/v projections), where a fused loop costs less than a library call.

    `kernel` (a decode step with the `zaya_kernels` ops loaded), from KERNEL_MIN_ROWS rows: `zaya_kernels::gemv`,
    which loads each weight row once for all rows, where a fused loop re-reads it per row and a library GEMM at a
    handful of rows is call overhead."""
    rows = x.numel() // x.shape[-1]
    if kernel and (rows >= KERNEL_MIN_ROWS or lone_int8(weight)):
        x = x.to(weight.dtype) if isinstance(weight, Int8Weight) else x  # at one row, maybe widened (`gemv_input`)
        out = kernel_gemv(x, weight)
        return out if bias is None else out + bias
    # The weight test first: it is static, so a large weight adds no guard on a dynamic row count.
    small = stored(weight).numel() <= SMALL_WEIGHT_ELEMENTS
    fused = rows <= SMALL_BATCH_ROWS or (small and rows <= SMALL_WEIGHT_ROWS)
    if not torch.compiler.is_compiling() or not fused:
        return dense_linear(x, weight, bias)
    out = multiply_reduce(x, weight)
    return out if bias is None else out + bias


ExpertMLP = Callable[[Tensor, Weight, Weight, Tensor], Tensor]


def expert_mlp(x: Tensor, gate_up: Weight, down: Weight, scale: Tensor) -> Tensor:
    """One expert's SwiGLU on its tokens: x [n, H], gate_up [2I, H] (gate first), down [H, I], scale [n, 1] → [n, H]."""
    gate, up = small_batch_linear(x, gate_up).chunk(2, dim=-1)
    return small_batch_linear(F.silu(gate) * up, down) * scale
