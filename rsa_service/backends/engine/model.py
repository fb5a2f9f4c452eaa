"""ZAYA1 in plain PyTorch: CCA attention + top-1 MoE with a skip route, fp32 residual stream.

Module and parameter names follow the published checkpoint keys, so a checkpoint's tensors map one-to-one onto
`ZayaForCausalLM.state_dict()`. Every pass runs against per-sequence state held in cache buffers
(KV, conv state, delayed value), updated in place. `forward` is the prefill pass (any rows, T new tokens each, also
used for chunked prefill and scoring); `decode_step` is one token for each of the leading B cache rows at fixed
shapes, written so the engine can compile it whole: with gathered experts it has no data-dependent control flow.

Shapes: B sequences, T new tokens each, K cache columns read, H hidden, nh/nkv query/KV heads, hd head dim,
C = (nh + nkv)·hd conv channels, Dv = nkv·hd/2 delayed-value channels, R router hidden, E experts, S cache rows,
L cache columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsa_service.backends.engine import kernels
from rsa_service.backends.engine.compiler import lower_as_stored_copy
from rsa_service.backends.engine.quantize import QUANTIZE_MODES, Int8Weight, Weight, select, stored


class ZayaDims(Protocol):
    """The config values the model reads (satisfied by the validated `config.ZayaConfig`)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_hidden_layers(self) -> int: ...
    @property
    def num_attention_heads(self) -> int: ...
    @property
    def num_key_value_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def moe_intermediate_size(self) -> int: ...
    @property
    def num_experts(self) -> int: ...
    @property
    def router_hidden_size(self) -> int: ...
    @property
    def cca_time0(self) -> int: ...
    @property
    def cca_time1(self) -> int: ...
    @property
    def rms_norm_eps(self) -> float: ...
    @property
    def tie_word_embeddings(self) -> bool: ...
    @property
    def rope_theta(self) -> float: ...
    @property
    def rotary_dim(self) -> int: ...


def conv_state_width(dims: ZayaDims) -> int:
    """Past columns the two stacked causal convolutions need: (t0 - 1) + (t1 - 1)."""
    return dims.cca_time0 - 1 + dims.cca_time1 - 1


class LayerState(NamedTuple):
    """One layer's cache buffers, indexed by cache row (slot). Updated in place by the forward pass."""

    keys: Tensor  # [S, nkv, L+1, hd] post-RoPE keys, head-major so a column prefix is a view; column L is scratch
    values: Tensor  # [S, nkv, L+1, hd]
    conv: Tensor  # [S, W, C] pre-conv q|k of the last W tokens, time-major: a decode step reads whole channel rows
    delayed: Tensor  # [S, Dv] the last token's delayed value projection


@dataclass(frozen=True)
class StepContext:
    """Where a batch of new tokens sits: which cache rows, which columns, which positions, which are padding."""

    rows: Tensor  # [B] cache rows
    write_cols: Tensor  # [B, T] cache column per new token (padding → scratch column)
    last: Tensor  # [B] index in T of each sequence's last real token
    valid: Tensor  # [B, T] bool, real tokens
    positions: Tensor  # [B, T] absolute positions
    width: int  # K, cache columns read
    mask: Tensor | None  # [B, 1, T, K] bool, True where a query may read a cache column; None: plain causal


ExpertMLP = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class DecodeContext:
    """What every layer of a decode step shares (see `ZayaForCausalLM.decode_step`)."""

    active: Tensor  # [B] bool, rows that decode a token
    cols: Tensor  # [B] cache column each row writes (inactive rows: the scratch column)
    mask: Tensor  # [B, 1, 1, K] bool, the cache columns each row reads
    rope: tuple[Tensor, Tensor]  # cos, sin [B, 1, rot]
    mlp: ExpertMLP | None
    skip_returns_input: bool
    kernels: bool  # attention and (from KERNEL_MIN_ROWS rows) GEMVs and experts through `zaya_kernels` ops


class DecodeOut(NamedTuple):
    residual: Tensor  # [B, H] fp32
    carried: Tensor  # [B, R] router state
    skips: Tensor  # 0-d, skip routes taken


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Statistics in fp32, then back to the input dtype before the weight, as the reference does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class ResidualScale(nn.Module):
    """A merge point of the fp32 residual stream: (h + h_bias)·h_scale + (res + res_bias)·res_scale."""

    def __init__(self, hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.ones(hidden, dtype=dtype))
        self.hidden_states_bias = nn.Parameter(torch.zeros(hidden, dtype=dtype))
        self.residual_scale = nn.Parameter(torch.ones(hidden, dtype=dtype))
        self.residual_bias = nn.Parameter(torch.zeros(hidden, dtype=dtype))

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return (h + self.hidden_states_bias) * self.hidden_states_scale + (
            residual + self.residual_bias
        ) * self.residual_scale


