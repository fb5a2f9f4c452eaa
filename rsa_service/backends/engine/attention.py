"""Compressed Convolutional Attention (CCA): q|k through two causal convs with mean paths, a delayed value head,
L2-normalised q and k with a learned key temperature, partial RoPE, grouped-query attention over the cache.

Plain PyTorch modules; weight products and the attention itself run through the pass's `Ops`. Shapes: B rows, T new
tokens, H hidden, nh/nkv query/KV heads, hd head dim, C = (nh + nkv)·hd conv channels, Dv = nkv·hd/2 delayed-value
channels, W conv state width, K cache columns read.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from rsa_service.backends.engine.config import ZayaDims, conv_state_width
from rsa_service.backends.engine.step import LayerState, Ops, StepContext


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

    def _conv(self, history: Tensor, ops: Ops) -> Tensor:
        """history [B, W + T, C] (contiguous) → [B, T, C], the time-major history read as it lies."""
        for conv in (self.conv_qk_depthwise, self.conv_qk_grouped):
            history = ops.time_conv(history, conv)
        return history

    def _conv_last(self, history: Tensor, ops: Ops) -> Tensor:
        """The convs' one output for the newest column, as two small reductions: history [B, W + 1, C] → [B, C].

        A library convolution call has a fixed cost far above these few products; the reductions fuse into the
        compiled decode step. The depthwise one is t0·t1 products of whole [B, C] channel rows, so its generated loop
        vectorises over the channels; the grouped one is a product per head group (`Ops.grouped_gemv`).
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
        mixed = ops.vector(mixed).view(mixed.shape[0], groups, self.hd * t1)
        return ops.grouped_gemv(mixed, weight).flatten(1) + grouped.bias

    def forward(
        self, x: Tensor, conv: Tensor, delayed: Tensor, last: Tensor, ops: Ops
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x [B, T, H], conv state [B, W, C], delayed value [B, Dv], last [B] (index of each row's last real token)
        → q [B, T, nh, hd], k and v [B, T, nkv, hd], and the conv state and delayed value after the last real token.
        """
        q_proj = ops.linear(self.q_proj, x)  # [B, T, nh·hd]
        k_proj = ops.linear(self.k_proj, x)  # [B, T, nkv·hd]
        history = torch.cat([conv, torch.cat([q_proj, k_proj], dim=-1)], dim=1)  # [B, W + T, C]
        # New conv state: the W tokens ending at each sequence's last real token.
        cols = last[:, None] + 1 + torch.arange(self.width, device=x.device)  # [B, W]
        conv = history.gather(1, cols[:, :, None].expand(-1, -1, history.shape[2]))
        query, key = self._heads(q_proj, k_proj, self._conv(history, ops))

        # Values: the first half of the channels from this token, the second half delayed by one token.
        v_now, v_next = ops.linear(self.v_proj_current, x), ops.linear(self.v_proj_delayed, x)
        v_prev = torch.cat([delayed[:, None], v_next[:, :-1]], dim=1)  # [B, T, Dv]
        delayed = v_next.gather(1, last[:, None, None].expand(-1, 1, v_next.shape[-1]))[:, 0]
        value = torch.cat([v_now, v_prev], dim=-1).unflatten(-1, (self.nkv, self.hd))
        return query, key, value, conv, delayed

    def decode(self, x: Tensor, active: Tensor, state: LayerState, ops: Ops) -> tuple[Tensor, Tensor, Tensor]:
        """One token for each of the leading B rows: x [B, H] → q [B, nh, hd], k and v [B, nkv, hd].

        Rolls the conv and delayed state of active rows only; inactive rows may be mid-prefill.
        """
        q_proj, k_proj = ops.linear(self.q_proj, x), ops.linear(self.k_proj, x)  # [B, nh·hd], [B, nkv·hd]
        conv, delayed = state.conv[: x.shape[0]], state.delayed[: x.shape[0]]  # views [B, W, C], [B, Dv]
        history = torch.cat([conv, torch.cat([q_proj, k_proj], dim=-1)[:, None]], dim=1)  # [B, W + 1, C]
        query, key = self._heads(q_proj, k_proj, self._conv_last(history, ops))
        value = torch.cat([ops.linear(self.v_proj_current, x), delayed], dim=-1).unflatten(-1, (self.nkv, self.hd))
        keep = active[:, None]
        conv.copy_(torch.where(keep[:, :, None], history[:, 1:], conv))
        delayed.copy_(torch.where(keep, ops.linear(self.v_proj_delayed, x), delayed))
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
        self, x: Tensor, conv: Tensor, delayed: Tensor, last: Tensor, cos: Tensor, sin: Tensor, ops: Ops
    ) -> AttentionInputs:
        """x [B, T, H] → the attention's operands; see `CCAProjection.forward` and `apply_rope`."""
        q, k, v, conv, delayed = self.qkv_proj(x, conv, delayed, last, ops)
        q, k = self.qk_norm(q, k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return AttentionInputs(*attention_layout(q, k, v, self.scale), conv, delayed)

    def attend(self, a: AttentionInputs, ctx: StepContext, state: LayerState, ops: Ops) -> Tensor:
        """Store the new tokens' keys and values, and attend: → [B, T, nh·hd]."""
        state.keys[ctx.rows[:, None], :, ctx.write_cols] = a.keys.transpose(1, 2)  # indexed as [B, T, nkv, hd]
        state.values[ctx.rows[:, None], :, ctx.write_cols] = a.values.permute(0, 3, 1, 2)
        return ops.attend(a.queries, a.keys, a.values, state, ctx)

    def decode_attend(
        self, q: Tensor, k: Tensor, v: Tensor, cols: Tensor, mask: Tensor, state: LayerState, ops: Ops
    ) -> Tensor:
        """Store k, v [B, nkv, hd] at column cols [B] of the leading B rows; attend q [B, nh, 1, hd] → [B, nh·hd].

        The cache is read through a view of its first K columns (mask [B, 1, 1, K]): nothing is copied.
        """
        b, width = q.shape[0], mask.shape[-1]
        rows = torch.arange(b, device=q.device)
        state.keys[rows, :, cols] = k
        state.values[rows, :, cols] = v
        keys, values = state.keys[:b, :, :width], state.values[:b, :, :width]  # [B, nkv, K, hd]
        return ops.decode_attention(q, keys, values, mask, self.scale)
