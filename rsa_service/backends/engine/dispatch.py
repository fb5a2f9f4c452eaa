"""`Dispatch`: the model's `Ops` on this device, the engine's CPU policy for weight products, attention and experts.

One is built per kind of pass: the prefill's (`dense`: any row count through the library GEMM, so its compiled
pieces serve every shape), the compiled decode step's (`gather`: experts without data-dependent control flow) and
the eager decode step's; `kernels` sends decode-step products and attention through `zaya_kernels` where the CPU
has them (`accel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsa_service.backends.engine.accel import kernels
from rsa_service.backends.engine.model import Experts
from rsa_service.backends.engine.ops import (
    KERNEL_MIN_ROWS,
    ExpertMLP,
    dense_linear,
    expert_mlp,
    gemv_input,
    kernel_gemv,
    lone_int8,
    multiply_reduce,
    small_batch_linear,
    time_conv,
    weight_of,
)
from rsa_service.backends.engine.quantize import Int8Weight, select
from rsa_service.backends.engine.step import LayerState, StepContext

ATTENTION_BLOCK = 128


@dataclass(frozen=True, eq=False)
class Dispatch:
    """How one kind of pass runs (see the module docstring); implements `step.Ops`."""

    kernels: bool = False
    dense: bool = False
    gather: bool = False
    mlp: ExpertMLP = expert_mlp  # runs one expert's tokens: `expert_mlp`, or it compiled

    def vector(self, x: Tensor) -> Tensor:
        return gemv_input(x)

    def linear(self, layer: nn.Module, x: Tensor) -> Tensor:
        bias = getattr(layer, "bias", None)
        if self.dense:
            return dense_linear(x, weight_of(layer), bias)
        return small_batch_linear(x, weight_of(layer), bias, self.kernels)

    def grouped_gemv(self, x: Tensor, weight: Tensor) -> Tensor:
        rows, groups = x.shape[0], x.shape[1]
        if self.kernels and rows >= KERNEL_MIN_ROWS:  # a routed gemv: row b's group g reads group g's weight
            route = torch.arange(groups, device=x.device).repeat(rows)
            return torch.ops.zaya_kernels.gemv(x.flatten(0, 1), weight, route).view(rows, groups, -1)
        if torch.compiler.is_compiling():  # one vectorised reduction (einsum would lower to a scalar loop here)
            return multiply_reduce(x, weight)
        return (x[:, :, None] @ weight.transpose(-1, -2))[:, :, 0]

    def time_conv(self, x: Tensor, conv: nn.Conv1d) -> Tensor:
        return time_conv(x, conv)

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor, state: LayerState, ctx: StepContext) -> Tensor:
        if ctx.mask is None and queries.device.type == "cpu":  # fresh sequences only
            return blocked_attention(queries, keys, values)
        b, nkv, t, group, hd = queries.shape
        width = ctx.width
        out = F.scaled_dot_product_attention(
            queries.transpose(2, 3).reshape(b, nkv * group, t, hd),
            state.keys[ctx.rows, :, :width],  # [B, nkv, K, hd]
            state.values[ctx.rows, :, :width],
            attn_mask=ctx.mask,
            is_causal=ctx.mask is None,  # SDPA's causal kernel is several times faster than an explicit mask
            scale=1.0,  # the queries come scaled
            enable_gqa=True,
        )  # [B, nh, T, hd]; query head j reads KV head j // (nh / nkv)
        return out.transpose(1, 2).flatten(2)

    def decode_attention(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
        if self.kernels:  # vector dot products over each key row, one combined horizontal sum per 16 scores
            return torch.ops.zaya_kernels.decode_attention(q[:, :, 0], keys, values, mask, scale)
        if not torch.compiler.is_compiling():
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
            return out.flatten(1)  # [B, nh, 1, hd] → [B, nh·hd]; query head j reads KV head j // (nh / nkv)
        # Compiled: two fused reductions (a CPU SDPA call at one query token costs more than the whole layer's math).
        b, nkv = q.shape[0], keys.shape[1]
        q = q.view(b, nkv, -1, 1, q.shape[-1]).float()  # [B, nkv, group, 1, hd]
        scores = (q * keys[:, :, None].float()).sum(-1) * scale  # [B, nkv, group, K]
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = (probs[..., None] * values[:, :, None].float()).sum(-2)  # [B, nkv, group, hd]
        return out.to(values.dtype).flatten(1)

    def experts(
        self, experts: Experts, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool
    ) -> tuple[Tensor, int]:
        return grouped_experts(experts, x, route, weight, skip_returns_input, self.mlp)

    def decode_experts(
        self, experts: Experts, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool
    ) -> Tensor:
        kernel = self.kernels and (x.shape[0] >= KERNEL_MIN_ROWS or lone_int8(weight_of(experts, "gate_up_proj")))
        if self.gather or kernel:
            return gathered_experts(experts, x, route, weight, skip_returns_input, kernel)
        return grouped_experts(experts, x, route, weight, skip_returns_input, self.mlp)[0]

    def embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        table = weight_of(embedding)
        if isinstance(table, Int8Weight):  # the rows looked up, dequantized
            return (F.embedding(tokens, table.values).float() * table.scale[tokens][..., None]).to(table.dtype)
        return F.embedding(tokens, table)


def blocked_attention(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Causal attention in `attention.attention_layout`'s layout → [B, T, nh·hd].

    SDPA's CPU flash kernel runs its many small block GEMMs far below the library GEMM's speed. Instead each block of
    ATTENTION_BLOCK queries (its scores stay in the L2 cache) reads only the keys up to its own end, in two
    `dense_linear` GEMMs per KV head with that head's query heads stacked as rows. In bf16 the scores are rounded to
    bf16 before the (fp32) softmax, as transformers' eager attention does; SDPA keeps them in fp32, and computing them
    in fp32 here costs most of the gain.
    """
    b, nkv, t, group, hd = queries.shape
    fused = kernels.available(queries.dtype, queries.device)
    above = torch.ones(ATTENTION_BLOCK, ATTENTION_BLOCK, dtype=torch.bool, device=queries.device).triu(1)
    out = queries.new_empty(b, t, nkv, group, hd)
    for row in range(b):
        for head in range(nkv):
            for start in range(0, t, ATTENTION_BLOCK):
                end = min(start + ATTENTION_BLOCK, t)
                n = end - start
                scores = dense_linear(queries[row, head, start:end], keys[row, head, :end])  # [n, group, end]
                if fused:  # in place: no masked fill, no fresh output
                    torch.ops.zaya_kernels.causal_softmax_(scores, start)
                    probs = scores
                else:
                    scores[:, :, start:].masked_fill_(above[:n, None, :n], float("-inf"))
                    probs = torch.softmax(scores, dim=-1)
                out[row, start:end, head] = dense_linear(probs, values[row, head, :, :end])  # [n, group, hd]
    return out.view(b, t, nkv * group * hd)