class CCAProjection(nn.Module):
    """Compressed Convolutional Attention's q/k/v: causal convs over q|k, mean paths, a delayed value head."""

    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = dims.num_attention_heads, dims.num_key_value_heads, dims.head_dim
        hidden, q_dim, kv_dim = dims.hidden_size, self.nh * self.hd, self.nkv * self.hd
        channels = q_dim + kv_dim
        self.q_proj = nn.Linear(hidden, q_dim, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=False, dtype=dtype)
        self.v_proj_current = nn.Linear(hidden, kv_dim // 2, bias=False, dtype=dtype)
        self.v_proj_delayed = nn.Linear(hidden, kv_dim // 2, bias=False, dtype=dtype)
        self.conv_qk_depthwise = nn.Conv1d(channels, channels, dims.cca_time0, groups=channels, dtype=dtype)
        # One group per head (query heads then KV heads), so channels mix only within a head.
        self.conv_qk_grouped = nn.Conv1d(channels, channels, dims.cca_time1, groups=self.nh + self.nkv, dtype=dtype)
        self.width = conv_state_width(dims)

    def _heads(self, q_proj: Tensor, k_proj: Tensor, mixed: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-conv q [..., nh·hd], k [..., nkv·hd] and conv output [..., C] → q [..., nh, hd], k [..., nkv, hd].

        Mean paths: q head ← ½(q + its KV head's k), k head ← mean of its q heads' mean paths.
        """
        q_mean = (q_proj.unflatten(-1, (self.nkv, -1, self.hd)) + k_proj.unflatten(-1, (self.nkv, 1, self.hd))) * 0.5
        # Split into heads before slicing: a view of a slice makes inductor guard on the row count being 1.
        heads = mixed.unflatten(-1, (self.nh + self.nkv, self.hd))
        query = heads[..., : self.nh, :] + q_mean.flatten(-3, -2)
        key = heads[..., self.nh :, :] + q_mean.mean(dim=-2)
        return query, key

    def _conv(self, history: Tensor) -> Tensor:
        """history [B, W + T, C] (contiguous) → [B, T, C].

        As 2-D convolutions over [B, C, 1, W + T] in channels-last layout, which is the time-major history as it
        lies: oneDNN's channels-last kernels run both convs of a 2,048-token prefill in 1.8 ms against 8.0 for
        Conv1d over the transposed history (fp32; bf16 0.9 against 3.2 ms).
        """
        for conv in (self.conv_qk_depthwise, self.conv_qk_grouped):
            history = torch.ops.zaya.time_conv(history, conv.weight, conv.bias, conv.groups)
        return history

    def _conv_last(self, history: Tensor, kernel: bool) -> Tensor:
        """The convs' one output for the newest column, as two small reductions: history [B, W + 1, C] → [B, C].

        A oneDNN convolution call costs ~100 µs here whatever its size; these fuse into the compiled decode step. The
        depthwise one is t0·t1 products of whole [B, C] channel rows, so its generated loop vectorises over the
        channels (over the unfolded [B, C, t1, t0] window it ran ~0.12 ms a layer at 16 rows).
        `kernel`: from KERNEL_MIN_ROWS rows the grouped one is a routed `zaya_kernels::gemv` (row b's group g reads
        group g's weight), ~10x faster than inductor's compute-bound loop (~0.12 ms a layer at 16 rows).
        """
        depthwise, grouped = self.conv_qk_depthwise, self.conv_qk_grouped
        t1 = grouped.kernel_size[0]
        taps = depthwise.weight[:, 0]  # [C, t0]
        columns = [
            sum(history[:, j + k] * taps[:, k] for k in range(depthwise.kernel_size[0])) + depthwise.bias
            for j in range(t1)
        ]  # t1 × [B, C]
        mixed = torch.stack(columns, dim=-1)  # [B, C, t1]
        groups = self.nh + self.nkv
        weight = grouped.weight.view(groups, self.hd, self.hd * t1)  # [G, out, in·t1]
        mixed = gemv_input(mixed).view(mixed.shape[0], groups, self.hd * t1)
        if kernel and mixed.shape[0] >= KERNEL_MIN_ROWS:
            route = torch.arange(groups, device=mixed.device).repeat(mixed.shape[0])
            out = torch.ops.zaya_kernels.gemv(mixed.flatten(0, 1), weight, route).view(mixed.shape[0], groups, -1)
        elif torch.compiler.is_compiling():  # one vectorised reduction (einsum would lower to a scalar loop here)
            out = multiply_reduce(mixed, weight)
        else:
            out = (mixed[:, :, None] @ weight.transpose(-1, -2))[:, :, 0]
        return out.flatten(1) + grouped.bias

    def forward(
        self, x: Tensor, conv: Tensor, delayed: Tensor, last: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x [B, T, H], conv state [B, W, C], delayed value [B, Dv], last [B] (index of each row's last real token)
        → q [B, T, nh, hd], k and v [B, T, nkv, hd], and the conv state and delayed value after the last real token.
        """
        q_proj = linear(self.q_proj, x, dense=True)  # [B, T, nh·hd]
        k_proj = linear(self.k_proj, x, dense=True)  # [B, T, nkv·hd]
        history = torch.cat([conv, torch.cat([q_proj, k_proj], dim=-1)], dim=1)  # [B, W + T, C]
        # New conv state: the W tokens ending at each sequence's last real token.
        cols = last[:, None] + 1 + torch.arange(self.width, device=x.device)  # [B, W]
        conv = history.gather(1, cols[:, :, None].expand(-1, -1, history.shape[2]))
        query, key = self._heads(q_proj, k_proj, self._conv(history))

        # Values: the first half of the channels from this token, the second half delayed by one token.
        v_now, v_next = linear(self.v_proj_current, x, dense=True), linear(self.v_proj_delayed, x, dense=True)
        v_prev = torch.cat([delayed[:, None], v_next[:, :-1]], dim=1)  # [B, T, Dv]
        delayed = v_next.gather(1, last[:, None, None].expand(-1, 1, v_next.shape[-1]))[:, 0]
        value = torch.cat([v_now, v_prev], dim=-1).unflatten(-1, (self.nkv, self.hd))
        return query, key, value, conv, delayed

    def decode(
        self, x: Tensor, active: Tensor, state: LayerState, kernel: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One token for each of the leading B rows: x [B, H] → q [B, nh, hd], k and v [B, nkv, hd].

        Rolls the conv and delayed state of active rows only; inactive rows may be mid-prefill. `kernel`: see
        `small_batch_linear`.
        """
        q_proj, k_proj = linear(self.q_proj, x, kernel), linear(self.k_proj, x, kernel)  # [B, nh·hd], [B, nkv·hd]
        conv, delayed = state.conv[: x.shape[0]], state.delayed[: x.shape[0]]  # views [B, W, C], [B, Dv]
        history = torch.cat([conv, torch.cat([q_proj, k_proj], dim=-1)[:, None]], dim=1)  # [B, W + 1, C]
        query, key = self._heads(q_proj, k_proj, self._conv_last(history, kernel))
        value = torch.cat([linear(self.v_proj_current, x, kernel), delayed], dim=-1).unflatten(-1, (self.nkv, self.hd))
        keep = active[:, None]
        conv.copy_(torch.where(keep[:, :, None], history[:, 1:], conv))
        delayed.copy_(torch.where(keep, linear(self.v_proj_delayed, x, kernel), delayed))
        return query, key, value


class KeyTemperature(nn.Module):
    """L2-normalises q and k to √hd and scales k by a learned per-KV-head temperature."""

    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.zeros(dims.num_key_value_heads, dtype=dtype))
        self.scale = dims.head_dim**0.5

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        eps = torch.finfo(q.dtype).eps
        q = q * (self.scale / q.norm(dim=-1, keepdim=True).clamp_min(eps))
        k = k * (self.scale / k.norm(dim=-1, keepdim=True).clamp_min(eps))
        return q, k * self.temp[:, None]  # k [B, T, nkv, hd] × [nkv, 1]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on the leading rotary dims of each head. x [B, T, h, hd]; cos/sin [B, T, 1, rot]."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    first, second = x_rot.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


ATTENTION_BLOCK = 128


def attention_layout(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """q [B, T, nh, hd], k, v [B, T, nkv, hd] → queries [B, nkv, T, group, hd] scaled, keys [B, nkv, T, hd] and
    values [B, nkv, hd, T], contiguous: query head j is (j // group, j % group), as it reads KV head j // group."""
    b, t, nh, hd = q.shape
    nkv = k.shape[2]
    queries = q.view(b, t, nkv, nh // nkv, hd).transpose(1, 2) * scale
    # Copies whatever the strides (`contiguous` would make the compiled prefill guard on T being 1).
    copy = torch.contiguous_format
    return (
        queries.clone(memory_format=copy),
        k.transpose(1, 2).clone(memory_format=copy),
        v.permute(0, 2, 3, 1).clone(memory_format=copy),
    )


def blocked_attention(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Causal attention in `attention_layout`'s layout → [B, T, nh·hd].

    SDPA's CPU flash kernel runs its many small block GEMMs at ~70 GFLOP/s here (fp32; bf16 is no faster). Instead
    each block of ATTENTION_BLOCK queries (its scores stay in the L2 cache) reads only the keys up to its own end, in
    two `dense_linear` GEMMs per KV head with that head's query heads stacked as rows. In bf16 the scores are
    rounded to bf16 before the (fp32) softmax, as transformers' eager attention does; SDPA keeps them in fp32, and
    computing them in fp32 here costs most of the gain (bf16 2,048-token prefill: SDPA ~0.86 s, this ~0.55 s, with
    fp32 scores ~0.68 s).
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
                if fused:  # in place, no masked fill or fresh output (2,048 tokens, fp32: 22.8 → 19.4 ms a layer)
                    torch.ops.zaya_kernels.causal_softmax_(scores, start)
                    probs = scores
                else:
                    scores[:, :, start:].masked_fill_(above[:n, None, :n], float("-inf"))
                    probs = torch.softmax(scores, dim=-1)
                out[row, start:end, head] = dense_linear(probs, values[row, head, :, :end])  # [n, group, hd]
    return out.view(b, t, nkv * group * hd)


class AttentionInputs(NamedTuple):
    """A layer's attention operands for T new tokens (`attention_layout`) and its conv and delayed-value state after
    them."""

    queries: Tensor  # [B, nkv, T, group, hd], scaled by 1/√hd
    keys: Tensor  # [B, nkv, T, hd] post-RoPE
    values: Tensor  # [B, nkv, hd, T]
    conv: Tensor  # [B, W, C]
    delayed: Tensor  # [B, Dv]


class CCAttention(nn.Module):
    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        self.qkv_proj = CCAProjection(dims, dtype)
        self.qk_norm = KeyTemperature(dims, dtype)
        self.o_proj = nn.Linear(dims.num_attention_heads * dims.head_dim, dims.hidden_size, bias=False, dtype=dtype)
        self.scale = dims.head_dim**-0.5

    def inputs(
        self, x: Tensor, conv: Tensor, delayed: Tensor, last: Tensor, cos: Tensor, sin: Tensor
    ) -> AttentionInputs:
        """x [B, T, H] → the attention's operands; see `CCAProjection.forward` and `apply_rope`."""
        q, k, v, conv, delayed = self.qkv_proj(x, conv, delayed, last)
        q, k = self.qk_norm(q, k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return AttentionInputs(*attention_layout(q, k, v, self.scale), conv, delayed)

    def attend(self, a: AttentionInputs, ctx: StepContext, state: LayerState) -> Tensor:
        """Store the new tokens' keys and values, and attend: → [B, T, nh·hd]."""
        state.keys[ctx.rows[:, None], :, ctx.write_cols] = a.keys.transpose(1, 2)  # indexed as [B, T, nkv, hd]
        state.values[ctx.rows[:, None], :, ctx.write_cols] = a.values.permute(0, 3, 1, 2)
        if ctx.mask is None and a.queries.device.type == "cpu":  # fresh sequences only
            return blocked_attention(a.queries, a.keys, a.values)
        b, nkv, t, group, hd = a.queries.shape
        width = ctx.width
        out = F.scaled_dot_product_attention(
            a.queries.transpose(2, 3).reshape(b, nkv * group, t, hd),
            state.keys[ctx.rows, :, :width],  # [B, nkv, K, hd]
            state.values[ctx.rows, :, :width],
            attn_mask=ctx.mask,
            is_causal=ctx.mask is None,  # SDPA's causal kernel is several times faster than an explicit mask
            scale=1.0,  # the queries come scaled
            enable_gqa=True,
        )  # [B, nh, T, hd]; query head j reads KV head j // (nh / nkv)
        return out.transpose(1, 2).flatten(2)

    def decode_attend(
        self, q: Tensor, k: Tensor, v: Tensor, cols: Tensor, mask: Tensor, state: LayerState, kernel: bool
    ) -> Tensor:
        """Store k, v [B, nkv, hd] at column cols [B] of the leading B rows; attend q [B, nh, 1, hd] → [B, nh·hd].

        The cache is read through a view of its first K columns (mask [B, 1, 1, K]): nothing is copied. `kernel`:
        through `zaya_kernels::decode_attention` (engine `kernels`, loaded by the caller), whose scores are vector
        dot products over each key row; inductor's fused reduction below spends ~2.5 µs per cache column and row
        on a 64-element reduction and its horizontal sum (~0.4 ms a layer at 16 rows and 160 columns).
        """
        b, width = q.shape[0], mask.shape[-1]
        rows = torch.arange(b, device=q.device)
        state.keys[rows, :, cols] = k
        state.values[rows, :, cols] = v
        keys, values = state.keys[:b, :, :width], state.values[:b, :, :width]  # [B, nkv, K, hd]
        if kernel:
            return torch.ops.zaya_kernels.decode_attention(q[:, :, 0], keys, values, mask, self.scale)
        if not torch.compiler.is_compiling():
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True)
            return out.flatten(1)  # [B, nh, 1, hd] → [B, nh·hd]; query head j reads KV head j // (nh / nkv)
        # Compiled: two fused reductions (a CPU SDPA call costs ~150 µs per layer at one query token).
        nkv = keys.shape[1]
        q = q.view(b, nkv, -1, 1, q.shape[-1]).float()  # [B, nkv, group, 1, hd]
        scores = (q * keys[:, :, None].float()).sum(-1) * self.scale  # [B, nkv, group, K]
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = (probs[..., None] * values[:, :, None].float()).sum(-2)  # [B, nkv, group, hd]
        return out.to(v.dtype).flatten(1)


class RouterMLP(nn.Module):
    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        r = dims.router_hidden_size
        self.norm = RMSNorm(r, dims.rms_norm_eps, dtype)
        self.fc1 = nn.Linear(r, r, dtype=dtype)
        self.fc2 = nn.Linear(r, r, dtype=dtype)
        self.out_proj = nn.Linear(r, dims.num_experts + 1, bias=False, dtype=dtype)

    def forward(self, state: Tensor, kernel: bool = False, dense: bool = False) -> Tensor:
        h = F.gelu(linear(self.fc1, self.norm(state), kernel, dense=dense))  # exact (erf) GELU
        return linear(self.out_proj, F.gelu(linear(self.fc2, h, kernel, dense=dense)), kernel, dense=dense)


class Router(nn.Module):
    """Top-1 choice over E experts + 1 skip route, biased by the stored balancer biases (choice only)."""

    def __init__(self, dims: ZayaDims, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        r = dims.router_hidden_size
        self.down_proj = nn.Linear(dims.hidden_size, r, dtype=dtype)
        # Depth averaging: from the second layer on, the previous layer's router state joins in.
        self.router_states_scale = nn.Parameter(torch.ones(r, dtype=dtype)) if layer > 0 else None
        self.router_mlp = RouterMLP(dims, dtype)
        self.register_buffer("balancing_biases", torch.zeros(dims.num_experts + 1, dtype=torch.float32))

    def forward(
        self, x: Tensor, carried: Tensor | None, kernel: bool = False, dense: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, H] → route [B, T], weight [B, T] (fp32, unbiased probability), state [B, T, R]."""
        state = linear(self.down_proj, x, kernel, dense=dense)
        if self.router_states_scale is not None and carried is not None:
            state = state + carried * self.router_states_scale
        # fp32 softmax so near-ties route the same way across dtypes.
        probs = torch.softmax(self.router_mlp(state, kernel, dense).float(), dim=-1)
        route = (probs + self.balancing_biases).argmax(dim=-1)
        return route, probs.gather(-1, route[..., None])[..., 0], state


SMALL_BATCH_ROWS = 2
# From this many rows a decode step with `kernels` runs its GEMVs through `zaya_kernels::gemv`, which loads each
# weight row (or expert hit) once for all the rows that read it: experts alone took the bf16 batch-16 step from
# 12.1 to 8.9 ms, batch 2 from 3.1 to 2.9, fp32 batch 16 from 14.3 to 10.7. At one row inductor's fused
# multiply-reduce is as fast (2.06 against 2.09 ms with the experts) and needs no extern call.
KERNEL_MIN_ROWS = 2
SMALL_WEIGHT_ELEMENTS, SMALL_WEIGHT_ROWS = 65_536, 16


# A copy that inductor cannot inline: the vector a run of multiply-reduces reads is computed once, instead of being
# recomputed (norm, conv) inside each reduction's inner loop, which makes those loops compute-bound. Compiled, it is
# a buffer stored inside inductor's own kernels (`lower_as_stored_copy`); eager, a clone. Registered directly (not
# with `torch.library.custom_op`, whose Python wrapper cost ~5-20 µs per call) as a CompositeExplicitAutograd
# kernel, so it runs on any device, fake tensors included.
_LIBRARY = torch.library.Library("zaya", "DEF")
_LIBRARY.define("materialize(Tensor x) -> Tensor")
_LIBRARY.impl("materialize", torch.clone, "CompositeExplicitAutograd")
lower_as_stored_copy(torch.ops.zaya.materialize.default)


def materialize(x: Tensor) -> Tensor:
    """x, copied by an op the compiler keeps as a call (see `_LIBRARY`)."""
    return torch.ops.zaya.materialize(x)


def gemv_input(x: Tensor) -> Tensor:
    """The vector a decode step's multiply-reduces read, `materialize`d; compiled at one row, in fp32: widened once
    here rather than in every weight row of every loop that reads it (bf16 batch-1 step, one process alternating:
    1.95 → 1.86 and 2.08 → 2.02 ms). The values are x's own, so every product and sum is as before."""
    if torch.compiler.is_compiling() and x.shape[0] == 1:
        x = x.float()
    return materialize(x)


# F.linear through oneDNN's GEMM on a CPU: for fp32, aten's own path calls MKL's sgemm, which on this AMD CPU runs at
# ~100 GFLOP/s against oneDNN's ~230 (2,048-token prefill) and ~55-80 against ~90-120 (16-row decode; bf16 goes through
# oneDNN either way). An op of our own because inductor lowers `mkldnn._linear_pointwise` only for frozen weights.
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
# every row count. (Dequantizing every expert hit for a 32-token prompt held the 8B's prefill to ~3 tokens/s.)
INT8_GEMV_MAX_ROWS = 64
_LIBRARY.define("int8_linear(Tensor x, Tensor values, Tensor scale, Tensor? bias, ScalarType dtype) -> Tensor")


def _int8_linear(x: Tensor, values: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    if not kernels.available(dtype, x.device):
        return torch.ops.zaya.linear(x, Int8Weight(values, scale, dtype).dequantize(), bias)
    if x.numel() <= INT8_GEMV_MAX_ROWS * x.shape[-1]:
        out = torch.ops.zaya_kernels.gemv(x, values, None, scale)
        return out if bias is None else out + bias
    # ATen's own dequantization took ~37 ms for one 4,096 x 2,048 expert on one core here; the kernel, 6 ms (bf16).
    return torch.ops.zaya.linear(x, torch.ops.zaya_kernels.dequantize(values, scale, dtype), bias)


@torch.library.register_fake("zaya::int8_linear", lib=_LIBRARY)
def _int8_linear_fake(x: Tensor, values: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    return x.new_empty(*x.shape[:-1], values.shape[0])


_LIBRARY.impl("int8_linear", _int8_linear, "CompositeExplicitAutograd")


def dense_linear(x: Tensor, weight: Weight, bias: Tensor | None = None) -> Tensor:
    """F.linear by the best library GEMM for the device (see `_LIBRARY`); an int8 weight as `int8_linear` decides."""
    if isinstance(weight, Int8Weight):
        return torch.ops.zaya.int8_linear(x, weight.values, weight.scale, bias, weight.dtype)
    return torch.ops.zaya.linear(x, weight, bias)


LONE_INT8_MIN_ELEMENTS = 1 << 18


def lone_int8(weight: Weight) -> bool:
    """Whether a compiled step's one row times `weight` goes through the int8 `gemv` (where the kernels run): an int8
    weight of at least LONE_INT8_MIN_ELEMENTS values with bf16 compute, on one thread. The kernel (bf16 rows
    quantized to int16, AVX-512 VNNI: 32 products an instruction) reads int8 at memory speed, where inductor's loop
    (16 values widened to fp32 a step, into one accumulator) reads ~18-26 G values/s here; but each call is an
    extern call that splits the step's fused kernels, and with more threads each also pays for splitting its work.
    Mid-size model, bf16 batch-1 step, one process, alternating (medians): one thread 1.326 ms with every int8
    matrix through the kernel, 1.269 with none, 1.207 from 256K values; two threads 1.417, 0.943 and 1.357. fp32
    compute keeps the fused loop too: its products are exact there. (Outside a compiled graph `int8_linear`
    decides.)"""
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


def _store_int8(module: nn.Module, name: str, dtype: torch.dtype) -> None:
    """Replace `module`'s weight `name` by an int8 one of its shape and add its scales, `{name}_scale` (a buffer
    outside the state dict: the checkpoint has no such tensor; the loader fills both with `quantize_into`)."""
    weight = getattr(module, name)
    setattr(module, name, nn.Parameter(torch.empty_like(weight, dtype=torch.int8), requires_grad=False))
    module.register_buffer(f"{name}_scale", weight.new_empty(weight.shape[:-1], dtype=torch.float32), persistent=False)
    module.compute_dtype = dtype


def weight_of(module: nn.Module, name: str = "weight") -> Weight:
    """`module`'s weight `name` as the step reads it: the parameter, or its int8 values with their scales
    (`ZayaForCausalLM(quantize="int8")`)."""
    values = getattr(module, name)
    scale = getattr(module, f"{name}_scale", None)
    return values if scale is None else Int8Weight(values, scale, module.compute_dtype)


# Conv1d over time-major x [B, L, C] (weight [C, C / groups, t]) → [B, L - t + 1, C], as a 2-D convolution over
# [B, C, 1, L] in channels-last layout, which is x as it lies (see `CCAProjection._conv`). An op of our own so that
# inductor calls it on the tensors as they are: lowered, the depthwise conv came out channels-first and was converted
# back (fp32 2,048-token prefill, compiled: the convs ~35 ms against ~18 called whole).
_LIBRARY.define("time_conv(Tensor x, Tensor weight, Tensor bias, int groups) -> Tensor")


def _time_conv(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    out = F.conv2d(x.transpose(1, 2)[:, :, None], weight[:, :, None], bias, groups=groups)
    return out[:, :, 0].transpose(1, 2).contiguous()  # already so, unless the input was not time-major


@torch.library.register_fake("zaya::time_conv", lib=_LIBRARY)
def _time_conv_fake(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1] - weight.shape[-1] + 1, weight.shape[0])


_LIBRARY.impl("time_conv", _time_conv, "CompositeExplicitAutograd")


def multiply_reduce(x: Tensor, weight: Weight) -> Tensor:
    """x [..., K] · weight [..., N, K] (broadcast) → [..., N], accumulated in fp32. Compiled, inductor turns it into
    one vectorised loop that streams the weight once: ~28 GB/s here against ~15 GB/s for MKL's fp32 and oneDNN's bf16
    GEMV on one row; an indexed weight (`w[route]`) is read in place, never copied; int8 values are widened in the
    loop and each sum scaled once. In the weight's compute dtype (x may be a widened copy: `gemv_input`)."""
    out = (x[..., None, :].float() * stored(weight).float()).sum(-1)
    return (out * weight.scale if isinstance(weight, Int8Weight) else out).to(weight.dtype)


def small_batch_linear(x: Tensor, weight: Weight, bias: Tensor | None = None, kernel: bool = False) -> Tensor:
    """`dense_linear`, except while compiling for at most SMALL_BATCH_ROWS rows, or for a weight of at most
    SMALL_WEIGHT_ELEMENTS read by at most SMALL_WEIGHT_ROWS rows: there a `multiply_reduce`. Each further row re-reads
    the weight, so larger batches keep the library GEMM, unless the weight stays in the L2 cache (the router's, the
    mid-size model's k/v projections), where a fused loop costs less than a library call (~10-15 µs each at 16 rows;
    fp32 batch-16 step ~0.4 ms less).

    `kernel` (a decode step with the `zaya_kernels` ops loaded), from KERNEL_MIN_ROWS rows: `zaya_kernels::gemv`,
    which loads each weight row once for all rows and beat both at 2-16 rows (bf16 16 × 512 → 512: 32 µs against
    oneDNN's 44; the router's weights: ~5 µs against ~80 for inductor's compute-bound loop)."""
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


def linear(layer: nn.Linear, x: Tensor, kernel: bool = False, *, dense: bool = False) -> Tensor:
    """`small_batch_linear`; with `dense` always `dense_linear`: the prefill's compiled pieces take any row count, and
    choosing by it would compile a graph for each range of them."""
    if dense:
        return dense_linear(x, weight_of(layer), layer.bias)
    return small_batch_linear(x, weight_of(layer), layer.bias, kernel)


def expert_mlp(x: Tensor, gate_up: Weight, down: Weight, scale: Tensor) -> Tensor:
    """One expert's SwiGLU on its tokens: x [n, H], gate_up [2I, H] (gate first), down [H, I], scale [n, 1] → [n, H]."""
    gate, up = small_batch_linear(x, gate_up).chunk(2, dim=-1)
    return small_batch_linear(F.silu(gate) * up, down) * scale


class Experts(nn.Module):
    """SwiGLU experts stored stacked, gate|up fused (first half gate). Route E is the skip route, E + 1 padding."""

    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        e, h, i = dims.num_experts, dims.hidden_size, dims.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h, dtype=dtype))
        self.down_proj = nn.Parameter(torch.empty(e, h, i, dtype=dtype))
        self.compute_dtype = dtype

    def forward(
        self, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool, mlp: ExpertMLP = expert_mlp
    ) -> tuple[Tensor, int]:
        """x [N, H], route [N], weight [N] → output [N, H], skip routes taken.

        Grouped dispatch: tokens sorted by expert, one `mlp` call per expert hit (its weights read once), skip and
        padding tokens with no matmul. The per-expert counts are the one host read of the layer.
        """
        experts = self.gate_up_proj.shape[0]
        gate_up_proj, down_proj = weight_of(self, "gate_up_proj"), weight_of(self, "down_proj")
        counts = torch.bincount(route, minlength=experts + 2).tolist()
        order = route.argsort(stable=True)  # [N]
        xs, scale = x[order], weight[order, None].to(x.dtype)  # [N, H], [N, 1] grouped by expert
        # Each expert's rows go straight to their places: concatenating them first cost a fresh [N, H] buffer's page
        # faults and copy, ~2.5 ms a layer in a 2,048-token fp32 prefill (2 threads; the layer's GEMMs take ~30).
        out, start = torch.zeros_like(x), 0
        for expert, n in enumerate(counts[:experts]):
            if n:
                end = start + n
                gate_up, down = select(gate_up_proj, expert), select(down_proj, expert)
                out[order[start:end]] = mlp(xs[start:end], gate_up, down, scale[start:end])
                start = end
        skips = counts[experts]
        if skip_returns_input and skips:
            out[order[start : start + skips]] = xs[start : start + skips] * scale[start : start + skips]
        return out, skips

    def gathered(self, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool, kernel: bool) -> Tensor:
        """x [B, H], route [B], weight [B] → [B, H] with no data-dependent control flow, for a compiled decode step.

        `kernel`: through `zaya_kernels::gemv` (engine `kernels`, loaded by the caller), which reads each expert hit
        once for all the rows routed to it and gives skip and padding rows zeros. Else each row reads its own expert
        through an index fused into a multiply-reduce (at most E rows: never more than E experts read); skip and
        padding rows read expert E - 1 and discard it, which costs bandwidth but no branch."""
        experts = self.gate_up_proj.shape[0]
        gate_up_proj, down_proj = weight_of(self, "gate_up_proj"), weight_of(self, "down_proj")
        x_model = x.to(self.compute_dtype)  # x may be widened (`gemv_input`); the skip route returns it rounded
        scale = weight[:, None].to(x_model.dtype)
        if kernel:
            gate, up = kernel_gemv(x_model, gate_up_proj, route).chunk(2, dim=-1)
            out = kernel_gemv(F.silu(gate) * up, down_proj, route) * scale
        else:
            pick = route.clamp(max=experts - 1)
            gate, up = multiply_reduce(x, select(gate_up_proj, pick)).chunk(2, dim=-1)
            out = multiply_reduce(F.silu(gate) * up, select(down_proj, pick)) * scale
            out = torch.where((route < experts)[:, None], out, 0)
        return out + torch.where((route == experts)[:, None], x_model * scale, 0) if skip_returns_input else out


class MoE(nn.Module):
    def __init__(self, dims: ZayaDims, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.gate = Router(dims, layer, dtype)
        self.experts = Experts(dims, dtype)

    def route(
        self, x: Tensor, carried: Tensor | None, valid: Tensor, kernel: bool = False, dense: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [..., H] → route [...] (padding → E + 1), weight [...], router state [..., R]; `kernel`, `dense`: see
        `linear`."""
        route, weight, state = self.gate(x, carried, kernel, dense)
        return torch.where(valid, route, self.experts.gate_up_proj.shape[0] + 1), weight, state


class Routed(NamedTuple):
    """A prefill layer's state between its router and its experts."""

    residual: Tensor  # [B, T, H] fp32, after the attention's merge
    x: Tensor  # [B, T, H] the experts' input
    route: Tensor  # [B, T] (padding → E + 1)
    weight: Tensor  # [B, T]
    carried: Tensor  # [B, T, R] router state


class DecoderLayer(nn.Module):
    def __init__(self, dims: ZayaDims, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)
        self.self_attn = CCAttention(dims, dtype)
        self.post_attention_residual_scale = ResidualScale(dims.hidden_size, dtype)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)
        self.mlp = MoE(dims, layer, dtype)
        self.post_mlp_residual_scale = ResidualScale(dims.hidden_size, dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.input_layernorm.weight.dtype

    def attention_inputs(
        self, residual: Tensor, conv: Tensor, delayed: Tensor, last: Tensor, cos: Tensor, sin: Tensor
    ) -> AttentionInputs:
        """Prefill up to the attention: residual [B, T, H] fp32 → the attention's operands, conv and delayed state."""
        return self.self_attn.inputs(self.input_layernorm(residual.to(self.dtype)), conv, delayed, last, cos, sin)

    def routed(self, attended: Tensor, residual: Tensor, carried: Tensor | None, valid: Tensor) -> Routed:
        """Prefill from the attention's output [B, T, nh·hd] to the experts: o_proj, residual merge, norm, router."""
        residual = self.post_attention_residual_scale(linear(self.self_attn.o_proj, attended, dense=True), residual)
        x = self.post_attention_layernorm(residual.to(self.dtype))
        return Routed(residual, x, *self.mlp.route(x, carried, valid, dense=True))

    def forward(
        self,
        residual: Tensor,
        carried: Tensor | None,
        ctx: StepContext,
        rope: tuple[Tensor, Tensor],
        state: LayerState,
        skip_returns_input: bool,
        ops: PrefillOps,
    ) -> tuple[Tensor, Tensor, int]:
        """residual [B, T, H] fp32 → residual, router state, skip count. The pieces between the cache writes, the
        attention and the expert dispatch (which stay eager: per-row loops, data-dependent expert calls) run through
        `ops`."""
        rows = ctx.rows
        inputs = ops.attention_inputs(self, residual, state.conv[rows], state.delayed[rows], ctx.last, *rope)
        state.conv[rows], state.delayed[rows] = inputs.conv, inputs.delayed
        r = ops.routed(self, self.self_attn.attend(inputs, ctx, state), residual, carried, ctx.valid)
        experts = self.mlp.experts
        out, skips = experts(r.x.flatten(0, 1), r.route.flatten(), r.weight.flatten(), skip_returns_input, ops.mlp)
        return ops.merge(self.post_mlp_residual_scale, out.view_as(r.x), r.residual), r.carried, skips

    def decode(self, residual: Tensor, carried: Tensor | None, step: DecodeContext, state: LayerState) -> DecodeOut:
        """One token per row: residual [B, H] fp32 → residual, router state [B, R], skip routes taken (0-d)."""
        attn = self.self_attn
        x = gemv_input(self.input_layernorm(residual.to(self.dtype)))
        q, k, v = attn.qkv_proj.decode(x, step.active, state, step.kernels)
        q, k = attn.qk_norm(q, k)
        q, k = apply_rope(q, *step.rope)[:, :, None], apply_rope(k, *step.rope)
        attended = attn.decode_attend(q, k, v, step.cols, step.mask, state, step.kernels)
        residual = self.post_attention_residual_scale(linear(attn.o_proj, attended, step.kernels), residual)
        x = gemv_input(self.post_attention_layernorm(residual.to(self.dtype)))
        route, weight, carried = self.mlp.route(x, carried, step.active, step.kernels)
        experts = self.mlp.experts
        kernel = step.kernels and (x.shape[0] >= KERNEL_MIN_ROWS or lone_int8(weight_of(experts, "gate_up_proj")))
        if step.mlp is None or kernel:
            out = experts.gathered(x, route, weight, step.skip_returns_input, kernel)
        else:
            out = experts(x, route, weight, step.skip_returns_input, step.mlp)[0]
        skips = (route == experts.gate_up_proj.shape[0]).sum()
        return DecodeOut(self.post_mlp_residual_scale(out, residual), carried, skips)


class PrefillOps(NamedTuple):
    """The functions the prefill pass runs each layer's pieces through: these, or compiled ones (`prefill`)."""

    attention_inputs: Callable[..., AttentionInputs] = DecoderLayer.attention_inputs
    routed: Callable[..., Routed] = DecoderLayer.routed
    merge: Callable[[ResidualScale, Tensor, Tensor], Tensor] = ResidualScale.forward
    mlp: ExpertMLP = expert_mlp


EAGER = PrefillOps()


class ZayaBackbone(nn.Module):
    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(dims.vocab_size, dims.hidden_size, dtype=dtype)
        self.input_hidden_states_scale = nn.Parameter(torch.ones(dims.hidden_size, dtype=dtype))
        self.input_hidden_states_bias = nn.Parameter(torch.zeros(dims.hidden_size, dtype=dtype))
        self.layers = nn.ModuleList(DecoderLayer(dims, i, dtype) for i in range(dims.num_hidden_layers))
        self.norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)


class ZayaForCausalLM(nn.Module):
    """The whole model. `skip_returns_input` selects the release-time skip route (probability × input)."""

    def __init__(
        self, dims: ZayaDims, dtype: torch.dtype, *, skip_returns_input: bool = False, quantize: str = "none"
    ) -> None:
        super().__init__()
        self.model = ZayaBackbone(dims, dtype)
        self.lm_head = (
            None if dims.tie_word_embeddings else nn.Linear(dims.hidden_size, dims.vocab_size, bias=False, dtype=dtype)
        )
        self.skip_returns_input = skip_returns_input
        self.rope_theta, self.rotary_dim = dims.rope_theta, dims.rotary_dim
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize={quantize!r}: expected one of {', '.join(QUANTIZE_MODES)}")
        if quantize == "int8":
            for module, name in self._int8_weights():
                _store_int8(module, name, dtype)

    def _int8_weights(self) -> Iterator[tuple[nn.Module, str]]:
        """The weights `quantize="int8"` stores as int8: every matrix a decode step streams (the attention
        projections, the experts, the embedding and output head), not the router's (a few KB a layer, and the
        route is a hard choice that rounding would flip) nor the convs' and norms' vectors."""
        for layer in self.model.layers:
            qkv = layer.self_attn.qkv_proj
            for projection in (qkv.q_proj, qkv.k_proj, qkv.v_proj_current, qkv.v_proj_delayed, layer.self_attn.o_proj):
                yield projection, "weight"
            yield layer.mlp.experts, "gate_up_proj"
            yield layer.mlp.experts, "down_proj"
        yield self.model.embed_tokens, "weight"
        if self.lm_head is not None:
            yield self.lm_head, "weight"

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [...] → cos, sin [..., 1, rot], computed in fp32 and cast to the compute dtype."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=positions.device) / self.rotary_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        freqs = positions[..., None].float() * inv_freq  # [..., rot/2]
        angles = torch.cat([freqs, freqs], dim=-1)[..., None, :]
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens [...] → fp32 residual [..., H]."""
        core = self.model
        table = weight_of(core.embed_tokens)
        if isinstance(table, Int8Weight):  # the rows looked up, dequantized
            embedded = (F.embedding(tokens, table.values).float() * table.scale[tokens][..., None]).to(self.dtype)
        else:
            embedded = F.embedding(tokens, table)
        return ((embedded + core.input_hidden_states_bias) * core.input_hidden_states_scale).float()

    def forward(
        self, tokens: Tensor, ctx: StepContext, states: list[LayerState], ops: PrefillOps = EAGER
    ) -> tuple[Tensor, list[int]]:
        """Prefill: tokens [B, T] → final normed hidden [B, T, H] (compute dtype), skip routes per layer."""
        residual = self.embed(tokens)
        rope = self.rope(ctx.positions)
        carried: Tensor | None = None
        skips = []
        for layer, state in zip(self.model.layers, states, strict=True):
            residual, carried, taken = layer(residual, carried, ctx, rope, state, self.skip_returns_input, ops)
            skips.append(taken)
        return self.model.norm(residual.to(self.dtype)), skips

    def decode_step(
        self, tokens: Tensor, positions: Tensor, active: Tensor, mask: Tensor, states: list[LayerState],
        mlp: ExpertMLP | None, kernels: bool = False,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """One token for each of the leading B cache rows: tokens, positions, active [B], mask [B, 1, 1, K] (the
        cache columns each row reads) → fp32 logits [B, V], skip routes per layer [L].

        Inactive rows (mid-prefill or empty) leave their state untouched and write their KV to the scratch column.
        `kernels` (the `zaya_kernels` ops loaded) runs attention, and from KERNEL_MIN_ROWS rows the GEMVs and experts,
        through them; else `mlp` None gathers experts per row (`Experts.gathered`), and an `mlp` dispatches them
        grouped, calling it once per expert.
        """
        cols = torch.where(active, positions, states[0].keys.shape[2] - 1)
        step = DecodeContext(active, cols, mask, self.rope(positions), mlp, self.skip_returns_input, kernels)
        residual, carried = self.embed(tokens), None
        skips = []
        for layer, state in zip(self.model.layers, states, strict=True):
            residual, carried, taken = layer.decode(residual, carried, step, state)
            skips.append(taken)
        hidden = gemv_input(self.model.norm(residual.to(self.dtype)))
        return small_batch_linear(hidden, self.output_weight(), kernel=kernels).float(), torch.stack(skips)

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden [..., H] → fp32 logits [..., V]."""
        return dense_linear(hidden, self.output_weight()).float()

    def output_weight(self) -> Weight:
        """The logits' weight: the tied embedding, or the separate head."""
        return weight_of(self.model.embed_tokens if self.lm_head is None else self.lm_head)