def grouped_experts(
    experts: Experts, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool, mlp: ExpertMLP
) -> tuple[Tensor, int]:
    """x [N, H], route [N], weight [N] → output [N, H], skip routes taken.

    Tokens sorted by expert, one `mlp` call per expert hit (its weights read once), skip and padding tokens with no
    matmul. The per-expert counts are the one host read of the layer.
    """
    count = experts.gate_up_proj.shape[0]
    gate_up_proj, down_proj = weight_of(experts, "gate_up_proj"), weight_of(experts, "down_proj")
    counts = torch.bincount(route, minlength=count + 2).tolist()
    order = route.argsort(stable=True)  # [N]
    xs, scale = x[order], weight[order, None].to(x.dtype)  # [N, H], [N, 1] grouped by expert
    # Each expert's rows go straight to their places: concatenating them first would fault in and fill a fresh
    # [N, H] buffer every layer.
    out, start = torch.zeros_like(x), 0
    for expert, n in enumerate(counts[:count]):
        if n:
            end = start + n
            gate_up, down = select(gate_up_proj, expert), select(down_proj, expert)
            out[order[start:end]] = mlp(xs[start:end], gate_up, down, scale[start:end])
            start = end
    skips = counts[count]
    if skip_returns_input and skips:
        out[order[start : start + skips]] = xs[start : start + skips] * scale[start : start + skips]
    return out, skips


def gathered_experts(
    experts: Experts, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool, kernel: bool
) -> Tensor:
    """x [B, H], route [B], weight [B] → [B, H] with no data-dependent control flow, for a compiled decode step.

    `kernel`: through `zaya_kernels::gemv`, which reads each expert hit once for all the rows routed to it and gives
    skip and padding rows zeros. Else each row reads its own expert through an index fused into a multiply-reduce
    (at most E rows: never more than E experts read); skip and padding rows read expert E - 1 and discard it, which
    costs bandwidth but no branch."""
    count = experts.gate_up_proj.shape[0]
    gate_up_proj, down_proj = weight_of(experts, "gate_up_proj"), weight_of(experts, "down_proj")
    x_model = x.to(experts.compute_dtype)  # x may be widened (`gemv_input`); the skip route returns it rounded
    scale = weight[:, None].to(x_model.dtype)
    if kernel:
        gate, up = kernel_gemv(x_model, gate_up_proj, route).chunk(2, dim=-1)
        out = kernel_gemv(F.silu(gate) * up, down_proj, route) * scale
    else:
        pick = route.clamp(max=count - 1)
        gate, up = multiply_reduce(x, select(gate_up_proj, pick)).chunk(2, dim=-1)
        out = multiply_reduce(F.silu(gate) * up, select(down_proj, pick)) * scale
        out = torch.where((route < count)[:, None], out, 0)
    return out + torch.where((route == count)[:, None], x_model * scale, 0) if skip_returns_input else out
